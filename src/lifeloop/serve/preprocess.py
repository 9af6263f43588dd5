"""The `preprocess` Python model: encoded image bytes in, the classifier's input tensor out.

Each request row carries one JPEG or PNG, as the file's bytes or as base64 text of them (how
a JSON request over HTTP carries it; `unwrap` tells the two apart). It is decoded with Pillow
and resized and normalised by the same `Preprocessing.to_array` that training and the client
use, with the settings in the manifest of the classifier's newest version (the one an ensemble
step with `model_version: -1` reaches under a latest policy), re-read when a version is
published.
An image that cannot be decoded, is over the byte limit or over the pixel limit fails its
own request with INVALID_ARG and a message that says which; its batch-mates are answered."""

from __future__ import annotations

import base64
import binascii
import io
import json
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from lifeloop.contract import (
    CLASSIFIER_PARAM,
    FORMATS_PARAM,
    IMAGE_INPUT,
    MAX_BYTES_PARAM,
    MAX_PIXELS_PARAM,
    parameters,
)
from lifeloop.errors import ImageError, PreprocessingError
from lifeloop.preprocessing import Preprocessing
from lifeloop.repository.manifest import Manifest
from lifeloop.repository.publish import version_numbers
from lifeloop.serve.responses import error_for, internal, log, without_reprs

DEFAULT_MAX_BYTES = 20 * 1024 * 1024
DEFAULT_MAX_PIXELS = 40_000_000  # width x height; a decompression bomb is refused before decoding
DEFAULT_FORMATS = ("JPEG", "PNG")


@dataclass(frozen=True, kw_only=True)
class ImageLimits:
    max_bytes: int = DEFAULT_MAX_BYTES
    max_pixels: int = DEFAULT_MAX_PIXELS
    formats: tuple[str, ...] = DEFAULT_FORMATS

    def __post_init__(self) -> None:
        if self.max_bytes < 1 or self.max_pixels < 1:
            raise PreprocessingError(
                f"the image limits must be >= 1, got {self.max_bytes} bytes and "
                f"{self.max_pixels} pixels"
            )
        Image.init()
        unknown = [f for f in self.formats if f not in Image.OPEN]
        if unknown or not self.formats:
            raise PreprocessingError(
                f"image formats {unknown or '(none)'} are not formats Pillow reads; name them "
                "as Pillow does, e.g. JPEG,PNG,WEBP"
            )

    @classmethod
    def from_parameters(cls, params: dict[str, str]) -> ImageLimits:
        formats = params.get(FORMATS_PARAM, "")
        return cls(
            max_bytes=int(params.get(MAX_BYTES_PARAM, DEFAULT_MAX_BYTES)),
            max_pixels=int(params.get(MAX_PIXELS_PARAM, DEFAULT_MAX_PIXELS)),
            formats=tuple(f.strip().upper() for f in formats.split(",") if f.strip())
            or DEFAULT_FORMATS,
        )

    def to_parameters(self) -> dict[str, str]:
        return {
            MAX_BYTES_PARAM: str(self.max_bytes),
            MAX_PIXELS_PARAM: str(self.max_pixels),
            FORMATS_PARAM: ",".join(self.formats),
        }


_WHITESPACE = b" \t\r\n"


def unwrap(data: bytes, formats: tuple[str, ...]) -> tuple[bytes, bool]:
    """One element of the IMAGE input -> (the image file's bytes, whether it came as base64).

    An element whose first bytes Pillow recognises as one of `formats` is the file itself.
    Otherwise, one made only of the base64 alphabet (RFC 4648, `+` and `/`, padded; ASCII
    whitespace ignored) is base64 text and is decoded. Anything else is taken as the file,
    and fails to decode as one. Raw JPEG and PNG files are never mistaken for base64: their
    first byte (0xFF, 0x89) is not ASCII."""
    if not data or _recognised(data, formats):
        return data, False
    try:
        return base64.b64decode(data.translate(None, _WHITESPACE), validate=True), True
    except (binascii.Error, ValueError):
        return data, False


def _recognised(data: bytes, formats: tuple[str, ...]) -> bool:
    """Whether Pillow's signature check of one of `formats` accepts the first bytes, as
    Image.open checks them (a format without a check never claims them here)."""
    Image.init()
    prefix = data[:16]
    for name in formats:
        accept = Image.OPEN[name][1] if name in Image.OPEN else None
        if accept is not None and accept(prefix):
            return True
    return False


