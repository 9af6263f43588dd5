"""The `lifeloop` command: thin Typer commands over the library. Heavy imports are lazy so
`lifeloop --help` stays fast."""

from __future__ import annotations

import functools
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console
from rich.table import Table

from lifeloop.errors import LifeloopError

app = typer.Typer(
    help="Lifelong-learning image classification on NVIDIA Triton Inference Server.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
console = Console()
F = TypeVar("F", bound=Callable[..., Any])


def _errors(fn: F) -> F:
    """Print a LifeloopError as one `error:` line and exit 1, instead of a traceback."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except LifeloopError as exc:
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(1) from exc

    return wrapper  # type: ignore[return-value]


Repository = Annotated[
    Path, typer.Option("--repository", "-r", help="Triton model repository folder.")
]
ModelName = Annotated[str, typer.Option("--model", "-m", help="Model name in the repository.")]
NewVersion = Annotated[int | None, typer.Option(help="Version number (default: the next one).")]
PublishServers = Annotated[
    str | None,
    typer.Option(
        "--servers",
        "--server-url",
        help="Triton HTTP URL, or URL,URL,... for replicas sharing the repository: each "
        "loads the new version and is waited on until it serves it; dns+http://NAME:PORT "
        "means every address NAME resolves to.",
        envvar="LIFELOOP_SERVERS",
    ),
]


@app.command()
@_errors
def serve(
    repository: Repository = Path("model_repository"),
    http_port: Annotated[int, typer.Option(help="HTTP/REST port.")] = 8000,
    grpc_port: Annotated[int, typer.Option(help="gRPC port.")] = 8001,
    metrics_port: Annotated[int, typer.Option(help="Prometheus metrics port.")] = 8002,
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    control_mode: Annotated[
        str, typer.Option(help="explicit (load on request) or poll.")
    ] = "explicit",
    poll_secs: Annotated[int, typer.Option(help="Poll interval in poll mode.")] = 5,
    log_file: Annotated[
        Path | None, typer.Option(help="Server log (default beside the repository).")
    ] = None,
    api_key: Annotated[
        str | None,
        typer.Option(
            envvar="LIFELOOP_API_KEY",
            show_envvar=True,
            help="Restrict loads, unloads and the repository index to clients sending this key "
            "(lifeloop sends LIFELOOP_API_KEY).",
        ),
    ] = None,
) -> None:
    """Run the real tritonserver on a repository until Ctrl-C or SIGTERM."""
    from lifeloop.serve import ControlMode, ServerConfig, ServerError, TritonServer

    if control_mode not in ("explicit", "poll"):
        raise ServerError(f"--control-mode {control_mode!r} is not explicit or poll")
    config = ServerConfig(
        repository=repository,
        http_port=http_port,
        grpc_port=grpc_port,
        metrics_port=metrics_port,
        host=host,
        control_mode=ControlMode(control_mode),
        poll_secs=poll_secs,
        log_file=log_file,
        api_key=api_key,
    )
    stopping = False

    def _stop(signum: int, frame: Any) -> None:
        nonlocal stopping
        stopping = True

    previous = signal.signal(signal.SIGTERM, _stop)
    try:
        with TritonServer(config) as server:
            console.print(
                f"tritonserver ready: http {server.http_url}, grpc {server.grpc_url}, "
                f"metrics {server.metrics_url}; log {server.log_path}. Ctrl-C stops it."
            )
            try:
                while not stopping and server.is_running():
                    time.sleep(0.2)
            except KeyboardInterrupt:
                pass
            if not server.is_running():
                raise ServerError(
                    f"tritonserver exited unexpectedly; last log lines:\n{server.log_tail()}"
                )
            console.print("stopping tritonserver")
    finally:
        signal.signal(signal.SIGTERM, previous)


@app.command()
@_errors
def export(
    checkpoint: Annotated[Path, typer.Option(help="Checkpoint: lifeloop's, or a bare state_dict.")],
    repository: Repository = Path("model_repository"),
    model: ModelName = "classifier",
    arch: Annotated[
        str | None, typer.Option(help="Architecture: small_cnn or a torchvision classifier.")
    ] = None,
    num_classes: Annotated[
        int | None, typer.Option(help="Class count of a bare state_dict.")
    ] = None,
    labels: Annotated[Path | None, typer.Option(help="File with one label per line.")] = None,
    input_size: Annotated[
        int | None, typer.Option(help="Input height and width in pixels.")
    ] = None,
    version: NewVersion = None,
    server_url: PublishServers = None,
    samples: Annotated[
        Path | None, typer.Option(help="Image folder whose images join the parity check.")
    ] = None,
    atol: Annotated[float, typer.Option(help="Parity: absolute tolerance.")] = 1e-4,
    rtol: Annotated[float, typer.Option(help="Parity: relative tolerance.")] = 1e-3,
    max_batch_size: Annotated[
        int, typer.Option(help="Config max_batch_size when the model is new.")
    ] = 32,
    formats: Annotated[
        str,
        typer.Option(
            "--format",
            help="Comma-separated: onnx, onnx-int8, onnx-fp16, tensorrt-fp16, tensorrt-int8. "
            "Each is its own model: NAME, NAME_int8, NAME_fp16, NAME_trt_fp16, ...",
        ),
    ] = "onnx",
    calibration: Annotated[
        Path | None,
        typer.Option(help="Images to calibrate INT8 on (default: the checkpoint's training data)."),
    ] = None,
    eval_dir: Annotated[
        Path | None,
        typer.Option(help="Labelled images for the INT8/FP16 gate (default: the held-out split)."),
    ] = None,
    max_accuracy_drop: Annotated[
        float, typer.Option(help="INT8/FP16 gate: top-1 lost against fp32 (0.01 = 1 point).")
    ] = 0.01,
    min_agreement: Annotated[
        float, typer.Option(help="INT8/FP16 gate: least top-1 agreement with fp32.")
    ] = 0.98,
) -> None:
    """Export a checkpoint to ONNX, gate it on parity with PyTorch, publish the next version.

    INT8 and FP16 are gated on accuracy against the fp32 export; one refused format
    publishes none."""
    from lifeloop.export import CheckpointError, Tolerance, export_checkpoint, load
    from lifeloop.export.pipeline import FP16, INT8, parse_formats
    from lifeloop.export.quantize import QualityGate

    if num_classes is not None and labels is not None:
        raise CheckpointError("pass --num-classes or --labels, not both")
    names = _read_labels(labels) if labels else None
    if num_classes is not None:
        if num_classes < 2:
            raise CheckpointError(f"--num-classes must be >= 2, got {num_classes}")
        names = tuple(str(i) for i in range(num_classes))
    loaded = load(checkpoint, arch=arch, labels=names, input_size=input_size)
    sample_arrays = None
    if samples is not None:
        from lifeloop.retrain.datasets import load_arrays, scan

        folder = scan(samples)
        sample_arrays, _ = load_arrays(
            list(folder.samples[:: max(1, len(folder.samples) // 64)]), loaded.preprocessing
        )
    chosen = parse_formats(formats)
    gate = QualityGate(max_accuracy_drop=max_accuracy_drop, min_agreement=min_agreement)
    precision = None
    if INT8 in chosen or FP16 in chosen:
        from lifeloop.export.calibration import precision_data

        precision = precision_data(
            loaded, calibration_dir=calibration, eval_dir=eval_dir, gate=gate
        )
    result = export_checkpoint(
        loaded,
        repository,
        model,
        samples=sample_arrays,
        tolerance=Tolerance(atol, rtol),
        version=version,
        server_url=server_url,
        max_batch_size=max_batch_size,
        formats=chosen,
        precision=precision,
    )
    console.print(result.parity.summary())
    for fmt, report in result.quality.items():
        console.print(
            f"{fmt}: top-1 {report.accuracy:.4f} against fp32's {report.fp32_accuracy:.4f}, "
            f"agreement {report.agreement:.2%} on {report.held_out} held-out images: passed"
        )
    for fmt, published in result.by_format.items():
        console.print(
            f"published {published.model} version {published.version} ({fmt}) at {published.path}"
        )
        print_replicas(published.replicas)


@app.command()
@_errors
def publish(
    source: Annotated[
        Path, typer.Argument(help="A version folder with its manifest.json, made by an export.")
    ],
    repository: Repository = Path("model_repository"),
    model: Annotated[
        str | None, typer.Option(help="Model to publish under (default: the manifest's).")
    ] = None,
    version: NewVersion = None,
    server_url: PublishServers = None,
) -> None:
    """Publish a version exported elsewhere (another machine, a GPU host's TensorRT plan):
    checked against its manifest, then published atomically and loaded on every server."""
    from lifeloop.repository import publish_folder

    published = publish_folder(repository, source, model, version=version, server_url=server_url)
    console.print(
        f"published {published.model} version {published.version} "
        f"({published.manifest.format}) at {published.path}"
    )
    print_replicas(published.replicas)


def print_replicas(results: Any) -> None:
    """One line per server: what it serves now."""
    for result in results:
        console.print(f"  {result.url}: {result.detail}")


def _read_labels(path: Path) -> tuple[str, ...]:
    from lifeloop.export import CheckpointError

    try:
        names = tuple(line.strip() for line in path.read_text().splitlines() if line.strip())
    except OSError as exc:
        raise CheckpointError(
            f"cannot read labels file {path} ({exc}); pass a text file, one label per line"
        ) from exc
    if len(names) < 2 or len(set(names)) != len(names):
        raise CheckpointError(f"labels file {path} needs at least 2 unique labels, one per line")
    return names


image_app = typer.Typer(help="Let clients send encoded JPEG and PNG images.", no_args_is_help=True)
app.add_typer(image_app, name="image")


@image_app.command("init")
@_errors
def image_init(
    repository: Repository = Path("model_repository"),
    model: ModelName = "classifier",
    preprocess: Annotated[str, typer.Option(help="Name of the preprocess model.")] = "preprocess",
    ensemble: Annotated[
        str | None, typer.Option(help="Name of the ensemble (default: <model>_image).")
    ] = None,
    max_image_bytes: Annotated[
        int, typer.Option(help="Larger encoded images fail their own request.")
    ] = 20 * 1024 * 1024,
    max_image_pixels: Annotated[
        int, typer.Option(help="Images with more pixels (width x height) fail before decoding.")
    ] = 40_000_000,
    formats: Annotated[
        str, typer.Option(help="Image formats accepted, as Pillow names them.")
    ] = "JPEG,PNG",
    url: Annotated[
        str | None,
        typer.Option(
            "--url",
            "--servers",
            help="Triton HTTP URL, or URL,URL,...: load both models there (EXPLICIT mode).",
        ),
    ] = None,
) -> None:
    """Write a preprocess model and an ensemble (preprocess -> classifier) for raw images."""
    from lifeloop.serve.ensemble import install_image_ensemble
    from lifeloop.serve.preprocess import ImageLimits

    kinds = tuple(f.strip().upper() for f in formats.split(",") if f.strip())
    done = install_image_ensemble(
        repository,
        model,
        preprocess=preprocess,
        ensemble=ensemble,
        limits=ImageLimits(max_bytes=max_image_bytes, max_pixels=max_image_pixels, formats=kinds),
        server_url=url,
    )
    console.print(
        f"ensemble {done.ensemble!r} ({done.preprocess!r} -> {done.classifier!r}) written: send "
        f"{'/'.join(done.limits.formats)} bytes as IMAGE (BYTES, one per request row)"
    )


@app.command()
@_errors
def versions(
    repository: Repository = Path("model_repository"),
    model: ModelName = "classifier",
    url: Annotated[
        str | None, typer.Option(help="Server (HTTP) to ask for each version's state.")
    ] = None,
) -> None:
    """List a model's versions: state, labels, parity and creation time."""
    from lifeloop.repository import list_versions

    rows = list_versions(repository, model, server_url=url)
    table = Table(title=f"{model} in {repository}")
    for column in (
        "version",
        "state",
        "labels",
        "format",
        "parity max|diff|",
        "top-1 agree",
        "created",
    ):
        table.add_column(column)
    for row in rows:
        table.add_row(
            str(row.version),
            row.state,
            str(row.labels),
            row.format,
            "-" if row.parity_max_abs_diff is None else f"{row.parity_max_abs_diff:.2g}",
            "-" if row.parity_top1_agreement is None else f"{row.parity_top1_agreement:.1%}",
            row.created_at or row.problem,
        )
    console.print(table)
    if not rows:
        console.print(f"{model} has no published versions yet")


@app.command()
@_errors
def classify(
    images: Annotated[list[Path], typer.Argument(help="Image files.")],
    url: Annotated[
        str, typer.Option(help="Triton URL (host:port, or grpc:// / http://).")
    ] = "localhost:8001",
    model: ModelName = "classifier",
    protocol: Annotated[str, typer.Option(help="grpc or http.")] = "grpc",
    top_k: Annotated[int, typer.Option(help="How many classes to show per image.")] = 3,
) -> None:
    """Classify images through Triton and print the top-k for each."""
    from lifeloop.client import LifeloopClient

    with LifeloopClient(url, protocol, model=model) as client:
        answers = client.classify(images, top_k=top_k)
    for path, answer in zip(images, answers, strict=True):
        ranked = ", ".join(
            f"{label} {score:.3f}"
            for label, score in zip(answer.labels, answer.scores, strict=True)
        )
        console.print(f"{path}: {ranked}  (v{answer.version})")


@app.command()
@_errors
def train(
    data: Annotated[Path, typer.Option(help="ImageFolder: <data>/<label>/<image>.")],
    out: Annotated[Path, typer.Option(help="Checkpoint to write.")],
    arch: Annotated[str, typer.Option(help="small_cnn or a torchvision classifier.")] = "small_cnn",
    epochs: Annotated[int, typer.Option(help="Passes over the training split.")] = 4,
    input_size: Annotated[
        int | None, typer.Option(help="Input size in pixels (default 32 for small_cnn, else 224).")
    ] = None,
    batch_size: int = 64,
    lr: float = 2e-3,
    holdout: Annotated[
        float, typer.Option(help="Share of each class held out for evaluation.")
    ] = 0.2,
    seed: int = 0,
) -> None:
    """Train a classifier on CPU and save a lifeloop checkpoint."""
    from lifeloop.retrain import train as run_train

    result = run_train(
        data,
        arch=arch,
        epochs=epochs,
        out=out,
        input_size=input_size,
        batch_size=batch_size,
        lr=lr,
        holdout=holdout,
        seed=seed,
    )
    console.print(f"held-out accuracy {result.holdout_accuracy:.3f}; checkpoint {result.path}")


@app.command()
@_errors
def digits(
    out: Annotated[Path, typer.Option(help="Folder to write the PNGs into.")] = Path("runs/digits"),
) -> None:
    """Write scikit-learn's bundled digits (no download) as an ImageFolder of PNGs."""
    from lifeloop.retrain import write_digits

    folder = write_digits(out)
    console.print(f"{len(folder.samples)} images in {len(folder.labels)} classes at {folder.root}")


@app.command()
@_errors
def demo(
    out: Annotated[
        Path, typer.Option(help="Folder for the run's data, models and summary.json.")
    ] = Path("runs/demo"),
    epochs: Annotated[int, typer.Option(help="Epochs for v1.")] = 4,
) -> None:
    """Train, export, serve, classify and hot-reload, end to end on this machine."""
    from lifeloop.demo import run_demo

    summary = run_demo(out, epochs=epochs, console=console)
    if summary["failed_requests"]:
        raise typer.Exit(1)


@app.command()
@_errors
def loadtest(
    url: Annotated[str, typer.Option(help="Triton URL (host:port, or grpc:// / http://).")],
    model: ModelName = "classifier",
    protocol: Annotated[str, typer.Option(help="grpc or http.")] = "grpc",
    users: Annotated[int, typer.Option(help="Concurrent Locust users.")] = 16,
    spawn_rate: Annotated[float, typer.Option(help="Users started per second.")] = 16.0,
    duration: Annotated[float, typer.Option(help="Longest measurement, in seconds.")] = 30.0,
    rate: Annotated[float | None, typer.Option(help="Open loop: requests per second.")] = None,
    arrival: Annotated[
        str, typer.Option(help="Open-loop arrivals: constant or poisson.")
    ] = "constant",
    out: Annotated[
        Path, typer.Option(help="Folder for report.json, windows.csv, report.html.")
    ] = Path("runs/loadtest"),
    metrics_url: Annotated[
        str | None, typer.Option(help="Triton metrics (default: the server's host, port 8002).")
    ] = None,
    payload_dir: Annotated[
        Path | None, typer.Option(help="Images to send (default: synthetic).")
    ] = None,
    batch_size: Annotated[int, typer.Option(help="Samples per request.")] = 1,
    window: Annotated[float | None, typer.Option(help="Window length in seconds.")] = None,
) -> None:
    """Drive load with Locust and measure like perf_analyzer: stable windows, percentiles,
    failures by cause, and Triton's server-side split."""
    from lifeloop.loadtest import LoadTestConfig, run_loadtest

    config = LoadTestConfig(
        url=url,
        model=model,
        protocol=protocol,
        users=users,
        spawn_rate=spawn_rate,
        duration_s=duration,
        rate=rate,
        arrival=arrival,
        out=str(out),
        metrics_url=metrics_url,
        payload_dir=str(payload_dir) if payload_dir else None,
        batch_size=batch_size,
        window_s=window,
    )

    def show(event: dict[str, Any]) -> None:
        if event["event"] == "spawned":
            console.print(
                f"{event['users']} users running; measuring {config.window:.2f} s windows"
            )
        elif event["event"] == "window":
            mark = "stable" if event["stable"] else ""
            console.print(
                f"window {event['index']:>3}  {event['throughput']:9.1f} req/s  "
                f"p99 {event['p99']:8.2f} ms  failures {event['failures']:>5}  {mark}"
            )

    report = run_loadtest(config, on_event=show)
    _print_loadtest(report, out)


def _print_loadtest(report: dict[str, Any], out: Path) -> None:
    from lifeloop.loadtest.report import summary_rows

    table = Table(title=f"load test ({report['mode']})", show_header=False)
    for key, value in summary_rows(report):
        table.add_row(key, value)
    console.print(table)
    for warning in report["warnings"]:
        console.print(f"[yellow]warning:[/] {warning}")
    console.print(f"report: {out / 'report.json'}, {out / 'windows.csv'}, {out / 'report.html'}")


@app.command()
@_errors
def bench(
    out: Annotated[
        Path, typer.Option(help="Folder for bench.json and the served repository.")
    ] = Path("runs/bench"),
    window: Annotated[float, typer.Option(help="Window length in seconds.")] = 2.0,
    max_seconds: Annotated[float, typer.Option(help="Longest measurement of one figure.")] = 24.0,
) -> None:
    """Measure side by side in one run: raw vs served, batching on vs off, Locust vs lean."""
    from lifeloop.loadtest.bench import run_bench

    results = run_bench(out, window_s=window, max_s=max_seconds, say=console.print)
    table = Table(title="lifeloop bench (ratios measured side by side in this run)")
    for column in ("ratio", "measured", "target", "from"):
        table.add_column(column)
    sources = _bench_sources(results)
    for name, value in results["ratios"].items():
        target = results["targets"].get(name)
        verdict = (
            "-"
            if target is None
            else f">= {target['target']:g} " + ("met" if target["met"] else "MISSED")
        )
        table.add_row(name, f"{value:.3f}", verdict, sources[name])
    console.print(table)
    console.print(_cpu_table(results))
    console.print(f"bench.json: {out / 'bench.json'}")


def _cpu_table(results: dict[str, Any]) -> Table:
    """Where the CPU goes: on shared cores, the cost of a request bounds the rate."""
    table = Table(title="CPU per request (ms) by process, at concurrency 32")
    for column in ("measurement", "client", "tritonserver", "stubs", "total", "cores busy"):
        table.add_column(column)
    rows = [
        (f"{model} batching {side}", results["batching"][model][side]["cpu"])
        for model in ("resnet18", "small_cnn")
        for side in ("on", "off")
    ]
    for protocol in ("grpc", "http"):
        harness = results["harness"][protocol]
        rows.append((f"small_cnn lean {protocol}", harness["lean"]["before"]["cpu"]))
        rows.append((f"small_cnn Locust {protocol}", harness["locust"]["cpu"]))
    for name, cpu in rows:
        figures = (cpu[f"{k}_ms"] for k in ("client", "tritonserver", "stubs", "total"))
        busy = "" if cpu["busy"] is None else f"{cpu['busy']:.0%}"
        table.add_row(name, *(f"{v:.3f}" for v in figures), busy)
    for model in ("resnet18", "small_cnn"):
        raw = results["raw"][model]
        table.add_row(
            f"{model} raw onnxruntime, per image at batch {raw['best_batch']}",
            "",
            "",
            "",
            f"{raw['cpu_ms_per_image']:.3f}",
            "",
        )
    return table


def _bench_sources(results: dict[str, Any]) -> dict[str, str]:
    raw, served, batching, harness = (results[k] for k in ("raw", "served", "batching", "harness"))
    sources = {}
    for model in ("resnet18", "small_cnn"):
        sources[f"served_over_raw_{model}"] = (
            f"{served[model]['throughput']:.1f} served / "
            f"{raw[model]['images_per_s']:.1f} raw images/s"
        )
        sources[f"batching_gain_{model}"] = (
            f"{batching[model]['on']['throughput']:.1f} on / "
            f"{batching[model]['off']['throughput']:.1f} off req/s"
        )
    for key, model in (
        ("routed_over_direct", "resnet18"),
        ("routed_over_direct_small_cnn", "small_cnn"),
    ):
        routing = results["routing"][model]
        sources[key] = (
            f"{routing['routed']['throughput']:.1f} routed / "
            f"{routing['direct']['throughput']:.1f} direct req/s ({model})"
        )
    precision = results["precision"]
    for fmt in ("int8", "fp16"):
        change = precision["accuracy"][f"onnx-{fmt}"]["accuracy_drop"] * -100 + 0.0  # no "-0.00"
        rounds = ", ".join(f"{r:.2f}" for r in precision["resnet18"][fmt]["ratio_per_round"])
        sources[f"{fmt}_over_fp32_resnet18"] = (
            f"{precision['resnet18'][fmt]['throughput']:.1f} {fmt} / "
            f"{precision['resnet18']['fp32']['throughput']:.1f} fp32 images/s, rounds "
            f"{rounds}; top-1 {change:+.2f} points (trained small CNN)"
        )
    for key, protocol in (("locust_over_lean", "grpc"), ("locust_over_lean_http", "http")):
        sources[key] = (
            f"{harness[protocol]['locust']['throughput']:.1f} Locust / "
            f"{harness[protocol]['lean']['throughput']:.1f} lean req/s ({protocol})"
        )
    return sources


@app.command()
@_errors
def tune(
    repository: Repository = Path("model_repository"),
    model: ModelName = "classifier",
    url: Annotated[str, typer.Option(help="Triton gRPC URL.")] = "localhost:8001",
    p99_budget_ms: Annotated[float, typer.Option(help="Highest acceptable p99 latency.")] = 50.0,
    concurrency: Annotated[int, typer.Option(help="Requests in flight while measuring.")] = 16,
    window: Annotated[float, typer.Option(help="Window length in seconds.")] = 2.0,
    max_seconds: Annotated[float, typer.Option(help="Longest measurement of one point.")] = 16.0,
    max_points: Annotated[int, typer.Option(help="Most configs to try.")] = 12,
    out: Annotated[Path | None, typer.Option(help="Write the trials as JSON here.")] = None,
) -> None:
    """Hill-climb max_batch_size, queue delay and instances under a p99 budget; write the winner."""
    import json

    from lifeloop.loadtest.tune import tune as run_tune

    result = run_tune(
        url=url,
        repository=repository,
        model=model,
        p99_budget_ms=p99_budget_ms,
        concurrency=concurrency,
        window_s=window,
        max_s=max_seconds,
        max_points=max_points,
        say=console.print,
    )
    table = Table(
        title=f"tune {model}: p99 budget {p99_budget_ms:g} ms at concurrency {concurrency}"
    )
    for column in (
        "max_batch_size",
        "queue delay (us)",
        "instances",
        "req/s",
        "p99 ms",
        "within budget",
    ):
        table.add_column(column)
    winner = result["winner"]
    for row in sorted(result["trials"], key=lambda r: -r["throughput_rps"]):
        mark = " <- winner" if winner and row == winner else ""
        table.add_row(
            str(row["max_batch_size"]),
            str(row["max_queue_delay_us"]),
            str(row["instances"]),
            f"{row['throughput_rps']:.1f}",
            f"{row['p99_ms']:.2f}",
            ("yes" if row["feasible"] else "no") + mark,
        )
    console.print(table)
    if winner is None:
        console.print(
            f"[yellow]no config met p99 <= {p99_budget_ms:g} ms; the original config was kept[/]"
        )
    else:
        console.print(f"wrote the winner to {repository / model / 'config.pbtxt'}")
    if out:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=2) + "\n")


# The learning loop's commands register on `app` (kept in their own module for length).
from lifeloop import cli_loop  # noqa: E402, F401


def main() -> None:
    app()
