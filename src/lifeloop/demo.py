"""`lifeloop demo`: the whole skeleton on the embedded defaults, end to end, in a few minutes.

Digits -> train v1 -> export and publish v1 -> local Triton -> classify the held-out set over
HTTP and gRPC -> publish v2 while traffic flows -> check the switch lost no request -> stop.
"""

from __future__ import annotations

import json
import shutil
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console
from rich.table import Table

from lifeloop.client import ClientError, LifeloopClient
from lifeloop.export import export_checkpoint
from lifeloop.retrain import train, write_digits
from lifeloop.retrain.datasets import load_arrays
from lifeloop.serve import ServerConfig, TritonServer

MODEL = "classifier"


@dataclass
class Traffic:
    """Requests sent by background senders while a new version is published."""

    requests: int = 0
    failures: list[str] = field(default_factory=list)
    versions: list[int] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def record(self, version: int | None, error: str | None = None) -> None:
        with self.lock:
            self.requests += 1
            if error is not None:
                self.failures.append(error)
            elif version is not None:
                self.versions.append(version)


def percentiles(latencies_ms: list[float]) -> dict[str, float]:
    if not latencies_ms:
        return {"p50": 0.0, "p99": 0.0}
    values = np.asarray(latencies_ms)
    return {"p50": float(np.percentile(values, 50)), "p99": float(np.percentile(values, 99))}


def run_demo(
    out: Path, *, epochs: int = 4, extra_epochs: int = 3, console: Console | None = None
) -> dict[str, Any]:
    console = console or Console()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    repository = out / "model_repository"
    shutil.rmtree(repository, ignore_errors=True)
    started = time.monotonic()

    console.rule("[bold]1. data")
    folder = write_digits(out / "data")
    _, held = folder.split()
    console.print(
        f"{len(folder.samples)} digit images in {len(folder.labels)} classes at {folder.root}"
    )

    console.rule("[bold]2. train v1")
    v1 = train(folder.root, arch="small_cnn", epochs=epochs, out=out / "v1.pt")
    x_held, _ = load_arrays(held, v1.checkpoint.preprocessing)
    console.print(f"v1 held-out accuracy (PyTorch): {v1.holdout_accuracy:.3f}")

    console.rule("[bold]3. export and publish v1")
    first = export_checkpoint(
        v1.checkpoint,
        repository,
        MODEL,
        samples=x_held,
        evaluation={"holdout_accuracy": v1.holdout_accuracy},
    )
    console.print(f"published version {first.published.version}: {first.parity.summary()}")

    config = ServerConfig.on_free_ports(repository, log_file=out / "tritonserver.log")
    console.rule("[bold]4. serve")
    with TritonServer(config) as server:
        console.print(
            f"tritonserver ready: http {server.http_url}, grpc {server.grpc_url}; "
            f"log {server.log_path}"
        )
        console.rule("[bold]5. classify the held-out set through Triton")
        served: dict[str, Any] = {}
        latencies: list[float] = []
        for protocol, url in (("http", server.http_url), ("grpc", server.grpc_url)):
            correct, times = 0, []
            with LifeloopClient(url, protocol, model=MODEL) as client:
                client.wait_until_ready(60, model=MODEL)
                for sample in held:
                    began = time.perf_counter()
                    answer = client.classify([sample.path], top_k=1)[0]
                    times.append((time.perf_counter() - began) * 1000)
                    correct += answer.label == folder.labels[sample.label]
            served[protocol] = {"accuracy": correct / len(held), **percentiles(times)}
            latencies += times
            stats = served[protocol]
            console.print(
                f"{protocol}: accuracy {stats['accuracy']:.3f}, p50 {stats['p50']:.2f} ms, "
                f"p99 {stats['p99']:.2f} ms over {len(held)} requests"
            )

        console.rule("[bold]6. train v2 and publish it while traffic flows")
        v2 = train(
            folder.root,
            arch="small_cnn",
            epochs=extra_epochs,
            out=out / "v2.pt",
            init_from=v1.checkpoint,
            lr=5e-4,
        )
        console.print(f"v2 held-out accuracy (PyTorch): {v2.holdout_accuracy:.3f}")
        traffic = Traffic()
        stop = threading.Event()
        senders = [
            threading.Thread(target=_send, args=(url, protocol, x_held, traffic, stop), daemon=True)
            for protocol, url in (("grpc", server.grpc_url), ("http", server.http_url))
        ]
        for sender in senders:
            sender.start()
        time.sleep(1.0)
        second = export_checkpoint(
            v2.checkpoint,
            repository,
            MODEL,
            samples=x_held,
            server_url=server.http_url,
            evaluation={"holdout_accuracy": v2.holdout_accuracy},
        )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not _switched(traffic, second.published.version):
            time.sleep(0.1)
        time.sleep(1.0)
        stop.set()
        for sender in senders:
            sender.join(timeout=30)
        console.print(
            f"published version {second.published.version} during {traffic.requests} "
            f"requests; {len(traffic.failures)} failed"
        )

    version_before = first.published.version
    seen = traffic.versions
    summary = {
        "served_accuracy": min(v["accuracy"] for v in served.values()),
        "served": served,
        "requests": 2 * len(held) + traffic.requests,
        "failed_requests": len(traffic.failures),
        "failures": traffic.failures[:5],
        "version_before": seen[0] if seen else version_before,
        "version_after": seen[-1] if seen else version_before,
        "latency_ms": percentiles(latencies),
        "holdout_accuracy": {"v1": v1.holdout_accuracy, "v2": v2.holdout_accuracy},
        "reload_requests": traffic.requests,
        "seconds": round(time.monotonic() - started, 1),
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    _print_summary(console, summary, out / "summary.json")
    return summary


def _send(
    url: str, protocol: str, batch: np.ndarray, traffic: Traffic, stop: threading.Event
) -> None:
    with LifeloopClient(url, protocol, model=MODEL, timeout_s=30) as client:
        index = 0
        while not stop.is_set():
            sample = batch[index % len(batch)]
            index += 1
            try:
                traffic.record(client.classify([sample], top_k=1)[0].version)
            except ClientError as exc:
                traffic.record(None, f"{protocol}: {exc}")


def _switched(traffic: Traffic, version: int) -> bool:
    with traffic.lock:
        return version in traffic.versions[-20:]


def _print_summary(console: Console, summary: dict[str, Any], path: Path) -> None:
    table = Table(title="lifeloop demo", show_header=False)
    table.add_row("served accuracy (held-out, worst protocol)", f"{summary['served_accuracy']:.3f}")
    table.add_row("requests / failed", f"{summary['requests']} / {summary['failed_requests']}")
    table.add_row(
        "version before -> after hot reload",
        f"{summary['version_before']} -> {summary['version_after']}",
    )
    table.add_row(
        "latency p50 / p99 (ms, one image per request)",
        f"{summary['latency_ms']['p50']:.2f} / {summary['latency_ms']['p99']:.2f}",
    )
    table.add_row("wall time (s)", f"{summary['seconds']}")
    console.print(table)
    console.print(f"summary written to {path}")
