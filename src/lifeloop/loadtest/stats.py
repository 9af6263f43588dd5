"""Measurement arithmetic, free of Locust and Triton so tests can feed it fixed numbers.

Requests are recorded as samples; samples are cut into windows; perf_analyzer's stability rule
accepts a measurement when the last three windows agree within 10% on throughput and latency;
the accepted windows are merged. Server-side time per request comes from deltas of Triton's
Prometheus counters over the same span.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

PERCENTILES = (50, 90, 95, 99)


@dataclass(frozen=True, slots=True)
class Sample:
    """One finished request: when it ended (seconds, monotonic), how long it took, and how."""

    end_s: float
    latency_ms: float
    ok: bool = True
    name: str = ""
    error: str = ""
    late_ms: float = 0.0  # open loop: how far after its scheduled time it was sent


@dataclass(frozen=True)
class Latency:
    mean: float
    p50: float
    p90: float
    p95: float
    p99: float

    @classmethod
    def of(cls, values_ms: Sequence[float]) -> Latency:
        if len(values_ms) == 0:
            return cls(0.0, 0.0, 0.0, 0.0, 0.0)
        array = np.asarray(values_ms, dtype=np.float64)
        p50, p90, p95, p99 = np.percentile(array, PERCENTILES)
        return cls(float(array.mean()), float(p50), float(p90), float(p95), float(p99))


@dataclass(frozen=True)
class Window:
    start_s: float
    end_s: float
    requests: int
    failures: int
    throughput: float  # successful requests per second
    latency: Latency  # of successful requests
    late_share: float = 0.0
    failures_by_cause: dict[str, int] = field(default_factory=dict)
    by_name: dict[str, int] = field(default_factory=dict)

    @property
    def seconds(self) -> float:
        return self.end_s - self.start_s

    def row(self) -> dict[str, Any]:
        """A flat dict for the CSV of windows."""
        return {
            "start_s": round(self.start_s, 3),
            "end_s": round(self.end_s, 3),
            "requests": self.requests,
            "failures": self.failures,
            "throughput_rps": round(self.throughput, 3),
            **{f"latency_{k}_ms": round(v, 3) for k, v in asdict(self.latency).items()},
            "late_share": round(self.late_share, 5),
        }


def window(
    samples: Iterable[Sample], start_s: float, end_s: float, *, late_ms: float = 1.0
) -> Window:
    """The samples that ended in [start_s, end_s), summarised."""
    inside = [s for s in samples if start_s <= s.end_s < end_s]
    good = [s.latency_ms for s in inside if s.ok]
    failures = Counter(s.error or "unknown error" for s in inside if not s.ok)
    late = sum(1 for s in inside if s.late_ms > late_ms)
    span = max(end_s - start_s, 1e-9)
    return Window(
        start_s=start_s,
        end_s=end_s,
        requests=len(inside),
        failures=sum(failures.values()),
        throughput=len(good) / span,
        latency=Latency.of(good),
        late_share=late / len(inside) if inside else 0.0,
        failures_by_cause=dict(failures),
        by_name=dict(Counter(s.name for s in inside)),
    )


def within(values: Sequence[float], tolerance: float) -> bool:
    """max/min <= 1 + tolerance (all zero counts as equal; one zero among others does not)."""
    low, high = min(values), max(values)
    if high == 0:
        return True
    return low > 0 and high / low <= 1 + tolerance


def is_stable(windows: Sequence[Window], *, count: int = 3, tolerance: float = 0.10) -> bool:
    """perf_analyzer's rule: the last `count` windows agree on throughput and mean latency."""
    if len(windows) < count:
        return False
    last = windows[-count:]
    if any(w.requests == 0 for w in last):
        return False
    return within([w.throughput for w in last], tolerance) and within(
        [w.latency.mean for w in last], tolerance
    )


def merge(samples: Iterable[Sample], windows: Sequence[Window], *, late_ms: float = 1.0) -> Window:
    """One window spanning `windows`, computed from the raw samples (not averaged averages)."""
    return window(samples, windows[0].start_s, windows[-1].end_s, late_ms=late_ms)


# --- Triton's Prometheus counters -----------------------------------------------------------

SERVER_COUNTERS = {
    "queue": "nv_inference_queue_duration_us",
    "compute_input": "nv_inference_compute_input_duration_us",
    "compute_infer": "nv_inference_compute_infer_duration_us",
    "compute_output": "nv_inference_compute_output_duration_us",
    "request": "nv_inference_request_duration_us",
}
Scrape = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def parse_metrics(text: str) -> Scrape:
    """Prometheus text exposition -> {(name, sorted labels): value}."""
    from prometheus_client.parser import text_string_to_metric_families

    values: Scrape = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            # The parser names counter samples "<name>_total"; Triton's are exposed without it.
            name = family.name if sample.name == f"{family.name}_total" else sample.name
            values[(name, tuple(sorted(sample.labels.items())))] = float(sample.value)
    return values


