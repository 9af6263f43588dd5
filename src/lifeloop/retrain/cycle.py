"""`lifeloop retrain`: fine-tune the champion on labelled feedback, gate, publish, roll out.

- Dataset: every labelled prediction no earlier version was trained on, whose input was kept,
  plus a replay sample with a quota per class, so that old classes are not forgotten: drawn
  from the first version's training data and from the feedback earlier versions were trained
  on, so that a class learned from feedback is replayed too.
- New classes: labels the champion does not know are appended (class indices only grow); the
  head grows and keeps its old rows.
- Evaluation: per class, on a held-out set: a trusted labelled folder when given (`eval_dir`),
  otherwise a stratified split of the dataset. The champion is scored on the same images; it
  is wrong on every image of a class it does not have.
- Gate: the candidate's accuracy must reach the champion's + min_delta, no old class may drop
  more than max_drop, and the export must pass the parity gate. A refused candidate publishes
  nothing.
- Rollout: the passing candidate is published as the next version, recorded with what it was
  trained on, and started as a canary (or shadow)."""

from __future__ import annotations

import contextlib
import dataclasses
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
from torch import nn

from lifeloop.datasets import ImageFolder, Sample, load_arrays, scan
from lifeloop.errors import ImageError, RetrainError
from lifeloop.export import Checkpoint
from lifeloop.export.checkpoint import load as load_checkpoint
from lifeloop.export.pipeline import archived_checkpoint, export_checkpoint
from lifeloop.export.structure import structure_of
from lifeloop.preprocessing import NORMALIZED, Preprocessing
from lifeloop.repository.manifest import Manifest
from lifeloop.retrain.distributed import broadcast, world
from lifeloop.retrain.precision import Precision
from lifeloop.retrain.training import accuracy_report, fit, pick_precision, predict
from lifeloop.rollout.policy import read_policy
from lifeloop.rollout.rollout import Rollout
from lifeloop.serve.preprocess import ImageLimits, decode
from lifeloop.store import blobs
from lifeloop.store.database import Labelled, Store
from lifeloop.tracking import Run, Tracker


@dataclass(frozen=True, kw_only=True)
class RetrainSettings:
    epochs: int = 4
    lr: float = 1e-3
    batch_size: int = 64
    replay_per_class: int = 150
    holdout: float = 0.2
    min_delta: float = 0.0  # accuracy the candidate must gain over the champion
    max_drop: float = 0.02  # largest per-class accuracy drop allowed for an old class
    # No class counts for more than replay_per_class images: replay holds that many of an
    # old class, while a new class can come with far more feedback, which would teach the
    # model to prefer the new names.
    balanced: bool = True
    canary_weight: float = 0.2
    shadow: bool = False
    seed: int = 0
    precision: str = "fp32"  # fp32, bf16, fp16 or auto (lifeloop.retrain.precision)

    @property
    def class_cap(self) -> int | None:
        return self.replay_per_class if self.balanced and self.replay_per_class > 0 else None


@dataclass
class RetrainReport:
    model: str
    champion: int
    labels: tuple[str, ...]
    new_classes: tuple[str, ...]
    feedback_used: int
    replayed: int
    counts: dict[str, int]
    held_out: int
    champion_accuracy: float
    candidate_accuracy: float
    champion_per_class: dict[str, float]
    candidate_per_class: dict[str, float]
    refused: list[str] = field(default_factory=list)
    version: int | None = None

    @property
    def published(self) -> bool:
        return self.version is not None

    def to_dict(self) -> dict[str, Any]:
        return {**self.__dict__, "published": self.published}


def grow_labels(known: tuple[str, ...], names: Iterable[str]) -> tuple[str, ...]:
    """`known`, then each label of `names` it lacks in order of first appearance: class
    indices only grow, so every earlier version's answers keep their meaning."""
    return known + tuple(dict.fromkeys(n for n in names if n not in known))


def grow_head(model: nn.Module, classes: int) -> nn.Module:
    """Widen the last Linear layer to `classes` outputs, keeping the trained rows."""
    name, head = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Linear)][-1]
    if head.out_features == classes:
        return model
    if head.out_features > classes:
        raise RetrainError(
            f"the head has {head.out_features} classes; it cannot shrink to {classes}"
        )
    wider = nn.Linear(head.in_features, classes, bias=head.bias is not None)
    with torch.no_grad():
        wider.weight[: head.out_features] = head.weight
        if head.bias is not None:
            wider.bias[: head.out_features] = head.bias
    parent = model.get_submodule(name.rpartition(".")[0]) if "." in name else model
    setattr(parent, name.rpartition(".")[2], wider)
    return model


