"""The commands that talk to a real server, and the demo's acceptance figures."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import psutil
from typer.testing import CliRunner

from lifeloop.cli import app
from lifeloop.client import LifeloopClient
from lifeloop.serve import free_port

runner = CliRunner()


def test_classify_prints_the_top_k_with_the_answering_version(server, digits) -> None:
    sample = next(s for s in digits.samples if digits.labels[s.label] == "7")
    for protocol, url in (("grpc", server.grpc_url), ("http", server.http_url)):
        result = runner.invoke(
            app,
            ["classify", "--url", url, "--protocol", protocol, "--top-k", "2", str(sample.path)],
        )
        assert result.exit_code == 0, result.output
        assert f"{sample.path}: 7 " in result.output and "(v1)" in result.output


def test_versions_shows_the_server_state(server) -> None:
    result = runner.invoke(
        app, ["versions", "--repository", str(server.config.repository), "--url", server.http_url]
    )
    assert result.exit_code == 0, result.output
    assert "READY" in result.output


def start_serve(
    repository: Path, tmp_path: Path, *flags: str
) -> tuple[subprocess.Popen[str], int, Path]:
    """`lifeloop serve` in its own process on free ports, on its own copy of the classifier:
    other tests leave broken versions of their own models in the shared repository on
    purpose, and `serve` loads every model it finds."""
    shutil.copytree(repository / "classifier", tmp_path / "repository" / "classifier")
    http, grpc, metrics = free_port(), free_port(), free_port()
    log = tmp_path / "serve.log"
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "lifeloop",
            "serve",
            "--repository",
            str(tmp_path / "repository"),
            "--http-port",
            str(http),
            "--grpc-port",
            str(grpc),
            "--metrics-port",
            str(metrics),
            "--log-file",
            str(log),
            *flags,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    return process, http, log


def wait_serving(process: subprocess.Popen[str], http: int) -> None:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and process.poll() is None:
        try:
            with urllib.request.urlopen(
                f"http://127.0.0.1:{http}/v2/models/classifier/ready", timeout=2
            ) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.3)
    raise AssertionError(process.stdout.read() if process.poll() is not None else "not ready")


def test_serve_runs_until_sigterm_and_stops_cleanly(repository: Path, tmp_path: Path) -> None:
    process, http, log = start_serve(repository, tmp_path)
    try:
        wait_serving(process, http)
        process.send_signal(signal.SIGTERM)
        output, _ = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 0, output
    assert "tritonserver ready" in output and "stopping tritonserver" in output
    assert (
        subprocess.run(["pgrep", "-f", "--", f"--http-port={http}"], capture_output=True).returncode
        == 1
    )
    assert log.is_file() and "Started GRPCInferenceService" in log.read_text()


def test_serve_starts_a_crashed_server_again_within_its_budget(
    repository: Path, tmp_path: Path, served_held_out
) -> None:
    # SIGSEGV is how tritonserver 2.51 dies when a gRPC request is cancelled at the wrong
    # moment (triton-inference-server/server#7368); here the signal is sent, not raced for.
    process, http, log = start_serve(repository, tmp_path, "--max-restarts", "1")
    try:
        wait_serving(process, http)
        first = psutil.Process(process.pid).children()[0]
        first.send_signal(signal.SIGSEGV)
        first.wait(timeout=30)
        wait_serving(process, http)
        with LifeloopClient(f"127.0.0.1:{http}", "http") as client:
            assert len(client.classify(served_held_out[0][:4])) == 4
        crashed = list(tmp_path.glob("serve.log.crashed-*"))
        assert len(crashed) == 1 and "Started HTTPService" in crashed[0].read_text()
        # The test can see the new server ready before `serve` does; a crash before then is
        # one during start-up. So wait for `serve` to say so (or to end) before the next.
        assert process.stdout is not None
        said = []
        for line in process.stdout:
            said.append(line)
            if line.startswith("tritonserver ready again"):
                break
        # The second crash within ten minutes spends the budget of one.
        second = psutil.Process(process.pid).children()[0]
        assert second.pid != first.pid
        second.send_signal(signal.SIGSEGV)
        rest, _ = process.communicate(timeout=60)
        output = "".join(said) + rest
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 1, output
    assert "tritonserver was killed by SIGSEGV" in output and "starting it again" in output
    assert "tritonserver ready again" in output
    assert "it was restarted at most 1 in 10 min already, so it is not started again" in output
    # Both dead servers' logs are kept; the last one's path is in the error.
    crashed = sorted(tmp_path.glob("serve.log.crashed-*"))
    assert len(crashed) == 2 and not log.exists() and f"kept as {crashed[-1]}" in output


def test_serve_names_a_busy_port(server) -> None:
    port = server.config.http_port
    result = runner.invoke(
        app,
        [
            "serve",
            "--repository",
            str(server.config.repository),
            "--http-port",
            str(port),
            "--grpc-port",
            str(free_port()),
            "--metrics-port",
            str(free_port()),
        ],
    )
    assert result.exit_code == 1
    assert result.output.strip() == (
        f"error: http port {port} is in use; pick another with --http-port or stop the "
        "process that holds it"
    )


def test_demo_meets_its_acceptance_figures(tmp_path: Path) -> None:
    result = runner.invoke(app, ["demo", "--out", str(tmp_path / "demo")])
    assert result.exit_code == 0, result.output
    summary = json.loads((tmp_path / "demo" / "summary.json").read_text())
    assert summary["v2_accuracy"] >= 0.90
    assert summary["v1_accuracy"] <= 0.85  # v1 never saw 8 and 9
    # On the digits v1 was trained on it knows its job, and v2 keeps it.
    assert summary["seen_classes"] == list("01234567")
    assert summary["v1_accuracy_seen"] >= 0.90
    assert summary["v2_accuracy_seen"] >= summary["v1_accuracy_seen"] - 0.02
    assert summary["per_class"]["v1"]["9"] == 0.0 < summary["per_class"]["v2"]["9"]
    for digit in "01234567":
        assert summary["per_class"]["v1"][digit] - summary["per_class"]["v2"][digit] <= 0.02
    assert summary["new_classes"] == ["8", "9"]
    assert summary["shadowed_requests"] > 0 and 0 < summary["canary_agreement"] <= 1
    assert summary["failed_requests"] == 0
    assert (summary["version_before"], summary["version_after"]) == (1, 2)
    assert summary["history"] == ["init", "candidate", "promote"]
    # Its runs and registry in MLflow beside the repository: v2 promoted is the champion.
    assert summary["tracking"].endswith("demo/model_repository.mlflow.db")
    assert summary["registry_aliases"] == {"champion": 2}
    # Encoded images through the ensemble reach v2, with the labels it added (8 and 9).
    png, jpeg = summary["image_ensemble"]["png"], summary["image_ensemble"]["jpeg"]
    assert png["agreement"] == 1.0 and png["accuracy"] == summary["v2_accuracy"]
    assert jpeg["accuracy"] >= summary["v2_accuracy"] - 0.03 and jpeg["agreement"] >= 0.95
    assert (
        summary["requests"] > 1500
        and summary["latency_ms"]["p99"] >= summary["latency_ms"]["p50"] > 0
    )
