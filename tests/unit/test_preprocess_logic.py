"""The preprocess model's logic without Triton: PNGs made with Pillow decoded to exact
values, and the byte, pixel and format limits refused with their messages (the image
ensemble's integration tests run the same code inside tritonserver)."""

from __future__ import annotations

import base64
import io
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from lifeloop.errors import ImageError, PreprocessingError
from lifeloop.preprocessing import Preprocessing
from lifeloop.serve.preprocess import (
    DEFAULT_MAX_PIXELS,
    ImageLimits,
    NewestPreprocessing,
    decode,
    decode_request,
    unwrap,
)

PLAIN = Preprocessing(size=2, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))
LIMITS = ImageLimits()
# (R, G, B) per pixel, row by row
PIXELS = [[(255, 0, 0), (0, 255, 0)], [(0, 0, 255), (51, 102, 153)]]


def png(pixels: list[list[tuple[int, int, int]]] = PIXELS, *, mode: str = "RGB") -> bytes:
    image = Image.fromarray(np.array(pixels, dtype=np.uint8), mode=mode)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def blank_png(width: int, height: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), (10, 20, 30)).save(buffer, format="PNG")
    return buffer.getvalue()


def test_a_png_decodes_to_its_pixels_over_255_in_chw() -> None:
    array = decode(png(), PLAIN, LIMITS)
    assert array.dtype == np.float32 and array.shape == (3, 2, 2)
    np.testing.assert_allclose(array[0], [[1.0, 0.0], [0.0, 0.2]], atol=1e-7)  # R
    np.testing.assert_allclose(array[1], [[0.0, 1.0], [0.0, 0.4]], atol=1e-7)  # G
    np.testing.assert_allclose(array[2], [[0.0, 0.0], [1.0, 0.6]], atol=1e-7)  # B


def test_mean_std_and_bgr_order_come_from_the_preprocessing() -> None:
    pre = Preprocessing(size=2, mean=(0.5, 0.5, 0.0), std=(0.25, 0.5, 1.0), channel_order="BGR")
    array = decode(png(), pre, LIMITS)
    # channel 0 is blue: (b / 255 - 0.5) / 0.25; channel 2 is red: r / 255
    np.testing.assert_allclose(array[0], [[-2.0, -2.0], [2.0, 0.4]], atol=1e-6)
    np.testing.assert_allclose(array[1], [[-1.0, 1.0], [-1.0, -0.2]], atol=1e-6)
    np.testing.assert_allclose(array[2], [[1.0, 0.0], [0.0, 0.2]], atol=1e-6)


def test_a_larger_image_is_resized_to_the_preprocessing_size() -> None:
    array = decode(blank_png(5, 3), PLAIN, LIMITS)
    assert array.shape == (3, 2, 2)
    np.testing.assert_allclose(array[:, 0, 0], [10 / 255, 20 / 255, 30 / 255], atol=1e-7)
    assert np.ptp(array, axis=(1, 2)).tolist() == [0.0, 0.0, 0.0]  # a flat image stays flat


def test_an_empty_image_is_refused() -> None:
    with pytest.raises(ImageError) as refused:
        decode(b"", PLAIN, LIMITS)
    assert str(refused.value) == "the image is empty (0 bytes); send the JPEG or PNG file's bytes"


def test_an_image_over_the_byte_limit_is_refused_with_the_limit() -> None:
    data = png()
    limits = ImageLimits(max_bytes=len(data) - 1)
    with pytest.raises(ImageError) as refused:
        decode(data, PLAIN, limits)
    assert str(refused.value) == (
        f"the image is {len(data):,} bytes, over the limit of {len(data) - 1:,}; send a smaller "
        "file or raise lifeloop.max_image_bytes in the preprocess model's config"
    )
    assert decode(data, PLAIN, ImageLimits(max_bytes=len(data))).shape == (3, 2, 2)


def test_an_image_over_the_pixel_limit_is_refused_from_its_header() -> None:
    with pytest.raises(ImageError) as refused:
        decode(blank_png(4, 3), PLAIN, ImageLimits(max_pixels=11))
    assert str(refused.value) == (
        "the image is 4x3 = 12 pixels, over the limit of 11; downscale it or raise "
        "lifeloop.max_image_pixels in the preprocess model's config"
    )
    assert decode(blank_png(4, 3), PLAIN, ImageLimits(max_pixels=12)).shape == (3, 2, 2)


def test_bytes_that_are_not_an_allowed_format_cannot_be_decoded() -> None:
    with pytest.raises(
        ImageError, match=re.escape("cannot be decoded as JPEG/PNG (cannot identify")
    ):
        decode(b"GIF89a not really", PLAIN, LIMITS)
    with pytest.raises(ImageError, match=r"^the image cannot be decoded as JPEG \("):
        decode(png(), PLAIN, ImageLimits(formats=("JPEG",)))


def test_pillows_decompression_bomb_check_refuses_the_image(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 10)
    with pytest.raises(ImageError) as bomb:
        decode(blank_png(4, 3), PLAIN, LIMITS)  # 12 pixels: Pillow warns
    assert str(bomb.value).startswith(
        "the image is refused as a decompression bomb (Image size (12 pixels) exceeds limit of "
        "10 pixels"
    )
    with pytest.raises(ImageError, match="cannot be decoded as JPEG/PNG"):
        decode(blank_png(5, 5), PLAIN, LIMITS)  # over twice the limit: Pillow refuses