@dataclass
class _Dataset:
    """What rank 0 reads from the store and the data folders, for every rank to train on."""

    champion_version: int
    champion: Checkpoint
    request_ids: list[str]
    labels: tuple[str, ...]
    new_classes: tuple[str, ...]
    replayed: int
    x_train: np.ndarray
    y_train: np.ndarray
    x_held: np.ndarray
    y_held: np.ndarray


def retrain(
    repository: Path,
    model: str,
    store: Store,
    *,
    router: str = "router",
    replay_dir: Path | None = None,
    eval_dir: Path | None = None,
    settings: RetrainSettings | None = None,
    server_url: str | None = None,
    progress: bool = True,
    tracker: Tracker | None = None,
) -> RetrainReport:
    """Retrain, gate, publish and start the rollout. Under `torchrun` this runs on rank 0: it
    reads the data, sends it to the other ranks (`retrain_follower`), trains its share as
    DDP, and alone gates, publishes and reports.

    With `tracker`, the whole cycle is one MLflow run (settings, per-epoch loss, the gate's
    figures and verdict, the export), the published version is registered, and the
    candidate alias follows the rollout."""
    settings = settings or RetrainSettings()
    with tracker.run(model, "retrain") if tracker else contextlib.nullcontext() as run:
        return _retrain(
            repository,
            model,
            store,
            router=router,
            replay_dir=replay_dir,
            eval_dir=eval_dir,
            settings=settings,
            server_url=server_url,
            progress=progress,
            run=run,
        )


def _retrain(
    repository: Path,
    model: str,
    store: Store,
    *,
    router: str,
    replay_dir: Path | None,
    eval_dir: Path | None,
    settings: RetrainSettings,
    server_url: str | None,
    progress: bool,
    run: Run | None,
) -> RetrainReport:
    if run is not None:
        run.params({f"retrain.{k}": v for k, v in dataclasses.asdict(settings).items()})
    repository = Path(repository)
    try:
        data = _read_dataset(repository, model, store, router, replay_dir, eval_dir, settings)
    except Exception as error:
        # The other ranks wait for the data: tell them why none comes, then stop here too.
        broadcast(error if isinstance(error, RetrainError) else RetrainError(str(error)))
        raise
    broadcast(data)
    champion, labels = data.champion, data.labels
    y_train, x_held, y_held = data.y_train, data.x_held, data.y_held
    network = _fit(model, data, settings, progress, run)
    verdict = judge(
        champion.build_model(), champion.labels, network, labels, x_held, y_held, settings
    )
    counts = {labels[i]: int(n) for i, n in sorted(Counter(y_train.tolist()).items())}
    report = RetrainReport(
        model=model,
        champion=data.champion_version,
        labels=labels,
        new_classes=data.new_classes,
        feedback_used=len(data.request_ids),
        replayed=data.replayed,
        counts=counts,
        held_out=len(x_held),
        champion_accuracy=verdict.champion_accuracy,
        candidate_accuracy=verdict.candidate_accuracy,
        champion_per_class=verdict.champion_per_class,
        candidate_per_class=verdict.candidate_per_class,
        refused=list(verdict.refused),
    )
    if run is not None:
        _log_verdict(run, report)
    if report.refused:
        return report

    candidate = Checkpoint(
        arch=champion.arch,
        labels=labels,
        preprocessing=champion.preprocessing,
        state_dict={k: v.detach().clone() for k, v in network.state_dict().items()},
        # a pruned champion's sizes, with the head as wide as the classes now
        structure=structure_of(network) if champion.structure else {},
        training={
            "data": champion.training.get("data") if replay_dir is None else str(replay_dir),
            "init_from_version": data.champion_version,
            "feedback": len(data.request_ids),
            "replayed": data.replayed,
            "epochs": settings.epochs,
            "seed": settings.seed,
            "holdout_accuracy": verdict.candidate_accuracy,
        },
    )
    # The parity gate runs inside the export; a ParityError publishes nothing.
    # The candidate takes what the champion takes, so that clients go on sending the same.
    served = Manifest.read(repository / model / str(data.champion_version)).preprocessing
    exported = export_checkpoint(
        candidate,
        repository,
        model,
        input_kind=served.get("input_kind", NORMALIZED),
        samples=x_held[:64],
        reference=x_held,
        evaluation={
            "accuracy": verdict.candidate_accuracy,
            "per_class": verdict.candidate_per_class,
            "held_out": len(x_held),
        },
    )
    version = exported.published.version
    if run is not None:
        from lifeloop.export.tracked import log_export

        log_export(run, exported)
    store.record_training(
        model,
        version,
        data.request_ids,
        counts,
        {"champion": data.champion_version, **report.to_dict()},
    )
    tracker = run.tracker if run is not None else None
    Rollout(
        repository, store, router=router, server_url=server_url, tracker=tracker
    ).start_candidate(
        version,
        canary_weight=settings.canary_weight,
        shadow=settings.shadow,
        reason=(
            f"retrain: {verdict.candidate_accuracy:.4f} vs champion v{data.champion_version} "
            f"{verdict.champion_accuracy:.4f} on {len(x_held)} held-out images"
        ),
    )
    report.version = version
    return report


