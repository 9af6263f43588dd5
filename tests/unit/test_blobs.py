"""Kept inputs: pixel levels are stored as uint8 and read back exactly; other large batches
are stored as float16 and still give back every 8-bit pixel level; small ones as float32,
unchanged."""

from __future__ import annotations

import numpy as np
import pytest

from lifeloop.errors import StoreError
from lifeloop.preprocessing import Preprocessing
from lifeloop.store import blobs


def normalised(pre: Preprocessing, n: int) -> tuple[np.ndarray, np.ndarray]:
    pixels = np.random.default_rng(0).integers(0, 256, (n, 3, pre.size, pre.size), np.uint8)
    mean = np.asarray(pre.mean, np.float32)[:, None, None]
    std = np.asarray(pre.std, np.float32)[:, None, None]
    return pixels, ((pixels / np.float32(255) - mean) / std).astype(np.float32)


def levels(pre: Preprocessing, x: np.ndarray) -> np.ndarray:
    mean = np.asarray(pre.mean, np.float32)[:, None, None]
    std = np.asarray(pre.std, np.float32)[:, None, None]
    return np.rint((x * std + mean) * 255).astype(np.int64)


def test_large_batches_are_float16_and_keep_every_pixel_level(tmp_path) -> None:
    pre = Preprocessing(size=224)
    pixels, x = normalised(pre, 6)
    assert x.nbytes >= blobs.HALF_FROM_BYTES
    path = blobs.write_batch(blobs.new_path(tmp_path), x)
    assert np.load(path).dtype == np.float16
    assert path.stat().st_size < x.nbytes * 0.51
    for row in range(len(x)):
        kept = blobs.load(str(path), row)
        assert kept.dtype == np.float32
        assert np.array_equal(levels(pre, kept), pixels[row])


def test_small_batches_are_kept_as_they_came(tmp_path) -> None:
    pre = Preprocessing(size=32)
    _, x = normalised(pre, 8)
    path = blobs.write_batch(blobs.new_path(tmp_path), x)
    assert np.load(path).dtype == np.float32
    assert np.array_equal(blobs.load(str(path), None), x)
    assert not list(tmp_path.rglob("*.tmp"))


def test_pixel_levels_are_kept_as_uint8_and_read_back_exactly(tmp_path) -> None:
    pixels = np.random.default_rng(1).integers(0, 256, (6, 3, 224, 224)).astype(np.float32)
    levels = blobs.as_pixels(pixels)
    assert levels is not None and levels.dtype == np.uint8
    assert blobs.kept_as(levels) == "uint8" and blobs.content_hash(levels[0]) != ""
    path = blobs.write_batch(blobs.new_path(tmp_path, input_kind="pixels"), levels)
    assert np.load(path).dtype == np.uint8
    assert path.stat().st_size < pixels.nbytes / 4 + 1024  # a quarter of float32, and a header
    for row in range(len(pixels)):
        assert np.array_equal(blobs.load(str(path), row), pixels[row])


@pytest.mark.parametrize("value", [0.5, 255.25, 256.0, -1.0, np.nan, np.inf])
def test_anything_but_integer_levels_0_to_255_is_not_kept_as_pixels(value) -> None:
    pixels = np.zeros((2, 3, 4, 4), np.float32)
    pixels[1, 2, 3, 3] = value
    assert blobs.as_pixels(pixels) is None
    assert blobs.kept_as(pixels) == "float32"


def test_new_kept_input_names_are_time_ordered_and_spread_over_folders(tmp_path) -> None:
    paths = [blobs.new_path(tmp_path) for _ in range(200)]
    names = [p.name for p in paths]
    assert names[0] < names[-1]
    assert len({p.parent.name for p in paths}) > 50  # the folder is the id's random end
    assert all(p.parent.name == p.name[30:32] for p in paths)


@pytest.mark.parametrize("encrypted", [False, True])
def test_encoded_images_are_kept_as_sent_byte_for_byte(tmp_path, encrypted: bool) -> None:
    from cryptography.fernet import Fernet

    fernet = Fernet(Fernet.generate_key()) if encrypted else None
    sent = [b"\x89PNG\r\n\x1a\n" + bytes(range(40)), b"", b"\xff\xd8\xff" + b"\x00" * 1000]
    path = blobs.new_path(tmp_path, encrypted=encrypted, encoded=True)
    assert blobs.holds_encoded(str(path)) and not blobs.holds_pixels(str(path))
    assert path.name.endswith(".encoded.npz" + (".fernet" if encrypted else ""))
    blobs.write_encoded(path, sent, fernet=fernet)
    assert [blobs.load_encoded(str(path), row, fernet=fernet) for row in range(3)] == sent
    assert not list(tmp_path.rglob(".*.tmp"))  # renamed into place
    if not encrypted:
        assert path.stat().st_size < sum(map(len, sent)) + 1000  # the bytes, and a small index
    with pytest.raises(StoreError, match="holds encoded images; read it with"):
        blobs.load(str(path), 0, fernet=fernet)
    assert blobs.encoded_hash(sent[0]) != blobs.encoded_hash(sent[2])
