"""The prediction log against real stores that stop answering: SQLite whose write lock
another process holds, and a PostgreSQL URL whose server accepts connections and never
answers. `record` returns within its bound, spools, and drains everything once the store
answers again. (The same against a real tritonserver and PostgreSQL server:
tests/integration/test_store_outage.py.)"""

from __future__ import annotations

import socket
import sqlite3
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from lifeloop.errors import LogUnavailable
from lifeloop.store.database import Prediction, Store
from lifeloop.store.prediction_log import Outcome, PredictionLog, SpoolSettings, WhenFull


def batch(n: int) -> list[Prediction]:
    return [
        Prediction(
            request_id=uuid.uuid4().hex,
            model="digits",
            version=1,
            route="champion",
            labels=["1", "2"],
            scores=[0.9, 0.1],
            content_hash="0" * 32,
        )
        for _ in range(n)
    ]


@contextmanager
def sqlite_write_lock(path: Path) -> Iterator[None]:
    """Another connection holds SQLite's write lock, as a long transaction elsewhere would."""
    holder = sqlite3.connect(path, timeout=0, isolation_level=None, check_same_thread=False)
    holder.execute("BEGIN IMMEDIATE")
    try:
        yield
    finally:
        holder.execute("ROLLBACK")
        holder.close()


def wait_until(condition, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def test_a_locked_sqlite_store_spools_within_the_bound_and_drains_in_full(tmp_path) -> None:
    db = tmp_path / "store.db"
    url = f"sqlite:///{db}"
    Store(url).close()  # the tables exist, as after `router init`
    log = PredictionLog(Store(url, connect=False), SpoolSettings(folder=tmp_path / "spool"))
    try:
        stored = batch(4)
        assert log.record(stored) is Outcome.STORED
        sent = list(stored)
        waits = []
        with sqlite_write_lock(db):
            for _ in range(20):
                b = batch(4)
                started = time.perf_counter()
                assert log.record(b) is Outcome.SPOOLED
                waits.append(time.perf_counter() - started)
                sent += b
            assert log.spooling and log.counters.pending > 0
        # The first batch waited out the bound; the rest went straight to the journal.
        assert waits[0] < 1.0 and max(waits[1:]) < 0.2, waits
        wait_until(lambda: not log.spooling)
        with Store(url) as store:
            assert store.request_ids("digits") == {p.request_id for p in sent}
        assert log.counters.spooled == 80 and log.counters.drained >= 80
        assert log.record(batch(2)) is Outcome.STORED  # direct writes again
    finally:
        log.close()


@pytest.fixture
def silent_postgres() -> Iterator[str]:
    """A port that accepts TCP connections and never says a word: a PostgreSQL server that
    hangs (or a network that drops its answers)."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(64)
    accepted: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        server.settimeout(0.2)
        while not stop.is_set():
            try:
                accepted.append(server.accept()[0])
            except TimeoutError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield f"postgresql://postgres@127.0.0.1:{server.getsockname()[1]}/postgres"
    stop.set()
    thread.join()
    for conn in accepted:
        conn.close()
    server.close()


def test_a_silent_postgres_never_holds_a_batch_past_the_bound(tmp_path, silent_postgres):
    log = PredictionLog(
        Store(silent_postgres, connect=False),
        SpoolSettings(folder=tmp_path / "spool", timeout_s=0.1),
    )
    try:
        started = time.perf_counter()
        outcomes = [log.record(batch(2)) for _ in range(10)]
        elapsed = time.perf_counter() - started
        assert outcomes == [Outcome.SPOOLED] * 10
        assert elapsed < 1.5, f"10 batches took {elapsed:.2f} s against a silent store"
        assert log.counters.pending == 20
    finally:
        log.close(timeout_s=0.5)


def test_a_full_spool_refuses_by_default_and_drops_when_asked(tmp_path, silent_postgres):
    for when_full, expected in ((WhenFull.REFUSE, None), (WhenFull.DROP, Outcome.DROPPED)):
        settings = SpoolSettings(
            folder=tmp_path / when_full.value,
            timeout_s=0.05,
            max_bytes=1 << 20,
            when_full=when_full,
        )
        log = PredictionLog(Store(silent_postgres, connect=False), settings)
        try:
            big = batch(4000)  # about 1.3 MB of records: more than the spool holds
            if expected is None:
                with pytest.raises(LogUnavailable, match="request not served.*spool_max_bytes"):
                    log.record(big)
                assert log.counters.refused == 4000
            else:
                assert log.record(big) is expected and log.counters.dropped == 4000
            assert log.record(batch(1)) is Outcome.SPOOLED  # what fits still spools
        finally:
            log.close(timeout_s=0.5)


def test_a_dead_processs_spool_is_drained_by_the_next_log(tmp_path) -> None:
    db = tmp_path / "store.db"
    url = f"sqlite:///{db}"
    Store(url).close()
    settings = SpoolSettings(folder=tmp_path / "spool", timeout_s=0.05)
    first = PredictionLog(Store(url, connect=False), settings)
    spooled = batch(5)
    with sqlite_write_lock(db):
        assert first.record(spooled) is Outcome.SPOOLED
        # The process dies here: its journal stays, its lock goes with it.
        first._closing.set()
        first._journal.close()
    second = PredictionLog(Store(url, connect=False), settings)
    try:
        wait_until(lambda: not second.spooling)
        with Store(url) as store:
            assert store.request_ids("digits") >= {p.request_id for p in spooled}
        assert [p.name for p in settings.folder.iterdir()] == [second._journal.folder.name]
    finally:
        second.close()