def _log_verdict(run: Run, report: RetrainReport) -> None:
    run.params(
        {
            "champion_version": report.champion,
            "feedback_used": report.feedback_used,
            "replayed": report.replayed,
            "held_out": report.held_out,
            "new_classes": ",".join(report.new_classes),
        }
    )
    run.metrics(
        {
            "gate.champion_accuracy": report.champion_accuracy,
            "gate.candidate_accuracy": report.candidate_accuracy,
        }
    )
    run.per_class("gate.champion", report.champion_per_class)
    run.per_class("gate.candidate", report.candidate_per_class)
    run.tags(
        {
            "lifeloop.verdict": "refused" if report.refused else "accepted",
            "lifeloop.refused_because": "; ".join(report.refused) or "-",
        }
    )


@dataclass(frozen=True)
class Verdict:
    """The gate's figures on the held-out set, and why it refused (empty: it passed)."""

    champion_accuracy: float
    champion_per_class: dict[str, float]
    candidate_accuracy: float
    candidate_per_class: dict[str, float]
    refused: tuple[str, ...]

    @property
    def passed(self) -> bool:
        return not self.refused


def judge(
    champion: nn.Module,
    champion_labels: tuple[str, ...],
    candidate: nn.Module,
    labels: tuple[str, ...],
    x_held: np.ndarray,
    y_held: np.ndarray,
    settings: RetrainSettings,
) -> Verdict:
    """The accuracy gate: the candidate must reach the champion's held-out accuracy +
    min_delta, and no class the champion knows may drop more than max_drop. The champion is
    wrong on every image of a class it does not have (`labels` extends `champion_labels`).

    When classes are added, an old class is compared by F1 instead of accuracy: the champion
    calls every image of a new class by some old name, so its accuracy on an old class that
    looks like a new one is high only because it cannot say the new name, and a candidate
    that learns to tell them apart would be refused for it. F1 charges those wrong names to
    the champion's precision, and still refuses a candidate that gives an old class away."""
    champion_predicted = predict(champion, x_held)
    candidate_predicted = predict(candidate, x_held)
    champion_acc, champion_pc = accuracy_report(champion_predicted, y_held, labels)
    candidate_acc, candidate_pc = accuracy_report(candidate_predicted, y_held, labels)
    refused = []
    if candidate_acc < champion_acc + settings.min_delta:
        refused.append(
            f"held-out accuracy {candidate_acc:.4f} is below the champion's {champion_acc:.4f} "
            f"+ min_delta {settings.min_delta:g}"
        )
    grew = len(labels) > len(champion_labels)
    if grew:
        measure = "F1"
        before = f1_scores(champion_predicted, y_held, labels)
        after = f1_scores(candidate_predicted, y_held, labels)
    else:
        measure, before, after = "accuracy", champion_pc, candidate_pc
    for name in champion_labels:
        if name in before and name in after:
            drop = before[name] - after[name]
            if drop > settings.max_drop + 1e-9:
                refused.append(
                    f"class {name!r} {measure} drops {drop * 100:.1f} points "
                    f"({before[name]:.3f} -> {after[name]:.3f}), more than "
                    f"max_drop {settings.max_drop * 100:g}"
                )
    return Verdict(champion_acc, champion_pc, candidate_acc, candidate_pc, tuple(refused))


def f1_scores(predicted: np.ndarray, y: np.ndarray, labels: tuple[str, ...]) -> dict[str, float]:
    """Per class present in `y`: the harmonic mean of precision and recall (0 when both are)."""
    scores = {}
    for i, name in enumerate(labels):
        actual = y == i
        if not actual.any():
            continue
        hits = float(np.sum(actual & (predicted == i)))
        called = float(np.sum(predicted == i))
        scores[name] = 2 * hits / (called + float(actual.sum()))
    return scores


