"""`lifeloop bench`: side-by-side figures from one run on one machine, and their ratios.

- raw vs served: in-process onnxruntime at its best batch size (the practical ceiling) against
  the same ONNX file served by Triton with dynamic batching under saturating concurrency;
- batching on vs off: the same model served with and without the dynamic batcher;
- harness vs client: Locust's throughput against the lean asyncio client's, same server;
- routed vs direct: the same model through lifeloop's router (BLS, prediction log, every
  input kept) against the model called directly;
- precision: ResNet-18 served as INT8 and as FP16 against fp32, each next to the top-1 change
  that precision costs a trained model (the small CNN trained on the digits).

Every figure is taken under perf_analyzer's stability rule; ratios, not absolute times, are
what carry across machines. Beside the batching and harness figures, the CPU each request
cost the client, tritonserver and the python backend's stubs (`cpu.py`), and raw
onnxruntime's CPU per image: where client and server share cores, those bound the ratios."""

from __future__ import annotations

import dataclasses
import itertools
import json
import os
import platform
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lifeloop.export import Checkpoint, build, export_checkpoint
from lifeloop.export.formats import FP16, INT8, ONNX, format_model
from lifeloop.export.pipeline import publish_format
from lifeloop.export.quantize import QualityGate, convert_fp16, quantize_int8
from lifeloop.loadtest.cpu import CpuMeter, CpuSplit
from lifeloop.loadtest.lean import measure_lean, measure_raw, raw_cpu_ms_per_sample
from lifeloop.loadtest.stats import Measurement
from lifeloop.preprocessing import Preprocessing
from lifeloop.repository import read_config, write_config
from lifeloop.serve import ServerConfig, TritonServer
from lifeloop.serve.install import install_router
from lifeloop.store.blobs import default_blob_dir

TARGETS = {
    "served_over_raw_resnet18": 0.90,
    "batching_gain_small_cnn": 3.0,
    "locust_over_lean": 0.90,
    "locust_over_lean_http": 0.90,
    "routed_over_direct": 0.90,
    "int8_over_fp32_resnet18": 1.5,
}


@dataclasses.dataclass(frozen=True, kw_only=True)
class BenchModel:
    name: str
    arch: str
    size: int
    classes: int
    raw_batches: tuple[int, ...]

    @property
    def shape(self) -> tuple[int, int, int]:
        return (3, self.size, self.size)


MODELS = (
    BenchModel(
        name="resnet18",
        arch="resnet18",
        size=224,
        classes=1000,
        raw_batches=(1, 8, 16),
    ),
    BenchModel(
        name="small_cnn",
        arch="small_cnn",
        size=32,
        classes=10,
        raw_batches=(1, 32, 128),
    ),
)


