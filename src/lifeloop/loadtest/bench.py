"""`lifeloop bench`: side-by-side figures from one run on one machine, and their ratios.

- raw vs served: in-process onnxruntime at its best batch size (the practical ceiling) against
  the same ONNX file served by Triton with dynamic batching under saturating concurrency;
- batching on vs off: the same model served with and without the dynamic batcher;
- harness vs client: Locust's throughput against the lean asyncio client's, same server;
- routed vs direct: the same model through lifeloop's router (BLS, prediction log, every
  input kept) against the model called directly;
- precision: ResNet-18 served as INT8 and as FP16 against fp32, each next to the top-1 change
  that precision costs a trained model (the small CNN trained on the digits);
- cache: ResNet-18 through the router to a copy with Triton's response cache against the
  router to the model without, on a stream where half the requests repeat one of 100 images
  and on one where every input is new, with the hit rate from Triton's statistics;
- pruning: ResNet-18 with half its channels removed (Torch-Pruning), served as fp32 and as
  INT8, against the dense fp32 model, next to the MACs cut and the top-1 change the same cut
  costs a ResNet-18 trained on the digits (32x32) and fine-tuned after it;
- cascade: the router in front of a Wide ResNet-50-2 trained on the digits (32x32) with the
  small CNN trained on them as its light model, at the threshold `lifeloop cascade
  calibrate` picks (held-out top-1 within 0.5 points of the heavy model alone), against the
  router with the cascade off, both on a stream of the held-out digits, next to the accuracy
  change and the share the light model answered.

Every figure is taken under perf_analyzer's stability rule; ratios, not absolute times, are
what carry across machines. Beside the batching and harness figures, the CPU each request
cost the client, tritonserver and the python backend's stubs (`cpu.py`), and raw
onnxruntime's CPU per image: where client and server share cores, those bound the ratios."""

from __future__ import annotations

import contextlib
import dataclasses
import io
import itertools
import json
import shutil
import tempfile
import urllib.request
from collections.abc import Callable
from datetime import date
from importlib import metadata
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from lifeloop.client import ServerControl
from lifeloop.errors import LoadTestError
from lifeloop.export import Checkpoint, build, export_checkpoint
from lifeloop.export.formats import FP16, INT8, ONNX, format_model
from lifeloop.export.pipeline import publish_format, tool_versions
from lifeloop.export.quantize import QualityGate, QualityReport, convert_fp16, quantize_int8
from lifeloop.loadtest.bench_result import (
    SECTIONS,
    BenchModel,
    BenchResult,
    BenchRun,
    CpuRow,
    Figure,
    Machine,
    Ratio,
    RawCpu,
    Row,
)
from lifeloop.loadtest.cpu import CpuMeter, CpuSplit
from lifeloop.loadtest.lean import (
    Cycle,
    Repeats,
    measure_lean,
    measure_lean_encoded,
    measure_raw,
    raw_cpu_ms_per_sample,
)
from lifeloop.loadtest.stats import Measurement
from lifeloop.preprocessing import PIXELS, Preprocessing
from lifeloop.repository import read_config, write_config
from lifeloop.serve import ServerConfig, TritonServer
from lifeloop.serve.ensemble import install_image_ensemble
from lifeloop.serve.install import install_router
from lifeloop.serve.sampling import KeepRule
from lifeloop.store.blobs import default_blob_dir
from lifeloop.store.database import default_store_url

TARGETS = {
    "served_over_raw_resnet18": 0.90,
    "batching_gain_small_cnn": 3.0,
    "locust_over_lean": 0.90,
    "locust_over_lean_http": 0.90,
    "routed_over_direct": 0.95,
    "routed_over_direct_small_cnn": 0.75,
    "kept_float32_over_kept_resnet18": 4.0,
    "kept_float32_over_kept_small_cnn": 4.0,
    "kept_float32_over_encoded_resnet18": 20.0,
    "int8_over_fp32_resnet18": 1.5,
    "cache_gain_resnet18": 1.8,
    "cache_cost_unique": 0.95,
    "pruned_over_dense_resnet18": 1.6,
    "cascade_over_heavy": 2.0,
}
# The names bench.json has always used where they differ from `<kind>_<model or protocol>`.
KEPT_NAMES = {
    "locust_over_lean_grpc": "locust_over_lean",
    "routed_over_direct_resnet18": "routed_over_direct",
}

MODELS = (
    BenchModel(
        name="resnet18",
        arch="resnet18",
        size=224,
        classes=1000,
        raw_batches=(1, 8, 16),
        precision=True,
        cache=True,
        prune=True,
        encoded=True,
    ),
    BenchModel(
        name="small_cnn",
        arch="small_cnn",
        size=32,
        classes=10,
        raw_batches=(1, 32, 128),
    ),
)
HARNESS_MODEL = MODELS[1]  # the cheapest request: the client's cost weighs most
PRECISION_ROUNDS = 2
ENCODED_PHOTOS = 64  # JPEG crops through the routed image ensemble
ACCURACY_EPOCHS = 3
TRAINING_EPOCHS = 2  # per run of the training-precision row
SEARCH_TRIALS = 4  # of the search row
# The router at its heaviest: every input kept (`router init --sample-rate 1`), top-5.
ROUTER_KEEP = KeepRule.everything()
ROUTER_TOP_K = 5
# The cache's streams: half the requests repeat one of 100 images, or none repeats.
CACHE_STREAMS = {
    "cache_gain": Repeats(share=0.5, hot=100, seed=0),
    "cache_cost": Repeats(share=0.0, seed=1),  # none of the first stream's inputs either
}
CACHE_MB = 256
# The cascade's budget: held-out top-1 within this many points of the heavy model alone.
CASCADE_MAX_DROP = 0.5
# Its heavy model: at the digits' 32x32 it costs several times the router's own work per
# request (ResNet-18 there costs about what the router does), and in 8 epochs it is more
# accurate than the small CNN, so the cascade trades accuracy for speed, not the reverse.
CASCADE_HEAVY = "wide_resnet50_2"
CASCADE_HEAVY_EPOCHS = 8


