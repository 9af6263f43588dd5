"""Checkpoint -> ONNX -> parity gate -> atomic publish: the one entry point the CLI, the demo
and the retrain loop use."""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
from torch import nn

from lifeloop.drift import REFERENCE_IMAGES, REFERENCE_NAME, Reference
from lifeloop.errors import ExportError, QualityGateError
from lifeloop.export import checkpoint as ckpt
from lifeloop.export.formats import (
    INT8,
    ONNX,
    REDUCED,
    TENSORRT,
    TRT_INT8,
    format_model,
    parse_formats,
)
from lifeloop.export.onnx_export import INPUT_NAME, OPSET, OUTPUT_NAME, export_onnx, served_model
from lifeloop.export.parity import (
    DEFAULT_TOLERANCE,
    ParityReport,
    Tolerance,
    check_parity,
    gate,
    sample_inputs,
)
from lifeloop.export.quantize import (
    QualityGate,
    QualityReport,
    check_quality,
    convert_fp16,
    onnx_logits,
    quantize_int8,
)
from lifeloop.preprocessing import NORMALIZED, PIXELS, Preprocessing
from lifeloop.repository import (
    PublishedVersion,
    TensorInfo,
    VersionDraft,
    classifier_config,
    ensure_repository,
    publish,
    read_config,
    write_config,
)

BATCH_SIZES = (1, 4, 16)


@dataclass(frozen=True)
class ExportResult:
    published: PublishedVersion  # the first format's (fp32 ONNX when it was asked for)
    parity: ParityReport
    by_format: dict[str, PublishedVersion] = field(default_factory=dict)
    quality: dict[str, QualityReport] = field(default_factory=dict)


@dataclass(frozen=True)
class PrecisionData:
    """What the reduced-precision formats need: training images to calibrate INT8 on, and
    labelled held-out images for the quality gate, both preprocessed by the checkpoint's
    (normalized) recipe; the export turns them into what the version takes."""

    calibration: np.ndarray
    x_held: np.ndarray
    y_held: np.ndarray
    gate: QualityGate = field(default_factory=QualityGate)


def export_checkpoint(
    checkpoint: ckpt.Checkpoint,
    repository: Path,
    model_name: str,
    *,
    samples: np.ndarray | None = None,
    tolerance: Tolerance = DEFAULT_TOLERANCE,
    version: int | None = None,
    max_batch_size: int = 32,
    evaluation: dict[str, object] | None = None,
    formats: tuple[str, ...] = (ONNX,),
    precision: PrecisionData | None = None,
    input_kind: str = PIXELS,
    response_cache: bool | None = None,
    reference: np.ndarray | None = None,
) -> ExportResult:
    """Export a checkpoint and publish it as the next version of `model_name`, in each of
    `formats` (the reduced-precision ones as `<model>_int8`, `<model>_fp16`).

    With `input_kind` "pixels" (the default) the graph normalises as its first op and the
    version takes pixel values 0..255; with "normalized" it takes what training fed it.
    `samples` (images preprocessed by the checkpoint's recipe, [n, C, H, W]) join the random
    inputs of the parity check, so that it also covers the inputs the model really sees. Every
    gate runs before anything is published: one refused format publishes none.

    `response_cache` turns Triton's response cache on or off in each model's config; None
    leaves an existing config as it is (off for a new model).

    `reference` (held-out images, preprocessed like `samples`) gives every version its drift
    reference: its own softmax on them, stored in the version folder (lifeloop.drift)."""
    ensure_repository(repository)  # fail on a bad path before minutes of export work
    formats = parse_formats(",".join(formats))
    reduced = [f for f in formats if f in REDUCED]
    if precision is None and reduced:
        raise ExportError(
            f"{', '.join(reduced)} need calibration and held-out images; export a checkpoint "
            "lifeloop trained (its data is used), or pass --calibration and --eval-dir"
        )
    plans = [f for f in formats if f in TENSORRT]
    if plans:
        from lifeloop.export.tensorrt import require_tensorrt

        require_tensorrt()
    if precision is None and plans:
        raise ExportError(
            f"{', '.join(plans)} are gated against fp32 on held-out images; export a "
            "checkpoint lifeloop trained (its data is used), or pass --calibration and --eval-dir"
        )
    trained_on = checkpoint.preprocessing.with_kind(NORMALIZED)
    served = trained_on.with_kind(input_kind)
    if precision is not None:
        precision = replace(
            precision,
            calibration=trained_on.convert(precision.calibration, served),
            x_held=trained_on.convert(precision.x_held, served),
        )
    if samples is not None:
        samples = trained_on.convert(samples, served)
    if reference is not None:
        reference = trained_on.convert(reference[:REFERENCE_IMAGES], served)
    model = served_model(checkpoint.build_model(), served)
    shape = served.input_shape
    with tempfile.TemporaryDirectory(prefix="lifeloop-export-") as tmp:
        onnx_path = export_onnx(model, shape, Path(tmp) / "model.onnx", arch=checkpoint.arch)
        parity = _parity_gate(
            model, onnx_path, served, model_name, samples, tolerance, checkpoint.arch
        )
        files: dict[str, Path] = {ONNX: onnx_path} if ONNX in formats else {}
        quality: dict[str, QualityReport] = {}
        for fmt in reduced:
            data = _require(precision)
            path = Path(tmp) / f"{fmt}.onnx"
            if fmt == INT8:
                quantize_int8(onnx_path, path, data.calibration)
            else:
                convert_fp16(onnx_path, path)
            files[fmt], quality[fmt] = path, _gated(onnx_path, path, fmt, data)
        for fmt in plans:
            path, report = _build_plan(
                onnx_path, Path(tmp), fmt, _require(precision), shape, max_batch_size
            )
            files[fmt], quality[fmt] = path, report
        references = (
            _drift_references(files, onnx_path, reference, checkpoint.labels, Path(tmp))
            if reference is not None and len(reference)
            else {}
        )
        by_format: dict[str, PublishedVersion] = {}
        for fmt, path in files.items():
            by_format[fmt] = publish_format(
                checkpoint,
                repository,
                format_model(model_name, fmt),
                fmt,
                path,
                parity,
                preprocessing=served,
                evaluation=dict(evaluation or _recorded_evaluation(checkpoint)),
                quality=quality.get(fmt),
                # The same checkpoint has the same version number in every format.
                version=version or (by_format[ONNX].version if ONNX in by_format else None),
                max_batch_size=max_batch_size,
                response_cache=response_cache,
                extra_files={REFERENCE_NAME: references[fmt]} if fmt in references else None,
            )
    first = next(iter(by_format.values()))
    # Retraining fine-tunes from the champion's PyTorch weights: keep them, outside the
    # repository (which holds only what Triton serves).
    for published in by_format.values():
        checkpoint.save(archived_checkpoint(repository, published.model, published.version))
    return ExportResult(first, parity, by_format, quality)


