"""`lifeloop tune`: find the dynamic-batching config with the most throughput whose p99 stays
within a budget, by hill climbing over max_batch_size, max_queue_delay_microseconds and the
instance count. Every point is measured under the stability rule; the winner is written back
through the repository writer, so the server reloads it."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lifeloop.client import ClientError, ServerControl
from lifeloop.errors import LoadTestError
from lifeloop.loadtest.lean import measure_lean
from lifeloop.repository import ModelConfig, read_config, write_config
from lifeloop.repository.config import DynamicBatching, InstanceGroup, standard_warmup

MIN_GAIN = 0.02  # a neighbour must beat the current best by 2% to move the climb


@dataclass(frozen=True, order=True)
class Point:
    max_batch_size: int
    max_queue_delay_us: int
    instances: int

    def neighbours(self, limits: Limits) -> list[Point]:
        mbs, delay, inst = self.max_batch_size, self.max_queue_delay_us, self.instances
        candidates = {
            dataclasses.replace(self, max_batch_size=max(1, round(mbs * 0.5))),
            dataclasses.replace(self, max_batch_size=max(mbs + 1, round(mbs * 1.5))),
            dataclasses.replace(self, max_queue_delay_us=delay // 2),
            dataclasses.replace(self, max_queue_delay_us=max(100, delay * 2)),
            dataclasses.replace(self, instances=inst - 1),
            dataclasses.replace(self, instances=inst + 1),
        }
        return sorted(p for p in candidates if p != self and limits.allows(p))


@dataclass(frozen=True)
class Limits:
    max_batch_size: tuple[int, int] = (1, 128)
    max_queue_delay_us: tuple[int, int] = (0, 20_000)
    instances: tuple[int, int] = (1, 4)

    def allows(self, point: Point) -> bool:
        return all(
            low <= getattr(point, name) <= high
            for name, (low, high) in dataclasses.asdict(self).items()
        )


@dataclass(frozen=True)
class Trial:
    point: Point
    throughput: float
    p99_ms: float
    failures: int
    stable: bool
    feasible: bool

    def row(self) -> dict[str, Any]:
        return {
            **dataclasses.asdict(self.point),
            "throughput_rps": self.throughput,
            "p99_ms": self.p99_ms,
            "failures": self.failures,
            "stable": self.stable,
            "feasible": self.feasible,
        }


def point_of(config: ModelConfig) -> Point:
    batching = config.dynamic_batching or DynamicBatching(max_queue_delay_us=0)
    instances = sum(g.count for g in config.instance_groups) or 1
    return Point(config.max_batch_size, batching.max_queue_delay_us, instances)


def with_point(config: ModelConfig, point: Point) -> ModelConfig:
    kind = config.instance_groups[0].kind if config.instance_groups else InstanceGroup().kind
    tried = dataclasses.replace(
        config,
        max_batch_size=point.max_batch_size,
        dynamic_batching=DynamicBatching(max_queue_delay_us=point.max_queue_delay_us),
        instance_groups=(InstanceGroup(count=point.instances, kind=kind),),
        warmup=(),
    )
    # Warm at batch 1 and at the new max batch, if the config warmed at all.
    return dataclasses.replace(tried, warmup=standard_warmup(tried) if config.warmup else ())


def apply(repository: Path, config: ModelConfig, url: str, timeout_s: float = 120.0) -> None:
    """Write `config` atomically and wait until the server serves it: EXPLICIT mode is asked
    to load it; in POLL mode we wait for the server's config to change."""
    write_config(repository, config)
    with ServerControl(url, "grpc") as server:
        try:
            server.load_model(config.name)
            return
        except ClientError as exc:
            if "poll" not in str(exc).lower():
                raise LoadTestError(
                    f"the server refused the tuned config of {config.name!r}: {exc}"
                ) from exc
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            try:
                if point_of(server.model_config(config.name)) == point_of(config):
                    return
            except ClientError:
                pass
            time.sleep(0.5)
    raise LoadTestError(
        f"the server did not pick up the new config of {config.name!r} in {timeout_s:g} s"
    )


def tune(
    *,
    url: str,
    repository: Path,
    model: str,
    p99_budget_ms: float,
    concurrency: int = 16,
    window_s: float = 2.0,
    max_s: float = 16.0,
    max_points: int = 12,
    limits: Limits | None = None,
    say: Callable[[str], None] = print,
) -> dict[str, Any]:
    if p99_budget_ms <= 0:
        raise LoadTestError(
            f"p99_budget_ms must be > 0, got {p99_budget_ms:g}", setting="p99_budget_ms"
        )
    limits = limits or Limits()
    original = read_config(Path(repository) / model)
    if original is None:
        raise LoadTestError(
            f"model {model!r} has no config.pbtxt in {repository}; publish it first"
        )
    shape = original.inputs[0].dims
    trials: dict[Point, Trial] = {}

    def measure(point: Point) -> Trial:
        apply(Path(repository), with_point(original, point), url)
        m = measure_lean(
            url,
            model,
            shape,
            concurrency=concurrency,
            window_s=window_s,
            max_s=max_s,
            input_name=original.inputs[0].name,
            output_name=original.outputs[0].name,
        )
        trial = Trial(
            point,
            m.throughput,
            m.latency.p99,
            m.failures,
            m.stable,
            feasible=m.failures == 0 and m.requests > 0 and m.latency.p99 <= p99_budget_ms,
        )
        trials[point] = trial
        say(
            f"  mbs {point.max_batch_size:>4}  delay {point.max_queue_delay_us:>6} us  instances "
            f"{point.instances}  {m.throughput:9.1f} req/s  p99 {m.latency.p99:8.2f} ms"
            f"{'' if trial.feasible else '  (over budget)'}"
        )
        return trial

    best = measure(point_of(original))
    improved = True
    while improved and len(trials) < max_points:
        improved = False
        for neighbour in best.point.neighbours(limits):
            if neighbour in trials or len(trials) >= max_points:
                continue
            trial = measure(neighbour)
            if trial.feasible and (
                not best.feasible or trial.throughput > best.throughput * (1 + MIN_GAIN)
            ):
                best, improved = trial, True
        # Early exit: a full ring of neighbours without a 2% gain ends the climb.
    winner = best if best.feasible else None
    final = with_point(original, winner.point) if winner else original
    apply(Path(repository), final, url)
    return {
        "model": model,
        "p99_budget_ms": p99_budget_ms,
        "concurrency": concurrency,
        "trials": [t.row() for t in trials.values()],
        "winner": winner.row() if winner else None,
        "written": dataclasses.asdict(point_of(final)),
    }
