"""The router's drift gauge: each version's newest answers, tested against its reference as
they come (lifeloop.drift), so that Prometheus can alert on drift without asking the store.

The hot path only appends each answer's logged top-k to its version's window. A test runs on
a worker thread once a version has `every` new answers, and only one runs at a time: when
tests cannot keep up, windows are tested less often, never queued.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from lifeloop.drift import MIN_WINDOW, REFERENCE_NAME, DriftResult, Reference, window_drift
from lifeloop.store.database import Prediction

Row = tuple[Sequence[str], Sequence[float]]


class DriftWatch:
    def __init__(
        self,
        model_dir: Path,
        window: int,
        on_result: Callable[[int, DriftResult], None],
        *,
        log: Callable[[str], None] = lambda _: None,
    ) -> None:
        self.model_dir = model_dir
        self.window = window
        self.every = max(MIN_WINDOW, window // 3)
        self.on_result = on_result
        self.log = log
        self._rows: dict[int, deque[Row]] = {}
        self._new: dict[int, int] = {}
        self._references: dict[int, Reference | None] = {}
        self._lock = threading.Lock()
        self._busy = threading.Event()
        self._worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="lifeloop-drift")

    def add(self, records: Sequence[Prediction]) -> None:
        """Answers the classifier gave itself (a cascade's light model's are not its own)."""
        due = []
        with self._lock:
            for r in records:
                if r.answered_by is not None:
                    continue
                rows = self._rows.setdefault(r.version, deque(maxlen=self.window))
                rows.append((r.labels, r.scores))
                self._new[r.version] = self._new.get(r.version, 0) + 1
                if self._new[r.version] >= self.every and len(rows) >= MIN_WINDOW:
                    due.append(r.version)
        if due and not self._busy.is_set():
            self._busy.set()
            self._worker.submit(self._test, sorted(set(due)))

    def close(self) -> None:
        self._worker.shutdown(wait=True)

    def _test(self, versions: list[int]) -> None:
        try:
            for version in versions:
                reference = self._reference(version)
                with self._lock:
                    self._new[version] = 0
                    rows = list(self._rows[version])
                if reference is not None:
                    self.on_result(version, window_drift(reference, rows))
        except Exception as exc:  # a gauge must never take the router down
            self.log(f"lifeloop: drift test failed: {type(exc).__name__}: {exc}")
        finally:
            self._busy.clear()

    def _reference(self, version: int) -> Reference | None:
        if version not in self._references:
            path = self.model_dir / str(version) / REFERENCE_NAME
            try:
                self._references[version] = Reference.read(path)
            except FileNotFoundError:
                self.log(f"lifeloop: no drift gauge for version {version}: it has no {path}")
                self._references[version] = None
            except Exception as exc:  # unreadable: said once, not at every test
                self.log(f"lifeloop: no drift gauge for version {version}: {path}: {exc}")
                self._references[version] = None
        return self._references[version]