def run_bench(
    out: Path,
    *,
    window_s: float = 2.0,
    max_s: float = 24.0,
    concurrency: int = 32,
    locust_users: int = 32,
    say: Callable[[str], None] = print,
) -> BenchResult:
    """Every figure and ratio of one run; writes bench.json and bench.md into `out`."""
    out = Path(out)
    repository = out / "model_repository"
    run = BenchRun(
        out=out,
        models=MODELS,
        window_s=window_s,
        max_s=max_s,
        concurrency=concurrency,
        locust_users=locust_users,
        precision_rounds=PRECISION_ROUNDS,
        router_settings=_router_settings(default_store_url(repository)),
        machine=Machine.here(),
        versions=_versions(),
        date=date.today().isoformat(),
    )
    out.mkdir(parents=True, exist_ok=True)
    onnx = {}
    for spec in run.models:
        say(f"exporting {spec.name} ({spec.arch} at {spec.size}x{spec.size}, random weights)")
        onnx[spec.name] = str(_publish(spec, repository))
        if spec.precision:
            _publish_reduced(spec, repository, Path(onnx[spec.name]))
        if spec.prune:
            _publish_pruned(spec, repository)
        fronted = [spec.name, *([f"{spec.name}_cached"] if spec.cache else [])]
        if spec.cache and not (repository / fronted[1] / "1").is_dir():
            export_checkpoint(_checkpoint(spec), repository, fronted[1], response_cache=True)
        for model in fronted:
            install_router(
                repository,
                model,
                router=f"{model}_router",
                feedback=f"{model}_feedback",
                keep=ROUTER_KEEP,
                top_k=ROUTER_TOP_K,
            )
        if spec.encoded:  # JPEG photos to the classifier, and through its router
            for router in (None, f"{spec.name}_router"):
                install_image_ensemble(
                    repository, spec.name, preprocess=f"{spec.name}_preprocess", router=router
                )

    details: dict[str, dict[str, Any]] = {section: {} for section in SECTIONS}
    served_ratios: list[Ratio] = []
    batching_ratios: list[Ratio] = []
    routing_ratios: list[Ratio] = []
    cache_ratios: list[Ratio] = []
    pruning_runs: dict[str, dict[str, Measurement]] = {}
    harness_ratios: list[Ratio] = []
    precision_runs: dict[str, _PrecisionRuns] = {}
    cpu_rows: list[CpuRow] = []
    raw_cpu: list[RawCpu] = []
    c = run.concurrency

    config = ServerConfig.on_free_ports(
        repository, log_file=out / "tritonserver.log", cache_mb=CACHE_MB
    )
    with TritonServer(config) as server:
        run = dataclasses.replace(run, versions={**run.versions, **_server_version(server)})
        url = server.grpc_url
        assert server.process is not None
        cpu = CpuMeter(server.process.pid)

        for spec in run.models:
            lean = _lean_client(url, run, spec.shape)
            # Raw at each batch size, then served, then raw again at the best batch size: the
            # ceiling is the mean of the two raw figures that bracket the served one, so slow
            # drift of a shared machine cancels instead of landing on one side of the ratio.
            by_batch: dict[int, Measurement] = {}
            for batch in spec.raw_batches:
                by_batch[batch] = measure_raw(
                    onnx[spec.name], spec.shape, batch, window_s=window_s, max_s=max_s
                )
                say(
                    f"  raw onnxruntime {spec.name} batch {batch}: "
                    f"{by_batch[batch].throughput * batch:.1f} images/s"
                )
            best = max(by_batch, key=lambda b: by_batch[b].throughput * b)
            before = by_batch[best].throughput * best
            # At saturating concurrency the batcher forms full batches. The same measurement
            # is the "on" side of the batching comparison.
            with cpu.span(server.metrics_url, spec.name) as on_cpu:
                served = lean(spec.name)
            again = measure_raw(onnx[spec.name], spec.shape, best, window_s=window_s, max_s=max_s)
            after = again.throughput * best
            ceiling = (before + after) / 2
            raw_cpu.append(
                RawCpu(
                    model=spec.name,
                    batch=best,
                    ms_per_image=raw_cpu_ms_per_sample(onnx[spec.name], spec.shape, best),
                )
            )
            details["raw"][spec.name] = {
                "best_batch": best,
                "images_per_s": ceiling,
                "before_served": before,
                "after_served": after,
                "by_batch": {str(b): m.to_dict(per_sample=b) for b, m in by_batch.items()},
                "cpu_ms_per_image": raw_cpu[-1].ms_per_image,
            }
            details["served"][spec.name] = {"concurrency": c, **served.to_dict()}
            served_ratios.append(
                _ratio(
                    f"served_over_raw_{spec.name}",
                    served.throughput,
                    ceiling,
                    Row(
                        model=spec.name,
                        numerator=Figure(label="served", value=served.throughput),
                        denominator=Figure(label="raw", value=ceiling),
                        unit="images/s",
                        notes=(f"raw at batch {best}, the mean of the runs before and after",),
                    ),
                    f"served images/s with dynamic batching, {c} in flight, ÷ raw "
                    "onnxruntime in-process at its best batch size",
                )
            )
            say(
                f"  served {spec.name} (dynamic batching, concurrency {c}): "
                f"{served.throughput:.1f} images/s; raw ceiling {ceiling:.1f} (batch {best})"
            )
            with cpu.span(server.metrics_url, f"{spec.name}_nobatch") as off_cpu:
                off = lean(f"{spec.name}_nobatch")
            on_row = CpuRow(measurement=f"{spec.name} batching on", split=on_cpu[0])
            off_row = CpuRow(measurement=f"{spec.name} batching off", split=off_cpu[0])
            cpu_rows += [on_row, off_row]
            details["batching"][spec.name] = {
                "concurrency": c,
                "on": {**served.to_dict(), "cpu": on_row.to_dict()},
                "off": {**off.to_dict(), "cpu": off_row.to_dict()},
            }
            batching_ratios.append(
                _per_second(
                    f"batching_gain_{spec.name}",
                    spec.name,
                    Figure(label="on", value=served.throughput),
                    Figure(label="off", value=off.throughput),
                    f"requests/s with dynamic batching ÷ without, {c} in flight",
                )
            )
            say(
                f"  {spec.name} at concurrency {c}: batching on {served.throughput:.1f}, "
                f"off {off.throughput:.1f} requests/s; CPU per request: on {_cpu(on_cpu[0])}, "
                f"off {_cpu(off_cpu[0])}"
            )
            if spec.precision:
                runs = _precision(lean, spec, served, run.precision_rounds)
                precision_runs[spec.name] = runs
                details["precision"][spec.name] = runs.to_dict(c)
                say(
                    f"  {spec.name} served at concurrency {c}: "
                    f"int8 {runs.throughput(INT8):.1f}, fp16 {runs.throughput(FP16):.1f}, "
                    f"fp32 {runs.fp32_throughput:.1f} images/s"
                )
            details["routing"][spec.name], routed, by_form = _routing(
                lean, spec, served, run, default_blob_dir(repository)
            )
            routing_ratios += [routed, by_form]
            routing_ratios.append(_kept_ratio(spec, details["routing"][spec.name]["kept"]))
            if spec.encoded:
                details["routing"][spec.name]["encoded"], encoded = _encoded_keeping(
                    url, spec, run, default_blob_dir(repository)
                )
                routing_ratios += encoded
                for ratio in encoded:
                    say(f"  {ratio.name}: {ratio.value:.2f} ({ratio.row.figures})")
            say(
                f"  {spec.name} through the router at concurrency {c}: "
                f"{routed.row.numerator.value:.1f}, direct {routed.row.denominator.value:.1f} "
                "requests/s"
            )
            if spec.prune:
                pruning_runs[spec.name] = {
                    "dense_before": served,
                    "pruned": lean(f"{spec.name}_pruned"),
                    "pruned_int8": lean(format_model(f"{spec.name}_pruned", INT8)),
                    "dense_after": lean(spec.name),
                }
                say(
                    f"  {spec.name} pruned at 0.5: "
                    f"{pruning_runs[spec.name]['pruned'].throughput:.1f}, as INT8 "
                    f"{pruning_runs[spec.name]['pruned_int8'].throughput:.1f} images/s"
                )
            if spec.cache:
                details["cache"][spec.name], cached = _cache(
                    lean, spec, server, run, default_blob_dir(repository)
                )
                cache_ratios += cached
                for ratio in cached:
                    say(f"  {ratio.name}: {ratio.value:.2f} ({ratio.row.figures})")

        # Locust between two lean measurements, like raw around served, over each protocol:
        # the two Locust users reach Triton through different client stacks.
        for protocol in ("grpc", "http"):
            details["harness"][protocol], harnessed, rows = _harness(
                server, cpu, protocol, run, out / f"locust_{protocol}"
            )
            harness_ratios.append(harnessed)
            cpu_rows += rows
            say(
                f"  harness on {HARNESS_MODEL.name} over {protocol} at {run.locust_users} "
                f"users: Locust {harnessed.row.numerator.value:.1f}, "
                f"lean {harnessed.row.denominator.value:.1f} requests/s"
            )

    precision_ratios: list[Ratio] = []
    if precision_runs:
        say("training the small CNN on the digits for the accuracy that INT8 and FP16 cost")
        accuracy, trained_as = _precision_accuracy(out)
        details["precision"]["accuracy"] = {
            "model": trained_as,
            **{fmt: report.to_dict() for fmt, report in accuracy.items()},
        }
        for model, runs in precision_runs.items():
            precision_ratios += [
                runs.ratio(model, fmt, accuracy[fmt], trained_as, c) for fmt in (INT8, FP16)
            ]
        say("training the same small CNN in fp32 and bf16, alternately")
        details["precision"]["training"], trained_in = _training_precision(out)
        precision_ratios += trained_in
        say(f"a {SEARCH_TRIALS}-trial hyperparameter search against the defaults")
        details["precision"]["search"], searched = _search_gain(out)
        precision_ratios.append(searched)
    pruning_ratios: list[Ratio] = []
    if pruning_runs:
        say("training ResNet-18 on the digits for the accuracy that pruning costs")
        cut = _pruning_accuracy(out)
        for model, measured in pruning_runs.items():
            details["pruning"][model], found = _pruning(
                model, measured, cut, repository, concurrency=c
            )
            pruning_ratios += found
    cascade_ratios: list[Ratio] = []
    if precision_runs:  # the small CNN it trained is the cascade's light model
        say(f"the cascade: the small CNN before {CASCADE_HEAVY}, both trained on the digits")
        details["cascade"][CASCADE_HEAVY], cascaded = _cascade(out, run)
        cascade_ratios.append(cascaded)
        say(f"  cascade_over_heavy: {cascaded.value:.2f} ({cascaded.row.figures})")
    result = BenchResult(
        run=run,
        ratios=(
            *served_ratios,
            *batching_ratios,
            *harness_ratios,
            *routing_ratios,
            *precision_ratios,
            *cache_ratios,
            *pruning_ratios,
            *cascade_ratios,
        ),
        cpu=tuple(cpu_rows),
        raw_cpu=tuple(raw_cpu),
        details=details,
    )
    result.write(out)
    return result


