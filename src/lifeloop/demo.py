"""`lifeloop demo`: the whole learning loop on the embedded defaults, in a few minutes.

Digits -> train v1 on digits 0-7 only -> export, publish, put the router in front -> local
Triton -> classify the held-out set (all ten digits) through the router over HTTP and gRPC ->
traffic of all classes, with simulated users labelling a share of it through the feedback
model -> retrain: v2 learns 8 and 9, passes the gate, starts as a 20% canary with shadow ->
promote v2 while traffic flows -> score both versions per class -> send the held-out images
as PNG and JPEG bytes through the `classifier_image` ensemble -> stop.

`lifeloop quickstart` takes the demo's first steps on all ten digits and stops there: a
repository that serves a classifier, the router, the feedback model and the image ensemble.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console
from rich.table import Table

from lifeloop.client import ClientError, LifeloopClient
from lifeloop.datasets import link_folder, load_arrays
from lifeloop.errors import RepositoryError, RetrainError
from lifeloop.export import Checkpoint, ExportResult, export_checkpoint
from lifeloop.export.tracked import log_export
from lifeloop.preprocessing import Preprocessing
from lifeloop.repository import ensure_repository
from lifeloop.retrain import train, write_digits
from lifeloop.retrain.cycle import RetrainSettings, retrain
from lifeloop.retrain.training import accuracy_report
from lifeloop.rollout import Rollout
from lifeloop.serve import ServerConfig, TritonServer
from lifeloop.serve.ensemble import ImageEnsemble, install_image_ensemble
from lifeloop.serve.install import Installed, install_router
from lifeloop.serve.sampling import KeepRule
from lifeloop.store import Store
from lifeloop.tracking import Tracker

MODEL = "classifier"
ROUTER = "router"
OLD_CLASSES = tuple(str(d) for d in range(8))
EPOCHS = 4


@dataclass(frozen=True)
class Published:
    """A classifier's first version with the router and feedback models in front of it and
    the image ensemble beside it."""

    export: ExportResult
    installed: Installed
    images: ImageEnsemble

    @property
    def models(self) -> tuple[str, ...]:
        router, images = self.installed, self.images
        return (MODEL, router.router, router.feedback, images.preprocess, images.ensemble)


def publish_classifier(
    repository: Path,
    checkpoint: Checkpoint,
    samples: np.ndarray,
    *,
    evaluation: dict[str, object],
    store_url: str | None = None,
    console: Console,
    tracker: Tracker | None = None,
) -> Published:
    """Export `checkpoint` behind the parity gate as `classifier`, with `samples` (held-out
    images) in the parity check and as its drift reference; put the router and the feedback
    model in front of it and the image ensemble beside it."""
    with _tracked(tracker, "export") as run:
        first = export_checkpoint(
            checkpoint, repository, MODEL, samples=samples, evaluation=evaluation, reference=samples
        )
        if run is not None:
            log_export(run, first)
    console.print(f"published version {first.published.version}: {first.parity.summary()}")
    # Every input kept: the demo labels a share of all its traffic, as a small deployment
    # may; `router init`'s default keeps a sample and the uncertain answers.
    installed = install_router(repository, MODEL, store_url=store_url, keep=KeepRule.everything())
    console.print(
        f"router and feedback models written; store {installed.store_url}; "
        f"{installed.keep.describe()} kept"
    )
    images = install_image_ensemble(repository, MODEL)
    console.print(f"{images.ensemble!r} ensemble written: clients may send encoded images")
    return Published(first, installed, images)


@dataclass(frozen=True)
class Quickstart:
    """What `quickstart` wrote: the models, and the digits it trained on (beside them)."""

    repository: Path
    data: Path
    holdout_accuracy: float
    published: Published


def _tracked(tracker: Tracker | None, command: str) -> Any:
    """An MLflow run of `command` for the demo's model, or nothing without a tracker."""
    return tracker.run(MODEL, command) if tracker else contextlib.nullcontext()


def model_folders(repository: Path) -> list[str]:
    """The models in `repository` as Triton sees them: its folders, hidden ones aside (files
    such as a README are not models)."""
    repository = Path(repository)
    if not repository.is_dir():
        return []
    return sorted(p.name for p in repository.iterdir() if p.is_dir() and not p.name.startswith("."))


def default_data_dir(repository: Path) -> Path:
    """`<parent>/<repository name>.data`: beside the repository, like the kept inputs; the
    champion's checkpoint names it, and retraining replays it."""
    repository = Path(repository).resolve()
    return repository.parent / f"{repository.name}.data"


