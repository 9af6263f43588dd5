"""Kept inputs: the images of one router batch that the sample rate keeps, stacked in one
`.npy` file, and each prediction pointing at its row. One file per batch, not per image:
creating a file costs far more than writing 12 KB more into one (0.2 ms against 0.015 ms per
32x32 image, measured), and the router writes on the request path.

Pixel inputs (a classifier that takes pixels, every value an integer level 0..255) are kept
as uint8: lossless, a quarter of float32, and cheaper to write and hash than any float form
(for 32 images of 3x224x224: 0.8 ms to convert and 1.8 ms to check, against 7.4 ms to make
float16, measured). Which form a prediction's input is kept in is in its record (`kept_as`);
the file's own header says it too, so files kept before the column existed read the same.

Other large inputs are kept as float16: half the disk of float32, and twice as fast to write (12
ms against 26 ms for 16 images of 3x224x224, measured), and lossless for what a classifier
is fed: an 8-bit image normalised by a std below 1 is spaced at least 1/255 apart before
scaling, and float16 resolves 1/1024 at the largest normalised value (|x| < 4 in practice),
so every pixel level stays distinct. Small inputs stay float32: numpy's conversion costs
more than the bytes it saves (0.42 ms against 0.20 ms for 8 images of 3x32x32), and the
router writes on the request path.

With a key in LIFELOOP_KEPT_INPUT_KEY (a Fernet key: `lifeloop store new-key`), each file is
encrypted at rest (AES-128-CBC with HMAC-SHA256) and named `.npy.fernet`; reading one needs
the same key, and a missing or wrong key is a one-line error."""

from __future__ import annotations

import hashlib
import io
import os
from pathlib import Path
from typing import Any

import numpy as np

from lifeloop.errors import StoreError
from lifeloop.store.ids import new_id

KEY_ENV = "LIFELOOP_KEPT_INPUT_KEY"
ENCRYPTED_SUFFIX = ".fernet"


def content_hash(sample: np.ndarray) -> str:
    """128 bits of SHA-256 over the tensor's bytes as kept (uint8 pixels, or float32), read
    in place (SHA-256 has CPU instructions; blake2b took 1.7x as long here)."""
    return hashlib.sha256(np.ascontiguousarray(sample).data).hexdigest()[:32]


PIXELS_MARK = ".pixels"  # in the name of a batch of pixel inputs (0..255)


def new_path(blob_dir: Path, *, encrypted: bool = False, input_kind: str | None = None) -> Path:
    """Where the next batch goes: `<blob_dir>/<2 hex>/<id>.npy` (`.npy.fernet` when
    encrypted), the id time-ordered (lifeloop.store.ids) and the folder its last two, random,
    hex digits; a batch of pixel inputs is `<id>.pixels.npy`, so that retraining knows which
    kind of input each kept file holds."""
    name = new_id() + (PIXELS_MARK if input_kind == "pixels" else "")
    suffix = ".npy" + (ENCRYPTED_SUFFIX if encrypted else "")
    return Path(blob_dir) / name[30:32] / f"{name}{suffix}"


def holds_pixels(blob: str) -> bool:
    """Whether a kept file holds pixel inputs (0..255) rather than normalized ones (the only
    kind kept before lifeloop served pixels)."""
    return PIXELS_MARK + ".npy" in Path(blob).name


HALF_FROM_BYTES = 1 << 20  # float32 batches this large are kept as float16


def as_pixels(images: np.ndarray) -> np.ndarray | None:
    """`images` as uint8 when every value is an integer pixel level 0..255, else None (a
    value out of range, fractional or NaN does not survive the round trip)."""
    with np.errstate(invalid="ignore"):  # NaN and inf cast to something; the check refuses it
        pixels = images.astype(np.uint8)
    return pixels if np.array_equal(pixels, images) else None


def kept_as(samples: np.ndarray) -> str:
    """The dtype `write_batch` keeps `samples` in: uint8 as they are; float as float16 from
    HALF_FROM_BYTES, else float32."""
    if samples.dtype == np.uint8:
        return "uint8"
    return "float16" if samples.nbytes >= HALF_FROM_BYTES else "float32"


def cipher(key: str | None = None) -> Any:
    """The Fernet cipher of `key` (default: LIFELOOP_KEPT_INPUT_KEY), or None without one."""
    key = key if key is not None else os.environ.get(KEY_ENV)
    if not key:
        return None
    from cryptography.fernet import Fernet

    try:
        return Fernet(key.encode())
    except ValueError as exc:
        raise StoreError(
            f"{KEY_ENV} is not a Fernet key ({exc}); make one with `lifeloop store new-key`"
        ) from None


def write_batch(path: Path, samples: np.ndarray, *, fernet: Any = None) -> Path:
    """`samples` stacked in one file at `path` (encrypted with `fernet`, when given), in the
    dtype `kept_as` names, renamed into place complete."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    dtype = np.dtype(kept_as(samples))
    try:
        with open(tmp, "wb") as handle:
            if fernet is None:
                np.save(handle, np.ascontiguousarray(samples, dtype=dtype), allow_pickle=False)
            else:
                buffer = io.BytesIO()
                np.save(buffer, np.ascontiguousarray(samples, dtype=dtype), allow_pickle=False)
                handle.write(fernet.encrypt(buffer.getvalue()))
        tmp.rename(path)
    except BaseException:
        tmp.unlink(missing_ok=True)  # a full disk leaves no half-written file behind
        raise
    return path


def load(blob: str, row: int | None, *, fernet: Any = None) -> np.ndarray:
    """One kept input as float32, whatever it was kept as: row `row` of a batch file, or the
    whole file when `row` is None. An encrypted file is decrypted with `fernet` (default:
    LIFELOOP_KEPT_INPUT_KEY's)."""
    if not blob.endswith(ENCRYPTED_SUFFIX):
        stored = np.load(blob, mmap_mode="r", allow_pickle=False)
        return np.array(stored if row is None else stored[row], dtype=np.float32)
    fernet = fernet if fernet is not None else cipher()
    if fernet is None:
        raise StoreError(f"kept input {blob} is encrypted; set {KEY_ENV} to the router's key")
    from cryptography.fernet import InvalidToken

    try:
        plain = fernet.decrypt(Path(blob).read_bytes())
    except InvalidToken:
        raise StoreError(
            f"kept input {blob} does not decrypt with {KEY_ENV}; set the key the router used"
        ) from None
    stored = np.load(io.BytesIO(plain), allow_pickle=False)
    return np.array(stored if row is None else stored[row], dtype=np.float32)


def default_blob_dir(repository: Path) -> Path:
    """Where a router of `repository` keeps inputs unless told: beside the repository."""
    repository = Path(repository).resolve()
    return repository.parent / f"{repository.name}.blobs"