def _lean_client(url: str, run: BenchRun, shape: tuple[int, ...]) -> Lean:
    """The lean client's closed-loop measurement of one served model at the run's concurrency:
    the same input every time, or a stream of repeats. The bench's models take pixels, so
    the input is pixel levels: what the router keeps as uint8."""

    def lean(model: str, repeats: Repeats | None = None, *, pixels: bool = True) -> Measurement:
        return measure_lean(
            url,
            model,
            shape,
            concurrency=run.concurrency,
            window_s=run.window_s,
            max_s=run.max_s,
            repeats=repeats,
            pixels=pixels,
        )

    return lean


class Lean(Protocol):
    def __call__(
        self, model: str, repeats: Repeats | None = None, *, pixels: bool = True
    ) -> Measurement: ...


def _cache(
    lean: Lean, spec: BenchModel, server: TritonServer, run: BenchRun, blob_dir: Path
) -> tuple[dict[str, Any], list[Ratio]]:
    """Through the router to the cached copy against through the router to the model without
    the cache, on each stream; the hit rate from Triton's statistics over the cached run."""
    cached = f"{spec.name}_cached"
    figures: dict[str, Any] = {"concurrency": run.concurrency, "cache_mb": CACHE_MB}
    ratios = []
    for stream_name, stream in CACHE_STREAMS.items():
        try:
            off = lean(f"{spec.name}_router", repeats=stream)
            before = cache_counts(server, cached)
            on = lean(f"{cached}_router", repeats=stream)
            hits, misses = (
                a - b for a, b in zip(cache_counts(server, cached), before, strict=True)
            )
        finally:
            shutil.rmtree(blob_dir, ignore_errors=True)  # the routers keep every input
        hit_rate = hits / (hits + misses) if hits + misses else 0.0
        figures[stream_name] = {
            "repeats": dataclasses.asdict(stream),
            "on": on.to_dict(),
            "off": off.to_dict(),
            "hits": hits,
            "misses": misses,
            "hit_rate": hit_rate,
        }
        name = "cache_gain_resnet18" if stream.share else "cache_cost_unique"
        stream_text = (
            f"{stream.share:.0%} of requests repeat one of {stream.hot} images"
            if stream.share
            else "every input new"
        )
        ratios.append(
            _ratio(
                name if spec.name == "resnet18" else f"{stream_name}_{spec.name}",
                on.throughput,
                off.throughput,
                Row(
                    model=spec.name,
                    numerator=Figure(label="cache on", value=on.throughput),
                    denominator=Figure(label="cache off", value=off.throughput),
                    unit="requests/s",
                    notes=(f"{stream_text}; hit rate {hit_rate:.0%} (Triton's statistics)",),
                ),
                f"requests/s through the router, {run.concurrency} in flight, to the model "
                f"with Triton's response cache ÷ without; {stream_text}",
            )
        )
    return figures, ratios


