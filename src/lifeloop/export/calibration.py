"""The images the reduced-precision formats need, found for the user: INT8 calibrates on
training images, and the quality gate scores on labelled held-out images. By default both
come from the checkpoint's own training data and its held-out split, as training made it."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from lifeloop.errors import ExportError
from lifeloop.export.checkpoint import Checkpoint
from lifeloop.export.pipeline import PrecisionData
from lifeloop.export.quantize import QualityGate

CALIBRATION_IMAGES = 256
HELD_OUT_IMAGES = 2000


def precision_data(
    checkpoint: Checkpoint,
    *,
    calibration_dir: Path | None = None,
    eval_dir: Path | None = None,
    gate: QualityGate | None = None,
) -> PrecisionData:
    from lifeloop.datasets import load_arrays, scan

    gate = gate or QualityGate()
    pre = checkpoint.preprocessing
    data = checkpoint.training.get("data")
    train = held = None
    if calibration_dir is None or eval_dir is None:
        if not data or not Path(data).is_dir():
            raise ExportError(
                "onnx-int8 and onnx-fp16 need training images to calibrate on and labelled "
                "held-out images to gate on: pass --calibration DIR and --eval-dir DIR (this "
                f"checkpoint's training data {data or '(not recorded)'} is not available)"
            )
        folder = scan(Path(data))
        train, held = folder.split(
            float(checkpoint.training.get("holdout", 0.2)), int(checkpoint.training.get("seed", 0))
        )
        if tuple(folder.labels) != tuple(checkpoint.labels):
            raise ExportError(
                f"the classes of {data} are not the checkpoint's; pass --calibration and --eval-dir"
            )
    if calibration_dir is not None:
        train = list(scan(Path(calibration_dir)).samples)
    if eval_dir is not None:
        folder = scan(Path(eval_dir))
        unknown = [name for name in folder.labels if name not in checkpoint.labels]
        if unknown:
            raise ExportError(
                f"--eval-dir {eval_dir} has classes {unknown} the checkpoint does not know"
            )
        held = list(folder.samples)
        remap = np.array([checkpoint.labels.index(name) for name in folder.labels])
    else:
        remap = None
    train, held = train or [], held or []
    x_cal, _ = load_arrays(_spread(train, CALIBRATION_IMAGES), pre)
    x_held, y_held = load_arrays(_spread(held, HELD_OUT_IMAGES), pre)
    if remap is not None:
        y_held = remap[y_held]
    return PrecisionData(calibration=x_cal, x_held=x_held, y_held=y_held, gate=gate)


def _spread(samples: list, most: int) -> list:  # type: ignore[type-arg]
    """At most `most` samples, evenly spread so every class is represented."""
    step = max(1, -(-len(samples) // most))
    return samples[::step][:most]