def _drift_references(
    files: dict[str, Path],
    onnx_path: Path,
    images: np.ndarray,
    labels: tuple[str, ...],
    tmp: Path,
) -> dict[str, Path]:
    """Each format's softmax on the held-out images, written for its version folder. A
    TensorRT plan cannot run here: its reference is the fp32 ONNX's, which the plan's gate
    has held it close to."""
    written = {}
    for fmt, path in files.items():
        source = onnx_path if fmt in TENSORRT else path
        reference = Reference.of_logits(onnx_logits(source, images), labels)
        written[fmt] = tmp / f"{fmt}-{REFERENCE_NAME}"
        written[fmt].write_bytes(reference.to_bytes())
    return written


def _build_plan(
    onnx_path: Path,
    tmp: Path,
    fmt: str,
    data: PrecisionData,
    shape: tuple[int, ...],
    max_batch_size: int,
) -> tuple[Path, QualityReport]:
    from lifeloop.export.tensorrt import batch_profile, build_plan, predict_plan

    # The precision is in the graph TensorRT parses: fp16 tensors, or Q/DQ nodes whose scales
    # were calibrated on the training images.
    typed = tmp / f"{fmt}.onnx"
    if fmt == TRT_INT8:
        quantize_int8(onnx_path, typed, data.calibration, for_tensorrt=True)
    else:
        convert_fp16(onnx_path, typed)
    path = build_plan(
        typed, tmp / f"{fmt}.plan", profile=batch_profile(INPUT_NAME, shape, max_batch_size)
    )
    report = _gated(
        onnx_path,
        path,
        fmt,
        data,
        predict=lambda plan, x: predict_plan(
            plan, x, input_name=INPUT_NAME, output_name=OUTPUT_NAME
        ),
    )
    return path, report


def _gated(
    fp32: Path,
    candidate: Path,
    fmt: str,
    data: PrecisionData,
    predict: Callable[[Path, np.ndarray], np.ndarray] | None = None,
) -> QualityReport:
    """The candidate's quality report, or QualityGateError when it fails the gate."""
    report = check_quality(
        fp32, candidate, data.x_held, data.y_held, format=fmt, gate=data.gate, predict=predict
    )
    if not report.passed:
        raise QualityGateError(report)
    return report


