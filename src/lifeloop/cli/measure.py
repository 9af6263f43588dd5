"""Commands that measure: `loadtest`, `bench`, `bench-learning`, `bench-drift`, `tune`,
`soak`."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from lifeloop.cli._common import (
    ModelName,
    Repository,
    RouterName,
    StoreUrl,
    _errors,
    console,
)
from lifeloop.loadtest.config import CsvFormat

if TYPE_CHECKING:
    from lifeloop.loadtest.bench_result import BenchResult

app = typer.Typer()


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
    csv_format: Annotated[
        CsvFormat,
        typer.Option(
            help="perf_analyzer: also write perf_analyzer.csv, in the columns of "
            "perf_analyzer's -f file."
        ),
    ] = CsvFormat.WINDOWS,
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
        csv_format=csv_format,
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
    files = ["report.json", "windows.csv", "report.html"]
    if report["config"]["csv_format"] == CsvFormat.PERF_ANALYZER:
        files.append("perf_analyzer.csv")
    console.print("report: " + ", ".join(str(out / name) for name in files))


@app.command()
@_errors
def bench(
    out: Annotated[
        Path, typer.Option(help="Folder for bench.json, bench.md and the served repository.")
    ] = Path("runs/bench"),
    window: Annotated[float, typer.Option(help="Window length in seconds.")] = 2.0,
    max_seconds: Annotated[float, typer.Option(help="Longest measurement of one figure.")] = 24.0,
    concurrency: Annotated[
        int, typer.Option(help="Requests in flight for every served figure.")
    ] = 32,
    locust_users: Annotated[
        int, typer.Option("--users", help="Locust users (and lean coroutines) for the harness.")
    ] = 32,
    docs: Annotated[
        Path | None,
        typer.Option(
            help="Also write bench.md into this page (docs/benchmarks.md), keeping the part "
            "below its end-of-generated marker."
        ),
    ] = None,
) -> None:
    """Measure side by side in one run: raw vs served, batching on vs off, Locust vs lean,
    routed vs direct, INT8 and FP16 vs fp32. Writes bench.json and bench.md."""
    from lifeloop.loadtest.bench import run_bench

    result = run_bench(
        out,
        window_s=window,
        max_s=max_seconds,
        concurrency=concurrency,
        locust_users=locust_users,
        say=console.print,
    )
    _print_bench(result, console)
    console.print(f"bench.json: {out / 'bench.json'}; bench.md: {out / 'bench.md'}")
    if docs is not None:
        from lifeloop.loadtest.bench_result import update_page

        console.print(f"wrote {update_page(docs, result.to_markdown())}")


@app.command("bench-learning")
@_errors
def bench_learning(
    data: Annotated[
        str,
        typer.Option(
            help="fashion-mnist (Debian's dataset-fashion-mnist), digits, or an ImageFolder."
        ),
    ] = "fashion-mnist",
    out: Annotated[Path, typer.Option(help="Folder for learning.json and learning.html.")] = Path(
        "runs/bench-learning"
    ),
    rounds: Annotated[int, typer.Option(help="Rounds, the first one training v1.")] = 5,
    classes_per_round: Annotated[int, typer.Option(help="New classes per round.")] = 2,
    feedback_share: Annotated[
        float, typer.Option(help="Share of each round's traffic that comes back labelled.")
    ] = 0.5,
    limit_per_class: Annotated[
        int | None, typer.Option(help="Training images per class (default: all).")
    ] = None,
    epochs: Annotated[int, typer.Option(help="Epochs of every training, all learners.")] = 4,
    variants: Annotated[
        str, typer.Option(help="Comma-separated: clean, noisy (20% wrong labels), long_tailed.")
    ] = "clean,noisy,long_tailed",
    balanced: Annotated[
        bool, typer.Option(help="lifeloop's retrain caps each class at the replay quota.")
    ] = True,
    replay_per_class: Annotated[
        int, typer.Option(help="lifeloop's replay quota per known class, as in retrain.")
    ] = 150,
    seed: Annotated[int, typer.Option(help="Seeds the class order and every draw.")] = 0,
) -> None:
    """A class-incremental stream: lifeloop's retrain against naive fine-tuning (the floor)
    and joint training (the ceiling), round by round, with forgetting per class."""
    from lifeloop.retrain.cycle import RetrainSettings
    from lifeloop.retrain.learning import StreamSettings
    from lifeloop.retrain.learning import bench_learning as run

    settings = StreamSettings(
        rounds=rounds,
        classes_per_round=classes_per_round,
        feedback_share=feedback_share,
        limit_per_class=limit_per_class,
        retrain=RetrainSettings(
            epochs=epochs, seed=seed, balanced=balanced, replay_per_class=replay_per_class
        ),
        seed=seed,
    )
    chosen = tuple(v.strip() for v in variants.split(",") if v.strip())
    result = run(data, out, settings, variants=chosen, say=console.print)
    table = Table(title=f"lifeloop bench-learning on {data}: final round, test split")
    for column in ("variant", "learner", "seen classes", "all classes", "worst forgetting"):
        table.add_column(column)
    for variant, figures in result["variants"].items():
        final = figures["rounds"][-1]["learners"]
        for learner, f in final.items():
            worst = max(
                (v["max_minus_final"] for v in figures["forgetting"][learner].values()),
                default=0.0,
            )
            table.add_row(
                variant,
                learner,
                f"{f['seen_accuracy']:.3f}",
                f"{f['all_accuracy']:.3f}",
                f"{worst:.3f}",
            )
    console.print(table)
    _print_targets(result["targets"], str)
    from lifeloop.loadtest.learning_report import write_learning_report

    page = write_learning_report(result, out / "learning.html")
    console.print(f"learning.json: {out / 'learning.json'}; learning.html: {page}")


@app.command("bench-drift")
@_errors
def bench_drift(
    data: Annotated[
        str,
        typer.Option(
            help="fashion-mnist (Debian's dataset-fashion-mnist), digits, or an ImageFolder."
        ),
    ] = "fashion-mnist",
    out: Annotated[Path, typer.Option(help="Folder for drift.json.")] = Path("runs/bench-drift"),
    windows: Annotated[int, typer.Option(help="Windows per shift.")] = 40,
    window: Annotated[int, typer.Option(help="Answers per window.")] = 300,
    reference: Annotated[int, typer.Option(help="Held-out images in the reference.")] = 1000,
    top_k: Annotated[int, typer.Option(help="Scores per answer, as the router logs them.")] = 5,
    limit_per_class: Annotated[
        int | None, typer.Option(help="Training images per class (default: 1000).")
    ] = 1000,
    epochs: Annotated[int, typer.Option(help="Epochs of the small CNN's training.")] = 4,
    blur_sigma: Annotated[float, typer.Option(help="Blur: Gaussian sigma in pixels.")] = 1.0,
    noise_std: Annotated[
        float, typer.Option(help="Noise: Gaussian std as a share of the pixel range.")
    ] = 0.1,
    brightness: Annotated[
        float, typer.Option(help="Brightness: added, as a share of the pixel range.")
    ] = 0.2,
    prior_share: Annotated[
        float, typer.Option(help="Class prior: share of a window drawn from one class.")
    ] = 0.5,
    seed: Annotated[int, typer.Option(help="Seeds the training and every draw.")] = 0,
) -> None:
    """The drift test's detection rate on shifted traffic (blur, noise, brightness, class
    prior) and its false-alarm rate on unshifted traffic, window by window."""
    from lifeloop.retrain.drift_bench import DriftBenchSettings
    from lifeloop.retrain.drift_bench import bench_drift as run

    settings = DriftBenchSettings(
        windows=windows,
        window=window,
        reference=reference,
        top_k=top_k,
        limit_per_class=limit_per_class,
        epochs=epochs,
        blur_sigma=blur_sigma,
        noise_std=noise_std,
        brightness=brightness,
        prior_share=prior_share,
        seed=seed,
    )
    result = run(data, out, settings, say=console.print)
    table = Table(title=f"lifeloop bench-drift on {data}: {windows} windows of {window} answers")
    for column in ("shift", "what", "alarm rate", "median p-value"):
        table.add_column(column)
    for name, found in result["shifts"].items():
        table.add_row(
            name,
            found["what"],
            f"{found['alarm_rate']:.0%}",
            f"{found['median_p']:.2g}",
        )
    console.print(table)
    _print_targets(result["targets"], lambda value: f"{value:.0%}")
    console.print(f"drift.json: {out / 'drift.json'}")


def _print_targets(targets: list[dict[str, Any]], shown: Callable[[Any], str]) -> None:
    for row in targets:
        mark = "met" if row["met"] else "[red]missed[/]"
        console.print(f"{mark}: {row['target']} ({shown(row['value'])})")


def _print_bench(result: BenchResult, to: Console) -> None:
    """The ratios with their targets and figures, then where the CPU went."""
    from lifeloop.loadtest.bench_result import CPU_COLUMNS

    ratios = Table(title="lifeloop bench (ratios measured side by side in this run)")
    for column in ("ratio", "measured", "target", "from"):
        ratios.add_column(column)
    for ratio in result.ratios:
        verdict = ratio.verdict if ratio.met is not False else f"[red]{ratio.verdict}[/]"
        source = "; ".join((ratio.row.figures, *ratio.row.notes))
        ratios.add_row(ratio.name, f"{ratio.value:.3f}", verdict, source)
    to.print(ratios)
    run = result.run
    # On shared cores the cost of a request bounds the rate.
    cpu = Table(
        title=f"CPU per request (ms) by process, at concurrency {run.concurrency} "
        f"(harness: {run.locust_users} users)"
    )
    for column in CPU_COLUMNS:
        cpu.add_column(column)
    for cells in result.cpu_cells():
        cpu.add_row(*cells)
    to.print(cpu)
    to.print(f"{run.method}; {run.machine.describe()}")


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


@app.command()
@_errors
def soak(
    url: Annotated[str, typer.Option(help="The router's server, grpc://HOST:PORT or http://.")],
    repository: Repository = Path("model_repository"),
    model: ModelName = "classifier",
    cycles: Annotated[int, typer.Option(help="candidate -> promote -> rollback cycles.")] = 20,
    users: Annotated[int, typer.Option(help="Client threads classifying throughout.")] = 4,
    router: RouterName = "router",
    store: StoreUrl = None,
    servers: Annotated[
        str | None,
        typer.Option(
            "--servers",
            help="HTTP URL(s) that load each change (default: --url when it is http://); "
            "URL,URL,... or dns+http://NAME:PORT for replicas.",
            envvar="LIFELOOP_SERVERS",
        ),
    ] = None,
    version: Annotated[
        int | None, typer.Option(help="Version cycled in (default: newest but the champion).")
    ] = None,
    max_rss_growth: Annotated[
        float, typer.Option(help="Fail above this growth of resident memory, in percent.")
    ] = 10.0,
    json_out: Annotated[bool, typer.Option("--json", help="Print the result as JSON.")] = False,
) -> None:
    """Reload under load: N cycles of candidate, promote and rollback while clients classify
    through the router; fails on any failed request or on memory growth."""
    import json
    from dataclasses import asdict

    from lifeloop.loadtest.soak import SoakConfig, run_soak

    config = SoakConfig(
        url=url,
        repository=repository,
        model=model,
        cycles=cycles,
        users=users,
        router=router,
        store=store,
        servers=servers,
        version=version,
        max_rss_growth_pct=max_rss_growth,
    )
    step = max(1, cycles // 10)

    def progress(done: int) -> None:
        if not json_out and (done % step == 0 or done == cycles):
            console.print(f"cycle {done}/{cycles}")

    result = run_soak(config, progress=progress)
    if json_out:
        data = asdict(result)
        data["failures"] = dict(result.failures)
        data["rss_growth_pct"] = result.rss_growth_pct
        data["failed"] = result.failed
        typer.echo(json.dumps(data, sort_keys=True))
    else:
        _print_soak(result)
    if result.failed:
        typer.echo(f"error: soak failed: {'; '.join(result.failed)}", err=True)
        raise typer.Exit(1)


def _print_soak(result) -> None:  # type: ignore[no-untyped-def]
    def ms(value: float | None) -> str:
        return "n/a" if value is None else f"{value:.1f} ms"

    def mib(memory) -> str:  # type: ignore[no-untyped-def]
        if memory is None:
            return "n/a"
        return (
            f"{memory.total / 2**20:.0f} MiB (tritonserver {memory.server / 2**20:.0f}, "
            f"{memory.stub_count} stubs {memory.stubs / 2**20:.0f})"
        )

    table = Table(title=f"soak: {result.cycles} cycles", show_header=False)
    table.add_row("requests", str(result.requests))
    table.add_row("failed", str(sum(result.failures.values())))
    for cause, n in result.failures.most_common():
        table.add_row(f"  {n}x", cause)
    table.add_row("p99 during reloads", ms(result.p99_reload_ms))
    table.add_row("p99 between reloads", ms(result.p99_between_ms))
    table.add_row("time in reloads", f"{result.reload_s:.1f} s")
    table.add_row("RSS after warm-up", mib(result.memory_after_warmup))
    table.add_row("RSS at end", mib(result.memory_at_end))
    growth = result.rss_growth_pct
    table.add_row("RSS growth", "n/a" if growth is None else f"{growth:+.2f}%")
    console.print(table)
    for note in result.notes:
        console.print(note)