def _total(scrape: Scrape, name: str, model: str, version: str | None) -> float:
    total = 0.0
    for (metric, labels), value in scrape.items():
        found = dict(labels)
        if (
            metric == name
            and found.get("model") == model
            and version in (None, found.get("version"))
        ):
            total += value
    return total


@dataclass(frozen=True)
class ServerSplit:
    """Average server-side time per successful request over a span, in milliseconds."""

    requests: int
    executions: int
    queue_ms: float
    compute_input_ms: float
    compute_infer_ms: float
    compute_output_ms: float
    request_ms: float

    @property
    def average_batch(self) -> float:
        return self.requests / self.executions if self.executions else 0.0

    def to_dict(self) -> dict[str, float]:
        return {**asdict(self), "average_batch": self.average_batch}


def server_split(
    before: Scrape, after: Scrape, model: str, version: str | None = None
) -> ServerSplit:
    """Deltas of Triton's cumulative counters between two scrapes, per successful request."""

    def delta(name: str) -> float:
        return _total(after, name, model, version) - _total(before, name, model, version)

    requests = int(delta("nv_inference_request_success"))
    per = 1 / (1000.0 * requests) if requests else 0.0
    return ServerSplit(
        requests=requests,
        executions=int(delta("nv_inference_exec_count")),
        **{f"{k}_ms": delta(v) * per for k, v in SERVER_COUNTERS.items()},  # type: ignore[arg-type]
    )


# --- in-process measurement under the stability rule --------------------------------------


@dataclass(frozen=True)
class Measurement:
    """Figures merged over the accepted windows of one measurement."""

    throughput: float  # per second, of whatever one sample counts (requests, batches)
    latency: Latency
    requests: int
    failures: int
    stable: bool
    windows: tuple[Window, ...]

    def to_dict(self, *, per_sample: int = 1) -> dict[str, Any]:
        return {
            "throughput": self.throughput * per_sample,
            "latency_ms": asdict(self.latency),
            "requests": self.requests,
            "failures": self.failures,
            "stable": self.stable,
            "windows": len(self.windows),
        }


class Meter:
    """Collects samples as they finish and cuts them into windows of `window_s` after a
    warm-up; `done()` turns true once the last `count` windows are stable or `max_s` is spent.

    Samples arrive in time order, so each closed window is a contiguous slice found by
    bisection and summarised once: checking `done()` after every sample stays cheap."""

    def __init__(
        self,
        *,
        window_s: float,
        max_s: float,
        warmup_s: float | None = None,
        count: int = 3,
        tolerance: float = 0.10,
        clock: Any = None,
    ) -> None:
        import time

        self.clock = clock or time.monotonic
        self.window_s = window_s
        self.max_s = max_s
        self.count = count
        self.tolerance = tolerance
        self.start = self.clock() + (window_s if warmup_s is None else warmup_s)
        self.samples: list[Sample] = []
        self._ends: list[float] = []
        self._closed: list[Window] = []

    def add(self, latency_ms: float, *, ok: bool = True, error: str = "") -> None:
        now = self.clock()
        self.samples.append(Sample(now, latency_ms, ok, error=error))
        self._ends.append(now)

    def windows(self) -> list[Window]:
        import bisect

        closed = int(max(0.0, self.clock() - self.start) // self.window_s)
        while len(self._closed) < closed:
            a = self.start + len(self._closed) * self.window_s
            b = a + self.window_s
            lo, hi = bisect.bisect_left(self._ends, a), bisect.bisect_left(self._ends, b)
            self._closed.append(window(self.samples[lo:hi], a, b))
        return list(self._closed)

    def done(self) -> bool:
        if self.clock() - self.start >= self.max_s:
            return True
        return is_stable(self.windows(), count=self.count, tolerance=self.tolerance)

    def result(self) -> Measurement:
        windows = self.windows()
        stable = is_stable(windows, count=self.count, tolerance=self.tolerance)
        chosen = windows[-self.count :] if windows else []
        total = merge(self.samples, chosen) if chosen else window([], 0.0, 1.0)
        return Measurement(
            throughput=total.throughput,
            latency=total.latency,
            requests=total.requests,
            failures=total.failures,
            stable=stable,
            windows=tuple(windows),
        )


class Schedule:
    """Intended send times for open-loop load: constant gaps of 1/rate, or exponential gaps
    (Poisson arrivals) with that mean. One schedule is shared by every user of a process."""

    def __init__(
        self, rate: float, arrival: str = "constant", *, seed: int = 0, start: float | None = None
    ):
        import time

        if rate <= 0:
            raise ValueError(f"rate must be > 0, got {rate}")
        if arrival not in ("constant", "poisson"):
            raise ValueError(f"arrival must be constant or poisson, got {arrival!r}")
        self.rate = rate
        self.arrival = arrival
        self._random = np.random.default_rng(seed)
        self._next = time.perf_counter() if start is None else start

    def take(self) -> float:
        """The next send time. (Greenlets do not preempt each other, so this needs no lock.)"""
        slot = self._next
        gap = (
            self._random.exponential(1 / self.rate) if self.arrival == "poisson" else 1 / self.rate
        )
        self._next += gap
        return slot
