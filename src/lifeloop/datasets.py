"""Image folders: the demo's digits written out as one, and any user's folder read the same way.

Layout is torchvision's ImageFolder: `<root>/<label>/<image>`. The held-out split is stratified
and seeded, so training, export samples and served evaluation all see the same split.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

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


FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")
# Zalando's class names, as folder-safe labels.
FASHION_LABELS = (
    "tshirt_top",
    "trouser",
    "pullover",
    "dress",
    "coat",
    "sandal",
    "shirt",
    "sneaker",
    "bag",
    "ankle_boot",
)
_IDX_TYPES: dict[int, Any] = {
    0x08: np.uint8,
    0x09: np.int8,
    0x0B: ">i2",
    0x0C: ">i4",
    0x0D: ">f4",
    0x0E: ">f8",
}


@dataclass(frozen=True)
class ImageArrays:
    """Images as one uint8 array [n, H, W] (or [n, H, W, 3]) with their class indices."""

    images: np.ndarray
    targets: np.ndarray
    labels: tuple[str, ...]

    def __len__(self) -> int:
        return len(self.targets)

    def take(self, index: np.ndarray) -> ImageArrays:
        return ImageArrays(self.images[index], self.targets[index], self.labels)

    def to_inputs(self, pre: Preprocessing) -> np.ndarray:
        """float32 [n, C, H, W] as `pre` makes them from an image file: the same resize and
        conversion as serving and training."""
        out = np.empty((len(self), *pre.input_shape), np.float32)
        for i, pixels in enumerate(self.images):
            out[i] = pre.to_array(Image.fromarray(pixels))
        return out


def read_idx(path: Path) -> np.ndarray:
    """One IDX file (LeCun's MNIST format; gzipped or not) as an array."""
    import gzip

    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as handle:
            data = handle.read()
    except OSError as exc:
        raise DataError(f"{path} is not a readable IDX file ({exc}); replace it") from exc
    if len(data) < 4 or data[:2] != b"\0\0" or data[2] not in _IDX_TYPES:
        raise DataError(f"{path} is not an IDX file (bad magic number); replace it")
    ndim = data[3]
    dims = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    array = np.frombuffer(data, dtype=_IDX_TYPES[data[2]], offset=4 + 4 * ndim)
    if array.size != int(np.prod(dims)):
        raise DataError(f"{path} holds {array.size} values, not the {dims} its header says")
    return array.reshape(dims)


def fashion_mnist(split: str = "train", root: Path = FASHION_MNIST) -> ImageArrays:
    """Fashion-MNIST's 60,000 training or 10,000 test images (28x28, 10 classes), read from
    Debian's `dataset-fashion-mnist` package."""
    prefix = {"train": "train", "test": "t10k"}[split]
    paths = [
        Path(root) / f"{prefix}-{kind}-idx{n}-ubyte.gz"
        for kind, n in (("images", 3), ("labels", 1))
    ]
    missing = [p for p in paths if not p.is_file()]
    if missing:
        raise DataError(
            f"Fashion-MNIST is not at {root} ({missing[0].name} is missing); install it with "
            "`apt-get install dataset-fashion-mnist`, or pass another data set"
        )
    images, targets = read_idx(paths[0]), read_idx(paths[1])
    if images.ndim != 3 or len(images) != len(targets):
        raise DataError(f"{paths[0]} and {paths[1]} do not hold matching images and labels")
    return ImageArrays(np.ascontiguousarray(images), targets.astype(np.int64), FASHION_LABELS)


def folder_images(folder: ImageFolder, size: int | None = None) -> ImageArrays:
    """An ImageFolder as arrays, each image converted to RGB at `size` (default: the first
    image's size), so that folders of any images stack."""
    first = None
    images = []
    for sample in folder.samples:
        try:
            with Image.open(sample.path) as image:
                rgb = image.convert("RGB")
        except (OSError, ValueError) as exc:
            raise DataError(
                f"{sample.path} is not a readable image ({exc}); replace or remove it"
            ) from exc
        first = first or size or rgb.size[0]
        images.append(np.asarray(rgb.resize((first, first))))
    return ImageArrays(
        np.stack(images), np.array([s.label for s in folder.samples], np.int64), folder.labels
    )