def quota(y: np.ndarray, per_class: int, seed: int) -> np.ndarray:
    """Indices of at most `per_class` items of each class in `y`, drawn at random (seeded),
    in their original order: the replay sample."""
    rng = np.random.default_rng(seed)
    chosen = [rng.permutation(np.flatnonzero(y == cls))[:per_class] for cls in np.unique(y)]
    return np.sort(np.concatenate(chosen)) if chosen else np.zeros(0, np.int64)


def retrain_follower(model: str, settings: RetrainSettings | None = None) -> None:
    """Rank 1..N-1 of a `torchrun` retrain: train on rank 0's data, then leave the gate, the
    export and the store to rank 0."""
    data = broadcast(None)
    if isinstance(data, RetrainError):
        raise data
    if not isinstance(data, _Dataset):
        raise RetrainError(f"rank {world().rank} received no dataset from rank 0")
    _fit(model, data, settings or RetrainSettings(), progress=False)


def _fit(
    model: str,
    data: _Dataset,
    settings: RetrainSettings,
    progress: bool,
    run: Run | None = None,
) -> nn.Module:
    network = grow_head(data.champion.build_model(), len(data.labels))
    # Rank 0 picks (auto measures) and every rank trains in what it picked.
    picked = (
        pick_precision(settings.precision, network, data.x_train, data.y_train, settings.batch_size)
        if world().is_leader
        else None
    )
    precision = cast(Precision, broadcast(picked))
    if run is not None:
        run.params({"precision": precision.name})
        run.tags({"lifeloop.precision_why": precision.why})
    return fit(
        network,
        data.x_train,
        data.y_train,
        epochs=settings.epochs,
        batch_size=settings.batch_size,
        lr=settings.lr,
        seed=settings.seed,
        progress=progress,
        what=f"{model} v{data.champion_version} + {len(data.request_ids)} labelled",
        class_cap=settings.class_cap,
        on_epoch=None if run is None else (lambda epoch, f: run.metrics(f, step=epoch)),
        precision=precision,
    )


def _read_dataset(
    repository: Path,
    model: str,
    store: Store,
    router: str,
    replay_dir: Path | None,
    eval_dir: Path | None,
    settings: RetrainSettings,
) -> _Dataset:
    policy = read_policy(repository / router)
    if policy.model != model:
        raise RetrainError(f"router {router!r} fronts {policy.model!r}, not {model!r}")
    path = archived_checkpoint(repository, model, policy.champion)
    if not path.is_file():
        raise RetrainError(
            f"the checkpoint of {model} v{policy.champion} is not at {path}; retraining needs "
            "the champion's PyTorch weights (export versions with `lifeloop export`)"
        )
    champion = load_checkpoint(path)
    pre = champion.preprocessing.with_kind(NORMALIZED)  # what training takes

    used = store.trained_request_ids(model)
    labelled = store.labelled(model)
    fresh = [r for r in labelled if r.request_id not in used]
    usable = [r for r in fresh if r.blob and Path(r.blob).is_file()]
    # What earlier versions learned from feedback, replayed beside their first training data.
    earlier = [r for r in labelled if r.request_id in used and r.blob and Path(r.blob).is_file()]
    if not usable:
        raise RetrainError(
            f"no new labelled data for {model!r}: {len(fresh)} labels since the last retrain, "
            f"{len(usable)} with a stored input; nothing published"
        )
    labels = grow_labels(champion.labels, [r.label for r in usable])
    new_classes = labels[len(champion.labels) :]
    index = {label: i for i, label in enumerate(labels)}
    x_feedback = np.stack([_kept_input(r.blob, r.blob_row, pre) for r in usable if r.blob])
    y_feedback = np.array([index[r.label] for r in usable], dtype=np.int64)

    x_replay, y_replay = _replay(
        replay_dir or champion.training.get("data"), earlier, labels, pre, settings
    )
    x_all = np.concatenate([x_feedback, x_replay]) if len(x_replay) else x_feedback
    y_all = np.concatenate([y_feedback, y_replay]) if len(y_replay) else y_feedback
    if eval_dir is not None:
        x_train, y_train = x_all, y_all
        x_held, y_held = _folder_arrays(Path(eval_dir), labels, pre)
    else:
        train_idx, held_idx = _stratified(y_all, settings.holdout, settings.seed)
        x_train, y_train, x_held, y_held = (
            x_all[train_idx],
            y_all[train_idx],
            x_all[held_idx],
            y_all[held_idx],
        )
    if len(x_held) == 0:
        raise RetrainError("the held-out set is empty; pass --eval-dir or send more feedback")
    return _Dataset(
        champion_version=policy.champion,
        champion=champion,
        request_ids=[r.request_id for r in usable],
        labels=labels,
        new_classes=new_classes,
        replayed=len(x_replay),
        x_train=x_train,
        y_train=y_train,
        x_held=x_held,
        y_held=y_held,
    )


