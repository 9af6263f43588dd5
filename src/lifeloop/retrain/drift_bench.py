"""`lifeloop bench-drift`: does the drift test see shifted traffic, and stay quiet on the rest?

A small CNN is trained on the data set's training split, as `lifeloop train` trains it. Its
softmax on half of the test split is the reference, as publishing stores it. Windows of
answers are then drawn from the other half, each one shifted the same way, and tested
against the reference exactly as `lifeloop drift` tests logged answers: both mapped to the
top k the router logs, per-class KS, Bonferroni. A shift's detection rate is the share of
its windows with p < alpha; the unshifted windows give the false-alarm rate.

The shifts are what production image traffic does (Rabanser et al. use the same families):
a softer camera (Gaussian blur), a noisier sensor (additive Gaussian noise), a brighter
scene, and a change in what is photographed (class prior: half of a window from one class).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from lifeloop.datasets import ImageArrays
from lifeloop.drift import ALPHA, Reference, ks_test, top_k_softmax
from lifeloop.errors import DataError
from lifeloop.export.architectures import SMALL_CNN, build
from lifeloop.preprocessing import Preprocessing
from lifeloop.retrain.learning import load_data
from lifeloop.retrain.training import fit, logits, normalised_by
from lifeloop.scoring import softmax

# The targets: detected within 300 answers in 90% of windows; 5% false alarms.
MIN_DETECTION = 0.90
MAX_FALSE_ALARMS = 0.05


@dataclass(frozen=True, kw_only=True)
class DriftBenchSettings:
    windows: int = 40  # per shift
    window: int = 300  # answers per window
    reference: int = 1000  # held-out images in the reference
    top_k: int = 5  # what the router logs
    limit_per_class: int | None = 1000  # training images per class
    epochs: int = 4
    size: int = 32
    blur_sigma: float = 1.0  # pixels
    noise_std: float = 0.1  # of the pixel range
    brightness: float = 0.2  # of the pixel range, added
    prior_share: float = 0.5  # of a window drawn from one class
    alpha: float = ALPHA
    seed: int = 0

    def check(self, test_images: int) -> None:
        if self.windows < 1 or self.window < 2:
            raise DataError("--windows must be >= 1 and --window >= 2")
        if self.blur_sigma < 0 or self.noise_std < 0 or not -1 <= self.brightness <= 1:
            raise DataError("--blur-sigma and --noise-std must be >= 0 and --brightness in [-1, 1]")
        if not 0 < self.prior_share <= 1:
            raise DataError(f"--prior-share must be in (0, 1], got {self.prior_share}")
        if self.reference + self.window > test_images:
            raise DataError(
                f"a reference of {self.reference} and windows of {self.window} need "
                f"{self.reference + self.window} test images; the data set has {test_images}: "
                "lower --reference or --window"
            )


def _pixels(images: np.ndarray, change: Callable[[np.ndarray], np.ndarray]) -> np.ndarray:
    return np.clip(change(images.astype(np.float32)), 0, 255).round().astype(np.uint8)


def shifts(settings: DriftBenchSettings) -> dict[str, Callable[[np.ndarray, Any], np.ndarray]]:
    """Pixel shifts by name: (uint8 images, rng) -> uint8 images. `prior` is drawn, not
    applied to pixels (see `_draw`)."""
    from scipy.ndimage import gaussian_filter

    def blur(images: np.ndarray, _: Any) -> np.ndarray:
        sigma = (0, settings.blur_sigma, settings.blur_sigma) + (0,) * (images.ndim - 3)
        return _pixels(images, lambda x: gaussian_filter(x, sigma=sigma))

    def noise(images: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        std = settings.noise_std * 255
        return _pixels(images, lambda x: x + rng.normal(0, std, x.shape))

    def brighter(images: np.ndarray, _: Any) -> np.ndarray:
        return _pixels(images, lambda x: x + settings.brightness * 255)

    return {"blur": blur, "noise": noise, "brightness": brighter}


def _draw(
    pool: ImageArrays, settings: DriftBenchSettings, rng: np.random.Generator, prior: bool
) -> np.ndarray:
    """A window's indices into `pool`: uniform, or with `prior_share` from one class."""
    if not prior:
        return rng.choice(len(pool), settings.window, replace=False)
    favoured = int(rng.integers(len(pool.labels)))
    members = np.flatnonzero(pool.targets == favoured)
    others = np.flatnonzero(pool.targets != favoured)
    n = round(settings.window * settings.prior_share)
    return np.concatenate(
        [rng.choice(members, n, replace=n > len(members)), rng.choice(others, settings.window - n)]
    )