def cache_counts(server: TritonServer, model: str) -> tuple[int, int]:
    """(cache hits, cache misses) of `model` so far, from Triton's statistics API."""
    with ServerControl(server.http_url) as control:
        stats = control.statistics(model)
    hits = sum(int(s["inference_stats"]["cache_hit"]["count"]) for s in stats)
    misses = sum(int(s["inference_stats"]["cache_miss"]["count"]) for s in stats)
    return hits, misses


def _ratio(name: str, numerator: float, denominator: float, row: Row, measured_as: str) -> Ratio:
    name = KEPT_NAMES.get(name, name)
    return Ratio(
        name=name,
        value=numerator / denominator if denominator else 0.0,
        row=row,
        measured_as=measured_as,
        target=TARGETS.get(name),
    )


def _per_second(name: str, model: str, numerator: Figure, denominator: Figure, what: str) -> Ratio:
    """A ratio of two requests/s figures of one model."""
    row = Row(model=model, numerator=numerator, denominator=denominator, unit="requests/s")
    return _ratio(name, numerator.value, denominator.value, row, what)


def _router_settings(store_url: str) -> str:
    store = "SQLite" if store_url.startswith("sqlite") else store_url.split(":", 1)[0]
    return f"prediction log on {store}, {ROUTER_KEEP.describe()} kept, top-{ROUTER_TOP_K}"


def _versions() -> dict[str, str]:
    versions = tool_versions()
    with contextlib.suppress(metadata.PackageNotFoundError):
        versions["nvidia-pytriton"] = metadata.version("nvidia-pytriton")
    return versions


def _server_version(server: TritonServer) -> dict[str, str]:
    """tritonserver's own version, from its server metadata (KServe v2 `GET /v2`)."""
    try:
        with urllib.request.urlopen(f"http://{server.http_url}/v2", timeout=5) as response:
            return {"tritonserver": str(json.load(response)["version"])}
    except (OSError, ValueError, KeyError):
        return {}


def _cpu(split: CpuSplit) -> str:
    return (
        f"{split.total_ms:.2f} ms (client {split.client_ms:.2f}, tritonserver "
        f"{split.tritonserver_ms:.2f}, stubs {split.stubs_ms:.2f}; cores {split.busy:.0%} busy)"
    )


def _checkpoint(spec: BenchModel) -> Checkpoint:
    torch.manual_seed(0)
    return Checkpoint(
        arch=spec.arch,
        labels=tuple(f"class{i}" for i in range(spec.classes)),
        preprocessing=Preprocessing(size=spec.size),
        state_dict=build(spec.arch, spec.classes).state_dict(),
    )


def _publish(spec: BenchModel, repository: Path) -> Path:
    """Export random weights as `<name>` (dynamic batching) and `<name>_nobatch` (none)."""
    checkpoint = _checkpoint(spec)
    for name in (spec.name, f"{spec.name}_nobatch"):
        if (repository / name / "1").is_dir():
            continue
        export_checkpoint(checkpoint, repository, name)
    nobatch = read_config(repository / f"{spec.name}_nobatch")
    assert nobatch is not None
    write_config(repository, dataclasses.replace(nobatch, dynamic_batching=None))
    return repository / spec.name / "1" / "model.onnx"


def _publish_reduced(spec: BenchModel, repository: Path, fp32: Path) -> None:
    """`<name>_int8` and `<name>_fp16` made from the fp32 file, for served throughput. Random
    weights have no accuracy to keep, so no gate here: `_precision_accuracy` measures what
    each precision costs on a trained model."""
    # The fp32 file takes pixels, as `export_checkpoint` serves by default.
    served = _checkpoint(spec).preprocessing.with_kind(PIXELS)
    calibration = served.to_pixels(
        np.random.default_rng(0).standard_normal((32, *spec.shape)).astype(np.float32)
    )
    makers = {
        INT8: lambda path: quantize_int8(fp32, path, calibration),
        FP16: lambda path: convert_fp16(fp32, path),
    }
    for fmt, make in makers.items():
        name = format_model(spec.name, fmt)
        if (repository / name / "1").is_dir():
            continue
        with tempfile.TemporaryDirectory(prefix="lifeloop-bench-") as tmp:
            path = make(Path(tmp) / "model.onnx")
            publish_format(
                _checkpoint(spec),
                repository,
                name,
                fmt,
                path,
                None,
                preprocessing=served,
                evaluation={"note": "random weights, for throughput only"},
                version=1,
                max_batch_size=32,
            )


PRUNE_RATIO = 0.5


def _publish_pruned(spec: BenchModel, repository: Path) -> None:
    """`<name>_pruned`: half the channels cut from the random-weight model (for throughput;
    `_pruning_accuracy` measures what the cut costs a trained model), and its INT8 copy."""
    from lifeloop.export.structure import structure_of
    from lifeloop.retrain.prune import count, cut_channels

    name = f"{spec.name}_pruned"
    if (repository / name / "1").is_dir():
        return
    checkpoint = _checkpoint(spec)
    model = checkpoint.build_model()
    example = torch.zeros(1, *spec.shape)
    before = count(model, example)
    after = count(cut_channels(model, example, PRUNE_RATIO), example)
    pruned = dataclasses.replace(
        checkpoint,
        state_dict={k: v.detach().clone() for k, v in model.state_dict().items()},
        structure=structure_of(model),
    )
    figures = {
        "pruning": {
            "ratio": PRUNE_RATIO,
            "params_before": before["params"],
            "params_after": after["params"],
            "macs_before": before["macs"],
            "macs_after": after["macs"],
        }
    }
    fp32 = export_checkpoint(pruned, repository, name, evaluation=figures).published
    served = pruned.preprocessing.with_kind(PIXELS)
    calibration = served.to_pixels(
        np.random.default_rng(0).standard_normal((32, *spec.shape)).astype(np.float32)
    )
    with tempfile.TemporaryDirectory(prefix="lifeloop-bench-") as tmp:
        path = quantize_int8(fp32.path / "model.onnx", Path(tmp) / "model.onnx", calibration)
        publish_format(
            pruned,
            repository,
            format_model(name, INT8),
            INT8,
            path,
            None,
            preprocessing=served,
            evaluation={**figures, "note": "random weights, for throughput only"},
            version=1,
            max_batch_size=32,
        )


def _pruning_accuracy(out: Path) -> Any:
    """The held-out top-1 of a ResNet-18 trained on the digits at 32x32, before and after the
    bench's cut and a fine-tune (the gate opened wide: the bench reports, `lifeloop prune`
    refuses)."""
    from lifeloop.retrain import train, write_digits
    from lifeloop.retrain.prune import PruneSettings, prune

    work = out / "pruning"
    shutil.rmtree(work, ignore_errors=True)
    digits = write_digits(work / "digits")
    trained = train(
        digits.root,
        arch="resnet18",
        epochs=ACCURACY_EPOCHS,
        input_size=32,
        out=work / "resnet18.pt",
        progress=False,
    )
    wide = QualityGate(max_accuracy_drop=1.0, min_agreement=0.0)
    settings = PruneSettings(ratio=PRUNE_RATIO, epochs=ACCURACY_EPOCHS, gate=wide)
    return prune(trained.checkpoint, digits.root, work / "pruned.pt", settings, progress=False)


