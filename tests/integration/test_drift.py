"""The drift alarm end to end: a version published with its reference, traffic through the
real router into the real store, and `lifeloop drift` reading both."""

from __future__ import annotations

import json
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from lifeloop.cli import app
from lifeloop.client import LifeloopClient
from lifeloop.drift import REFERENCE_NAME, Reference
from lifeloop.loadtest.stats import parse_metrics
from lifeloop.repository.manifest import Manifest
from lifeloop.retrain import TrainResult
from lifeloop.retrain.trigger import Decision, decide, parse_when
from lifeloop.rollout.served_drift import served_drift
from lifeloop.serve import TritonServer
from lifeloop.serve.install import install_router
from lifeloop.store import Store
from tests.conftest import publish_trained
from tests.integration.conftest import server_config

runner = CliRunner()


@pytest.fixture(scope="module")
def drift_repo(tmp_path_factory: pytest.TempPathFactory, trained: TrainResult, held_out) -> Path:
    """v1 with every other held-out image as its reference; v2 with none."""
    repo = tmp_path_factory.mktemp("drift") / "model_repository"
    x = held_out[0]
    publish_trained(trained.checkpoint, repo, "digits", samples=x[:64], reference=x[::2])
    publish_trained(trained.checkpoint, repo, "digits")
    install_router(repo, "digits", champion=1)
    return repo


@pytest.fixture(scope="module")
def drift_server(drift_repo: Path) -> Iterator[TritonServer]:
    with TritonServer(server_config(drift_repo)) as running:
        yield running


def retrain_when(repo: Path, when: str):
    return runner.invoke(
        app, ["retrain", "--repository", str(repo), "-m", "digits", "--when", when]
    )


def gauge(url: str, until, timeout_s: float = 30) -> float | None:
    """lifeloop_drift_p_value of digits v1 once `until` holds for it (the router tests on
    its own thread); the last value read when it does not within `timeout_s`."""
    value, deadline = None, time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with urllib.request.urlopen(url, timeout=10) as response:
            scrape = parse_metrics(response.read().decode())
        found = [
            v
            for (name, labels), v in scrape.items()
            if name == "lifeloop_drift_p_value" and ("version", "1") in labels
        ]
        value = found[0] if found else None
        if until(value):
            return value
        time.sleep(0.2)
    return value


def drift_lines(repo: Path, window: int) -> dict[int, dict]:
    result = runner.invoke(
        app, ["drift", "--repository", str(repo), "-m", "digits", "--window", window, "--json"]
    )
    assert result.exit_code == 0, result.output
    return {row["version"]: row for row in map(json.loads, result.output.splitlines())}


def test_publish_stores_the_version_softmax_on_held_out_images(drift_repo: Path, held_out):
    manifest = Manifest.read(drift_repo / "digits" / "1")
    assert REFERENCE_NAME in {f.path for f in manifest.files}  # hashed with the model
    reference = Reference.read(drift_repo / "digits" / "1" / REFERENCE_NAME)
    assert reference.labels == manifest.labels
    assert reference.scores.shape == (len(held_out[0][::2]), len(manifest.labels))
    np.testing.assert_allclose(reference.scores.sum(axis=1), 1, atol=1e-5)
    assert not (drift_repo / "digits" / "2" / REFERENCE_NAME).exists()