def run_drift_bench(
    train: ImageArrays,
    test: ImageArrays,
    settings: DriftBenchSettings,
    *,
    say: Callable[[str], None] = lambda _: None,
) -> dict[str, Any]:
    import torch

    settings.check(len(test))
    rng = np.random.default_rng(settings.seed)
    chosen = np.concatenate(
        [
            rng.permutation(np.flatnonzero(train.targets == c))[: settings.limit_per_class]
            for c in range(len(train.labels))
        ]
    )
    raw = Preprocessing(size=settings.size, mean=(0, 0, 0), std=(1, 1, 1))
    x_raw = train.take(chosen).to_inputs(raw)
    pre = normalised_by(raw, x_raw)  # the normalisation, measured as train does
    torch.manual_seed(settings.seed)
    model = build(SMALL_CNN, len(train.labels), aux_heads=False)
    say(f"training the small CNN on {len(chosen)} images, {settings.epochs} epochs")
    model = fit(
        model,
        raw.convert(x_raw, pre),  # the same images, not decoded again
        train.targets[chosen],
        epochs=settings.epochs,
        seed=settings.seed,
        progress=False,
    )

    def softmax_of(images: ImageArrays) -> np.ndarray:
        return softmax(logits(model, images.to_inputs(pre)))

    order = rng.permutation(len(test))
    reference = Reference.of_logits(
        logits(model, test.take(order[: settings.reference]).to_inputs(pre)), test.labels
    )
    pool = test.take(order[settings.reference :])
    expected = reference.top_k(settings.top_k)

    by_shift: dict[str, dict[str, Any]] = {}
    pixel_shifts = shifts(settings)
    for name in ("none", *pixel_shifts, "prior"):
        p_values = []
        for _ in range(settings.windows):
            index = _draw(pool, settings, rng, prior=name == "prior")
            window = pool.take(index)
            if name in pixel_shifts:
                window = ImageArrays(
                    pixel_shifts[name](window.images, rng), window.targets, window.labels
                )
            found = ks_test(
                expected,
                top_k_softmax(softmax_of(window), settings.top_k),
                test.labels,
                alpha=settings.alpha,
            )
            p_values.append(found.p_value)
        alarms = float(np.mean(np.array(p_values) < settings.alpha))
        by_shift[name] = {
            "what": _what(name, settings),
            "alarm_rate": alarms,
            "median_p": float(np.median(p_values)),
        }
        say(f"{name}: alarms in {alarms:.0%} of {settings.windows} windows")
    return {
        "settings": asdict(settings),
        "shifts": by_shift,
        "targets": targets(by_shift, settings),
    }


def _what(name: str, settings: DriftBenchSettings) -> str:
    return {
        "none": "unshifted test images",
        "blur": f"Gaussian blur, sigma {settings.blur_sigma:g} px",
        "noise": f"additive Gaussian noise, std {settings.noise_std:.0%} of the pixel range",
        "brightness": f"brightness +{settings.brightness:.0%} of the pixel range",
        "prior": f"{settings.prior_share:.0%} of the window from one class",
    }[name]


def targets(
    by_shift: dict[str, dict[str, Any]], settings: DriftBenchSettings
) -> list[dict[str, Any]]:
    rows = [
        {
            "target": f"{name} detected at p < {settings.alpha} within {settings.window} "
            f"answers in >= {MIN_DETECTION:.0%} of windows",
            "value": found["alarm_rate"],
            "met": found["alarm_rate"] >= MIN_DETECTION,
        }
        for name, found in by_shift.items()
        if name != "none"
    ]
    if "none" in by_shift:
        rate = by_shift["none"]["alarm_rate"]
        rows.append(
            {
                "target": f"in-distribution windows alarm in <= {MAX_FALSE_ALARMS:.0%}",
                "value": rate,
                "met": rate <= MAX_FALSE_ALARMS,
            }
        )
    return rows


def bench_drift(
    data: str,
    out: Path,
    settings: DriftBenchSettings,
    *,
    say: Callable[[str], None] = lambda _: None,
) -> dict[str, Any]:
    """Run the drift bench and write `out/drift.json`."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    train, test = load_data(data, out, settings.seed)
    result = {"data": data, **run_drift_bench(train, test, settings, say=say)}
    (out / "drift.json").write_text(json.dumps(result, indent=2) + "\n")
    return result
