"""The measurement arithmetic on fixed numbers: windows, the stability rule, percentiles,
Prometheus deltas, late sends, and the report built from them."""

from __future__ import annotations

import numpy as np
import pytest

from lifeloop.loadtest import LoadTestConfig, LoadTestError
from lifeloop.loadtest.report import build_report, summary_rows, window_rows
from lifeloop.loadtest.stats import (
    Latency,
    Meter,
    Sample,
    Schedule,
    is_stable,
    parse_metrics,
    server_split,
    window,
    within,
)


def test_percentiles_of_one_to_a_hundred() -> None:
    latency = Latency.of([float(v) for v in range(1, 101)])
    assert (latency.p50, latency.p90, latency.p95, latency.p99) == pytest.approx(
        (50.5, 90.1, 95.05, 99.01)
    )
    assert latency.mean == pytest.approx(50.5)
    assert Latency.of([]) == Latency(0, 0, 0, 0, 0)


def test_window_counts_only_its_span_and_splits_failures_by_cause() -> None:
    samples = [
        Sample(0.5, 10.0),
        Sample(1.2, 20.0),
        Sample(1.4, 30.0, ok=False, error="timeout"),
        Sample(1.6, 40.0, ok=False, error="timeout"),
        Sample(1.8, 50.0, ok=False, error="refused"),
        Sample(2.0, 99.0),
    ]
    w = window(samples, 1.0, 2.0)
    assert (w.requests, w.failures) == (4, 3)
    assert w.throughput == pytest.approx(1.0)  # one success in one second
    assert w.latency.mean == pytest.approx(20.0)  # successes only
    assert w.failures_by_cause == {"timeout": 2, "refused": 1}


def test_late_share_counts_sends_behind_schedule() -> None:
    samples = [
        Sample(0.1 * i, 5.0, late_ms=late)
        for i, late in enumerate([0, 0.5, 3, 0, 12, 0, 0, 0, 0, 0])
    ]
    assert window(samples, 0.0, 1.0, late_ms=1.0).late_share == pytest.approx(0.2)


def windows_of(throughputs: list[float], latencies: list[float]):
    samples = []
    for second, (rate, latency) in enumerate(zip(throughputs, latencies, strict=True)):
        samples += [Sample(second + (i + 0.5) / rate, latency) for i in range(int(rate))]
    return [window(samples, s, s + 1.0) for s in range(len(throughputs))]


def test_stability_rule_needs_three_windows_within_ten_percent() -> None:
    assert is_stable(windows_of([50, 100, 105, 109], [10, 10, 10.5, 10.9]))
    assert not is_stable(windows_of([100, 105, 112], [10, 10, 10]))  # throughput 12% apart
    assert not is_stable(windows_of([100, 100, 100], [10, 10, 11.5]))  # latency 15% apart
    assert not is_stable(windows_of([100, 100], [10, 10]))  # too few windows
    assert within([0, 0, 0], 0.1) and not within([0, 5, 5], 0.1)


def test_meter_stops_once_stable_and_merges_the_last_three_windows() -> None:
    now = [0.0]
    meter = Meter(window_s=1.0, max_s=60.0, warmup_s=1.0, clock=lambda: now[0])
    while not meter.done():
        now[0] += 0.01
        meter.add(latency_ms=5.0 if now[0] > 2 else 50.0)  # slow until 2 s, then steady
    result = meter.result()
    assert result.stable and len(result.windows) >= 3
    assert result.throughput == pytest.approx(100, rel=0.02)
    assert result.latency.p99 == pytest.approx(5.0)


def test_meter_gives_up_after_max_seconds() -> None:
    now = [0.0]
    meter = Meter(window_s=1.0, max_s=5.0, warmup_s=0.0, clock=lambda: now[0])
    while not meter.done():
        now[0] += 0.01
        meter.add(latency_ms=float(now[0]))  # latency keeps growing: never stable
    assert not meter.result().stable and now[0] == pytest.approx(5.0, abs=0.02)


METRICS = """# HELP nv_inference_request_success Number of successful inference requests
# TYPE nv_inference_request_success counter
nv_inference_request_success{{model="m",version="1"}} {ok}
nv_inference_request_success{{model="other",version="1"}} 999
# TYPE nv_inference_exec_count counter
nv_inference_exec_count{{model="m",version="1"}} {execs}
# TYPE nv_inference_queue_duration_us counter
nv_inference_queue_duration_us{{model="m",version="1"}} {queue}
# TYPE nv_inference_compute_input_duration_us counter
nv_inference_compute_input_duration_us{{model="m",version="1"}} {cin}
# TYPE nv_inference_compute_infer_duration_us counter
nv_inference_compute_infer_duration_us{{model="m",version="1"}} {infer}
# TYPE nv_inference_compute_output_duration_us counter
nv_inference_compute_output_duration_us{{model="m",version="1"}} {cout}
# TYPE nv_inference_request_duration_us counter
nv_inference_request_duration_us{{model="m",version="1"}} {total}
"""


def test_server_split_is_per_request_from_counter_deltas() -> None:
    before = parse_metrics(
        METRICS.format(ok=100, execs=50, queue=1000, cin=200, infer=5000, cout=300, total=7000)
    )
    after = parse_metrics(
        METRICS.format(ok=300, execs=75, queue=5000, cin=600, infer=25000, cout=700, total=35000)
    )
    split = server_split(before, after, "m")
    assert (split.requests, split.executions) == (200, 25)
    assert split.average_batch == pytest.approx(8.0)
    assert (
        split.queue_ms,
        split.compute_input_ms,
        split.compute_infer_ms,
        split.compute_output_ms,
        split.request_ms,
    ) == pytest.approx((0.02, 0.002, 0.1, 0.002, 0.14))