def _pruning(
    model: str,
    runs: dict[str, Measurement],
    cut: Any,
    repository: Path,
    *,
    concurrency: int,
) -> tuple[dict[str, Any], list[Ratio]]:
    """pruned fp32 and pruned INT8 over the dense fp32 figures around them, with the MACs cut
    (from the served version's manifest) and the top-1 change on the trained model."""
    from lifeloop.repository import Manifest

    dense = (runs["dense_before"].throughput + runs["dense_after"].throughput) / 2
    served = Manifest.read(repository / f"{model}_pruned" / "1").evaluation["pruning"]
    macs_cut = served["macs_before"] / served["macs_after"]
    report = cut.report
    change = (report.accuracy - report.fp32_accuracy) * 100
    accuracy_note = (
        f"top-1 {report.fp32_accuracy:.4f} -> {report.accuracy:.4f} ({change:+.2f} points) on "
        f"{report.held_out} held-out digits, ResNet-18 at 32x32 pruned at {PRUNE_RATIO} and "
        f"fine-tuned {ACCURACY_EPOCHS} epochs"
    )
    figures = {
        "concurrency": concurrency,
        "ratio": PRUNE_RATIO,
        "macs": [served["macs_before"], served["macs_after"]],
        "params": [served["params_before"], served["params_after"]],
        "macs_cut": macs_cut,
        "accuracy": report.to_dict(),
        **{name: m.to_dict() for name, m in runs.items()},
    }
    ratios = [
        _ratio(
            f"{name}_over_dense_{model}" if name == "pruned" else "pruned_int8_over_dense_fp32",
            runs[name].throughput,
            dense,
            Row(
                model=model,
                numerator=Figure(label=label, value=runs[name].throughput),
                denominator=Figure(label="dense fp32", value=dense),
                unit="images/s",
                notes=(f"MACs cut {macs_cut:.2f}x", accuracy_note),
            ),
            f"served images/s of {model} with half its channels removed ({label}) ÷ the dense "
            f"fp32 model before and after, {concurrency} in flight",
        )
        for name, label in (("pruned", "pruned fp32"), ("pruned_int8", "pruned INT8"))
    ]
    return figures, ratios


def _cascade(out: Path, run: BenchRun) -> tuple[dict[str, Any], Ratio]:
    """The router in front of CASCADE_HEAVY trained here on the digits, with the cascade off,
    on at the calibrated threshold, and off again, on a stream of the held-out digits; the
    light model is the small CNN the precision section trained on the same split. Both take
    pixels at 32x32."""
    from lifeloop.client import LifeloopClient
    from lifeloop.datasets import load_arrays
    from lifeloop.export.checkpoint import load as load_checkpoint
    from lifeloop.retrain import train, write_digits
    from lifeloop.rollout import Rollout
    from lifeloop.rollout.cascade import calibrate, measure
    from lifeloop.store import Store

    work = out / "cascade"
    shutil.rmtree(work, ignore_errors=True)
    repository = work / "model_repository"
    digits = write_digits(work / "digits")
    heavy = train(
        digits.root,
        arch=CASCADE_HEAVY,
        epochs=CASCADE_HEAVY_EPOCHS,
        input_size=32,
        out=work / f"{CASCADE_HEAVY}.pt",
        progress=False,
    ).checkpoint
    light = load_checkpoint(out / "precision" / "small_cnn.pt")
    export_checkpoint(heavy, repository, "heavy")
    export_checkpoint(light, repository, "light")
    install_router(
        repository,
        "heavy",
        router="heavy_router",
        feedback="heavy_feedback",
        keep=ROUTER_KEEP,
        top_k=ROUTER_TOP_K,
    )
    _, held = digits.split()  # the split the small CNN was held out on too
    held_dir = work / "held_out"
    for sample in held:
        target = held_dir / heavy.labels[sample.label]
        target.mkdir(parents=True, exist_ok=True)
        shutil.copy(sample.path, target / sample.path.name)
    pre = heavy.preprocessing.with_kind(PIXELS)
    images, _ = load_arrays(held, pre)
    stream = Cycle(images)
    config = ServerConfig.on_free_ports(repository, log_file=work / "tritonserver.log")
    with TritonServer(config) as server, Store.for_repository(repository) as store:

        def routed() -> Measurement:
            try:
                return measure_lean(
                    server.grpc_url,
                    "heavy_router",
                    pre.input_shape,
                    concurrency=run.concurrency,
                    window_s=run.window_s,
                    max_s=run.max_s,
                    repeats=stream,
                )
            finally:
                shutil.rmtree(default_blob_dir(repository), ignore_errors=True)

        with LifeloopClient(server.http_url, "http") as client:
            outcomes = measure(client, held_dir, heavy=("heavy", 1), light=("light", 1))
        found = calibrate(outcomes, CASCADE_MAX_DROP)
        if found.chosen is None:
            raise LoadTestError(
                f"no cascade threshold keeps the digits within {CASCADE_MAX_DROP} points"
            )
        rollout = Rollout(repository, store, router="heavy_router", server_url=server.http_url)
        off_before = routed()
        rollout.cascade("light", found.chosen.threshold, reason="bench")
        on = routed()
        rollout.cascade_off(reason="bench")
        off_after = routed()
    off = (off_before.throughput + off_after.throughput) / 2
    chosen = found.chosen
    change = 100 * (chosen.accuracy - found.heavy_accuracy)
    figures = {
        "concurrency": run.concurrency,
        "max_drop": CASCADE_MAX_DROP,
        "calibration": dataclasses.asdict(found),
        "held_out": len(held),
        "on": on.to_dict(),
        "off": {"throughput": off, "before": off_before.to_dict(), "after": off_after.to_dict()},
    }
    ratio = _ratio(
        "cascade_over_heavy",
        on.throughput,
        off,
        Row(
            model=CASCADE_HEAVY,
            numerator=Figure(label="cascade", value=on.throughput),
            denominator=Figure(label="heavy only", value=off),
            unit="requests/s",
            notes=(
                f"threshold {chosen.threshold:.4g}: {chosen.light_fraction:.0%} answered by the "
                f"small CNN; top-1 {found.heavy_accuracy:.4f} -> {chosen.accuracy:.4f} "
                f"({change:+.2f} points) on {len(held)} held-out digits",
                "heavy only is the mean of the runs before and after",
            ),
        ),
        f"requests/s through the router to {CASCADE_HEAVY} (32x32, trained "
        f"{CASCADE_HEAVY_EPOCHS} epochs on the digits) with the small CNN cascaded before it "
        f"at the calibrated threshold ÷ without, one held-out digit per request, "
        f"{run.concurrency} in flight",
    )
    return figures, ratio