def decode(data: bytes, pre: Preprocessing, limits: ImageLimits) -> np.ndarray:
    """Encoded bytes (or base64 text of them) -> float32 CHW array, or ImageError naming what
    is wrong and the limit."""
    if len(data) > 2 * limits.max_bytes + 4:  # over even as base64 (4/3, and line breaks)
        raise ImageError(_too_large(len(data), limits))
    data, was_base64 = unwrap(data, limits.formats)
    what = "the image (base64-decoded)" if was_base64 else "the image"
    if len(data) == 0:
        raise ImageError(f"{what} is empty (0 bytes); send the JPEG or PNG file's bytes")
    if len(data) > limits.max_bytes:
        raise ImageError(_too_large(len(data), limits, what))
    kinds = "/".join(limits.formats)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data), formats=list(limits.formats)) as image:
                width, height = image.size  # from the header; nothing is decoded yet
                if width * height > limits.max_pixels:
                    raise ImageError(
                        f"{what} is {width}x{height} = {width * height:,} pixels, over the "
                        f"limit of {limits.max_pixels:,}; downscale it or raise "
                        f"{MAX_PIXELS_PARAM} in the preprocess model's config"
                    )
                return pre.to_array(image)
    except ImageError:
        raise
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        raise ImageError(f"{what} cannot be decoded as {kinds} ({_detail(exc)})") from exc
    except Warning as exc:  # DecompressionBombWarning raised as an error above
        raise ImageError(f"{what} is refused as a decompression bomb ({_detail(exc)})") from exc


def _too_large(size: int, limits: ImageLimits, what: str = "the image") -> str:
    return (
        f"{what} is {size:,} bytes, over the limit of {limits.max_bytes:,}; send a smaller "
        f"file or raise {MAX_BYTES_PARAM} in the preprocess model's config"
    )


def _detail(exc: BaseException) -> str:
    """Pillow's reason, one line and without object reprs (`cannot identify image file
    <_io.BytesIO object at 0x7f...>` names a buffer the caller never saw)."""
    text = without_reprs(str(exc).splitlines()[0] if str(exc) else "")[:160]
    return text or type(exc).__name__


class NewestPreprocessing:
    """The preprocessing in the manifest of a model's newest version, re-read when the set of
    versions changes (one directory listing per batch)."""

    def __init__(self, model_dir: Path) -> None:
        self.model_dir = model_dir
        self._version = 0
        self._pre: Preprocessing | None = None

    def current(self) -> Preprocessing:
        versions = version_numbers(self.model_dir)
        if not versions:
            raise ImageError(f"model {self.model_dir.name!r} has no published version")
        if versions[-1] != self._version or self._pre is None:
            manifest = Manifest.read(self.model_dir / str(versions[-1]))
            self._pre = Preprocessing.from_dict(manifest.preprocessing)
            self._version = versions[-1]
        return self._pre


class Preprocessor:
    """What the preprocess model.py delegates to; `pb` is triton_python_backend_utils."""

    def __init__(self, pb: Any, classifier_dir: Path, output_name: str, limits: ImageLimits):
        self.pb = pb
        self.newest = NewestPreprocessing(classifier_dir)
        self.output_name = output_name
        self.limits = limits

    @classmethod
    def from_args(cls, args: dict[str, str], pb: Any) -> Preprocessor:
        config = json.loads(args["model_config"])
        params = parameters(config)
        repository = Path(args["model_repository"]).parent
        return cls(
            pb,
            repository / params[CLASSIFIER_PARAM],
            config["output"][0]["name"],
            ImageLimits.from_parameters(params),
        )

    def execute(self, requests: list[Any]) -> list[Any]:
        pb = self.pb
        try:
            pre = self.newest.current()
        except Exception as exc:  # no version, or an unreadable manifest: the server's fault
            error = internal(pb, f"preprocess: {exc}")
            return [pb.InferenceResponse(error=error) for _ in requests]
        responses = []
        for request in requests:
            try:
                images = pb.get_input_tensor_by_name(request, IMAGE_INPUT).as_numpy()
                tensor = pb.Tensor(self.output_name, decode_request(images, pre, self.limits))
                responses.append(pb.InferenceResponse(output_tensors=[tensor]))
            except ImageError as exc:  # the caller's: INVALID_ARG
                responses.append(pb.InferenceResponse(error=error_for(pb, exc)))
            except Exception as exc:  # the server's: INTERNAL, and only this request's
                log(pb, "error", f"lifeloop preprocess failed on a request: {exc!r}")
                error = internal(pb, f"preprocess failed: {exc}")
                responses.append(pb.InferenceResponse(error=error))
        return responses


def decode_request(images: np.ndarray, pre: Preprocessing, limits: ImageLimits) -> np.ndarray:
    """One request's BYTES tensor of encoded images (any shape) -> the stacked float32 NCHW
    batch, or ImageError naming the first image that fails: one bad image fails its request."""
    return np.stack(
        [_decode_one(item, i, pre, limits) for i, item in enumerate(images.reshape(-1))]
    )


def _decode_one(item: Any, index: int, pre: Preprocessing, limits: ImageLimits) -> np.ndarray:
    data = item if isinstance(item, bytes) else bytes(item)
    try:
        return decode(data, pre, limits)
    except ImageError as exc:
        raise ImageError(f"image {index} of the request: {exc}") from exc
