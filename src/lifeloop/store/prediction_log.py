"""The router's prediction log: every answered batch is in the store or in a local fsynced
journal before its answers leave, and `record` never waits on the store for longer than a
short bound, whatever the store does.

Why the bound: the python backend answers `execute` over shared memory, and a batch that
blocks on a store lock stalls every request queued behind it. A router held ~30 s in SQLite's
busy wait was seen to crash tritonserver (SIGSEGV, boost lock_exception in libtriton_python);
`stub-timeout-seconds` turned out not to be the cause (a model sleeping 36 s in execute ran
clean with it at 5, 30 and 60 s), and the same trace is reported under concurrent load with
large payloads (server#8882). Whatever the trigger, a bounded execute never sits in it. So
one worker thread owns the store. `record` hands it the
batch and waits `timeout_s`; if the store has not committed by then (locked, restarting,
unreachable, full), the batch goes to the journal instead and is answered. From then on
batches go straight to the journal while the worker drains it into the store, in order and
idempotently (a write that outlived its wait, or a drain repeated after a crash, inserts
nothing twice). Once the journal is empty, batches go to the store again.

A journal left by a process that died (SIGKILL while spooling) is found by its free lock and
drained first. When the journal is full or its disk refuses the write, `when_full` decides:
`refuse` (the default: the batch is answered with UNAVAILABLE, so no caller holds an id that
is not kept) or `drop` (answered, not logged, and counted)."""

from __future__ import annotations

import contextlib
import itertools
import os
import queue
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path

from lifeloop.errors import JournalFull, LogUnavailable, StoreError
from lifeloop.store.database import Prediction, Store
from lifeloop.store.journal import Journal, orphans


class WhenFull(StrEnum):
    REFUSE = "refuse"
    DROP = "drop"

    @classmethod
    def parse(cls, value: str) -> WhenFull:
        try:
            return cls(value)
        except ValueError:
            choices = ", ".join(w.value for w in cls)
            raise StoreError(
                f"lifeloop.spool_when_full must be one of {choices}, got {value!r}"
            ) from None


class Outcome(StrEnum):
    STORED = "stored"
    SPOOLED = "spooled"
    DROPPED = "dropped"


@dataclass(frozen=True, kw_only=True)
class SpoolSettings:
    folder: Path  # this router's spool: one journal folder per process beneath it
    timeout_s: float = 0.25
    max_bytes: int = 1 << 30
    when_full: WhenFull = WhenFull.REFUSE

    def __post_init__(self) -> None:
        object.__setattr__(self, "folder", Path(self.folder))
        object.__setattr__(self, "when_full", WhenFull.parse(self.when_full))
        if not 0 < self.timeout_s <= 5:
            raise StoreError(
                f"lifeloop.store_timeout_ms must be in 1..5000, got {self.timeout_s * 1000:g}; "
                "the python backend's execute must never wait long"
            )
        if self.max_bytes < 1 << 20:
            raise StoreError(f"lifeloop.spool_max_bytes must be >= 1 MiB, got {self.max_bytes}")


@dataclass
class Counters:
    """What the log did since it started, in records (the Triton metrics read it)."""

    stored: int = 0
    spooled: int = 0
    drained: int = 0
    dropped: int = 0
    refused: int = 0
    pending: int = 0  # in journals now


@dataclass(eq=False)
class _Job:
    batch: list[Prediction]
    done: threading.Event = field(default_factory=threading.Event)
    error: BaseException | None = None
    abandoned: bool = False


