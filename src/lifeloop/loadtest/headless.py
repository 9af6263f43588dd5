"""The Locust process of `lifeloop loadtest`: python -m lifeloop.loadtest.headless CONFIG.json

It runs Locust headless through its `Environment`, cuts the recorded requests into windows,
stops once perf_analyzer's stability rule holds (or the duration is spent), and writes the
report. It prints one JSON line per window so the parent can show progress. It runs in its own
process because Locust monkey-patches the interpreter with gevent.
"""

from __future__ import annotations

from gevent import monkey

monkey.patch_all()

import json  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
import urllib.request  # noqa: E402
from argparse import Namespace  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import gevent  # noqa: E402
import locust  # noqa: E402
from locust.env import Environment  # noqa: E402

from lifeloop.loadtest import locustfile  # noqa: E402
from lifeloop.loadtest.config import LoadTestConfig  # noqa: E402
from lifeloop.loadtest.report import write_report  # noqa: E402
from lifeloop.loadtest.stats import (  # noqa: E402
    Sample,
    Scrape,
    Window,
    is_stable,
    parse_metrics,
    server_split,
    window,
)


def scrape(url: str) -> Scrape | None:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return parse_metrics(response.read().decode())
    except OSError:
        return None


def emit(event: str, **fields: Any) -> None:
    print(json.dumps({"event": event, **fields}), flush=True)


def run(config: LoadTestConfig) -> dict[str, Any]:
    user = locustfile.TritonGrpcUser if config.protocol == "grpc" else locustfile.TritonHttpUser
    options = Namespace(
        model=config.model,
        model_version=config.model_version or 0,
        payload_dir=config.payload_dir or "",
        batch_size=config.batch_size,
        rate=config.rate or 0.0,
        arrival=config.arrival,
    )
    env = Environment(
        user_classes=[user],
        host=config.host,
        events=locust.events,
        parsed_options=options,
        stop_timeout=locustfile.IN_FLIGHT_GRACE_S,  # no request is cancelled mid-flight
    )
    samples: list[Sample] = []

    def record(
        response_time: float, name: str, exception: Any = None, context: Any = None, **_: Any
    ) -> None:
        samples.append(
            Sample(
                end_s=time.monotonic(),
                latency_ms=float(response_time),
                ok=exception is None,
                name=name,
                error="" if exception is None else " ".join(str(exception).split())[:160],
                late_ms=float((context or {}).get("late_ms", 0.0)),
            )
        )

    env.events.request.add_listener(record)
    runner = env.create_local_runner()
    env.events.test_start.fire(environment=env)
    runner.start(config.users, spawn_rate=config.spawn_rate)
    gevent.sleep(config.users / config.spawn_rate)
    emit("spawned", users=config.users)

    step = config.window
    gevent.sleep(step)  # warm-up window, not measured
    began = time.monotonic()
    marks, scrapes = [began], [scrape(config.metrics)]
    # This process's CPU (all its threads, gRPC's pool included) at each mark: what the load
    # generator itself costs per request.
    cpu = [time.process_time()]
    windows: list[Window] = []
    stable = False
    while True:
        gevent.sleep(max(0.0, marks[-1] + step - time.monotonic()))
        marks.append(time.monotonic())
        cpu.append(time.process_time())
        scrapes.append(scrape(config.metrics))
        windows.append(window(samples, marks[-2], marks[-1], late_ms=config.late_threshold_ms))
        current = windows[-1]
        stable = is_stable(
            windows, count=config.stability_windows, tolerance=config.stability_tolerance
        )
        emit(
            "window",
            index=len(windows),
            throughput=current.throughput,
            p99=current.latency.p99,
            failures=current.failures,
            stable=stable,
            elapsed=marks[-1] - began,
        )
        if stable or marks[-1] - began + step > config.duration_s + 1e-6:
            break
    runner.quit()
    env.events.test_stop.fire(environment=env)

    count = min(config.stability_windows, len(windows))
    first = len(windows) - count
    splits = []
    for i in range(len(windows)):
        before, after = scrapes[i], scrapes[i + 1]
        splits.append(
            server_split(before, after, config.model).to_dict() if before and after else None
        )
    merged_split = None
    start, end = scrapes[first], scrapes[-1]
    if start and end:
        merged_split = server_split(start, end, config.model).to_dict()
    return write_report(
        config=config,
        samples=samples,
        windows=windows,
        window_splits=splits,
        measured=(first, len(windows)),
        stable=stable,
        server=merged_split,
        metrics_available=scrapes[-1] is not None,
        generator_cpu_s=cpu,
    )


def main() -> None:
    config = LoadTestConfig.from_json(Path(sys.argv[1]).read_text())
    report = run(config)
    emit("done", report=str(Path(config.out) / "report.json"), stable=report["stable"])


if __name__ == "__main__":
    main()