# The preprocess model's limits let these images in already: retraining takes any size and
# any common format, so that a raised limit or another format there does not fail it here.
_KEPT_IMAGES = ImageLimits(
    max_bytes=1 << 31, max_pixels=1 << 31, formats=("JPEG", "PNG", "WEBP", "BMP", "GIF", "TIFF")
)


def _kept_input(blob: str, row: int | None, pre: Preprocessing) -> np.ndarray:
    """One kept input as training takes it: a pixel input is normalised by the champion's
    recipe, as its graph did when it was served; an encoded image is decoded, resized and
    normalised by it, as the image ensemble's preprocess model did."""
    if blobs.holds_encoded(blob):
        try:
            return decode(blobs.load_encoded(blob, row or 0), pre, _KEPT_IMAGES)
        except ImageError as exc:
            raise RetrainError(f"kept input {blob} row {row or 0}: {exc}") from None
    sample = blobs.load(blob, row)
    return pre.normalize(sample[None])[0] if blobs.holds_pixels(blob) else sample


def _replay(
    data: Any,
    earlier: list[Labelled],
    labels: tuple[str, ...],
    pre: Preprocessing,
    settings: RetrainSettings,
) -> tuple[np.ndarray, np.ndarray]:
    """Up to `replay_per_class` inputs of each known class, drawn from the training folder
    and the feedback earlier versions were trained on, as one pool."""
    empty = np.zeros((0, *pre.input_shape), np.float32), np.zeros(0, np.int64)
    if settings.replay_per_class <= 0:
        return empty
    samples: list[Sample] = []
    names: list[str] = []
    if data:
        if not Path(data).is_dir():
            raise RetrainError(
                f"the champion's training data {data} is gone; pass --replay DIR, or "
                "--replay-per-class 0 to train on feedback alone"
            )
        folder = scan(Path(data))
        samples = [s for s in folder.samples if folder.labels[s.label] in labels]
        names = [folder.labels[s.label] for s in samples]
    rows = [r for r in earlier if r.label in labels]
    names += [r.label for r in rows]
    if not names:
        return empty
    index = {label: i for i, label in enumerate(labels)}
    y = np.array([index[name] for name in names], dtype=np.int64)
    chosen = quota(y, settings.replay_per_class, settings.seed)
    from_folder = [samples[i] for i in chosen if i < len(samples)]
    from_feedback = [rows[i - len(samples)] for i in chosen if i >= len(samples)]
    x_folder, _ = load_arrays(from_folder, pre)
    parts = [x_folder] + [
        _kept_input(r.blob, r.blob_row, pre)[None] for r in from_feedback if r.blob
    ]
    return np.concatenate(parts).astype(np.float32), y[chosen]


def _folder_arrays(root: Path, labels: tuple[str, ...], pre: Any) -> tuple[np.ndarray, np.ndarray]:
    folder = scan(root)
    unknown = [name for name in folder.labels if name not in labels]
    if unknown:
        raise RetrainError(
            f"--eval-dir {root} has classes {unknown} that neither the model nor the feedback "
            "knows; remove them or send feedback for them"
        )
    x, y_folder = load_arrays(list(folder.samples), pre)
    return x, _model_indices(folder, y_folder, labels)


def _model_indices(
    folder: ImageFolder, y_folder: np.ndarray, labels: tuple[str, ...]
) -> np.ndarray:
    """A folder's class indices -> the model's (every folder class here is one of `labels`)."""
    remap = np.array([labels.index(name) if name in labels else -1 for name in folder.labels])
    return remap[y_folder]


def _stratified(y: np.ndarray, holdout: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    train, held = [], []
    for cls in np.unique(y):
        idx = rng.permutation(np.flatnonzero(y == cls))
        n_held = round(len(idx) * holdout) if len(idx) > 1 else 0
        held += idx[:n_held].tolist()
        train += idx[n_held:].tolist()
    return np.array(sorted(train), dtype=np.int64), np.array(sorted(held), dtype=np.int64)