def test_schedules_keep_their_rate() -> None:
    constant = Schedule(200, "constant", start=0.0)
    assert [constant.take() for _ in range(3)] == pytest.approx([0.0, 0.005, 0.01])
    poisson = Schedule(200, "poisson", start=0.0)
    slots = np.array([poisson.take() for _ in range(20000)])
    assert np.diff(slots).mean() == pytest.approx(0.005, rel=0.05)
    assert np.diff(slots).std() == pytest.approx(0.005, rel=0.1)  # exponential: std == mean


def report_for(samples, *, rate=None, stable=True, generator_cpu_s=None):
    config = LoadTestConfig(url="127.0.0.1:1", rate=rate, duration_s=3, window_s=1.0)
    windows = [window(samples, s, s + 1.0) for s in range(3)]
    return build_report(
        generator_cpu_s=generator_cpu_s,
        config=config,
        samples=samples,
        windows=windows,
        window_splits=[None] * 3,
        measured=(0, 3),
        stable=stable,
        server=None,
        metrics_available=False,
    )


def test_report_flags_a_run_whose_requests_all_failed() -> None:
    report = report_for([Sample(0.1 * i, 1.0, ok=False, error="refused") for i in range(30)])
    assert (
        report["all_failed"]
        and report["throughput_rps"] == 0
        and report["failures_by_cause"] == {"refused": 30}
    )


def test_open_loop_report_warns_above_one_percent_late() -> None:
    samples = [Sample(0.01 * i, 2.0, late_ms=5.0 if i % 20 == 0 else 0.0) for i in range(300)]
    report = report_for(samples, rate=100.0, stable=False)
    assert report["mode"] == "open loop" and report["late_share"] == pytest.approx(0.05)
    assert any("5.0% of requests were sent more than 1 ms late" in w for w in report["warnings"])
    assert any(w.startswith("not stable") for w in report["warnings"])


def test_report_charges_the_load_generator_cpu_per_good_request() -> None:
    # 3 windows of 1 s, 30 requests each, 3 of them failed; 0.6 s of CPU in all.
    samples = [Sample(0.1 * i + 0.05, 1.0, ok=i % 10 != 0, error="x") for i in range(30)]
    report = report_for(samples, generator_cpu_s=[4.0, 4.1, 4.3, 4.6])
    generator = report["load_generator"]
    assert generator["cpu_s"] == pytest.approx(0.6) and generator["cores"] == pytest.approx(0.2)
    assert generator["cpu_ms_per_request"] == pytest.approx(600 / 27)
    assert [w["load_generator_cores"] for w in report["windows"]] == pytest.approx([0.1, 0.2, 0.3])
    assert ("load generator CPU", "20% of a core, 22.222 ms per request") in summary_rows(report)
    assert not any("load generator kept" in w for w in report["warnings"])


def test_report_warns_when_the_load_generator_is_near_a_full_core() -> None:
    samples = [Sample(0.1 * i + 0.05, 1.0) for i in range(30)]
    report = report_for(samples, generator_cpu_s=[0.0, 0.95, 1.9, 2.85])
    assert report["load_generator"]["cores"] == pytest.approx(0.95)
    assert any("the load generator kept 95% of a core busy" in w for w in report["warnings"])


def test_windows_csv_rows_carry_the_generator_cores_only_when_measured() -> None:
    windows = [window([Sample(0.5, 1.0)], 0.0, 1.0), window([Sample(1.5, 1.0)], 1.0, 2.0)]
    assert "load_generator_cores" not in window_rows(windows, None)[0]
    rows = window_rows(windows, [0.25, 0.5])
    assert [row["load_generator_cores"] for row in rows] == [0.25, 0.5]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"duration_s": 0}, "duration_s must be > 0 seconds, got 0"),
        ({"duration_s": -5}, "duration_s must be > 0 seconds, got -5"),
        ({"users": 0}, "users must be >= 1"),
        ({"rate": 0.0}, "rate must be > 0"),
        ({"protocol": "tcp"}, "protocol 'tcp' is not grpc or http"),
    ],
)
def test_config_refuses_bad_values(kwargs, message) -> None:
    with pytest.raises(LoadTestError, match=message):
        LoadTestConfig(url="localhost:8001", **kwargs)


def test_a_repeat_stream_repeats_its_share_and_shares_nothing_with_another_seed() -> None:
    from lifeloop.loadtest.lean import Repeats

    base = np.zeros((1, 3, 4, 4), np.float32)
    half = Repeats(share=0.5, hot=10, seed=0).payloads(base)
    drawn = [half() for _ in range(2000)]
    counts = {d: drawn.count(d) for d in set(drawn)}
    repeated = sum(n for n in counts.values() if n > 1)
    assert 0.45 <= repeated / len(drawn) <= 0.55  # the hot images, once each first
    assert len([d for d, n in counts.items() if n > 1]) == 10
    unique = Repeats(share=0.0, seed=1).payloads(base)
    others = {unique() for _ in range(500)}
    assert len(others) == 500 and not others & set(drawn)
    with pytest.raises(LoadTestError, match="repeats share must be in 0..1"):
        Repeats(share=1.5)
