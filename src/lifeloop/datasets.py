"""Image folders: the demo's digits written out as one, and any user's folder read the same way.

Layout is torchvision's ImageFolder: `<root>/<label>/<image>`. The held-out split is stratified
and seeded, so training, export samples and served evaluation all see the same split.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from lifeloop.errors import DataError
from lifeloop.preprocessing import Preprocessing

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"}


@dataclass(frozen=True)
class Sample:
    path: Path
    label: int


@dataclass(frozen=True)
class ImageFolder:
    root: Path
    labels: tuple[str, ...]
    samples: tuple[Sample, ...]

    def split(self, holdout: float = 0.2, seed: int = 0) -> tuple[list[Sample], list[Sample]]:
        """(train, held-out), stratified per class and stable for a given seed."""
        if not 0 < holdout < 1:
            raise DataError(f"holdout must be between 0 and 1, got {holdout}")
        train, held = [], []
        for index in range(len(self.labels)):
            members = sorted((s for s in self.samples if s.label == index), key=lambda s: s.path)
            random.Random(f"{seed}:{self.labels[index]}").shuffle(members)
            cut = max(1, round(len(members) * holdout)) if len(members) > 1 else 0
            held += members[:cut]
            train += members[cut:]
        return train, held


def scan(root: Path) -> ImageFolder:
    """Read an ImageFolder's layout; a file that is not an image is an error naming it."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(
            f"data folder {root} does not exist; pass a folder of <label>/<image> files"
        )
    classes = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if len(classes) < 2:
        raise DataError(
            f"data folder {root} has {len(classes)} class folders; it needs at least 2 "
            "(<root>/<label>/<image>)"
        )
    stray = [p for p in root.iterdir() if p.is_file() and not p.name.startswith(".")]
    samples = []
    for index, name in enumerate(classes):
        for path in sorted((root / name).iterdir()):
            if path.name.startswith("."):
                continue
            if path.is_dir() or path.suffix.lower() not in IMAGE_SUFFIXES:
                stray.append(path)
                continue
            samples.append(Sample(path, index))
    if stray:
        raise DataError(
            f"data folder {root} has {len(stray)} entries that are not images, e.g. {stray[0]}; "
            f"move them out (images end in {', '.join(sorted(IMAGE_SUFFIXES))})"
        )
    empty = [c for i, c in enumerate(classes) if not any(s.label == i for s in samples)]
    if empty:
        raise DataError(f"class folder {root / empty[0]} has no images; add some or remove it")
    return ImageFolder(root, tuple(classes), tuple(samples))


def link_folder(root: Path, folder: ImageFolder, samples: list[Sample]) -> Path:
    """An image folder of `samples` under `root`, as symlinks into `folder`: a subset to
    train or evaluate on without copying images."""
    for sample in samples:
        target = Path(root) / folder.labels[sample.label] / sample.path.name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.symlink_to(Path(sample.path).resolve())
    return Path(root)


def load_arrays(samples: list[Sample], pre: Preprocessing) -> tuple[np.ndarray, np.ndarray]:
    """Samples -> (float32 [n, C, H, W], int64 [n]); an unreadable image is an error naming it."""
    xs = []
    for sample in samples:
        try:
            with Image.open(sample.path) as image:
                xs.append(pre.to_array(image))
        except (OSError, ValueError) as exc:
            raise DataError(
                f"{sample.path} is not a readable image ({exc}); replace or remove it"
            ) from exc
    x = np.stack(xs) if xs else np.zeros((0, *pre.input_shape), np.float32)
    return x.astype(np.float32), np.asarray([s.label for s in samples], dtype=np.int64)


def write_digits(out: Path) -> ImageFolder:
    """scikit-learn's bundled handwritten digits (1,797 8x8 images; no download) as PNGs."""
    out = Path(out)
    marker = out / ".complete"
    if not marker.is_file():
        from sklearn.datasets import load_digits

        digits = load_digits()
        for index, (pixels, target) in enumerate(zip(digits.images, digits.target, strict=True)):
            folder = out / str(int(target))
            folder.mkdir(parents=True, exist_ok=True)
            image = Image.fromarray((pixels * (255.0 / 16.0)).round().astype(np.uint8), mode="L")
            image.save(folder / f"{index:04d}.png")
        marker.write_text("sklearn.datasets.load_digits\n")
    return scan(out)