@dataclasses.dataclass(frozen=True)
class _PrecisionRuns:
    """The served measurements of one model as INT8, FP16 and fp32, taken in turn."""

    fp32: tuple[Measurement, ...]  # one more than the rounds: around every round
    reduced: dict[str, tuple[Measurement, ...]]  # by format, one a round

    @property
    def fp32_throughput(self) -> float:
        return float(np.mean([m.throughput for m in self.fp32]))

    def throughput(self, fmt: str) -> float:
        return float(np.mean([m.throughput for m in self.reduced[fmt]]))

    def per_round(self, fmt: str) -> list[float]:
        """Each round against the mean of the fp32 figures around it."""
        around = [(a.throughput + b.throughput) / 2 for a, b in itertools.pairwise(self.fp32)]
        return [
            m.throughput / ref if ref else 0.0
            for m, ref in zip(self.reduced[fmt], around, strict=True)
        ]

    def to_dict(self, concurrency: int) -> dict[str, Any]:
        figures: dict[str, Any] = {
            "concurrency": concurrency,
            "rounds": len(self.fp32) - 1,
            "fp32": {
                "throughput": self.fp32_throughput,
                "runs": [m.to_dict() for m in self.fp32],
            },
            "ratios": {_short(fmt): float(np.mean(self.per_round(fmt))) for fmt in self.reduced},
        }
        for fmt in self.reduced:
            figures[_short(fmt)] = {
                "throughput": self.throughput(fmt),
                "runs": [m.to_dict() for m in self.reduced[fmt]],
                "ratio_per_round": self.per_round(fmt),
            }
        return figures

    def ratio(
        self, model: str, fmt: str, quality: QualityReport, trained_as: str, concurrency: int
    ) -> Ratio:
        rounds = self.per_round(fmt)
        change = quality.accuracy_drop * -100 + 0.0  # + 0.0: no "-0.00"
        name = f"{_short(fmt)}_over_fp32_{model}"
        return Ratio(
            name=name,
            value=float(np.mean(rounds)),
            row=Row(
                model=model,
                numerator=Figure(label=_short(fmt), value=self.throughput(fmt)),
                denominator=Figure(label="fp32", value=self.fp32_throughput),
                unit="images/s",
                notes=(
                    "rounds " + ", ".join(f"{r:.2f}" for r in rounds),
                    f"top-1 {change:+.2f} points, {quality.agreement:.1%} agreement ({trained_as})",
                ),
            ),
            measured_as=f"served images/s as {_short(fmt).upper()} ÷ fp32, {concurrency} in "
            f"flight, the mean of {len(rounds)} rounds each against the fp32 runs around it",
            target=TARGETS.get(name),
        )


def _short(fmt: str) -> str:
    return {INT8: "int8", FP16: "fp16"}[fmt]


def _precision(
    lean: Callable[[str], Measurement], spec: BenchModel, fp32: Measurement, rounds: int
) -> _PrecisionRuns:
    """INT8, FP16 and fp32 in turn, `rounds` times, after the served fp32 figure. Each
    round's ratio divides by the mean of the fp32 figures around it, and the ratio is the mean
    of the rounds: on a shared machine the throughput drifts by more than 10% over the minutes
    a single before/after pair spans (measured: INT8 at 1.35x in one pair, 1.75x in the next),
    and alternating cancels the drift."""
    fp32_runs = [fp32]
    runs: dict[str, list[Measurement]] = {INT8: [], FP16: []}
    for _ in range(rounds):
        for fmt in (INT8, FP16):
            runs[fmt].append(lean(format_model(spec.name, fmt)))
        fp32_runs.append(lean(spec.name))
    return _PrecisionRuns(
        fp32=tuple(fp32_runs), reduced={fmt: tuple(found) for fmt, found in runs.items()}
    )


def _precision_accuracy(out: Path) -> tuple[dict[str, QualityReport], str]:
    """Top-1 of the INT8 and FP16 exports against fp32 on held-out digits, for a small CNN
    trained here, and what was trained. The gate is opened wide: the bench reports,
    `lifeloop export` refuses."""
    from lifeloop.export.calibration import precision_data
    from lifeloop.retrain import train, write_digits

    work = out / "precision"
    shutil.rmtree(work, ignore_errors=True)
    digits = write_digits(work / "digits")
    trained = train(
        digits.root,
        arch="small_cnn",
        epochs=ACCURACY_EPOCHS,
        out=work / "small_cnn.pt",
        progress=False,
    )
    wide = QualityGate(max_accuracy_drop=1.0, min_agreement=0.0)
    result = export_checkpoint(
        trained.checkpoint,
        work / "model_repository",
        "digits",
        formats=(ONNX, INT8, FP16),
        precision=precision_data(trained.checkpoint, gate=wide),
    )
    size = trained.checkpoint.preprocessing.size
    trained_as = (
        f"{trained.checkpoint.arch} trained {ACCURACY_EPOCHS} epochs on the digits, {size}x{size}"
    )
    return dict(result.quality), trained_as


def _training_precision(out: Path) -> tuple[dict[str, Any], list[Ratio]]:
    """Training speed in bf16 autocast over fp32 on this CPU, and the held-out top-1 change:
    the small CNN `_precision_accuracy` trained, from scratch on the same digits, fp32 and
    bf16 alternately (fp32, bf16, fp32, bf16, fp32) against the machine's drift."""
    from lifeloop.datasets import load_arrays, scan
    from lifeloop.export.checkpoint import load
    from lifeloop.retrain.precision import FP32, choose, cpu_bf16_flags
    from lifeloop.retrain.training import train_in_each

    if not cpu_bf16_flags():
        return {"note": "this CPU has neither avx512_bf16 nor AMX: bf16 is not measured"}, []
    work = out / "precision"
    checkpoint = load(work / "small_cnn.pt")
    folder = scan(work / "digits")
    train_set, held = folder.split(0.2, 0)
    x, y = load_arrays(train_set, checkpoint.preprocessing)
    x_held, y_held = load_arrays(held, checkpoint.preprocessing)
    bf16 = choose("bf16")
    runs = train_in_each(
        checkpoint.arch,
        x,
        y,
        x_held,
        y_held,
        folder.labels,
        precisions=(FP32, bf16, FP32, bf16, FP32),
        epochs=TRAINING_EPOCHS,
    )

    def mean(name: str, key: str) -> float:
        return float(np.mean([r[key] for r in runs if r["precision"] == name]))

    fp32_rate, bf16_rate = mean("fp32", "images_per_s"), mean("bf16", "images_per_s")
    change = (mean("bf16", "accuracy") - mean("fp32", "accuracy")) * 100
    row = Row(
        model=checkpoint.arch,
        numerator=Figure(label="bf16 autocast", value=bf16_rate),
        denominator=Figure(label="fp32", value=fp32_rate),
        unit="training images/s",
        notes=(
            f"held-out top-1 {mean('fp32', 'accuracy'):.4f} -> {mean('bf16', 'accuracy'):.4f} "
            f"({change:+.2f} points) on {len(x_held)} digits, {TRAINING_EPOCHS} epochs",
            bf16.why,
        ),
    )
    ratio = _ratio(
        f"bf16_over_fp32_training_{checkpoint.arch}",
        bf16_rate,
        fp32_rate,
        row,
        f"training images/s of {checkpoint.arch} on the digits in bf16 autocast ÷ fp32, "
        "alternately in one process",
    )
    return {"runs": runs, "accuracy_change_points": change}, [ratio]


