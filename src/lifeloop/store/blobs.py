"""Kept inputs: the images of one router batch that the keep rule keeps, stacked in one
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

Encoded images (JPEG, PNG: what a client sent the image ensemble in front of a router) are
kept as sent, in one `.npz` per batch (their bytes end to end, and the offsets), smaller still;
retraining decodes them through the model's preprocessing.

With a key in LIFELOOP_KEPT_INPUT_KEY (a Fernet key: `lifeloop store new-key`), each file is
encrypted at rest (AES-128-CBC with HMAC-SHA256) and named `.npy.fernet`; reading one needs
the same key, and a missing or wrong key is a one-line error."""

from __future__ import annotations

import hashlib
import io
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, BinaryIO

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
ENCODED_MARK = ".encoded"  # in the name of a batch of encoded images (JPEG, PNG) as sent
ENCODED = "encoded"  # what `kept_as` says of them
SUFFIXES = (".npy", ".npz", ".npy" + ENCRYPTED_SUFFIX, ".npz" + ENCRYPTED_SUFFIX)


def new_path(
    blob_dir: Path,
    *,
    encrypted: bool = False,
    input_kind: str | None = None,
    encoded: bool = False,
) -> Path:
    """Where the next batch goes: `<blob_dir>/<2 hex>/<id>.npy` (`.npy.fernet` when
    encrypted), the id time-ordered (lifeloop.store.ids) and the folder its last two, random,
    hex digits; a batch of pixel inputs is `<id>.pixels.npy` and one of encoded images
    `<id>.encoded.npz`, so that retraining knows which kind of input each kept file holds."""
    if encoded:
        name, suffix = new_id() + ENCODED_MARK, ".npz"
    else:
        name, suffix = new_id() + (PIXELS_MARK if input_kind == "pixels" else ""), ".npy"
    return Path(blob_dir) / name[30:32] / f"{name}{suffix}{ENCRYPTED_SUFFIX if encrypted else ''}"


def holds_pixels(blob: str) -> bool:
    """Whether a kept file holds pixel inputs (0..255) rather than normalized ones (the only
    kind kept before lifeloop served pixels)."""
    return PIXELS_MARK + ".npy" in Path(blob).name


def holds_encoded(blob: str) -> bool:
    """Whether a kept file holds encoded images (JPEG, PNG: the bytes the client sent)."""
    return ENCODED_MARK + ".npz" in Path(blob).name


def encoded_hash(data: bytes) -> str:
    """`content_hash` of an encoded image: over the bytes as sent."""
    return hashlib.sha256(data).hexdigest()[:32]


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
    dtype = np.dtype(kept_as(samples))
    array = np.ascontiguousarray(samples, dtype=dtype)
    return _write(path, lambda handle: np.save(handle, array, allow_pickle=False), fernet)


def write_encoded(path: Path, images: Sequence[bytes], *, fernet: Any = None) -> Path:
    """Encoded images (the bytes clients sent) in one `.npz` at `path`: their bytes end to end
    (`data`) and where each starts (`offsets`, one more than images); no pickle."""
    offsets = np.zeros(len(images) + 1, dtype=np.int64)
    offsets[1:] = np.cumsum([len(image) for image in images])
    data = np.frombuffer(b"".join(images), dtype=np.uint8)
    return _write(path, lambda handle: np.savez(handle, data=data, offsets=offsets), fernet)


def _write(path: Path, save: Callable[[BinaryIO], None], fernet: Any) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        with open(tmp, "wb") as handle:
            if fernet is None:
                save(handle)
            else:
                buffer = io.BytesIO()
                save(buffer)
                handle.write(fernet.encrypt(buffer.getvalue()))
        tmp.rename(path)
    except BaseException:
        tmp.unlink(missing_ok=True)  # a full disk leaves no half-written file behind
        raise
    return path


def load(blob: str, row: int | None, *, fernet: Any = None) -> np.ndarray:
    """One kept input as float32, whatever it was kept as: row `row` of a batch file, or the
    whole file when `row` is None. An encrypted file is decrypted with `fernet` (default:
    LIFELOOP_KEPT_INPUT_KEY's). Encoded images are read with `load_encoded`."""
    if holds_encoded(blob):
        raise StoreError(
            f"kept input {blob} holds encoded images; read it with blobs.load_encoded and "
            "decode it through the model's preprocessing"
        )
    source = _plain(blob, fernet)
    stored = np.load(source, mmap_mode="r" if isinstance(source, str) else None, allow_pickle=False)
    return np.array(stored if row is None else stored[row], dtype=np.float32)


def load_encoded(blob: str, row: int, *, fernet: Any = None) -> bytes:
    """The bytes a client sent for one image, kept by `write_encoded`."""
    with np.load(_plain(blob, fernet), allow_pickle=False) as stored:
        offsets = stored["offsets"]
        return stored["data"][offsets[row] : offsets[row + 1]].tobytes()


def _plain(blob: str, fernet: Any) -> str | io.BytesIO:
    """The file to read: its path, or its decrypted bytes."""
    if not blob.endswith(ENCRYPTED_SUFFIX):
        return blob
    fernet = fernet if fernet is not None else cipher()
    if fernet is None:
        raise StoreError(f"kept input {blob} is encrypted; set {KEY_ENV} to the router's key")
    from cryptography.fernet import InvalidToken

    try:
        return io.BytesIO(fernet.decrypt(Path(blob).read_bytes()))
    except InvalidToken:
        raise StoreError(
            f"kept input {blob} does not decrypt with {KEY_ENV}; set the key the router used"
        ) from None


def default_blob_dir(repository: Path) -> Path:
    """Where a router of `repository` keeps inputs unless told: beside the repository."""
    repository = Path(repository).resolve()
    return repository.parent / f"{repository.name}.blobs"