def run_bench(
    out: Path,
    *,
    window_s: float = 2.0,
    max_s: float = 24.0,
    locust_users: int = 32,
    say: Callable[[str], None] = print,
) -> dict[str, Any]:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    repository = out / "model_repository"
    results: dict[str, Any] = {
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "python": platform.python_version(),
        },
        "method": f"closed loop; windows of {window_s:g} s or more; stable when the last 3 "
        "agree within 10%; "
        f"at most {max_s:g} s per figure",
        "raw": {},
        "served": {},
        "batching": {},
        "harness": {},
        "routing": {},
        "precision": {},
    }
    onnx = {}
    for spec in MODELS:
        say(f"exporting {spec.name} ({spec.arch} at {spec.size}x{spec.size}, random weights)")
        onnx[spec.name] = str(_publish(spec, repository))
        if spec.name == "resnet18":
            _publish_reduced(spec, repository, Path(onnx[spec.name]))
        install_router(
            repository, spec.name, router=f"{spec.name}_router", feedback=f"{spec.name}_feedback"
        )

    config = ServerConfig.on_free_ports(repository, log_file=out / "tritonserver.log")
    with TritonServer(config) as server:
        url = server.grpc_url
        assert server.process is not None
        cpu = CpuMeter(server.process.pid)
        for spec in MODELS:
            # Raw at each batch size, then served, then raw again at the best batch size: the
            # ceiling is the mean of the two raw figures that bracket the served one, so slow
            # drift of a shared machine cancels instead of landing on one side of the ratio.
            by_batch = {}
            for batch in spec.raw_batches:
                m = measure_raw(onnx[spec.name], spec.shape, batch, window_s=window_s, max_s=max_s)
                by_batch[str(batch)] = m.to_dict(per_sample=batch)
                say(
                    f"  raw onnxruntime {spec.name} batch {batch}: "
                    f"{by_batch[str(batch)]['throughput']:.1f} images/s"
                )
            best = max(by_batch, key=lambda b: by_batch[b]["throughput"])
            # Saturating concurrency is 32 in flight: the batcher then forms full batches. The
            # same measurement is the "on" side of the batching comparison.
            with cpu.span(server.metrics_url, spec.name) as on_cpu:
                served = measure_lean(
                    url, spec.name, spec.shape, concurrency=32, window_s=window_s, max_s=max_s
                )
            again = measure_raw(
                onnx[spec.name], spec.shape, int(best), window_s=window_s, max_s=max_s
            )
            after = again.throughput * int(best)
            ceiling = (by_batch[best]["throughput"] + after) / 2
            results["raw"][spec.name] = {
                "best_batch": int(best),
                "images_per_s": ceiling,
                "before_served": by_batch[best]["throughput"],
                "after_served": after,
                "by_batch": by_batch,
                "cpu_ms_per_image": raw_cpu_ms_per_sample(onnx[spec.name], spec.shape, int(best)),
            }
            results["served"][spec.name] = {"concurrency": 32, **served.to_dict()}
            say(
                f"  served {spec.name} (dynamic batching, concurrency 32): "
                f"{served.throughput:.1f} images/s; raw ceiling {ceiling:.1f} (batch {best})"
            )
            with cpu.span(server.metrics_url, f"{spec.name}_nobatch") as off_cpu:
                off = measure_lean(
                    url,
                    f"{spec.name}_nobatch",
                    spec.shape,
                    concurrency=32,
                    window_s=window_s,
                    max_s=max_s,
                )
            results["batching"][spec.name] = {
                "concurrency": 32,
                "on": {**served.to_dict(), "cpu": on_cpu[0].to_dict()},
                "off": {**off.to_dict(), "cpu": off_cpu[0].to_dict()},
            }
            say(
                f"  {spec.name} at concurrency 32: batching on {served.throughput:.1f}, "
                f"off {off.throughput:.1f} requests/s; CPU per request: on {_cpu(on_cpu[0])}, "
                f"off {_cpu(off_cpu[0])}"
            )
            if spec.name == "resnet18":
                results["precision"][spec.name] = _precision(url, spec, served, window_s, max_s)
                figures = results["precision"][spec.name]
                say(
                    f"  {spec.name} served at concurrency 32: "
                    f"int8 {figures['int8']['throughput']:.1f}, "
                    f"fp16 {figures['fp16']['throughput']:.1f}, "
                    f"fp32 {figures['fp32']['throughput']:.1f} images/s"
                )
            results["routing"][spec.name] = _routing(
                url, spec, served, window_s, max_s, default_blob_dir(repository)
            )
            routing = results["routing"][spec.name]
            say(
                f"  {spec.name} through the router at concurrency 32: "
                f"{routing['routed']['throughput']:.1f}, direct "
                f"{routing['direct']['throughput']:.1f} requests/s"
            )

        # Locust between two lean measurements, like raw around served, over each protocol:
        # the two Locust users reach Triton through different client stacks.
        for protocol in ("grpc", "http"):
            results["harness"][protocol] = _harness(
                server, cpu, protocol, locust_users, window_s, max_s, out / f"locust_{protocol}"
            )
            figures = results["harness"][protocol]
            say(
                f"  harness on small_cnn over {protocol} at {locust_users} users: "
                f"Locust {figures['locust']['throughput']:.1f}, "
                f"lean {figures['lean']['throughput']:.1f} requests/s"
            )

    say("training the small CNN on the digits for the accuracy that INT8 and FP16 cost")
    results["precision"]["accuracy"] = _precision_accuracy(out)
    raw, served, batching = results["raw"], results["served"], results["batching"]
    results["ratios"] = {
        "served_over_raw_resnet18": served["resnet18"]["throughput"]
        / raw["resnet18"]["images_per_s"],
        "served_over_raw_small_cnn": served["small_cnn"]["throughput"]
        / raw["small_cnn"]["images_per_s"],
        "batching_gain_resnet18": _ratio(batching["resnet18"]["on"], batching["resnet18"]["off"]),
        "batching_gain_small_cnn": _ratio(
            batching["small_cnn"]["on"], batching["small_cnn"]["off"]
        ),
        "locust_over_lean": _harness_ratio(results["harness"]["grpc"]),
        "locust_over_lean_http": _harness_ratio(results["harness"]["http"]),
        "routed_over_direct": _routing_ratio(results["routing"]["resnet18"]),
        "routed_over_direct_small_cnn": _routing_ratio(results["routing"]["small_cnn"]),
        "int8_over_fp32_resnet18": _precision_ratio(results["precision"]["resnet18"], "int8"),
        "fp16_over_fp32_resnet18": _precision_ratio(results["precision"]["resnet18"], "fp16"),
    }
    results["targets"] = {
        name: {
            "target": target,
            "measured": results["ratios"][name],
            "met": results["ratios"][name] >= target,
        }
        for name, target in TARGETS.items()
    }
    (out / "bench.json").write_text(json.dumps(results, indent=2) + "\n")
    return results


