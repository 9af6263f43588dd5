"""How an image becomes a model input: one value object shared by training, export, the
manifest and the client, so that all four agree by construction."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from lifeloop.errors import PreprocessingError


@dataclass(frozen=True, kw_only=True)
class Preprocessing:
    """Resize to `size` x `size`, convert to `channel_order`, scale to [0, 1], then normalise."""

    size: int
    mean: tuple[float, ...] = (0.485, 0.456, 0.406)
    std: tuple[float, ...] = (0.229, 0.224, 0.225)
    channel_order: str = "RGB"
    layout: str = "NCHW"
    resample: str = "bilinear"
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
        object.__setattr__(self, "mean", tuple(float(m) for m in self.mean))
        object.__setattr__(self, "std", tuple(float(s) for s in self.std))

    @property
    def channels(self) -> int:
        return 1 if self.channel_order == "L" else 3

    @property
    def input_shape(self) -> tuple[int, int, int]:
        """The per-sample input shape, without the batch axis."""
        return (self.channels, self.size, self.size)

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
        """One PIL image -> float32 CHW array."""
        mode = "L" if self.channel_order == "L" else "RGB"
        resample = getattr(Image.Resampling, self.resample.upper())
        image = image.convert(mode).resize((self.size, self.size), resample)
        pixels = np.asarray(image, dtype=np.float32) / 255.0
        if pixels.ndim == 2:
            pixels = pixels[:, :, None]
        if self.channel_order == "BGR":
            pixels = pixels[:, :, ::-1]
        mean = np.asarray(self.mean, dtype=np.float32)
        std = np.asarray(self.std, dtype=np.float32)
        return np.ascontiguousarray(((pixels - mean) / std).transpose(2, 0, 1))

    def load(self, path: str | Path) -> np.ndarray:
        """Read one image file -> float32 CHW array; a file Pillow cannot read is an error."""
        try:
            with Image.open(path) as image:
                return self.to_array(image)
        except (OSError, ValueError) as exc:
            raise PreprocessingError(
                f"{path} is not a readable image ({exc}); pass PNG or JPEG files"
            ) from exc
