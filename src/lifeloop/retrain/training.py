"""A plain supervised training loop on CPU, with a progress bar and a held-out evaluation."""

from __future__ import annotations

import copy
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from lifeloop.datasets import load_arrays, scan
from lifeloop.errors import DataError
from lifeloop.export.architectures import SMALL_CNN, build, check_architecture, without_aux_heads
from lifeloop.export.checkpoint import Checkpoint
from lifeloop.preprocessing import Preprocessing
from lifeloop.retrain.distributed import synchronise_batch_norm, world
from lifeloop.retrain.precision import FP32, Precision, choose, on_device
from lifeloop.tracking import Run


@dataclass(frozen=True)
class TrainResult:
    checkpoint: Checkpoint
    path: Path
    holdout_accuracy: float
    per_class: dict[str, float]
    precision: Precision = FP32


def evaluate(
    model: nn.Module, x: np.ndarray, y: np.ndarray, labels: tuple[str, ...]
) -> tuple[float, dict[str, float]]:
    """(accuracy, per-class accuracy) of `model` on preprocessed arrays."""
    return accuracy_report(predict(model, x), y, labels)


def predict(model: nn.Module, x: np.ndarray) -> np.ndarray:
    """The top-1 class index of each preprocessed image, in eval mode."""
    return logits(model, x).argmax(1) if len(x) else np.zeros(0, np.int64)


def logits(model: nn.Module, x: np.ndarray) -> np.ndarray:
    """The logits [n, classes] of preprocessed images, in eval mode, 256 at a time."""
    model.eval()
    with torch.no_grad():
        parts = [
            model(torch.from_numpy(x[start : start + 256])).float().numpy()
            for start in range(0, len(x), 256)
        ]
    return np.concatenate(parts) if parts else np.zeros((0, 0), np.float32)


def accuracy_report(
    predicted: np.ndarray, y: np.ndarray, labels: tuple[str, ...]
) -> tuple[float, dict[str, float]]:
    correct = predicted == y
    per_class = {
        labels[i]: float(correct[y == i].mean()) for i in range(len(labels)) if np.any(y == i)
    }
    return (float(correct.mean()) if len(y) else 0.0), per_class


@dataclass(frozen=True)
class Prepared:
    """An ImageFolder split and preprocessed as `train` trains on it."""

    data_dir: Path
    labels: tuple[str, ...]
    preprocessing: Preprocessing
    x_train: np.ndarray
    y_train: np.ndarray
    x_held: np.ndarray
    y_held: np.ndarray
    holdout: float
    seed: int


def prepare(
    data_dir: Path,
    *,
    arch: str,
    input_size: int | None = None,
    holdout: float = 0.2,
    seed: int = 0,
    init_from: Checkpoint | None = None,
) -> Prepared:
    """The training and held-out arrays: the held-out split is stratified and stable for a
    seed; normalisation is measured on the training split (or `init_from`'s is kept)."""
    check_architecture(arch)
    folder = scan(data_dir)
    train_set, held_set = folder.split(holdout, seed)
    if init_from is not None:
        pre = init_from.preprocessing
    else:
        size = input_size or (32 if arch == SMALL_CNN else 224)
        pre = _fit_normalisation(Preprocessing(size=size, mean=(0, 0, 0), std=(1, 1, 1)), train_set)
    return Prepared(
        Path(data_dir).resolve(),
        folder.labels,
        pre,
        *load_arrays(train_set, pre),
        *load_arrays(held_set, pre),
        holdout=holdout,
        seed=seed,
    )