def test_drift_stays_quiet_on_held_out_traffic_and_alarms_on_brighter_images(
    drift_repo: Path, drift_server: TritonServer, served_held_out
) -> None:
    """Held-out images the reference did not hold: no drift. The same images 30% of the
    pixel range brighter, as a camera's exposure change makes them: drift, and only the
    newest window counts."""
    x = served_held_out[0][1::2]
    brighter = np.clip(x + 0.3 * 255, 0, 255).astype(np.float32)
    window = len(x)
    with LifeloopClient(drift_server.grpc_url, model="router") as client:
        client.wait_until_ready(120, model="router")
        for start in range(0, len(x), 16):
            client.classify(x[start : start + 16])
        calm = drift_lines(drift_repo, window)[1]
        calm_gauge = gauge(drift_server.metrics_url, lambda p: p is not None)
        quiet = retrain_when(drift_repo, "drift")
        for start in range(0, len(x), 16):
            client.classify(brighter[start : start + 16])
        alarmed = drift_lines(drift_repo, window)[1]
        alarmed_gauge = gauge(drift_server.metrics_url, lambda p: p is not None and p < 0.05)
    with Store.for_repository(drift_repo) as store:
        decision = decide(parse_when("drift"), drift_repo, store, "digits", window=window)

    assert (calm["answers"], calm["verdict"]) == (window, "no drift"), calm
    assert calm["p_value"] >= 0.05 and calm["reference"] == len(served_held_out[0][::2])
    assert (alarmed["answers"], alarmed["verdict"]) == (window, "drift"), alarmed
    assert alarmed["p_value"] < 0.05

    # The router's own gauge, from the answers it keeps in memory (its window of 300 holds
    # calm and brighter answers by now).
    assert calm_gauge >= 0.05 and alarmed_gauge < 0.05

    # The CronJob's `retrain --when drift`: one line each way.
    assert quiet.exit_code == 0, quiet.output
    assert quiet.output.startswith("not retraining: champion v1 has not drifted (p = ")
    assert decision.retrain, decision
    assert decision.why.startswith("retraining: champion v1 has drifted (p = ")

    table = runner.invoke(app, ["drift", "--repository", str(drift_repo), "-m", "digits"])
    assert table.exit_code == 0, table.output
    assert "v1" in table.output and "drift" in table.output


def test_a_version_without_a_reference_says_how_to_get_one(drift_repo: Path) -> None:
    with Store.for_repository(drift_repo) as store:
        (found,) = served_drift(drift_repo, store, "digits", versions=[2])
    assert found.result is None and not found.drifted
    assert "re-export with --eval-dir" in found.verdict


def test_retrain_waits_for_enough_new_labels(drift_repo: Path) -> None:
    result = retrain_when(drift_repo, "labels>=5")
    assert result.exit_code == 0, result.output
    assert result.output.strip() == "not retraining: 0 new labels, fewer than --when labels>=5"


def test_retrain_with_several_triggers_says_why_none_holds(drift_repo: Path) -> None:
    with Store.for_repository(drift_repo) as store:
        decision = decide(parse_when("labels>=5, labels>=9"), drift_repo, store, "digits")
        assert decide(parse_when("labels>=5,always"), drift_repo, store, "digits").retrain
    assert decision == Decision(
        False,
        "not retraining: 0 new labels, fewer than --when labels>=5; "
        "0 new labels, fewer than --when labels>=9",
    )


@pytest.mark.parametrize("when", ["sometimes", "labels>=0", "labels>5"])
def test_an_unknown_trigger_is_a_one_line_error(drift_repo: Path, when: str) -> None:
    result = retrain_when(drift_repo, when)
    assert result.exit_code == 1
    assert result.output.strip() == (
        f"error: --when {when!r} is not a trigger; use always, drift or labels>=N "
        "(e.g. labels>=500), or several comma-separated"
    )


def test_router_init_sets_the_drift_window_and_refuses_one_too_small(
    tmp_path: Path, trained: TrainResult
) -> None:
    repo = tmp_path / "model_repository"
    publish_trained(trained.checkpoint, repo, "digits")
    base = ["router", "init", "--repository", str(repo), "-m", "digits"]
    small = runner.invoke(app, [*base, "--drift-window", "10"])
    assert small.exit_code == 1
    assert small.output.strip() == (
        "error: --drift-window must be 0 (no drift gauge) or >= 30, got 10"
    )
    done = runner.invoke(app, [*base, "--drift-window", "500"])
    assert done.exit_code == 0, done.output
    config = (repo / "router" / "config.pbtxt").read_text()
    assert 'key: "lifeloop.drift_window"' in config and 'string_value: "500"' in config
