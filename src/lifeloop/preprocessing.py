"""How an image becomes a model input: one value object shared by training, export, the
manifest and the client, so that all four agree by construction.

A model input is one of two kinds. `normalized`: `(pixels/255 - mean)/std`, what training feeds
the network. `pixels`: RGB (or L) values 0..255 as float32, for a version whose exported graph
normalises as its first op, so that any client that only resizes an image (Triton's image
client with scaling NONE) gets the right answer. Training is always on normalized inputs;
`lifeloop export` serves pixels unless told otherwise."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from lifeloop.errors import PreprocessingError

PIXELS = "pixels"
NORMALIZED = "normalized"
INPUT_KINDS = (PIXELS, NORMALIZED)


@dataclass(frozen=True, kw_only=True)
class Preprocessing:
    """Resize to `size` x `size` and convert to `channel_order`; then, for a `normalized`
    input, scale to [0, 1] and normalise with `mean` and `std` (a `pixels` input leaves that
    to the model's graph)."""

    size: int
    mean: tuple[float, ...] = (0.485, 0.456, 0.406)
    std: tuple[float, ...] = (0.229, 0.224, 0.225)
    channel_order: str = "RGB"
    layout: str = "NCHW"
    resample: str = "bilinear"
    # What the model takes; a recipe written before the two kinds existed is `normalized`.
    input_kind: str = NORMALIZED
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.size <= 0:
            raise PreprocessingError(f"preprocessing size must be positive, got {self.size}")
        if self.channel_order not in ("RGB", "BGR", "L"):
            raise PreprocessingError(
                f"channel_order {self.channel_order!r} is not one of RGB, BGR, L"
            )
        if len(self.mean) != self.channels or len(self.std) != self.channels:
            raise PreprocessingError(
                f"mean and std need {self.channels} values for {self.channel_order}, "
                f"got {len(self.mean)} and {len(self.std)}"
            )
        if any(s <= 0 for s in self.std):
            raise PreprocessingError(f"std values must be positive, got {self.std}")
        if self.layout != "NCHW":
            raise PreprocessingError(f"layout {self.layout!r} is not supported; use NCHW")
        if self.input_kind not in INPUT_KINDS:
            raise PreprocessingError(
                f"input_kind {self.input_kind!r} is not one of {', '.join(INPUT_KINDS)}"
            )
        object.__setattr__(self, "mean", tuple(float(m) for m in self.mean))
        object.__setattr__(self, "std", tuple(float(s) for s in self.std))

    @property
    def channels(self) -> int:
        return 1 if self.channel_order == "L" else 3

    @property
    def input_shape(self) -> tuple[int, int, int]:
        """The per-sample input shape, without the batch axis."""
        return (self.channels, self.size, self.size)

    @property
    def takes_pixels(self) -> bool:
        return self.input_kind == PIXELS

    def with_kind(self, input_kind: str) -> Preprocessing:
        """The same recipe for a model that takes `input_kind`."""
        return Preprocessing.from_dict({**self.to_dict(), "input_kind": input_kind})

    def normalize(self, pixels: np.ndarray) -> np.ndarray:
        """Pixel inputs [n, C, H, W] (0..255) -> normalized inputs, as the graph computes them."""
        mean, std = self._stats()
        return ((np.asarray(pixels, dtype=np.float32) / 255.0 - mean) / std).astype(np.float32)

    def to_pixels(self, normalized: np.ndarray) -> np.ndarray:
        """Normalized inputs [n, C, H, W] -> the pixel values they were made from."""
        mean, std = self._stats()
        return ((np.asarray(normalized, dtype=np.float32) * std + mean) * 255.0).astype(np.float32)

    def convert(self, inputs: np.ndarray, target: Preprocessing) -> np.ndarray:
        """Inputs made by this recipe [n, C, H, W] -> the inputs `target`'s model takes: a
        version of the other kind, behind the same router, answers the same images."""
        if self.input_kind == target.input_kind and (
            self.takes_pixels or (self.mean, self.std) == (target.mean, target.std)
        ):
            return inputs
        pixels = inputs if self.takes_pixels else self.to_pixels(inputs)
        return pixels if target.takes_pixels else target.normalize(pixels)

    def _stats(self) -> tuple[np.ndarray, np.ndarray]:
        shape = (-1, 1, 1)
        return (
            np.asarray(self.mean, dtype=np.float32).reshape(shape),
            np.asarray(self.std, dtype=np.float32).reshape(shape),
        )

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["mean"] = list(self.mean)
        data["std"] = list(self.std)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Preprocessing:
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        known["mean"] = tuple(known.get("mean", cls.mean))
        known["std"] = tuple(known.get("std", cls.std))
        return cls(**known)

    def to_array(self, image: Image.Image) -> np.ndarray:
        """One PIL image -> float32 CHW array of this recipe's kind."""
        mode = "L" if self.channel_order == "L" else "RGB"
        resample = getattr(Image.Resampling, self.resample.upper())
        image = image.convert(mode).resize((self.size, self.size), resample)
        pixels = np.asarray(image, dtype=np.float32)
        if pixels.ndim == 2:
            pixels = pixels[:, :, None]
        if self.channel_order == "BGR":
            pixels = pixels[:, :, ::-1]
        chw = np.ascontiguousarray(pixels.transpose(2, 0, 1))
        return chw if self.takes_pixels else self.normalize(chw[None])[0]

    def load(self, path: str | Path) -> np.ndarray:
        """Read one image file -> float32 CHW array; a file Pillow cannot read is an error."""
        try:
            with Image.open(path) as image:
                return self.to_array(image)
        except (OSError, ValueError) as exc:
            raise PreprocessingError(
                f"{path} is not a readable image ({exc}); pass PNG or JPEG files"
            ) from exc
