"""The router's confidence cascade: which light model may stand before a classifier, and the
threshold that keeps held-out accuracy within a budget of the heavy model alone.

`calibrate` is plain arithmetic over per-image outcomes (the light model's top-1 confidence,
whether each model was right); `measure` gets those outcomes from a running server by asking
each model directly, and `check_light` refuses a light model the router could not use."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from lifeloop.client import LifeloopClient
from lifeloop.datasets import scan
from lifeloop.errors import RolloutError
from lifeloop.repository.manifest import Manifest
from lifeloop.repository.publish import read_config, version_numbers

# Thresholds `calibrate` prints beside the one it picks.
SHOWN = (0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99)


@dataclass(frozen=True)
class Outcomes:
    """Per held-out image: the light model's top-1 softmax, and whether each model was right."""

    confidence: np.ndarray
    light_correct: np.ndarray
    heavy_correct: np.ndarray

    def __post_init__(self) -> None:
        n = len(self.confidence)
        if n == 0 or len(self.light_correct) != n or len(self.heavy_correct) != n:
            raise RolloutError("calibration needs the same, non-zero number of outcomes per model")


@dataclass(frozen=True)
class Point:
    threshold: float
    accuracy: float  # of the cascade at this threshold
    light_fraction: float  # share of images the light model answers


@dataclass(frozen=True)
class Calibration:
    heavy_accuracy: float
    light_accuracy: float
    max_drop: float  # points
    chosen: Point | None  # None: no threshold keeps accuracy within the budget
    points: tuple[Point, ...]  # SHOWN, then the chosen one


def point(outcomes: Outcomes, threshold: float) -> Point:
    light = outcomes.confidence >= threshold
    right = np.where(light, outcomes.light_correct, outcomes.heavy_correct)
    return Point(float(threshold), float(right.mean()), float(light.mean()))


def calibrate(outcomes: Outcomes, max_drop: float) -> Calibration:
    """The lowest threshold (so the most light answers) whose cascade accuracy is at most
    `max_drop` points below the heavy model's alone. Only thresholds that change which images
    escalate are candidates: each confidence seen, and just above the highest."""
    if max_drop < 0:
        raise RolloutError(f"--max-drop must be >= 0 points, got {max_drop}")
    heavy = float(outcomes.heavy_correct.mean())
    floor = heavy - max_drop / 100 - 1e-12
    order = np.argsort(-outcomes.confidence, kind="stable")
    confidence = outcomes.confidence[order].astype(np.float64)
    light_right = np.concatenate([[0], np.cumsum(outcomes.light_correct[order])])
    heavy_right = np.concatenate([[0], np.cumsum(outcomes.heavy_correct[order])])
    n = len(confidence)
    # Keeping the m most confident images: right = light's on those, heavy's on the rest.
    accuracy = (light_right + heavy_right[-1] - heavy_right) / n
    chosen = None
    for m in range(n, -1, -1):  # the most light answers first
        # m rows at threshold confidence[m-1]: only where the next image is strictly below
        if 0 < m < n and confidence[m - 1] == confidence[m]:
            continue
        threshold = confidence[m - 1] if m else np.nextafter(confidence[0], np.inf)
        if threshold > 1.0:  # the top confidence is 1.0: no threshold escalates it
            continue
        if accuracy[m] >= floor:
            chosen = point(outcomes, float(threshold))
            break
    shown = tuple(point(outcomes, t) for t in SHOWN)
    return Calibration(
        heavy_accuracy=heavy,
        light_accuracy=float(outcomes.light_correct.mean()),
        max_drop=max_drop,
        chosen=chosen,
        points=shown if chosen is None else (*shown, chosen),
    )


def check_light(repository: Path, heavy: str, light: str, version: int | None) -> int:
    """The light model's version to use (the newest when None), after checking that the router
    can send it the classifier's inputs: same input shape, both published by lifeloop."""
    repository = Path(repository)
    versions = version_numbers(repository / light)
    if not versions:
        raise RolloutError(
            f"light model {light!r} has no published version in {repository}; export one "
            "first (say `lifeloop export --format int8 --model classifier_int8`)",
            model=light,
        )
    version = max(versions) if version is None else version
    if version not in versions:
        raise RolloutError(
            f"light model {light!r} has no version {version}; pick one of {versions}",
            model=light,
            version=version,
        )
    light_config, heavy_config = read_config(repository / light), read_config(repository / heavy)
    if light_config is None or heavy_config is None:
        raise RolloutError(f"{light!r} and {heavy!r} need a config.pbtxt each", model=light)
    light_dims, heavy_dims = light_config.inputs[0].dims, heavy_config.inputs[0].dims
    if light_dims != heavy_dims:
        raise RolloutError(
            f"light model {light!r} takes inputs shaped {light_dims} and {heavy!r} takes "
            f"{heavy_dims}; export the light model at the classifier's input size",
            model=light,
        )
    Manifest.read(repository / light / str(version))  # its labels decide what it may answer
    return version


def measure(
    client: LifeloopClient,
    eval_dir: Path,
    *,
    heavy: tuple[str, int],
    light: tuple[str, int],
    batch: int = 64,
) -> Outcomes:
    """Ask each model directly, version by version, about every image of `eval_dir` (one
    folder per class): the outcomes `calibrate` needs."""
    folder = scan(eval_dir)
    paths = [s.path for s in folder.samples]
    truth = [folder.labels[s.label] for s in folder.samples]

    def answers(model: tuple[str, int]) -> tuple[np.ndarray, np.ndarray]:
        confidence, right = [], []
        for start in range(0, len(paths), batch):
            part = paths[start : start + batch]
            for answer, label in zip(
                client.classify(part, top_k=1, model=model[0], version=model[1]),
                truth[start : start + batch],
                strict=True,
            ):
                confidence.append(answer.scores[0])
                right.append(answer.label == label)
        return np.array(confidence), np.array(right, dtype=bool)

    confidence, light_right = answers(light)
    _, heavy_right = answers(heavy)
    return Outcomes(confidence, light_right, heavy_right)


def table_rows(calibration: Calibration) -> Sequence[tuple[str, str, str, str]]:
    """(threshold, accuracy, change in points, light share) per point, for printing."""
    rows = []
    for p in calibration.points:
        mark = " (chosen)" if p is calibration.chosen else ""
        rows.append(
            (
                f"{p.threshold:.4g}{mark}",
                f"{p.accuracy:.4f}",
                f"{100 * (p.accuracy - calibration.heavy_accuracy):+.2f}",
                f"{p.light_fraction:.2%}",
            )
        )
    return rows