def train(
    data_dir: Path,
    *,
    arch: str,
    epochs: int,
    out: Path,
    input_size: int | None = None,
    batch_size: int = 64,
    lr: float = 2e-3,
    holdout: float = 0.2,
    seed: int = 0,
    init_from: Checkpoint | None = None,
    progress: bool = True,
    run: Run | None = None,
    precision: str = "fp32",
) -> TrainResult:
    """Train `arch` on an ImageFolder and save a lifeloop checkpoint to `out`.

    With `init_from`, training continues from that checkpoint's weights and preprocessing.
    With `run` (MLflow), its parameters, per-epoch loss, held-out accuracy (all and per
    class) and the checkpoint's path and hash are logged there."""
    if epochs < 1:
        raise DataError(f"epochs must be >= 1, got {epochs}", setting="epochs")
    data = prepare(
        data_dir,
        arch=arch,
        input_size=input_size,
        holdout=holdout,
        seed=seed,
        init_from=init_from,
    )
    if run is not None:
        run.params(
            {
                "arch": arch,
                "epochs": epochs,
                "batch_size": batch_size,
                "lr": lr,
                **data_params(data),
                "init_from": init_from.sha256 if init_from else None,
            }
        )
    torch.manual_seed(seed)
    # Trained without the aux heads of googlenet and inception_v3: in train mode they would
    # answer a tuple, and they are never served.
    model = build(arch, len(data.labels), aux_heads=False)
    if init_from is not None:
        model.load_state_dict(without_aux_heads(arch, init_from.state_dict))
    chosen = pick_precision(precision, model, data.x_train, data.y_train, batch_size)
    if run is not None:
        run.params({"precision": chosen.name})
        run.tags({"lifeloop.precision_why": chosen.why})
    fit(
        model,
        data.x_train,
        data.y_train,
        epochs=epochs,
        batch_size=batch_size,
        lr=lr,
        seed=seed,
        progress=progress,
        what=f"{arch} on {len(data.x_train)} images",
        on_epoch=None if run is None else (lambda epoch, f: run.metrics(f, step=epoch)),
        precision=chosen,
    )
    extra = {"init_from": init_from.sha256 if init_from else None, "precision": chosen.name}
    return finish(model, arch, data, out, {"epochs": epochs, **extra}, run=run, precision=chosen)


def data_params(data: Prepared) -> dict[str, Any]:
    """What a run records of the data it trained on."""
    return {
        "holdout": data.holdout,
        "seed": data.seed,
        "input_size": data.preprocessing.size,
        "data": data.data_dir,
        "classes": len(data.labels),
        "train_images": len(data.x_train),
        "held_out_images": len(data.x_held),
    }


def finish(
    model: nn.Module,
    arch: str,
    data: Prepared,
    out: Path,
    training: dict[str, Any],
    *,
    run: Run | None = None,
    precision: Precision = FP32,
) -> TrainResult:
    """Score a trained model on the held-out split and save it as a checkpoint at `out`;
    `training` joins what the checkpoint records of how it was made."""
    accuracy, per_class = evaluate(model, data.x_held, data.y_held, data.labels)
    record: dict[str, Any] = {
        "data": str(data.data_dir),
        "seed": data.seed,
        "holdout": data.holdout,
        "holdout_accuracy": accuracy,
        "train_counts": {
            data.labels[i]: int((data.y_train == i).sum()) for i in range(len(data.labels))
        },
        **training,
    }
    checkpoint = Checkpoint(
        arch=arch,
        labels=data.labels,
        preprocessing=data.preprocessing,
        state_dict={k: v.detach().clone() for k, v in model.state_dict().items()},
        training=record,
    )
    path = checkpoint.save(out)
    if run is not None:
        run.metrics({"holdout_accuracy": accuracy})
        run.per_class("holdout_accuracy", per_class)
        run.link("checkpoint", path)
    return TrainResult(checkpoint, path, accuracy, per_class, precision)