def _search_gain(out: Path) -> tuple[dict[str, Any], Ratio]:
    """`train --search`'s best of a few trials over the defaults (its first trial), both
    scored on the held-out digits no trial was chosen by."""
    from lifeloop.retrain.search import describe, search_train

    work = out / "precision"
    found = search_train(
        work / "digits",
        arch="small_cnn",
        out=work / "searched.pt",
        trials=SEARCH_TRIALS,
        max_epochs=ACCURACY_EPOCHS,
        storage=f"sqlite:///{work / 'search.optuna.db'}",
    )
    row = Row(
        model="small_cnn",
        numerator=Figure(label=f"best of {SEARCH_TRIALS}", value=found.trained.holdout_accuracy),
        denominator=Figure(label="defaults", value=found.defaults_held_out),
        unit="held-out top-1",
        notes=(f"best: {describe(found.best)}", f"{found.gain:+.2f} points"),
    )
    ratio = _ratio(
        "search_over_defaults_small_cnn",
        found.trained.holdout_accuracy,
        found.defaults_held_out,
        row,
        f"held-out top-1 of `train --search {SEARCH_TRIALS}`'s best trial ÷ the defaults' "
        f"(its first trial), at most {ACCURACY_EPOCHS} epochs each",
    )
    figures = {"best": found.best, "trials": found.trials, "gain_points": found.gain}
    return figures, ratio


def _routing(
    lean: Lean,
    spec: BenchModel,
    direct: Measurement,
    run: BenchRun,
    blob_dir: Path,
) -> tuple[dict[str, Any], Ratio, Ratio]:
    """Through the router, then directly again; the direct figure is the mean of the one
    taken before (the served figure) and the one after. Through the router also with inputs
    that are not pixel levels (noise), which it keeps as floats: its throughput per form."""
    router = f"{spec.name}_router"
    try:
        routed = lean(router)
        kept = _kept_per_image(blob_dir)
        shutil.rmtree(blob_dir, ignore_errors=True)
        floats = lean(router, pixels=False)
        kept_floats = _kept_per_image(blob_dir)
    finally:
        # The router kept every input; ResNet-18 at 100 images/s keeps 15 MB a second as
        # uint8, and the bench needs none of it.
        shutil.rmtree(blob_dir, ignore_errors=True)
    after = lean(spec.name)
    mean_direct = (direct.throughput + after.throughput) / 2
    figures = {
        "concurrency": run.concurrency,
        "router": router,
        "settings": run.router_settings,
        "routed": routed.to_dict(),
        "kept": kept,
        "routed_floats": floats.to_dict(),
        "kept_floats": kept_floats,
        "direct": {
            "throughput": mean_direct,
            "before": direct.to_dict(),
            "after": after.to_dict(),
        },
    }
    ratio = _ratio(
        f"routed_over_direct_{spec.name}",
        routed.throughput,
        mean_direct,
        Row(
            model=spec.name,
            numerator=Figure(label="routed", value=routed.throughput),
            denominator=Figure(label="direct", value=mean_direct),
            unit="requests/s",
            notes=("direct is the mean of the runs before and after",),
        ),
        f"requests/s through the router ({run.router_settings}) ÷ the model called "
        f"directly, {run.concurrency} in flight",
    )
    by_form = _per_second(
        f"routed_uint8_over_float_{spec.name}",
        spec.name,
        Figure(label="uint8", value=routed.throughput),
        Figure(label="/".join(kept_floats["forms"]), value=floats.throughput),
        f"requests/s through the router sent pixel levels (kept as uint8) ÷ sent noise (kept "
        f"as floats), {run.concurrency} in flight",
    )
    return figures, ratio, by_form


def _kept_per_image(blob_dir: Path) -> dict[str, Any]:
    """What the router kept of the inputs it was sent: files, images, bytes on disk (npy
    headers included), bytes per image, and the forms (dtypes) the files hold."""
    files = list(blob_dir.rglob("*.npy"))
    images, data, forms = 0, 0, set()
    for path in files:
        stored = np.load(path, mmap_mode="r", allow_pickle=False)
        images += len(stored)
        data += stored.nbytes
        forms.add(str(stored.dtype))
    size = sum(path.stat().st_size for path in files)
    return {
        "files": len(files),
        "images": images,
        "bytes": size,
        "headers": size - data,
        "per_image": size / images if images else 0.0,
        "forms": sorted(forms),
    }


def _photo_crops(size: int, n: int, *, seed: int = 0) -> list[bytes]:
    """n crops of `size` x `size` from the two photographs scikit-learn ships (a temple and a
    flower, 640x427), at seeded places, as JPEG at quality 90: what a camera or a browser
    sends, not the bench's smooth synthetic images, which compress far better."""
    from PIL import Image
    from sklearn.datasets import load_sample_images

    photos = load_sample_images().images
    rng = np.random.default_rng(seed)
    crops = []
    for i in range(n):
        photo = photos[i % len(photos)]
        y = int(rng.integers(0, photo.shape[0] - size + 1))
        x = int(rng.integers(0, photo.shape[1] - size + 1))
        buffer = io.BytesIO()
        Image.fromarray(photo[y : y + size, x : x + size]).save(buffer, "JPEG", quality=90)
        crops.append(buffer.getvalue())
    return crops