class PredictionLog:
    """See the module docstring. `log` receives one line per change of state (spooling
    started, drained); `on_change` is called with the counters after each batch and drain."""

    drain_frames = 64  # frames per drain transaction
    adopt_every_s = 30.0

    def __init__(
        self,
        store: Store,
        settings: SpoolSettings,
        *,
        log: Callable[[str], None] | None = None,
        on_change: Callable[[Counters], None] | None = None,
    ) -> None:
        self.store = store
        self.settings = settings
        self.counters = Counters()
        self._log = log or (lambda _line: None)
        self._on_change = on_change
        limits = {"max_bytes": settings.max_bytes}
        owner = f"{socket.gethostname()}-{os.getpid()}"
        self._journal = Journal.create(settings.folder, owner, **limits)
        self._orphans: list[Journal] = []
        self._lock = threading.Lock()  # appends, and the switch back to direct writes
        self._spooling = False
        self._jobs: queue.SimpleQueue[_Job] = queue.SimpleQueue()
        self._closing = threading.Event()
        self._adopted_at = float("-inf")
        self._adopt()
        self._worker = threading.Thread(target=self._run, name="lifeloop-log", daemon=True)
        self._worker.start()

    @property
    def spooling(self) -> bool:
        return self._spooling

    def record(self, batch: list[Prediction]) -> Outcome:
        """Store or spool `batch`; returns within about `timeout_s` plus one fsync. Raises
        LogUnavailable when neither is possible and `when_full` is `refuse`."""
        if not batch:
            return Outcome.STORED
        if not self._spooling:
            job = _Job(batch)
            self._jobs.put(job)
            if job.done.wait(self.settings.timeout_s) and job.error is None:
                self.counters.stored += len(batch)
                self._changed()
                return Outcome.STORED
            job.abandoned = True
            reason = (
                f"the store did not answer within {self.settings.timeout_s * 1000:g} ms"
                if job.error is None
                else f"the store refused the write ({job.error})"
            )
            if not self._spooling:
                self._log(f"lifeloop: {reason}; spooling predictions to {self._journal.folder}")
        try:
            with self._lock:
                self._journal.append([p.to_json() for p in batch])
                self._spooling = True
        except JournalFull as exc:
            if self.settings.when_full is WhenFull.DROP:
                self.counters.dropped += len(batch)
                self._changed()
                return Outcome.DROPPED
            self.counters.refused += len(batch)
            self._changed()
            raise LogUnavailable(f"prediction log unavailable, request not served: {exc}") from exc
        self.counters.spooled += len(batch)
        self.counters.pending = self._pending()
        self._changed()
        return Outcome.SPOOLED

    def close(self, timeout_s: float = 5.0) -> None:
        """Stop the worker (it finishes the write it is in, within `timeout_s`); what is
        still spooled stays on disk for the next process to drain."""
        self._closing.set()
        self._jobs.put(_Job([]))  # wake it
        self._worker.join(timeout_s)
        for journal in [*self._orphans, self._journal]:
            journal.close(remove_if_empty=True)
        self.store.close()

    # --- the worker -----------------------------------------------------------------------

    def _run(self) -> None:
        backoff = 0.05
        failing = False
        while not self._closing.is_set():
            if not self._spooling:
                try:
                    job = self._jobs.get(timeout=1.0)
                except queue.Empty:
                    self._adopt()
                    continue
                if job.abandoned or not job.batch:
                    continue
                try:
                    self.store.record_predictions(job.batch)
                except Exception as exc:  # handed back to record(), which spools the batch
                    job.error = exc
                job.done.set()
                continue
            try:
                self._drain_once()
            except Exception as exc:
                if not failing:
                    self._log(f"lifeloop: draining the prediction spool waits for the store: {exc}")
                failing = True
                self._closing.wait(backoff)
                backoff = min(backoff * 2, 2.0)
                continue
            if failing:
                failing = False
                backoff = 0.05

    def _drain_once(self) -> None:
        """One transaction's worth of frames from the oldest journal that has any; when all
        are empty, switch back to direct writes."""
        for journal in [*self._orphans, self._journal]:
            frames = list(itertools.islice(journal.frames(), self.drain_frames))
            if not frames:
                if journal is not self._journal:
                    journal.close(remove_if_empty=True)
                    self._orphans.remove(journal)
                continue
            batch = [Prediction.from_json(r) for f in frames for r in f.records]
            self.store.record_predictions(batch, replay=True)
            journal.consume(frames)
            self.counters.drained += len(batch)
            self.counters.pending = self._pending()
            self._changed()
            return
        with self._lock:
            if self._journal.reset_if_drained() and not self._orphans:
                self._spooling = False
                self.counters.pending = 0
        if not self._spooling:
            self._log(
                f"lifeloop: prediction spool drained ({self.counters.drained} records so far); "
                "writing the store directly again"
            )
            self._changed()

    def _adopt(self) -> None:
        """Take over the journals of processes that died, and drain them first."""
        now = time.monotonic()
        if now - self._adopted_at < self.adopt_every_s:
            return
        self._adopted_at = now
        try:
            found = list(orphans(self.settings.folder, max_bytes=self.settings.max_bytes))
        except OSError as exc:
            self._log(f"lifeloop: cannot look for spooled predictions: {exc}")
            return
        for journal in found:  # never this process's own: their locks are held here
            if not journal.pending_records:
                journal.close(remove_if_empty=True)
                continue
            self._orphans.append(journal)
            self._log(
                f"lifeloop: draining {journal.pending_records} spooled predictions left in "
                f"{journal.folder}"
            )
        if self._orphans:
            with self._lock:
                self._spooling = True
            self.counters.pending = self._pending()
            self._changed()

    def _pending(self) -> int:
        return sum(j.pending_records for j in [*self._orphans, self._journal])

    def _changed(self) -> None:
        if self._on_change is not None:
            with contextlib.suppress(Exception):  # metrics never fail the log
                self._on_change(self.counters)