def _require(precision: PrecisionData | None) -> PrecisionData:
    if precision is None:
        raise ExportError("reduced-precision formats need calibration and held-out images")
    return precision


def archive_dir(repository: Path) -> Path:
    """`<parent>/<repository name>.checkpoints`: beside the repository, like the store."""
    repository = Path(repository).resolve()
    return repository.parent / f"{repository.name}.checkpoints"


def archived_checkpoint(repository: Path, model: str, version: int) -> Path:
    """Where the checkpoint a version was exported from is kept:
    `<archive_dir>/<model>/<version>.pt`."""
    return archive_dir(repository) / model / f"{version}.pt"


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
    max_batch_size: int = 32,
    evaluation: dict[str, object] | None = None,
) -> ExportResult:
    """Gate an exported ONNX file against its PyTorch model, then publish it; the file takes
    what `model` takes, the inputs of the checkpoint's own recipe."""
    pre = checkpoint.preprocessing
    report = _parity_gate(model, onnx_path, pre, model_name, samples, tolerance, checkpoint.arch)
    published = publish_format(
        checkpoint,
        repository,
        model_name,
        ONNX,
        onnx_path,
        report,
        preprocessing=pre,
        evaluation=dict(evaluation or _recorded_evaluation(checkpoint)),
        version=version,
        max_batch_size=max_batch_size,
    )
    return ExportResult(published, report, {ONNX: published})


def _parity_gate(
    model: nn.Module,
    onnx_path: Path,
    served: Preprocessing,
    model_name: str,
    samples: np.ndarray | None,
    tolerance: Tolerance,
    arch: str,
) -> ParityReport:
    """PyTorch (behind the same normalisation, for a pixel version) against the ONNX file, on
    the same inputs of the kind the version takes."""
    trained_on = served.with_kind(NORMALIZED)
    inputs = [
        trained_on.convert(batch, served)
        for batch in sample_inputs(served.input_shape, BATCH_SIZES)
    ]
    if samples is not None and len(samples):
        inputs += [np.ascontiguousarray(samples[:64], dtype=np.float32)]
    return gate(
        check_parity(model, onnx_path, inputs, tolerance),
        what=f"export of {arch!r} for model {model_name!r}",
    )


def publish_format(
    checkpoint: ckpt.Checkpoint,
    repository: Path,
    model_name: str,
    fmt: str,
    path: Path,
    parity: ParityReport | None,
    *,
    preprocessing: Preprocessing,
    evaluation: dict[str, object],
    quality: QualityReport | None = None,
    version: int | None,
    max_batch_size: int,
    response_cache: bool | None = None,
    extra_files: dict[str, Path] | None = None,
) -> PublishedVersion:
    """Publish one exported file as a version that takes `preprocessing`'s inputs, with
    `extra_files` (names in the version folder -> files) beside it."""
    shape = preprocessing.input_shape
    config = classifier_config(
        model_name,
        input_name=INPUT_NAME,
        input_shape=shape,
        output_name=OUTPUT_NAME,
        max_batch_size=max_batch_size,
        input_format=preprocessing.layout,
        response_cache=bool(response_cache),
    )
    current = read_config(Path(repository) / model_name)
    if (
        response_cache is not None
        and current is not None
        and current.response_cache != response_cache
    ):
        # the config is the model's, written once; the switch is the one thing changed here
        write_config(repository, replace(current, response_cache=response_cache))
    filename, tools = "model.onnx", {**tool_versions(), "onnx_opset": str(OPSET)}
    if fmt in TENSORRT:
        from lifeloop.export.tensorrt import PLAN_FILE, plan_config, this_target

        config = plan_config(
            model_name,
            input_name=INPUT_NAME,
            input_shape=shape,
            output_name=OUTPUT_NAME,
            num_classes=len(checkpoint.labels),
            max_batch_size=max_batch_size,
            base=config,
        )
        filename, tools = PLAN_FILE, {**tools, **this_target().to_tools()}
    if quality is not None:
        evaluation = {**evaluation, "quality_gate": quality.to_dict()}
    draft = VersionDraft(
        format=fmt,
        labels=checkpoint.labels,
        input=TensorInfo(name=INPUT_NAME, shape=shape, layout=preprocessing.layout),
        output_name=OUTPUT_NAME,
        preprocessing=preprocessing.to_dict(),
        source={
            "checkpoint_sha256": checkpoint.sha256,
            "architecture": checkpoint.arch,
            "training": checkpoint.training,
        },
        parity=parity.to_dict() if parity else {},
        evaluation=evaluation,
        tools=tools,
    )
    files = {filename: path, **(extra_files or {})}
    return publish(repository, config, files, draft, version=version)


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
