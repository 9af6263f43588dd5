"""A local, append-only, fsynced journal of record batches: where the router puts the
predictions the store cannot take in time, until they can be drained into it.

A journal is one folder owned by one process, which holds an exclusive `flock` on its `lock`
file while it lives. Batches are frames in numbered segment files:

    <length: u32> <crc32: u32> <payload: length bytes of UTF-8 JSON, a list of records>

`append` returns only after the frame is written and fsynced, so a batch that was answered is
on disk even if the process is SIGKILLed next. A frame cut short by a kill (or failed write) is
never acknowledged; opening the journal truncates it. Draining reads frames from a cursor
(`segment offset`, replaced atomically) and deletes each segment once read past; a replay
after a crash between a drain's commit and its cursor write repeats frames, so whoever drains
must insert idempotently. A journal whose owner died is found by `orphans`: its lock is free."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import struct
import threading
import uuid
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lifeloop.errors import JournalFull, StoreError
from lifeloop.repository.publish import fsync_dir

HEADER = struct.Struct("<II")
SEGMENT_SUFFIX = ".journal"
LOCK_NAME = "lock"
CURSOR_NAME = "cursor"


@dataclass(frozen=True)
class Frame:
    """One appended batch, and where the cursor goes once it is drained."""

    records: list[dict[str, Any]]
    segment: int
    end: int


class Journal:
    """One owner's journal folder, held by this process. `max_bytes` bounds the frames not
    yet drained; a new segment starts past `segment_bytes`, so drained ones can be deleted.
    Open one with `Journal.create` (a new folder for this process) or `orphans` (the folders
    of owners that died)."""

    def __init__(
        self, folder: Path, lock_fd: int, *, max_bytes: int = 1 << 30, segment_bytes: int = 16 << 20
    ) -> None:
        self.folder = Path(folder)
        self.max_bytes = max_bytes
        self.segment_bytes = segment_bytes
        self._lock_fd: int | None = lock_fd
        self._cursor = self._read_cursor()
        self._repair_tail()
        # The writer appends while the drainer consumes, from two threads: the count of
        # records not yet drained changes under this lock only.
        self._count_lock = threading.Lock()
        self._records = sum(len(f.records) for f in self.frames())

    @classmethod
    def create(cls, root: Path, owner: str, **limits: int) -> Journal:
        """A new, empty journal `<root>/<owner>-<random>/`, locked before it gets its name so
        that no other process can take it for an orphan."""
        max_bytes = limits.get("max_bytes", 1 << 30)
        if max_bytes <= HEADER.size:
            raise StoreError(f"the journal's size limit must be positive, got {max_bytes} bytes")
        root = Path(root)
        root.mkdir(parents=True, exist_ok=True)
        name = f"{owner}-{uuid.uuid4().hex[:8]}"
        staging = root / f".{name}"
        staging.mkdir()
        fd = _lock(staging, create=True)
        if fd is None:  # nobody else knows this name
            raise StoreError(f"cannot lock the new journal {staging}")
        staging.rename(root / name)
        fsync_dir(root)
        return cls(root / name, fd, **limits)

    # --- writing --------------------------------------------------------------------------

    def append(self, records: list[dict[str, Any]]) -> None:
        """One batch as one frame, fsynced before this returns. Raises JournalFull when the
        frame would pass `max_bytes` or the disk refuses it; nothing is then left of it."""
        payload = json.dumps(records, separators=(",", ":")).encode()
        frame = HEADER.pack(len(payload), zlib.crc32(payload)) + payload
        segments = self._segment_sizes()
        pending = self._pending(segments)
        if pending + len(frame) > self.max_bytes:
            raise JournalFull(
                f"the journal {self.folder} holds {pending} of its {self.max_bytes} bytes; "
                "raise lifeloop.spool_max_bytes or bring the store back"
            )
        number = max(segments, default=self._cursor[0])
        if number in segments and segments[number] + len(frame) > self.segment_bytes:
            number += 1
        path = self._segment(number)
        size = segments.get(number, 0)
        try:
            with open(path, "ab") as handle:
                handle.write(frame)
                handle.flush()
                os.fsync(handle.fileno())
            if size == 0:
                fsync_dir(self.folder)
        except OSError as exc:
            with contextlib.suppress(OSError):  # leave no torn frame behind
                os.truncate(path, size)
            raise JournalFull(
                f"cannot write the journal {path} ({exc.strerror or exc}); free space on its "
                "disk or move lifeloop.spool_dir"
            ) from exc
        with self._count_lock:
            self._records += len(records)

    # --- draining -------------------------------------------------------------------------

    @property
    def pending_bytes(self) -> int:
        return self._pending(self._segment_sizes())

    @property
    def pending_records(self) -> int:
        return self._records

    def frames(self) -> Iterator[Frame]:
        """The frames not yet drained, oldest first."""
        segment, offset = self._cursor
        for number in sorted(n for n in self._segment_sizes() if n >= segment):
            start = offset if number == segment else 0
            yield from _read_frames(self._segment(number), number, start)

    def consume(self, frames: Sequence[Frame]) -> None:
        """Move the cursor past `frames` (read in order from `frames()`), once their records
        are safely in the store; segments read past are deleted."""
        if not frames:
            return
        last = frames[-1]
        self._cursor = (last.segment, last.end)
        self._write_cursor()
        for number in self._segment_sizes():
            if number < last.segment:
                with contextlib.suppress(FileNotFoundError):
                    self._segment(number).unlink()
        with self._count_lock:
            self._records = max(0, self._records - sum(len(f.records) for f in frames))

    def reset_if_drained(self) -> bool:
        """When every frame is drained: delete the segments and start the next one empty.
        Returns whether the journal is empty."""
        # What is on disk decides, not the count: the caller holds off appends meanwhile.
        if next(self.frames(), None) is not None:
            return False
        for number in self._segment_sizes():
            self._segment(number).unlink()
        self._cursor = (self._cursor[0] + 1, 0)
        self._write_cursor()
        with self._count_lock:
            self._records = 0
        return True

    def close(self, *, remove_if_empty: bool = False) -> None:
        if self._lock_fd is None:
            return
        if remove_if_empty and self.reset_if_drained():
            # The lock goes first, with the folder still held: a process that opens it next
            # finds the folder gone and skips it.
            (self.folder / LOCK_NAME).unlink()
            shutil.rmtree(self.folder, ignore_errors=True)
        os.close(self._lock_fd)
        self._lock_fd = None

    # --- plumbing ---------------------------------------------------------------------------

    def _pending(self, segments: dict[int, int]) -> int:
        segment, offset = self._cursor
        return sum(size for n, size in segments.items() if n >= segment) - (
            offset if segment in segments else 0
        )

    def _segment(self, number: int) -> Path:
        return self.folder / f"{number:010d}{SEGMENT_SUFFIX}"

    def _segment_sizes(self) -> dict[int, int]:
        return _segment_sizes(self.folder)

    def _read_cursor(self) -> tuple[int, int]:
        return _read_cursor(self.folder)

    def _write_cursor(self) -> None:
        tmp = self.folder / f".{CURSOR_NAME}.tmp"
        tmp.write_text(f"{self._cursor[0]} {self._cursor[1]}\n")
        tmp.replace(self.folder / CURSOR_NAME)

    def _repair_tail(self) -> None:
        """Cut a frame that a kill or a failed write left short at the end of the newest
        segment: it was never acknowledged."""
        segments = self._segment_sizes()
        if not segments:
            return
        newest = max(segments)
        start = self._cursor[1] if newest == self._cursor[0] else 0
        end = start
        for frame in _read_frames(self._segment(newest), newest, start):
            end = frame.end
        if end < segments[newest]:
            os.truncate(self._segment(newest), end)


def orphans(root: Path, **limits: int) -> Iterator[Journal]:
    """Journals under `root` whose owner is gone (their lock is free), oldest first, each
    opened and held by this process from then on."""
    root = Path(root)
    if not root.is_dir():
        return
    folders = sorted(
        (p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")),
        key=lambda p: p.stat().st_mtime,
    )
    for folder in folders:
        fd = _lock(folder)
        if fd is None:
            continue
        if not (folder / LOCK_NAME).exists():  # removed by its drainer as we locked it
            os.close(fd)
            continue
        yield Journal(folder, fd, **limits)


def pending_records(root: Path) -> int:
    """Records spooled under `root` by every journal, read without taking any lock: the
    feedback model asks it to tell a request id not drained yet from an unknown one."""
    root = Path(root)
    if not root.is_dir():
        return 0
    total = 0
    for folder in root.iterdir():
        if not folder.is_dir() or folder.name.startswith("."):
            continue
        segment, offset = _read_cursor(folder)
        for number in sorted(n for n in _segment_sizes(folder) if n >= segment):
            start = offset if number == segment else 0
            path = folder / f"{number:010d}{SEGMENT_SUFFIX}"
            total += sum(len(f.records) for f in _read_frames(path, number, start))
    return total


def _segment_sizes(folder: Path) -> dict[int, int]:
    sizes = {}
    for path in folder.glob(f"*{SEGMENT_SUFFIX}"):
        with contextlib.suppress(ValueError, FileNotFoundError):
            sizes[int(path.name.removesuffix(SEGMENT_SUFFIX))] = path.stat().st_size
    return sizes


def _read_cursor(folder: Path) -> tuple[int, int]:
    try:
        segment, offset = (folder / CURSOR_NAME).read_text().split()
        return int(segment), int(offset)
    except (FileNotFoundError, ValueError):
        return (min(_segment_sizes(folder), default=1), 0)


def _read_frames(path: Path, number: int, start: int) -> Iterator[Frame]:
    try:
        handle = open(path, "rb")  # noqa: SIM115 - a drained segment may be gone
    except FileNotFoundError:
        return
    with handle:
        handle.seek(start)
        offset = start
        while True:
            header = handle.read(HEADER.size)
            if len(header) < HEADER.size:
                return
            length, crc = HEADER.unpack(header)
            payload = handle.read(length)
            if len(payload) < length or zlib.crc32(payload) != crc:
                return  # a torn tail: never acknowledged
            offset += HEADER.size + length
            yield Frame(json.loads(payload), number, offset)


def _lock(folder: Path, *, create: bool = False) -> int | None:
    flags = os.O_RDWR | (os.O_CREAT if create else 0)
    try:
        fd = os.open(folder / LOCK_NAME, flags, 0o644)
    except FileNotFoundError:  # the folder, or its lock, went away: no journal there now
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    return fd