def _cpu(split: CpuSplit) -> str:
    return (
        f"{split.total_ms:.2f} ms (client {split.client_ms:.2f}, tritonserver "
        f"{split.tritonserver_ms:.2f}, stubs {split.stubs_ms:.2f}; cores {split.busy:.0%} busy)"
    )


def _ratio(numerator: dict[str, Any], denominator: dict[str, Any]) -> float:
    return numerator["throughput"] / denominator["throughput"] if denominator["throughput"] else 0.0


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
    calibration = np.random.default_rng(0).standard_normal((32, *spec.shape)).astype(np.float32)
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
                evaluation={"note": "random weights, for throughput only"},
                version=1,
                server_url=None,
                max_batch_size=32,
            )


PRECISION_ROUNDS = 2


def _precision(
    url: str, spec: BenchModel, fp32: Measurement, window_s: float, max_s: float
) -> dict[str, Any]:
    """INT8, FP16 and fp32 in turn, `PRECISION_ROUNDS` times, after the served fp32 figure.
    Each round's ratio divides by the mean of the fp32 figures around it, and the ratio is
    the mean of the rounds: on a shared machine the throughput drifts by more than 10% over
    the minutes a single before/after pair spans (measured: INT8 at 1.35x in one pair, 1.75x
    in the next), and alternating cancels the drift."""

    def measure(name: str) -> Measurement:
        return measure_lean(url, name, spec.shape, concurrency=32, window_s=window_s, max_s=max_s)

    fp32_runs = [fp32]
    runs: dict[str, list[Measurement]] = {INT8: [], FP16: []}
    for _ in range(PRECISION_ROUNDS):
        for fmt in (INT8, FP16):
            runs[fmt].append(measure(format_model(spec.name, fmt)))
        fp32_runs.append(measure(spec.name))
    around = [(a.throughput + b.throughput) / 2 for a, b in itertools.pairwise(fp32_runs)]
    figures: dict[str, Any] = {
        "concurrency": 32,
        "rounds": PRECISION_ROUNDS,
        "fp32": {
            "throughput": float(np.mean([m.throughput for m in fp32_runs])),
            "runs": [m.to_dict() for m in fp32_runs],
        },
        "ratios": {},
    }
    for fmt, key in ((INT8, "int8"), (FP16, "fp16")):
        per_round = [
            m.throughput / ref if ref else 0.0 for m, ref in zip(runs[fmt], around, strict=True)
        ]
        figures[key] = {
            "throughput": float(np.mean([m.throughput for m in runs[fmt]])),
            "runs": [m.to_dict() for m in runs[fmt]],
            "ratio_per_round": per_round,
        }
        figures["ratios"][key] = float(np.mean(per_round))
    return figures


def _precision_ratio(figures: dict[str, Any], fmt: str) -> float:
    return float(figures["ratios"][fmt])


