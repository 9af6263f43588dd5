"""Checkpoint -> ONNX -> parity gate -> atomic publish: the one entry point the CLI, the demo
and the retrain loop use."""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from torch import nn

from lifeloop.export import checkpoint as ckpt
from lifeloop.export.onnx_export import INPUT_NAME, OPSET, OUTPUT_NAME, export_onnx
from lifeloop.export.parity import (
    DEFAULT_TOLERANCE,
    ParityReport,
    Tolerance,
    check_parity,
    gate,
    sample_inputs,
)
from lifeloop.repository import (
    PublishedVersion,
    TensorInfo,
    VersionDraft,
    classifier_config,
    ensure_repository,
    publish,
)

BATCH_SIZES = (1, 4, 16)


@dataclass(frozen=True)
class ExportResult:
    published: PublishedVersion
    parity: ParityReport


def export_checkpoint(
    checkpoint: ckpt.Checkpoint,
    repository: Path,
    model_name: str,
    *,
    samples: np.ndarray | None = None,
    tolerance: Tolerance = DEFAULT_TOLERANCE,
    version: int | None = None,
    server_url: str | None = None,
    max_batch_size: int = 32,
    evaluation: dict[str, object] | None = None,
) -> ExportResult:
    """Export a checkpoint and publish it as the next version of `model_name`.

    `samples` (preprocessed images, [n, C, H, W]) join the random inputs of the parity check,
    so that it also covers the inputs the model really sees."""
    ensure_repository(repository)  # fail on a bad path before minutes of export work
    model = checkpoint.build_model()
    with tempfile.TemporaryDirectory(prefix="lifeloop-export-") as tmp:
        onnx_path = export_onnx(
            model,
            checkpoint.preprocessing.input_shape,
            Path(tmp) / "model.onnx",
            arch=checkpoint.arch,
        )
        result = publish_onnx(
            model,
            onnx_path,
            checkpoint,
            repository,
            model_name,
            samples=samples,
            tolerance=tolerance,
            version=version,
            server_url=server_url,
            max_batch_size=max_batch_size,
            evaluation=evaluation,
        )
    # Retraining fine-tunes from the champion's PyTorch weights: keep them, outside the
    # repository (which holds only what Triton serves).
    checkpoint.save(archived_checkpoint(repository, model_name, result.published.version))
    return result


def archived_checkpoint(repository: Path, model: str, version: int) -> Path:
    """Where the checkpoint a version was exported from is kept:
    `<parent>/<repository name>.checkpoints/<model>/<version>.pt`."""
    repository = Path(repository).resolve()
    return repository.parent / f"{repository.name}.checkpoints" / model / f"{version}.pt"


def publish_onnx(
    model: nn.Module,
    onnx_path: Path,
    checkpoint: ckpt.Checkpoint,
    repository: Path,
    model_name: str,
    *,
    samples: np.ndarray | None = None,
    tolerance: Tolerance = DEFAULT_TOLERANCE,
    version: int | None = None,
    server_url: str | None = None,
    max_batch_size: int = 32,
    evaluation: dict[str, object] | None = None,
) -> ExportResult:
    """Gate an exported ONNX file against its PyTorch model, then publish it."""
    shape = checkpoint.preprocessing.input_shape
    inputs = sample_inputs(shape, BATCH_SIZES)
    if samples is not None and len(samples):
        inputs += [np.ascontiguousarray(samples[:64], dtype=np.float32)]
    report = gate(
        check_parity(model, onnx_path, inputs, tolerance),
        what=f"export of {checkpoint.arch!r} for model {model_name!r}",
    )
    config = classifier_config(
        model_name,
        input_name=INPUT_NAME,
        input_shape=shape,
        output_name=OUTPUT_NAME,
        max_batch_size=max_batch_size,
    )
    draft = VersionDraft(
        format="onnx",
        labels=checkpoint.labels,
        input=TensorInfo(name=INPUT_NAME, shape=shape),
        output_name=OUTPUT_NAME,
        preprocessing=checkpoint.preprocessing.to_dict(),
        source={
            "checkpoint_sha256": checkpoint.sha256,
            "architecture": checkpoint.arch,
            "training": checkpoint.training,
        },
        parity=report.to_dict(),
        evaluation=dict(evaluation or _recorded_evaluation(checkpoint)),
        tools={**tool_versions(), "onnx_opset": str(OPSET)},
    )
    published = publish(
        repository,
        config,
        {"model.onnx": onnx_path},
        draft,
        version=version,
        server_url=server_url,
    )
    return ExportResult(published, report)


def _recorded_evaluation(checkpoint: ckpt.Checkpoint) -> dict[str, object]:
    """The held-out figures training recorded in the checkpoint, if any."""
    keys = ("holdout_accuracy", "holdout")
    return {k: checkpoint.training[k] for k in keys if k in checkpoint.training}


def tool_versions() -> dict[str, str]:
    from importlib import metadata

    names = ("lifeloop", "torch", "torchvision", "onnx", "onnxruntime", "onnxscript")
    versions = {}
    for name in names:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return versions
