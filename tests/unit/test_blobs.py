"""Kept inputs: large batches are stored as float16 and still give back every 8-bit pixel
level; small ones are stored as float32, unchanged."""

from __future__ import annotations

import numpy as np

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