def _precision_accuracy(out: Path) -> dict[str, Any]:
    """Top-1 of the INT8 and FP16 exports against fp32 on held-out digits, for a small CNN
    trained here. The gate is opened wide: the bench reports, `lifeloop export` refuses."""
    from lifeloop.export.calibration import precision_data
    from lifeloop.retrain import train, write_digits

    work = out / "precision"
    shutil.rmtree(work, ignore_errors=True)
    digits = write_digits(work / "digits")
    trained = train(
        digits.root, arch="small_cnn", epochs=3, out=work / "small_cnn.pt", progress=False
    )
    wide = QualityGate(max_accuracy_drop=1.0, min_agreement=0.0)
    result = export_checkpoint(
        trained.checkpoint,
        work / "model_repository",
        "digits",
        formats=(ONNX, INT8, FP16),
        precision=precision_data(trained.checkpoint, gate=wide),
    )
    return {
        "model": "small_cnn trained 3 epochs on the digits, 32x32",
        **{fmt: report.to_dict() for fmt, report in result.quality.items()},
    }


def _routing(
    url: str,
    spec: BenchModel,
    direct: Measurement,
    window_s: float,
    max_s: float,
    blob_dir: Path,
) -> dict[str, Any]:
    """Through the router, then directly again; the direct figure is the mean of the one
    taken before (the served figure) and the one after."""
    try:
        routed = measure_lean(
            url, f"{spec.name}_router", spec.shape, concurrency=32, window_s=window_s, max_s=max_s
        )
    finally:
        # The router kept every input (its default); ResNet-18 at 50 images/s keeps 15 MB a
        # second, and the bench needs none of it.
        shutil.rmtree(blob_dir, ignore_errors=True)
    after = measure_lean(url, spec.name, spec.shape, concurrency=32, window_s=window_s, max_s=max_s)
    return {
        "concurrency": 32,
        "router": f"{spec.name}_router",
        "settings": "prediction log on SQLite, every input kept, top-5",
        "routed": routed.to_dict(),
        "direct": {
            "throughput": (direct.throughput + after.throughput) / 2,
            "before": direct.to_dict(),
            "after": after.to_dict(),
        },
    }


def _routing_ratio(routing: dict[str, Any]) -> float:
    direct = routing["direct"]["throughput"]
    return routing["routed"]["throughput"] / direct if direct else 0.0


def _harness_ratio(harness: dict[str, Any]) -> float:
    lean = harness["lean"]["throughput"]
    return harness["locust"]["throughput"] / lean if lean else 0.0


def _harness(
    server: TritonServer,
    cpu: CpuMeter,
    protocol: str,
    users: int,
    window_s: float,
    max_s: float,
    out: Path,
) -> dict[str, Any]:
    """Lean, Locust, lean again on small_cnn over one protocol; the lean figure is the mean of
    the two that bracket Locust's. The first lean run's CPU split gives what the client costs
    per request over this protocol."""
    url = server.grpc_url if protocol == "grpc" else server.http_url
    shape = MODELS[1].shape

    def lean() -> Any:
        return measure_lean(
            url,
            "small_cnn",
            shape,
            concurrency=users,
            protocol=protocol,
            window_s=window_s,
            max_s=max_s,
        )

    with cpu.span(server.metrics_url, "small_cnn") as split:
        before = lean()
    with cpu.span(server.metrics_url, "small_cnn") as served_split:
        locust = _locust(server, protocol, users, window_s, max_s, out)
    # The span's client is this process, idle while Locust runs in its own: the client's
    # share is the Locust process's own CPU over its measured windows, from its report. The
    # span's wall time includes Locust starting up, so no share of the cores is given.
    split_locust = dataclasses.replace(served_split[0], client_ms=locust.pop("generator_cpu_ms"))
    locust["cpu"] = {**split_locust.to_dict(), "busy": None}
    after = lean()
    return {
        "model": "small_cnn",
        "users": users,
        "protocol": protocol,
        "lean": {
            "throughput": (before.throughput + after.throughput) / 2,
            "before": {**before.to_dict(), "cpu": split[0].to_dict()},
            "after": after.to_dict(),
        },
        "locust": locust,
    }


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