def test_a_request_stacks_its_images_in_row_order() -> None:
    first, second = png(), blank_png(2, 2)
    batch = decode_request(np.array([[first], [second]], dtype=np.object_), PLAIN, LIMITS)
    assert batch.shape == (2, 3, 2, 2)
    np.testing.assert_array_equal(batch[0], decode(first, PLAIN, LIMITS))
    np.testing.assert_array_equal(batch[1], decode(second, PLAIN, LIMITS))


def test_a_bad_image_fails_its_request_and_is_named_by_its_index() -> None:
    images = np.array([[png()], [png()], [b""]], dtype=np.object_)
    with pytest.raises(ImageError) as refused:
        decode_request(images, PLAIN, LIMITS)
    assert str(refused.value) == (
        "image 2 of the request: the image is empty (0 bytes); send the JPEG or PNG file's bytes"
    )


def test_limits_are_read_from_the_config_parameters_and_written_back() -> None:
    params = {
        "lifeloop.max_image_bytes": "1000",
        "lifeloop.image_formats": " png, webp ,",
    }
    limits = ImageLimits.from_parameters(params)
    assert limits == ImageLimits(
        max_bytes=1000, max_pixels=DEFAULT_MAX_PIXELS, formats=("PNG", "WEBP")
    )
    assert limits.to_parameters() == {
        "lifeloop.max_image_bytes": "1000",
        "lifeloop.max_image_pixels": str(DEFAULT_MAX_PIXELS),
        "lifeloop.image_formats": "PNG,WEBP",
    }
    assert ImageLimits.from_parameters({}).formats == ("JPEG", "PNG")


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"max_bytes": 0}, "the image limits must be >= 1, got 0 bytes and 40000000 pixels"),
        (
            {"formats": ("PNG", "GIFF")},
            "image formats ['GIFF'] are not formats Pillow reads; name them as Pillow does, "
            "e.g. JPEG,PNG,WEBP",
        ),
        (
            {"formats": ()},
            "image formats (none) are not formats Pillow reads; name them as Pillow does, "
            "e.g. JPEG,PNG,WEBP",
        ),
    ],
)
def test_bad_limits_are_refused_when_built(kwargs: dict, message: str) -> None:
    with pytest.raises(PreprocessingError) as refused:
        ImageLimits(**kwargs)
    assert str(refused.value) == message


def test_a_classifier_without_a_published_version_has_no_preprocessing(tmp_path: Path) -> None:
    (tmp_path / "digits").mkdir()
    with pytest.raises(ImageError) as refused:
        NewestPreprocessing(tmp_path / "digits").current()
    assert str(refused.value) == "model 'digits' has no published version"


def b64(data: bytes) -> bytes:
    return base64.b64encode(data)


def test_base64_text_of_a_png_decodes_like_the_file() -> None:
    expected = decode(png(), PLAIN, LIMITS)
    np.testing.assert_array_equal(decode(b64(png()), PLAIN, LIMITS), expected)
    # Wrapped at 76 columns as `base64` and MIME write it: whitespace is ignored.
    wrapped = base64.encodebytes(blank_png(40, 40))
    assert b"\n" in wrapped.strip()
    assert unwrap(wrapped, LIMITS.formats) == (blank_png(40, 40), True)


def test_raw_jpeg_and_png_files_are_never_taken_for_base64() -> None:
    buffer = io.BytesIO()
    Image.new("RGB", (3, 3)).save(buffer, format="JPEG")
    for data in (png(), buffer.getvalue()):
        assert unwrap(data, LIMITS.formats) == (data, False)


def test_a_text_format_pillow_recognises_is_read_as_the_file() -> None:
    # A plain PPM is all digits and whitespace, hence also valid base64: the signature wins.
    plain_ppm = b"P3\n2 2\n255\n255 0 0  0 255 0\n0 0 255  51 102 153\n"
    limits = ImageLimits(formats=("PPM",))
    assert unwrap(plain_ppm, limits.formats) == (plain_ppm, False)
    np.testing.assert_array_equal(decode(plain_ppm, PLAIN, limits), decode(png(), PLAIN, LIMITS))


def test_bytes_that_are_neither_an_image_nor_base64_say_so_without_object_reprs() -> None:
    with pytest.raises(ImageError) as refused:
        decode(b"\x00\x01 not an image", PLAIN, LIMITS)
    assert (
        str(refused.value) == "the image cannot be decoded as JPEG/PNG (cannot identify image file)"
    )
    with pytest.raises(ImageError) as refused:
        decode(b64(b"GIF89a not really"), PLAIN, LIMITS)
    assert str(refused.value) == (
        "the image (base64-decoded) cannot be decoded as JPEG/PNG (cannot identify image file)"
    )


def test_the_byte_limit_counts_the_decoded_bytes_of_base64() -> None:
    data = png()
    text = b64(data)
    fits = ImageLimits(max_bytes=len(data))
    assert len(text) > fits.max_bytes
    assert decode(text, PLAIN, fits).shape == (3, 2, 2)
    with pytest.raises(ImageError) as refused:
        decode(text, PLAIN, ImageLimits(max_bytes=len(data) - 1))
    assert str(refused.value).startswith(
        f"the image (base64-decoded) is {len(data):,} bytes, over the limit of {len(data) - 1:,}"
    )
    # Text over twice the limit is refused before anything is decoded.
    with pytest.raises(ImageError, match=f"the image is {len(text):,} bytes, over the limit"):
        decode(text, PLAIN, ImageLimits(max_bytes=len(text) // 2 - 3))


def test_base64_of_nothing_is_an_empty_image() -> None:
    with pytest.raises(ImageError, match=r"^the image \(base64-decoded\) is empty"):
        decode(b"  \n", PLAIN, LIMITS)