def _encoded_keeping(
    url: str, spec: BenchModel, run: BenchRun, blob_dir: Path
) -> tuple[dict[str, Any], list[Ratio]]:
    """JPEG photos through `<model>_router_image` and through `<model>_image` (no router),
    in turn one per request: what the router keeps per input (the bytes sent) against the
    float32 tensor the preprocess model makes of each, and the router's throughput there."""
    crops = _photo_crops(spec.size, ENCODED_PHOTOS)

    def measure(model: str) -> Measurement:
        return measure_lean_encoded(
            url, model, crops, concurrency=run.concurrency, window_s=run.window_s, max_s=run.max_s
        )

    routed_model, direct_model = f"{spec.name}_router_image", f"{spec.name}_image"
    shutil.rmtree(blob_dir, ignore_errors=True)  # only this run's files
    try:
        routed = measure(routed_model)
        files = list(blob_dir.rglob("*.encoded.npz"))
        images, data = 0, 0
        for path in files:
            with np.load(path, allow_pickle=False) as stored:
                images += len(stored["offsets"]) - 1
                data += int(stored["offsets"][-1])
        size = sum(path.stat().st_size for path in files)
    finally:
        shutil.rmtree(blob_dir, ignore_errors=True)
    direct = measure(direct_model)
    per_image = data / max(images, 1)
    figures = {
        "photos": len(crops),
        "sent_per_image": sum(map(len, crops)) / len(crops),
        "routed": {"model": routed_model, **routed.to_dict()},
        "direct": {"model": direct_model, **direct.to_dict()},
        "kept": {
            "files": len(files),
            "images": images,
            "bytes": size,
            "headers": size - data,
            "per_image": per_image,
        },
    }
    kept = _float32_over(
        f"kept_float32_over_encoded_{spec.name}",
        spec,
        per_image,
        f"JPEG crops of scikit-learn's sample photos, quality 90: {images:,} kept as sent in "
        f"{len(files):,} files, plus {(size - data) / max(images, 1):.1f} bytes of npz index "
        "per input",
        "bytes an input takes as float32 ÷ bytes the router kept per input when JPEG photos "
        "come through its image ensemble (kept as sent; the npz index beside it)",
    )
    through = _per_second(
        f"routed_over_direct_encoded_{spec.name}",
        spec.name,
        Figure(label=routed_model, value=routed.throughput),
        Figure(label=direct_model, value=direct.throughput),
        f"requests/s of JPEG photos through the router's image ensemble (every input kept as "
        f"sent) ÷ the classifier's image ensemble, {run.concurrency} in flight",
    )
    return figures, [kept, through]


def _kept_ratio(spec: BenchModel, kept: dict[str, Any]) -> Ratio:
    """Bytes an input takes as float32 (what routers kept before) over the bytes the router
    kept per input; the npy headers, the same per file in either form, are beside it."""
    images = max(kept["images"], 1)
    return _float32_over(
        f"kept_float32_over_kept_{spec.name}",
        spec,
        (kept["bytes"] - kept["headers"]) / images,
        f"kept as {', '.join(kept['forms'])}; {kept['images']:,} inputs in "
        f"{kept['files']:,} files, plus {kept['headers'] / images:.1f} bytes of npy header "
        "per input",
        "bytes an input takes as float32 ÷ bytes the router kept per input (npy headers, "
        "the same in either form, beside it), pixel levels sent",
    )


def _float32_over(name: str, spec: BenchModel, kept: float, note: str, description: str) -> Ratio:
    """The bytes `spec`'s input takes as float32 over `kept` bytes per input."""
    tensor = 4 * int(np.prod(spec.shape))
    return _ratio(
        name,
        tensor,
        kept,
        Row(
            model=spec.name,
            numerator=Figure(label="float32", value=tensor),
            denominator=Figure(label="kept", value=kept),
            unit="bytes per input",
            notes=(note,),
        ),
        description,
    )


def _harness(
    server: TritonServer, cpu: CpuMeter, protocol: str, run: BenchRun, out: Path
) -> tuple[dict[str, Any], Ratio, list[CpuRow]]:
    """Lean, Locust, lean again on the harness model over one protocol; the lean figure is the
    mean of the two that bracket Locust's. The first lean run's CPU split gives what the
    client costs per request over this protocol."""
    url = server.grpc_url if protocol == "grpc" else server.http_url
    model, users = HARNESS_MODEL.name, run.locust_users

    def lean() -> Measurement:
        return measure_lean(
            url,
            model,
            HARNESS_MODEL.shape,
            concurrency=users,
            protocol=protocol,
            window_s=run.window_s,
            max_s=run.max_s,
        )

    with cpu.span(server.metrics_url, model) as split:
        before = lean()
    with cpu.span(server.metrics_url, model) as served_split:
        locust = _locust(server, protocol, users, run.window_s, run.max_s, out)
    # The span's client is this process, idle while Locust runs in its own: the client's
    # share is the Locust process's own CPU over its measured windows, from its report. The
    # span's wall time includes Locust starting up, so no share of the cores is given.
    lean_row = CpuRow(measurement=f"{model} lean {protocol}", split=split[0])
    locust_row = CpuRow(
        measurement=f"{model} Locust {protocol}",
        split=dataclasses.replace(served_split[0], client_ms=locust.pop("generator_cpu_ms")),
        busy_known=False,
    )
    locust["cpu"] = locust_row.to_dict()
    after = lean()
    mean_lean = (before.throughput + after.throughput) / 2
    figures = {
        "model": model,
        "users": users,
        "protocol": protocol,
        "lean": {
            "throughput": mean_lean,
            "before": {**before.to_dict(), "cpu": lean_row.to_dict()},
            "after": after.to_dict(),
        },
        "locust": locust,
    }
    ratio = _ratio(
        f"locust_over_lean_{protocol}",
        locust["throughput"],
        mean_lean,
        Row(
            model=model,
            numerator=Figure(label="Locust", value=locust["throughput"]),
            denominator=Figure(label="lean", value=mean_lean),
            unit="requests/s",
            notes=(f"over {protocol}; lean is the mean of the runs before and after",),
        ),
        f"Locust requests/s ÷ the lean client's over {protocol}, {users} users, same server",
    )
    return figures, ratio, [lean_row, locust_row]


def _locust(
    server: TritonServer, protocol: str, users: int, window_s: float, max_s: float, out: Path
) -> dict[str, Any]:
    from lifeloop.loadtest.config import LoadTestConfig
    from lifeloop.loadtest.runner import run_loadtest

    config = LoadTestConfig(
        url=server.grpc_url if protocol == "grpc" else server.http_url,
        model="small_cnn",
        protocol=protocol,
        users=users,
        spawn_rate=float(users),
        duration_s=max_s + window_s,
        window_s=window_s,
        metrics_url=server.metrics_url,
        out=str(out),
    )
    report = run_loadtest(config)
    return {
        "throughput": report["throughput_rps"],
        "latency_ms": report["latency_ms"],
        "requests": report["requests"],
        "failures": report["failures"],
        "stable": report["stable"],
        "generator_cpu_ms": report["load_generator"]["cpu_ms_per_request"],
        "report": str(out / "report.json"),
    }
