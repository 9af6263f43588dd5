"""`lifeloop prune`: remove channels with Torch-Pruning (DepGraph: whole channels taken out of
every layer that shares them, not masked), fine-tune, and keep the result only if it passes
the same accuracy gate as INT8: held-out top-1 within `max_accuracy_drop` of the dense model.

The pruned checkpoint records its layer sizes (lifeloop.export.structure), so it loads, exports
through the parity gate and retrains like any other."""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from lifeloop.datasets import load_arrays, scan
from lifeloop.errors import DataError, QualityGateError
from lifeloop.export import Checkpoint
from lifeloop.export.quantize import QualityGate, QualityReport
from lifeloop.export.structure import structure_of
from lifeloop.preprocessing import NORMALIZED
from lifeloop.retrain.training import fit, predict

PRUNED = "pruned"  # the quality report's format name
# Architectures the export supports that this pruning does not, and why.
UNPRUNABLE = {
    "vit_b_16": (
        "its embedding width runs through the class token, the position embedding and every "
        "attention head, which Torch-Pruning cuts only when told the heads and those unwrapped "
        "parameters; serve it in INT8 or FP16 instead"
    ),
}


@dataclass(frozen=True, kw_only=True)
class PruneSettings:
    ratio: float = 0.5  # share of channels removed from each prunable layer
    epochs: int = 4  # fine-tuning after the cut
    batch_size: int = 64
    lr: float = 2e-3
    holdout: float = 0.2
    seed: int = 0
    gate: QualityGate = field(
        default_factory=lambda: QualityGate(max_accuracy_drop=0.01, min_agreement=0.0)
    )

    def __post_init__(self) -> None:
        if not 0.0 < self.ratio < 1.0:
            raise DataError(f"ratio must be in (0, 1), got {self.ratio}", setting="ratio")
        if self.epochs < 0:
            raise DataError(f"epochs must be >= 0, got {self.epochs}", setting="epochs")


@dataclass(frozen=True)
class PruneResult:
    checkpoint: Checkpoint  # the pruned, fine-tuned model; saved at `path`
    path: Path
    report: QualityReport  # against the dense model, on held-out images
    before: dict[str, int]  # params and MACs of the dense model
    after: dict[str, int]  # ... and of the pruned one
    x_held: np.ndarray  # the held-out images, preprocessed by the checkpoint's recipe

    def figures(self) -> dict[str, Any]:
        """What the manifest records about the cut."""
        return {
            "ratio": self.checkpoint.training["pruning"]["ratio"],
            "params_before": self.before["params"],
            "params_after": self.after["params"],
            "macs_before": self.before["macs"],
            "macs_after": self.after["macs"],
            "dense_accuracy": self.report.fp32_accuracy,
            "accuracy": self.report.accuracy,
            "held_out": self.report.held_out,
        }


def prune(
    checkpoint: Checkpoint,
    data_dir: Path,
    out: Path,
    settings: PruneSettings | None = None,
    *,
    progress: bool = True,
) -> PruneResult:
    """Prune `checkpoint`'s model, fine-tune it on `data_dir`'s training split, gate it on the
    held-out split and save it to `out`. A refused cut raises QualityGateError with the
    figures, and nothing is written."""
    settings = settings or PruneSettings()
    if checkpoint.arch in UNPRUNABLE:
        raise DataError(f"{checkpoint.arch} cannot be pruned here: {UNPRUNABLE[checkpoint.arch]}")
    folder = scan(Path(data_dir))
    if tuple(folder.labels) != tuple(checkpoint.labels):
        raise DataError(
            f"the classes of {data_dir} ({', '.join(folder.labels[:6])}…) are not the "
            "checkpoint's; pass the folder it was trained on"
        )
    train_set, held_set = folder.split(settings.holdout, settings.seed)
    pre = checkpoint.preprocessing.with_kind(NORMALIZED)
    x_train, y_train = load_arrays(train_set, pre)
    x_held, y_held = load_arrays(held_set, pre)

    dense = checkpoint.build_model()
    model = copy.deepcopy(dense)
    example = torch.from_numpy(x_train[:1])
    before = count(model, example)
    cut_channels(model, example, settings.ratio)
    after = count(model, example)
    if settings.epochs:
        fit(
            model,
            x_train,
            y_train,
            epochs=settings.epochs,
            batch_size=settings.batch_size,
            lr=settings.lr,
            seed=settings.seed,
            progress=progress,
            what=f"{checkpoint.arch} pruned {settings.ratio:.0%}",
        )
    reference, answers = predict(dense, x_held), predict(model, x_held)
    report = QualityReport(
        format=PRUNED,
        held_out=len(x_held),
        fp32_accuracy=float(np.mean(reference == y_held)),
        accuracy=float(np.mean(answers == y_held)),
        agreement=float(np.mean(answers == reference)),
        gate=settings.gate,
        reference="the dense model",
    )
    if not report.passed:
        raise QualityGateError(report)
    pruned = Checkpoint(
        arch=checkpoint.arch,
        labels=checkpoint.labels,
        preprocessing=checkpoint.preprocessing,
        state_dict={k: v.detach().clone() for k, v in model.state_dict().items()},
        structure=structure_of(model),
        training={
            **checkpoint.training,
            "holdout_accuracy": report.accuracy,
            "pruning": {
                "from": checkpoint.sha256,
                "ratio": settings.ratio,
                "epochs": settings.epochs,
                "params": [before["params"], after["params"]],
                "macs": [before["macs"], after["macs"]],
            },
        },
    )
    path = pruned.save(out)
    return PruneResult(pruned, path, report, before, after, x_held)


def cut_channels(model: nn.Module, example: torch.Tensor, ratio: float) -> nn.Module:
    """Remove `ratio` of the channels of every prunable layer, in place, by their weights' L2
    norm over each dependency group; the layer that answers the classes stays whole."""
    import torch_pruning as tp

    # the layer that answers the classes: a Linear, or squeezenet's last convolution
    head = [m for m in model.modules() if isinstance(m, nn.Linear | nn.Conv2d)][-1]
    tp.pruner.MagnitudePruner(
        model,
        example,
        importance=tp.importance.GroupMagnitudeImportance(p=2),
        pruning_ratio=ratio,
        ignored_layers=[head],
    ).step()
    return model


def count(model: nn.Module, example: torch.Tensor) -> dict[str, int]:
    """Parameters, and multiply-accumulates for `example`, by Torch-Pruning's counter."""
    import torch_pruning as tp

    macs, params = tp.utils.count_ops_and_params(model, example)
    return {"params": int(params), "macs": int(macs)}
