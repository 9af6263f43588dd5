"""CPU time per request, split by process.

Where the client and the server share cores, what each request costs in CPU bounds the
throughput, so `bench` records the split beside the figures it explains: the client (this
process), tritonserver, and the python backend's stubs (tritonserver's child processes, one
per model instance; here they run the ONNX models). Requests are counted by Triton over the
same span, so the warm-up a measurement discards is on both sides of the division.
"""

from __future__ import annotations

import os
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass

import psutil

from lifeloop.loadtest.stats import Scrape, parse_metrics, server_split

ROLES = ("client", "tritonserver", "stubs")


@dataclass(frozen=True)
class CpuSplit:
    """CPU milliseconds per successful request of one model, by process, over one span."""

    requests: int
    wall_s: float
    cores: int
    client_ms: float
    tritonserver_ms: float
    stubs_ms: float

    @property
    def total_ms(self) -> float:
        return self.client_ms + self.tritonserver_ms + self.stubs_ms

    @property
    def busy(self) -> float:
        """The share of all cores the three used: near 1, the rate is bound by these costs."""
        used_s = self.total_ms * self.requests / 1000
        return used_s / (self.wall_s * self.cores) if self.wall_s and self.cores else 0.0

    def to_dict(self) -> dict[str, float]:
        return {**asdict(self), "total_ms": self.total_ms, "busy": self.busy}

    @classmethod
    def of(
        cls,
        before: dict[str, float],
        after: dict[str, float],
        *,
        requests: int,
        wall_s: float,
        cores: int,
    ) -> CpuSplit:
        """From CPU seconds by role at the start and the end of the span."""
        per = 1000.0 / requests if requests else 0.0
        spent = {role: max(after[role] - before[role], 0.0) * per for role in ROLES}
        return cls(
            requests=requests,
            wall_s=wall_s,
            cores=cores,
            client_ms=spent["client"],
            tritonserver_ms=spent["tritonserver"],
            stubs_ms=spent["stubs"],
        )


class CpuMeter:
    """Reads the CPU seconds of this process, of tritonserver (`server_pid`) and of its
    children."""

    def __init__(self, server_pid: int) -> None:
        self._client = psutil.Process(os.getpid())
        self._server = psutil.Process(server_pid)

    def read(self) -> dict[str, float]:
        # A stub that exits inside a span takes its CPU time with it; one that starts inside
        # a span counts from zero.
        stubs = 0.0
        for child in self._server.children(recursive=True):
            try:
                stubs += _seconds(child)
            except psutil.NoSuchProcess:
                continue
        return {
            "client": _seconds(self._client),
            "tritonserver": _seconds(self._server),
            "stubs": stubs,
        }

    @contextmanager
    def span(self, metrics_url: str, model: str) -> Iterator[list[CpuSplit]]:
        """Yields a list that holds the split once the block ends. Triton's success counter
        for `model` (read from `metrics_url`) gives the requests."""
        found: list[CpuSplit] = []
        first = _settled_scrape(metrics_url, model)
        began, cpu = time.perf_counter(), self.read()
        yield found
        last_cpu, ended = self.read(), time.perf_counter()
        last = _settled_scrape(metrics_url, model)
        requests = server_split(first, last, model).requests
        found.append(
            CpuSplit.of(cpu, last_cpu, requests=requests, wall_s=ended - began, cores=_cores())
        )


def _scrape(url: str) -> Scrape:
    with urllib.request.urlopen(url, timeout=5) as response:
        return parse_metrics(response.read().decode())


def _settled_scrape(url: str, model: str, *, pause_s: float = 0.02, limit_s: float = 2.0) -> Scrape:
    """Triton counts a request once the model releases it, which for the python backend comes
    after the client has its response: scrape until the model's success count holds still, so
    a request answered just before (or at the end of) the span lands on the right side."""
    last = _scrape(url)
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        time.sleep(pause_s)
        now = _scrape(url)
        if server_split(last, now, model).requests == 0:
            return now
        last = now
    return last


def _seconds(process: psutil.Process) -> float:
    times = process.cpu_times()
    return float(times.user + times.system)


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1