def fit(
    model: nn.Module,
    x_train: np.ndarray,
    y_train: np.ndarray,
    *,
    epochs: int,
    batch_size: int = 64,
    lr: float = 2e-3,
    seed: int = 0,
    progress: bool = True,
    what: str = "",
    class_cap: int | None = None,
    on_epoch: Callable[[int, dict[str, float]], None] | None = None,
    precision: Precision = FP32,
    weight_decay: float = 1e-4,
    augment: float = 0.0,
) -> nn.Module:
    """AdamW with a one-cycle schedule over shuffled mini-batches, in place; a progress bar
    per step. Deterministic for a given seed. With `class_cap`, no class counts for more
    than that many images: a class with more has its loss scaled down to that (the weights
    then average 1 over the images, so the step size stays). `on_epoch(epoch, figures)` is
    told each epoch's mean loss and last learning rate (on rank 0 only). `precision` (see
    `pick_precision`) is the arithmetic: fp32, bf16 autocast on the CPU, or fp16 autocast
    with a gradient scaler on a CUDA GPU; the model is back on the CPU when this returns.
    `augment` shifts each training image by up to that share of its size, at random (edges
    repeated): 0 trains on the images as they are.

    Under `torchrun` (see lifeloop.retrain.distributed) every rank must call this with the
    same arrays: each trains on its share of every mini-batch as DDP, and all ranks end with
    the weights one process would have reached, up to floating-point order."""
    place = world()
    if place.distributed and precision.device != "cpu":
        raise DataError(
            "--precision fp16 trains on one GPU; under torchrun use fp32 or bf16 on CPUs"
        )
    with on_device(model, precision):
        return _fit(
            model,
            x_train,
            y_train,
            epochs=epochs,
            batch_size=batch_size,
            lr=lr,
            seed=seed,
            progress=progress,
            what=what,
            class_cap=class_cap,
            on_epoch=on_epoch,
            precision=precision,
            weight_decay=weight_decay,
            augment=augment,
        )


