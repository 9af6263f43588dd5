"""Locust against the real server: both protocols, open loop, a headless locust that exits by
itself, bad input, tune over a tiny search space, and a quick bench through the CLI."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from lifeloop.cli import app
from lifeloop.client import LifeloopClient
from lifeloop.loadtest import LoadTestConfig, LoadTestError, run_loadtest
from lifeloop.loadtest.cpu import CpuMeter
from lifeloop.loadtest.tune import MIN_GAIN
from lifeloop.repository import read_config
from lifeloop.retrain.precision import cpu_bf16_flags
from tests.conftest import publish_trained

runner = CliRunner()
LOCUSTFILE = Path(__file__).parents[2] / "src" / "lifeloop" / "loadtest" / "locustfile.py"


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_locust_run_reports_throughput_percentiles_and_server_split(
    server, protocol, tmp_path
) -> None:
    url = server.grpc_url if protocol == "grpc" else server.http_url
    config = LoadTestConfig(
        url=url,
        protocol=protocol,
        users=4,
        spawn_rate=4,
        duration_s=6,
        window_s=1.0,
        metrics_url=server.metrics_url,
        out=str(tmp_path),
    )
    report = run_loadtest(config)
    assert report["requests"] > 50 and report["failures"] == 0 and report["throughput_rps"] > 10
    lat = report["latency_ms"]
    assert 0 < lat["p50"] <= lat["p90"] <= lat["p95"] <= lat["p99"]
    assert list(report["per_name"]) == ["classifier v1"]
    assert report["server"]["requests"] > 0 and report["server"]["compute_infer_ms"] > 0
    assert 0 < report["server"]["request_ms"] <= lat["mean"]
    # The Locust process's own CPU: something per request, and no more than its cores allow.
    generator = report["load_generator"]
    assert 0 < generator["cores"] <= len(os.sched_getaffinity(0))
    assert generator["cpu_ms_per_request"] == pytest.approx(
        generator["cpu_s"] * 1000 / report["requests"]
    )
    rows = (tmp_path / "windows.csv").read_text().splitlines()
    assert rows[0].startswith("start_s,end_s,requests") and len(rows) == report["windows_total"] + 1
    assert rows[0].endswith(",load_generator_cores")
    page = (tmp_path / "report.html").read_text()
    assert page.count("<svg") == 3


# A send counts as late here when it leaves 25 ms (the mean gap at 40/s) after its slot: a
# whole slot behind, a backlog rather than timer jitter. At the default 1 ms, gevent's
# wake-ups on this shared 2-core machine miss by more for about a third of sends at 40/s.
LATE_MS = 25.0


def open_loop(server, tmp_path, *, users: int, duration_s: float, **rate) -> dict:
    """One open-loop run against the test server, sends counted late past LATE_MS."""
    config = LoadTestConfig(
        url=server.grpc_url,
        users=users,
        spawn_rate=users,
        duration_s=duration_s,
        window_s=1.0,
        late_threshold_ms=LATE_MS,
        metrics_url=server.metrics_url,
        out=str(tmp_path),
        **rate,
    )
    return run_loadtest(config)


def test_open_loop_holds_an_easy_rate_with_few_late_sends(server, tmp_path) -> None:
    report = open_loop(server, tmp_path, users=8, duration_s=6, rate=40.0, arrival="poisson")
    assert report["mode"] == "open loop" and report["target_rate"] == 40.0
    assert report["throughput_rps"] == pytest.approx(40.0, rel=0.3)
    # 8 users at a few ms per request keep well under one request in flight at 40/s, so a
    # send is 25 ms late only when the Locust process itself stalls that long: none of ~100
    # were here. 10% leaves room for a loaded CI machine.
    assert report["late_share"] <= 0.10, report["warnings"]


def test_open_loop_reports_late_sends_when_the_rate_cannot_be_kept(server, tmp_path) -> None:
    report = open_loop(server, tmp_path, users=1, duration_s=3, rate=5000.0)
    # One user sends one blocking round trip through tritonserver at a time (about 400/s
    # here), so against slots 0.2 ms apart it falls further behind with every request, and
    # the measured windows begin 2 s after the schedule did: every send in them is late.
    assert report["throughput_rps"] < 0.5 * 5000.0
    assert report["late_share"] >= 0.9
    assert any("could not keep the rate" in w for w in report["warnings"]), report["warnings"]


def headless_grpc_locust(
    server, tmp_path: Path, users: int, *flags: str
) -> subprocess.CompletedProcess[str]:
    """`locust -f lifeloop's locustfile --headless` with gRPC users for 3 s."""
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "locust",
            "-f",
            str(LOCUSTFILE),
            "--headless",
            "-u",
            str(users),
            "-r",
            str(users),
            "-t",
            "3s",
            "--host",
            f"grpc://{server.grpc_url}",
            *flags,
            "TritonGrpcUser",
        ],
        capture_output=True,
        text=True,
        timeout=90,
        cwd=tmp_path,
    )


def test_headless_locust_with_grpc_users_exits_by_itself(server, tmp_path) -> None:
    result = headless_grpc_locust(server, tmp_path, 2, "--model", "classifier", "--only-summary")
    assert result.returncode == 0, result.stderr[-2000:]
    assert "classifier v1" in result.stdout + result.stderr


def _served(server, model: str = "classifier") -> int:
    """Requests tritonserver has answered for `model`, over all its versions."""
    import tritonclient.http as httpclient

    stats = httpclient.InferenceServerClient(server.http_url).get_inference_statistics(model)
    return sum(int(s["inference_stats"]["success"]["count"]) for s in stats["model_stats"])


def test_a_stopped_grpc_run_lets_the_requests_in_flight_finish(server, tmp_path) -> None:
    # A user stopped mid-request would cancel its gRPC call, and tritonserver 2.51 can crash
    # on a cancelled call (triton-inference-server/server#7368). So the run ends only after
    # every request sent has been answered: the server answered exactly what Locust counted.
    before = _served(server)
    # Locust adds .json to the name.
    result = headless_grpc_locust(server, tmp_path, 4, "--json-file", str(tmp_path / "run"))
    assert result.returncode == 0, result.stderr[-2000:]
    stats = json.loads((tmp_path / "run.json").read_text())
    sent = sum(entry["num_requests"] for entry in stats)
    assert sent > 20 and sum(entry["num_failures"] for entry in stats) == 0
    assert _served(server) - before == sent


def test_unreachable_url_unknown_model_and_bad_duration_fail_in_one_line(server, tmp_path) -> None:
    cases = [
        (["--url", "127.0.0.1:1"], "cannot reach a ready Triton at 127.0.0.1:1"),
        (["--url", server.grpc_url, "--model", "nope"], "model 'nope' cannot be load-tested"),
        (["--url", server.grpc_url, "--duration", "0"], "--duration must be > 0 seconds, got 0"),
        (["--url", server.grpc_url, "--duration", "-3"], "--duration must be > 0 seconds, got -3"),
    ]
    for args, message in cases:
        result = runner.invoke(app, ["loadtest", *args, "--out", str(tmp_path)])
        assert result.exit_code == 1, result.output
        lines = result.output.strip().splitlines()
        assert len(lines) == 1 and message in lines[0], result.output


def test_a_load_test_whose_requests_all_fail_says_so(server, tmp_path) -> None:
    config = LoadTestConfig(
        url=server.grpc_url,
        users=2,
        spawn_rate=2,
        duration_s=3,
        window_s=1.0,
        model_version=99,
        metrics_url=server.metrics_url,
        out=str(tmp_path),
    )
    with pytest.raises(
        LoadTestError, match="all .* requests failed, so there is no throughput to report"
    ):
        run_loadtest(config)


def test_loadtest_command_prints_the_figures(server, tmp_path) -> None:
    result = runner.invoke(
        app,
        [
            "loadtest",
            "--url",
            server.http_url,
            "--protocol",
            "http",
            "--users",
            "2",
            "--duration",
            "4",
            "--metrics-url",
            server.metrics_url,
            "--out",
            str(tmp_path),
            "--csv-format",
            "perf_analyzer",
        ],
    )
    assert result.exit_code == 0, result.output
    assert "throughput" in result.output and "perf_analyzer.csv" in result.output
    assert json.loads((tmp_path / "report.json").read_text())["failures"] == 0
    # perf_analyzer's columns: one row for the one concurrency measured, times in whole
    # microseconds, and what lifeloop does not measure left empty.
    with open(tmp_path / "perf_analyzer.csv", newline="") as handle:
        [row] = list(csv.DictReader(handle))
    assert list(row)[:2] == ["Concurrency", "Inferences/Second"] and row["Concurrency"] == "2"
    assert float(row["Inferences/Second"]) > 10
    for column in (
        "Network+Server Send/Recv",
        "Server Compute Infer",
        "p50 latency",
        "p90 latency",
        "p95 latency",
        "p99 latency",
        "Avg latency",
    ):
        assert int(row[column]) > 0, (column, row)
    for column in ("Server Queue", "Server Compute Input", "Server Compute Output"):
        assert int(row[column]) >= 0, (column, row)
    assert int(row["p50 latency"]) <= int(row["p99 latency"])
    for column in ("Client Send", "Client Recv", "request/response", "response wait"):
        assert row[column] == "", (column, row)


def test_tune_climbs_a_tiny_space_and_writes_the_winner_back(server, trained, tmp_path) -> None:
    repo = Path(server.config.repository)
    publish_trained(trained.checkpoint, repo, "tuned", server_url=server.http_url)
    out = tmp_path / "tune.json"
    result = runner.invoke(
        app,
        [
            "tune",
            "--repository",
            str(repo),
            "--model",
            "tuned",
            "--url",
            server.grpc_url,
            "--p99-budget-ms",
            "500",
            "--concurrency",
            "4",
            "--window",
            "0.5",
            "--max-seconds",
            "2",
            "--max-points",
            "3",
            "--out",
            str(out),
        ],
    )
    assert result.exit_code == 0, result.output
    tuned = json.loads(out.read_text())
    assert len(tuned["trials"]) == 3 and tuned["winner"] is not None
    # The climb moves only for a gain of MIN_GAIN, so the winner is the fastest feasible trial
    # or within that margin of it (measurements on a shared machine differ by a few percent).
    best = tuned["winner"]
    fastest = max(t["throughput_rps"] for t in tuned["trials"] if t["feasible"])
    assert best["feasible"] and best["throughput_rps"] * (1 + MIN_GAIN) ** 2 >= fastest
    config = read_config(repo / "tuned")
    assert (config.max_batch_size, config.dynamic_batching.max_queue_delay_us) == (
        best["max_batch_size"],
        best["max_queue_delay_us"],
    )
    assert "winner" in result.output

    with LifeloopClient(server.grpc_url, model="tuned") as client:
        client.wait_until_ready(60, model="tuned")
        assert client.model_info(refresh=True).max_batch_size == best["max_batch_size"]


def test_cpu_split_counts_triton_requests_and_charges_each_process(server, repository) -> None:
    """Three hundred requests and half a second of client-side work inside one span: Triton
    counts exactly those requests, the client's share holds the work, and the server's two
    processes (tritonserver and the classifier's python backend stub) each spent CPU on them.
    The kernel counts CPU time in 10 ms ticks, hence that many requests."""
    config = read_config(repository / "classifier")
    assert config is not None
    batch = np.zeros((1, *config.inputs[0].dims), dtype=np.float32)
    meter = CpuMeter(server.process.pid)
    with LifeloopClient(server.grpc_url, model="classifier") as client:
        client.infer(batch)  # model metadata fetched outside the span
        with meter.span(server.metrics_url, "classifier") as found:
            for _ in range(300):
                client.infer(batch)
            busy_until = time.process_time() + 0.5
            while time.process_time() < busy_until:
                pass
    split = found[0]
    assert split.requests == 300
    assert split.client_ms * 300 >= 500
    assert split.tritonserver_ms > 0 and split.stubs_ms > 0
    assert 0 < split.busy <= 1.05


@pytest.mark.slow
def test_quick_bench_writes_every_ratio(tmp_path) -> None:
    docs = tmp_path / "docs" / "benchmarks.md"
    result = runner.invoke(
        app,
        [
            *("bench", "--out", str(tmp_path), "--window", "0.5", "--max-seconds", "2"),
            *("--docs", str(docs)),
        ],
    )
    assert result.exit_code == 0, result.output
    bench = json.loads((tmp_path / "bench.json").read_text())
    page = (tmp_path / "bench.md").read_text()
    assert page.startswith("<!-- generated by `lifeloop bench`, do not edit")
    assert docs.read_text().startswith(page.rstrip())  # then the end-of-generated marker
    for name, value in bench["ratios"].items():
        assert f"| `{name}` | {value:.3f} |" in page
    for name in (
        "served_over_raw_resnet18",
        "served_over_raw_small_cnn",
        "batching_gain_small_cnn",
        "batching_gain_resnet18",
        "locust_over_lean",
        "locust_over_lean_http",
        "routed_over_direct",
        "routed_over_direct_small_cnn",
        "kept_float32_over_kept_small_cnn",
        "kept_float32_over_kept_resnet18",
        "kept_float32_over_encoded_resnet18",
        "routed_over_direct_encoded_resnet18",
        "int8_over_fp32_resnet18",
        "fp16_over_fp32_resnet18",
        "cache_gain_resnet18",
        "cache_cost_unique",
        "pruned_over_dense_resnet18",
        "pruned_int8_over_dense_fp32",
        "cascade_over_heavy",
    ):
        assert bench["ratios"][name] > 0
    for model in ("small_cnn", "resnet18"):  # sent pixel levels, the router keeps uint8
        kept = bench["routing"][model]["kept"]
        assert kept["forms"] == ["uint8"] and kept["images"] > 0
        assert bench["ratios"][f"kept_float32_over_kept_{model}"] == 4
        assert 0 < kept["headers"] < kept["bytes"] / 20
        floats = bench["routing"][model]["kept_floats"]  # sent noise: kept as floats
        assert floats["images"] > 0 and set(floats["forms"]) <= {"float16", "float32"}
        assert bench["ratios"][f"routed_uint8_over_float_{model}"] > 0
    encoded = bench["routing"]["resnet18"]["encoded"]  # JPEG photos, kept as sent
    kept = encoded["kept"]
    assert kept["images"] > 0 and 0 < kept["headers"] < kept["bytes"] / 20
    assert abs(kept["per_image"] / encoded["sent_per_image"] - 1) < 0.1  # the photos, cycled
    assert bench["ratios"]["kept_float32_over_encoded_resnet18"] >= 20  # bytes: not timing
    assert bench["ratios"]["routed_over_direct_encoded_resnet18"] > 0
    cache = bench["cache"]["resnet18"]
    # Triton's own counters: repeats hit, new inputs never do.
    assert cache["cache_gain"]["hits"] > 0 and cache["cache_gain"]["misses"] > 0
    assert cache["cache_cost"]["hits"] == 0 and cache["cache_cost"]["misses"] > 0
    pruning = bench["pruning"]["resnet18"]
    assert pruning["macs"][1] < pruning["macs"][0] / 2 and pruning["macs_cut"] > 2
    assert pruning["accuracy"]["held_out"] >= 300 and pruning["accuracy"]["format"] == "pruned"
    cascade = bench["cascade"]["wide_resnet50_2"]
    chosen = cascade["calibration"]["chosen"]
    assert cascade["held_out"] >= 300 and 0 < chosen["light_fraction"] <= 1
    assert chosen["accuracy"] >= cascade["calibration"]["heavy_accuracy"] - 0.005 - 1e-9
    assert cascade["on"]["failures"] == 0
    accuracy = bench["precision"]["accuracy"]
    for fmt in ("onnx-int8", "onnx-fp16"):
        assert accuracy[fmt]["held_out"] >= 300 and 0 < accuracy[fmt]["accuracy"] <= 1
    training = bench["precision"]["training"]  # bf16 autocast against fp32, alternately
    if cpu_bf16_flags():
        assert [r["precision"] for r in training["runs"]] == ["fp32", "bf16"] * 2 + ["fp32"]
        assert bench["ratios"]["bf16_over_fp32_training_small_cnn"] > 0
        assert all(0.5 < r["accuracy"] <= 1 for r in training["runs"])
    else:
        assert "bf16_over_fp32_training_small_cnn" not in bench["ratios"]
    search = bench["precision"]["search"]  # train --search's best against its defaults
    assert len(search["trials"]) == 4 and search["trials"][0]["state"] == "COMPLETE"
    assert bench["ratios"]["search_over_defaults_small_cnn"] > 0
    for model in ("resnet18", "small_cnn"):
        assert bench["routing"][model]["routed"]["failures"] == 0, bench["routing"][model]
    assert not (tmp_path / "model_repository.blobs").exists()
    assert bench["raw"]["resnet18"]["best_batch"] in (1, 8, 16)
    for model in ("resnet18", "small_cnn"):
        assert bench["raw"][model]["cpu_ms_per_image"] > 0
        for side in ("on", "off"):
            cpu = bench["batching"][model][side]["cpu"]
            assert cpu["requests"] >= bench["batching"][model][side]["requests"] > 0
            assert min(cpu["client_ms"], cpu["tritonserver_ms"], cpu["stubs_ms"]) > 0
    for protocol in ("grpc", "http"):
        harness = bench["harness"][protocol]
        assert harness["lean"]["before"]["cpu"]["client_ms"] > 0
        assert harness["locust"]["failures"] == 0
        locust_cpu = harness["locust"]["cpu"]
        assert locust_cpu["client_ms"] > 0 and locust_cpu["busy"] is None
        assert locust_cpu["total_ms"] == pytest.approx(
            locust_cpu["client_ms"] + locust_cpu["tritonserver_ms"] + locust_cpu["stubs_ms"]
        )
        assert harness["lean"]["before"]["failures"] == 0, harness["lean"]