def quickstart(
    repository: Path,
    *,
    epochs: int = EPOCHS,
    data_dir: Path | None = None,
    store_url: str | None = None,
    console: Console | None = None,
) -> Quickstart:
    """Fill an empty repository with a small CNN trained on the demo's digits (all ten, no
    download), the router, the feedback model and the image ensemble, ready to serve."""
    console = console or Console()
    repository = ensure_repository(repository)
    held_models = model_folders(repository)
    if held_models:
        raise RepositoryError(
            f"model repository {repository} already holds {', '.join(held_models)}; the "
            "quickstart fills an empty one: pick another folder or remove those models"
        )
    data = Path(data_dir or default_data_dir(repository))
    folder = write_digits(data)
    _, held = folder.split(holdout=0.25, seed=1)
    console.print(f"{len(folder.samples)} digit images in {data}")
    with tempfile.TemporaryDirectory(prefix="lifeloop-quickstart-") as tmp:
        # export_checkpoint archives the checkpoint beside the repository for retraining
        trained = train(folder.root, arch="small_cnn", epochs=epochs, out=Path(tmp) / "v1.pt")
    x_held, _ = load_arrays(held, trained.checkpoint.preprocessing)
    published = publish_classifier(
        repository,
        trained.checkpoint,
        x_held,
        evaluation={"holdout_accuracy": trained.holdout_accuracy},
        store_url=store_url,
        console=console,
    )
    return Quickstart(repository, data, trained.holdout_accuracy, published)


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
    out: Path,
    *,
    epochs: int = EPOCHS,
    feedback_share: float = 0.6,
    console: Console | None = None,
) -> dict[str, Any]:
    console = console or Console()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    repository = out / "model_repository"
    stale_paths = (
        repository,
        out / "model_repository.lifeloop.db",
        out / "model_repository.mlflow.db",
        out / "model_repository.mlartifacts",
        out / "v1data",
        out / "eval",
    )
    for stale in stale_paths:
        if stale.is_dir():
            shutil.rmtree(stale)
        else:
            stale.unlink(missing_ok=True)
    for suffix in ("-wal", "-shm"):
        (out / f"model_repository.lifeloop.db{suffix}").unlink(missing_ok=True)
    started = time.monotonic()

    console.rule("[bold]1. data")
    folder = write_digits(out / "data")
    train_set, held = folder.split(holdout=0.25, seed=1)
    old = [s for s in train_set if folder.labels[s.label] in OLD_CLASSES]
    v1_data = link_folder(out / "v1data", folder, old)
    eval_dir = link_folder(out / "eval", folder, held)
    console.print(
        f"{len(folder.samples)} digit images; v1 trains on {len(old)} images of digits "
        f"{', '.join(OLD_CLASSES)}; {len(held)} held-out images of all ten digits"
    )

    # Each training, export and retrain is an MLflow run beside the repository; the rollout
    # keeps the registry's champion and candidate aliases.
    tracker = Tracker.for_repository(repository)

    console.rule("[bold]2. train v1 on digits 0-7")
    with _tracked(tracker, "train") as run:
        v1 = train(v1_data, arch="small_cnn", epochs=epochs, out=out / "v1.pt", run=run)
    pre = v1.checkpoint.preprocessing
    x_held, y_held = load_arrays(held, pre)
    x_traffic, y_traffic = load_arrays(train_set, pre)

    console.rule("[bold]3. export v1, put the router in front")
    published = publish_classifier(
        repository,
        v1.checkpoint,
        x_held,
        evaluation={"holdout_accuracy": v1.holdout_accuracy},
        console=console,
        tracker=tracker,
    )
    first, installed, images = published.export, published.installed, published.images
    # Clients send what the version takes: pixels, unless exported with normalized inputs.
    takes = Preprocessing.from_dict(first.published.manifest.preprocessing)
    x_held, x_traffic = pre.convert(x_held, takes), pre.convert(x_traffic, takes)

    config = ServerConfig.on_free_ports(repository, log_file=out / "tritonserver.log")
    traffic = Traffic()
    console.rule("[bold]4. serve")
    with TritonServer(config) as server, Store(installed.store_url) as store:
        console.print(
            f"tritonserver ready: http {server.http_url}, grpc {server.grpc_url}; "
            f"log {server.log_path}"
        )
        rollout = Rollout(repository, store, server_url=server.http_url, tracker=tracker)
        console.rule("[bold]5. classify the held-out set through the router")
        served: dict[str, Any] = {}
        latencies: list[float] = []
        for protocol, url in (("http", server.http_url), ("grpc", server.grpc_url)):
            correct, times = 0, []
            with LifeloopClient(url, protocol, model=ROUTER) as client:
                client.wait_until_ready(60, model=ROUTER)
                for sample in held:
                    began = time.perf_counter()
                    answer = client.classify([sample.path], top_k=1)[0]
                    times.append((time.perf_counter() - began) * 1000)
                    correct += answer.label == folder.labels[sample.label]
            traffic.requests += len(held)
            served[protocol] = {"accuracy": correct / len(held), **percentiles(times)}
            latencies += times
            stats = served[protocol]
            console.print(
                f"{protocol}: accuracy {stats['accuracy']:.3f} (v1 knows 8 of 10 digits), "
                f"p50 {stats['p50']:.2f} ms, p99 {stats['p99']:.2f} ms over {len(held)} requests"
            )

        console.rule("[bold]6. traffic of all classes; users label a share of it")
        names = folder.labels
        labelled = 0
        with LifeloopClient(server.grpc_url, model=ROUTER) as client:
            rng = np.random.default_rng(0)
            for start in range(0, len(x_traffic), 16):
                try:
                    answers = client.classify(x_traffic[start : start + 16])
                except ClientError as exc:
                    traffic.record(None, f"grpc: {exc}")
                    continue
                traffic.requests += len(answers)
                chosen = [i for i in range(len(answers)) if rng.random() < feedback_share]
                client.feedback(
                    [answers[i].request_id or "" for i in chosen],
                    [names[y_traffic[start + i]] for i in chosen],
                )
                labelled += len(chosen)
        console.print(f"{len(x_traffic)} images served, {labelled} labelled by users")

        console.rule("[bold]7. retrain: v2 from v1 + feedback + replay, gated")
        report = retrain(
            repository,
            MODEL,
            store,
            eval_dir=eval_dir,
            settings=RetrainSettings(canary_weight=0.2, shadow=True),
            server_url=server.http_url,
            tracker=tracker,
        )
        if report.version is None:
            raise RetrainError("the demo's candidate was refused: " + "; ".join(report.refused))
        console.print(
            f"v{report.version}: held-out accuracy {report.candidate_accuracy:.3f} vs v1 "
            f"{report.champion_accuracy:.3f}; new classes {', '.join(report.new_classes)}; "
            "canary 20% with shadow"
        )

        console.rule("[bold]8. canary, then promote while traffic flows")
        stop = threading.Event()
        senders = [
            threading.Thread(target=_send, args=(url, protocol, x_held, traffic, stop), daemon=True)
            for protocol, url in (("grpc", server.grpc_url), ("http", server.http_url))
        ]
        for sender in senders:
            sender.start()
        time.sleep(4.0)
        total, agreed = store.shadow_agreement(MODEL, report.version)
        rollout.promote(reason=f"demo: v{report.version} passed its canary")
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not _switched(traffic, report.version):
            time.sleep(0.1)
        time.sleep(1.0)
        stop.set()
        for sender in senders:
            sender.join(timeout=30)
        console.print(
            f"canary agreement with v1: {agreed}/{total}; promoted v{report.version} during "
            f"{traffic.requests} requests so far, {len(traffic.failures)} failed"
        )

        console.rule("[bold]9. both versions on the held-out set of all classes")
        scores: dict[int, dict[str, Any]] = {}
        with LifeloopClient(server.grpc_url, model=MODEL) as client:
            for version in (first.published.version, report.version):
                answers = client.classify(x_held, top_k=1, version=version)
                predicted = np.array([names.index(a.label) for a in answers])
                accuracy, per_class = accuracy_report(predicted, y_held, names)
                scores[version] = {
                    "accuracy": accuracy,
                    "per_class": per_class,
                    "predicted": predicted,
                }
                traffic.requests += len(answers)
        history = [e.action for e in store.history(MODEL)]

        console.rule("[bold]10. the held-out images as PNG and JPEG bytes, class_count=1")
        encoded = _through_image_ensemble(
            server.grpc_url, images.ensemble, held, names, scores[report.version]["predicted"]
        )
        for fmt, figures in encoded.items():
            console.print(
                f"{fmt}: accuracy {figures['accuracy']:.3f}, top-1 agrees with v"
                f"{report.version} on tensors for {figures['agreement']:.3f}"
            )

    v1_scores, v2_scores = scores[first.published.version], scores[report.version]
    # v1 never saw 8 and 9, so its all-class figure cannot pass about 0.8: the classes it
    # has seen say what it knows, and whether v2 kept it.
    known = np.isin(y_held, [names.index(c) for c in OLD_CLASSES])
    seen = traffic.versions
    summary = {
        "v1_accuracy": v1_scores["accuracy"],
        "v2_accuracy": v2_scores["accuracy"],
        "seen_classes": list(OLD_CLASSES),
        "v1_accuracy_seen": float(np.mean(v1_scores["predicted"][known] == y_held[known])),
        "v2_accuracy_seen": float(np.mean(v2_scores["predicted"][known] == y_held[known])),
        "per_class": {"v1": v1_scores["per_class"], "v2": v2_scores["per_class"]},
        "largest_old_class_drop": max(
            v1_scores["per_class"][c] - v2_scores["per_class"][c] for c in OLD_CLASSES
        ),
        "new_classes": list(report.new_classes),
        "canary_agreement": agreed / total if total else None,
        "shadowed_requests": total,
        "feedback_labels": labelled,
        "served_accuracy_v1": min(v["accuracy"] for v in served.values()),
        "served": served,
        "requests": traffic.requests,
        "failed_requests": len(traffic.failures),
        "failures": traffic.failures[:5],
        "version_before": first.published.version,
        "version_after": seen[-1] if seen else first.published.version,
        "latency_ms": percentiles(latencies),
        "history": history,
        "image_ensemble": encoded,
        "tracking": None if tracker is None else tracker.display_uri,
        "registry_aliases": {} if tracker is None else tracker.aliases(MODEL),
        "seconds": round(time.monotonic() - started, 1),
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    _print_summary(console, summary, out / "summary.json")
    return summary


def _through_image_ensemble(
    url: str, ensemble: str, held: list[Any], names: tuple[str, ...], tensor_top1: np.ndarray
) -> dict[str, dict[str, float]]:
    """Each held-out image's file bytes (PNG) and a JPEG of it through the ensemble, with
    Triton's classification extension: accuracy, and agreement with the tensor path."""
    import io

    import tritonclient.grpc as grpcclient
    from PIL import Image

    def jpeg(path: Path) -> bytes:
        buffer = io.BytesIO()
        with Image.open(path) as image:
            image.convert("RGB").save(buffer, format="JPEG", quality=95)
        return buffer.getvalue()

    results = {}
    with grpcclient.InferenceServerClient(url.removeprefix("grpc://")) as client:
        for fmt, encode in (("png", lambda path: Path(path).read_bytes()), ("jpeg", jpeg)):
            labels: list[str] = []
            for start in range(0, len(held), 32):
                chunk = [encode(sample.path) for sample in held[start : start + 32]]
                tensor = grpcclient.InferInput("IMAGE", [len(chunk), 1], "BYTES")
                tensor.set_data_from_numpy(np.array(chunk, dtype=np.object_).reshape(-1, 1))
                wanted = [grpcclient.InferRequestedOutput("logits", class_count=1)]
                answer = client.infer(ensemble, [tensor], outputs=wanted).as_numpy("logits")
                labels += [row[0].decode().split(":", 2)[2] for row in answer]
            truth = [names[sample.label] for sample in held]
            results[fmt] = {
                "accuracy": float(np.mean([a == b for a, b in zip(labels, truth, strict=True)])),
                "agreement": float(
                    np.mean([names.index(a) == b for a, b in zip(labels, tensor_top1, strict=True)])
                ),
                "images": len(held),
            }
    return results


def _send(
    url: str, protocol: str, batch: np.ndarray, traffic: Traffic, stop: threading.Event
) -> None:
    with LifeloopClient(url, protocol, model=ROUTER, timeout_s=30) as client:
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
    table.add_row(
        "held-out accuracy, all ten digits: v1 -> v2",
        f"{summary['v1_accuracy']:.3f} -> {summary['v2_accuracy']:.3f}",
    )
    table.add_row(
        f"held-out accuracy, the {len(summary['seen_classes'])} digits v1 was trained on: v1 -> v2",
        f"{summary['v1_accuracy_seen']:.3f} -> {summary['v2_accuracy_seen']:.3f}",
    )
    table.add_row("new classes learned from feedback", ", ".join(summary["new_classes"]))
    table.add_row(
        "largest drop of an old class (points)", f"{summary['largest_old_class_drop'] * 100:.1f}"
    )
    agreement = summary["canary_agreement"]
    table.add_row(
        "canary agreement with v1 (shadowed requests)",
        f"{agreement:.3f} ({summary['shadowed_requests']})" if agreement is not None else "-",
    )
    table.add_row("feedback labels sent", str(summary["feedback_labels"]))
    table.add_row("requests / failed", f"{summary['requests']} / {summary['failed_requests']}")
    table.add_row(
        "champion before -> after promotion",
        f"v{summary['version_before']} -> v{summary['version_after']}",
    )
    table.add_row(
        "latency p50 / p99 (ms, one image per request, via the router)",
        f"{summary['latency_ms']['p50']:.2f} / {summary['latency_ms']['p99']:.2f}",
    )
    for fmt, figures in summary["image_ensemble"].items():
        table.add_row(
            f"{fmt.upper()} bytes through the image ensemble: accuracy / agreement",
            f"{figures['accuracy']:.3f} / {figures['agreement']:.3f}",
        )
    table.add_row("wall time (s)", f"{summary['seconds']}")
    console.print(table)
    console.print(f"summary written to {path}")
    if summary["tracking"]:
        aliases = ", ".join(f"{k} v{v}" for k, v in sorted(summary["registry_aliases"].items()))
        console.print(
            f"MLflow runs and the registry ({aliases}): "
            f"mlflow ui --backend-store-uri {summary['tracking']}"
        )
