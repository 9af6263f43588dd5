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

    pre = checkpoint.preprocessing
    train: list = []  # type: ignore[type-arg]
    held: list = []  # type: ignore[type-arg]
    if calibration_dir is None or eval_dir is None:
        train, held = _own_split(checkpoint)
    if calibration_dir is not None:
        train = list(scan(Path(calibration_dir)).samples)
    remap = None
    if eval_dir is not None:
        held, remap = _eval_samples(checkpoint, eval_dir)
    x_cal, _ = load_arrays(_spread(train, CALIBRATION_IMAGES), pre)
    x_held, y_held = load_arrays(_spread(held, HELD_OUT_IMAGES), pre)
    if remap is not None:
        y_held = remap[y_held]
    return PrecisionData(
        calibration=x_cal, x_held=x_held, y_held=y_held, gate=gate or QualityGate()
    )


def reference_images(checkpoint: Checkpoint, eval_dir: Path | None = None) -> np.ndarray | None:
    """Held-out images for the drift reference (lifeloop.drift): `eval_dir`'s, else the
    checkpoint's own held-out split; None when neither is there."""
    from lifeloop.datasets import load_arrays
    from lifeloop.drift import REFERENCE_IMAGES

    if eval_dir is not None:
        held, _ = _eval_samples(checkpoint, eval_dir)
    elif _training_data(checkpoint) is not None:
        _, held = _own_split(checkpoint)
    else:
        return None
    x_held, _ = load_arrays(_spread(held, REFERENCE_IMAGES), checkpoint.preprocessing)
    return x_held


def _training_data(checkpoint: Checkpoint) -> Path | None:
    data = checkpoint.training.get("data")
    return Path(data) if data and Path(data).is_dir() else None


def _own_split(checkpoint: Checkpoint) -> tuple[list, list]:  # type: ignore[type-arg]
    """(train, held-out) samples of the checkpoint's training data, split as training did."""
    from lifeloop.datasets import scan

    data = _training_data(checkpoint)
    if data is None:
        raise ExportError(
            "onnx-int8 and onnx-fp16 need training images to calibrate on and labelled "
            "held-out images to gate on: pass --calibration DIR and --eval-dir DIR (this "
            f"checkpoint's training data {checkpoint.training.get('data') or '(not recorded)'} "
            "is not available)"
        )
    folder = scan(data)
    if tuple(folder.labels) != tuple(checkpoint.labels):
        raise ExportError(
            f"the classes of {data} are not the checkpoint's; pass --calibration and --eval-dir"
        )
    train, held = folder.split(
        float(checkpoint.training.get("holdout", 0.2)), int(checkpoint.training.get("seed", 0))
    )
    return list(train), list(held)


def _eval_samples(checkpoint: Checkpoint, eval_dir: Path) -> tuple[list, np.ndarray]:  # type: ignore[type-arg]
    """`eval_dir`'s samples, and the map from its class indices to the checkpoint's."""
    from lifeloop.datasets import scan

    folder = scan(Path(eval_dir))
    unknown = [name for name in folder.labels if name not in checkpoint.labels]
    if unknown:
        raise ExportError(
            f"--eval-dir {eval_dir} has classes {unknown} the checkpoint does not know"
        )
    return list(folder.samples), np.array([checkpoint.labels.index(n) for n in folder.labels])


def _spread(samples: list, most: int) -> list:  # type: ignore[type-arg]
    """At most `most` samples, evenly spread so every class is represented."""
    step = max(1, -(-len(samples) // most))
    return samples[::step][:most]