def _fit(
    model: nn.Module,
    x_train: np.ndarray,
    y_train: np.ndarray,
    *,
    epochs: int,
    batch_size: int,
    lr: float,
    seed: int,
    progress: bool,
    what: str,
    class_cap: int | None,
    on_epoch: Callable[[int, dict[str, float]], None] | None,
    precision: Precision,
    weight_decay: float,
    augment: float,
) -> nn.Module:
    place = world()
    device = torch.device(precision.device)
    scaler = precision.scaler()
    torch.manual_seed(seed)
    synced = synchronise_batch_norm(model) if place.distributed else model
    trainee = DistributedDataParallel(synced) if place.distributed else model
    optimizer = torch.optim.AdamW(trainee.parameters(), lr=lr, weight_decay=weight_decay)
    steps = epochs * max(1, -(-len(x_train) // batch_size))
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr, total_steps=steps)
    # Summed per shard and divided by the whole batch: DDP's average over ranks is then the
    # gradient of the batch's mean loss.
    loss_fn = nn.CrossEntropyLoss(
        weight=class_weights(y_train, class_cap).to(device) if class_cap else None,
        reduction="sum",
    )
    generator = torch.Generator().manual_seed(seed)
    xt, yt = torch.from_numpy(x_train), torch.from_numpy(y_train)

    columns = (
        TextColumn("[bold]train[/] {task.description}"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total} steps"),
        TimeRemainingColumn(),
    )
    shown = progress and place.is_leader
    with Progress(*columns, disable=not shown, transient=False) as bar:
        task = bar.add_task(what or f"{len(x_train)} images", total=steps)
        for epoch in range(epochs):
            trainee.train()
            order = torch.randperm(len(xt), generator=generator)
            total = 0.0
            for start in range(0, len(order), batch_size):
                index = order[start : start + batch_size]
                if len(index) < max(2, place.size):
                    continue  # batch norm cannot train on one sample; every rank needs one
                shard = index[place.rank :: place.size]
                optimizer.zero_grad()
                batch = shifted(xt[shard], augment, generator) if augment > 0 else xt[shard]
                with precision.autocast():
                    logits = trainee(batch.to(device))
                # The loss in fp32 whatever the arithmetic before it.
                loss = loss_fn(logits.float(), yt[shard].to(device)) * (place.size / len(index))
                if scaler is None:
                    loss.backward()
                    optimizer.step()
                else:
                    scaler.scale(loss).backward()
                    scaler.step(optimizer)
                    scaler.update()
                schedule.step()
                total += loss.item() * len(index) / place.size
                bar.advance(task)
            bar.update(task, description=f"epoch {epoch + 1}/{epochs} loss {total / len(xt):.3f}")
            if on_epoch is not None and place.is_leader:
                on_epoch(epoch, {"loss": total / len(xt), "lr": float(schedule.get_last_lr()[0])})
    if synced is not model:
        model.load_state_dict(synced.state_dict())
    model.eval()
    return model


def class_weights(y: np.ndarray, cap: int) -> torch.Tensor:
    """Per class index: min(1, cap / its count), scaled so that the weights average 1 over
    `y`; 0 for a class absent."""
    counts = np.bincount(y, minlength=int(y.max()) + 1 if len(y) else 0).astype(np.float64)
    weights = np.where(counts > 0, np.minimum(1.0, cap / np.maximum(counts, 1)), 0.0)
    mean = float((weights * counts).sum() / max(len(y), 1))
    return torch.tensor(weights / mean if mean else weights, dtype=torch.float32)


def _fit_normalisation(pre: Preprocessing, samples: list[Any]) -> Preprocessing:
    """Per-channel mean and std of the training images, measured in [0, 1]."""
    x, _ = load_arrays(samples[:2000], pre)
    return normalised_by(pre, x)


def normalised_by(unit: Preprocessing, x: np.ndarray) -> Preprocessing:
    """`unit` (mean 0, std 1: inputs in [0, 1]) with the per-channel mean and std of the
    inputs `x` [n, C, H, W] it made: the normalisation training measures."""
    mean = tuple(float(v) for v in x.mean(axis=(0, 2, 3)))
    std = tuple(max(float(v), 1e-3) for v in x.std(axis=(0, 2, 3)))
    return Preprocessing.from_dict({**unit.to_dict(), "mean": mean, "std": std})


def pick_precision(
    requested: str, model: nn.Module, x: np.ndarray, y: np.ndarray, batch_size: int = 64
) -> Precision:
    """What `--precision` means for this model on this machine; `auto` times training steps
    of a copy of the model on the first batch (the model itself is not touched)."""
    if requested != "auto":
        return choose(requested)
    probe = copy.deepcopy(model)
    xb, yb = torch.from_numpy(x[:batch_size]), torch.from_numpy(y[:batch_size])

    def step(precision: Precision) -> None:
        probe.train()
        probe.zero_grad()
        with precision.autocast():
            out = probe(xb)
        nn.functional.cross_entropy(out.float(), yb).backward()

    return choose("auto", step if len(xb) >= 2 else None)


def train_in_each(
    arch: str,
    x: np.ndarray,
    y: np.ndarray,
    x_held: np.ndarray,
    y_held: np.ndarray,
    labels: tuple[str, ...],
    *,
    precisions: tuple[Precision, ...],
    epochs: int,
    seed: int = 0,
) -> list[dict[str, Any]]:
    """The same model trained from the same start in each precision in turn: training
    images/s (of `fit` alone) and held-out accuracy, side by side in one process."""
    found = []
    for precision in precisions:
        torch.manual_seed(seed)
        model = build(arch, len(labels), aux_heads=False)
        began = time.perf_counter()
        fit(model, x, y, epochs=epochs, seed=seed, progress=False, precision=precision)
        seconds = time.perf_counter() - began
        accuracy, _ = evaluate(model, x_held, y_held, labels)
        found.append(
            {
                "precision": precision.name,
                "seconds": seconds,
                "images_per_s": epochs * len(x) / seconds,
                "accuracy": accuracy,
            }
        )
    return found


def shifted(images: torch.Tensor, share: float, generator: torch.Generator) -> torch.Tensor:
    """Each image [n, C, H, W] moved by up to `share` of its size in each direction, at
    random, its edges repeated into the space it leaves."""
    height, width = images.shape[-2:]
    pad = max(1, round(share * max(height, width)))
    padded = nn.functional.pad(images, (pad, pad, pad, pad), mode="replicate")
    offsets = torch.randint(0, 2 * pad + 1, (len(images), 2), generator=generator)
    return torch.stack(
        [
            padded[i, :, int(dy) : int(dy) + height, int(dx) : int(dx) + width]
            for i, (dy, dx) in enumerate(offsets)
        ]
    )
