"""Experiment tracking and the registry against a real MLflow store (SQLite, MLflow's own
SqlAlchemyStore): the runs `train` and `export` make through the CLI, the versions they
register, and the champion and candidate aliases through a real candidate, promote and
rollback on a real tritonserver, checked against `lifeloop history`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from lifeloop.cli import app
from lifeloop.datasets import ImageFolder
from lifeloop.serve import TritonServer
from lifeloop.serve.launcher import free_port
from lifeloop.tracking import VERSION_TAG, Tracker, experiment_name, sha256_of
from tests.integration.conftest import server_config
from tests.integration.debian import require_tool

runner = CliRunner()
EPOCHS = 2


def invoke(*args) -> str:
    result = runner.invoke(app, [str(a) for a in args])
    assert result.exit_code == 0, result.output
    return result.output


@pytest.fixture(scope="module")
def tracked_repo(tmp_path_factory: pytest.TempPathFactory, digits: ImageFolder) -> Path:
    """A checkpoint trained through the CLI and exported twice (v1, v2), each a run, with
    the router in front (champion v1)."""
    base = tmp_path_factory.mktemp("tracked")
    repo = base / "model_repository"
    checkpoint = base / "digits.pt"
    invoke("train", "--data", digits.root, "--out", checkpoint, "--epochs", EPOCHS, "-r", repo)
    invoke("train", "--data", digits.root, "--out", checkpoint, "--epochs", EPOCHS, "-r", repo)
    for _ in range(2):
        invoke("export", "--checkpoint", checkpoint, "--repository", repo, "--model", "classifier")
    invoke("router", "init", "--repository", repo, "--model", "classifier", "--champion", 1)
    return repo


@pytest.fixture(scope="module")
def tracker(tracked_repo: Path) -> Tracker:
    found = Tracker.for_repository(tracked_repo)
    assert found is not None
    return found


@pytest.fixture(scope="module")
def tracked_server(tracked_repo: Path) -> Iterator[TritonServer]:
    with TritonServer(server_config(tracked_repo)) as running:
        yield running


def runs(tracker: Tracker, command: str) -> list:
    experiment = tracker.client.get_experiment_by_name(experiment_name("classifier"))
    return tracker.client.search_runs(
        [experiment.experiment_id],
        filter_string=f"tags.`lifeloop.command` = '{command}'",
        order_by=["attributes.start_time ASC"],
    )


def test_the_store_sits_beside_the_repository(tracked_repo: Path, tracker: Tracker) -> None:
    assert tracker.uri == f"sqlite:///{tracked_repo.parent / 'model_repository.mlflow.db'}"
    assert (tracked_repo.parent / "model_repository.mlflow.db").is_file()


def test_a_train_run_holds_its_parameters_epochs_accuracy_and_checkpoint(
    tracked_repo: Path, tracker: Tracker, digits: ImageFolder
) -> None:
    first, second = runs(tracker, "train")
    assert first.info.status == second.info.status == "FINISHED"
    params, metrics, tags = first.data.params, first.data.metrics, first.data.tags
    assert params["arch"] == "small_cnn" and params["epochs"] == str(EPOCHS)
    assert params["data"] == str(Path(digits.root).resolve())
    losses = tracker.client.get_metric_history(first.info.run_id, "loss")
    assert [m.step for m in losses] == list(range(EPOCHS))
    assert losses[-1].value < losses[0].value  # it learned
    assert 0.5 < metrics["holdout_accuracy"] <= 1
    per_class = {k: v for k, v in metrics.items() if k.startswith("holdout_accuracy.")}
    assert set(per_class) == {f"holdout_accuracy.{d}" for d in range(10)}
    checkpoint = Path(tags["lifeloop.checkpoint.path"])
    # The second run overwrote the file the first linked: its hash is the second's.
    assert sha256_of(checkpoint) == second.data.tags["lifeloop.checkpoint.sha256"]


def test_each_export_is_a_run_and_registers_its_version(
    tracked_repo: Path, tracker: Tracker
) -> None:
    exports = runs(tracker, "export")
    assert [r.data.tags["lifeloop.version"] for r in exports] == ["1", "2"]
    for run in exports:
        assert run.data.metrics["parity.top1_agreement"] == 1.0
        assert Path(run.data.tags["lifeloop.onnx.model.onnx.path"]).is_file()
    versions = tracker.client.search_model_versions("name = 'classifier'")
    by_lifeloop = {int(v.tags[VERSION_TAG]): v for v in versions}
    assert set(by_lifeloop) == {1, 2}
    for number, version in by_lifeloop.items():
        assert version.source == str((tracked_repo / "classifier" / str(number)).resolve())
        assert version.run_id == exports[number - 1].info.run_id


def history(repo: Path) -> list[dict]:
    out = invoke("history", "--repository", repo, "--model", "classifier", "--json")
    return [json.loads(line) for line in out.splitlines()]


def test_the_aliases_follow_candidate_promote_and_rollback(
    tracked_repo: Path, tracker: Tracker, tracked_server: TritonServer
) -> None:
    url = ["--url", tracked_server.http_url, "--repository", tracked_repo]
    assert tracker.aliases("classifier") == {"champion": 1}  # from `router init`

    invoke("candidate", "--version", 2, "--weight", 0.1, *url)
    assert tracker.aliases("classifier") == {"champion": 1, "candidate": 2}
    invoke("promote", *url)
    assert tracker.aliases("classifier") == {"champion": 2}
    invoke("rollback", *url)
    assert tracker.aliases("classifier") == {"champion": 1}

    # lifeloop's history says when each served; the registry agrees with its last word.
    last = history(tracked_repo)[-1]
    assert (last["action"], last["champion"], last["candidate"]) == ("rollback", 1, None)


def test_an_unreachable_store_fails_a_train_in_one_line_and_never_a_rollout(
    tracked_repo: Path, tracker: Tracker, tracked_server: TritonServer, digits: ImageFolder
) -> None:
    down = "http://127.0.0.1:1"
    result = runner.invoke(
        app,
        [
            *("train", "--data", str(digits.root), "--out", str(tracked_repo.parent / "x.pt")),
            *("-r", str(tracked_repo), "--tracking-uri", down),
        ],
    )
    assert result.exit_code == 1
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: MLflow tracking store {down} failed")
    assert not (tracked_repo.parent / "x.pt").exists()

    url = ["--url", tracked_server.http_url, "--repository", str(tracked_repo)]
    result = runner.invoke(app, ["candidate", "--version", "2", *url, "--tracking-uri", down])
    assert result.exit_code == 0, result.output
    assert "warning: the rollout is done, but MLflow's aliases" in result.output
    assert history(tracked_repo)[-1]["candidate"] == 2
    # The next change, with the store back, puts the aliases where the rollout is.
    invoke("canary", "--weight", 0.2, *url)
    assert tracker.aliases("classifier") == {"champion": 1}  # canary moves no alias
    invoke("promote", *url)
    assert tracker.aliases("classifier") == {"champion": 2}
    invoke("rollback", *url)


def test_tracking_off_writes_no_store(tmp_path: Path, digits: ImageFolder) -> None:
    repo = tmp_path / "model_repository"
    invoke(
        *("train", "--data", digits.root, "--out", tmp_path / "c.pt", "--epochs", 1),
        *("-r", repo, "--tracking-uri", "off"),
    )
    assert not (tmp_path / "model_repository.mlflow.db").exists()


@pytest.fixture
def mlflow_ui(tracker: Tracker, tmp_path: Path) -> Iterator[str]:
    """`mlflow ui` on the store, as a user starts it; its URL once it answers."""
    port = free_port()
    command = [str(Path(sys.executable).parent / "mlflow"), "ui", "--backend-store-uri"]
    command += [tracker.uri, "--host", "127.0.0.1", "--port", str(port), "--workers", "1"]
    env = {**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true"}
    log = (tmp_path / "mlflow-ui.log").open("w")
    process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while True:
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=2) as response:
                    if response.status == 200:
                        break
            except OSError:
                if process.poll() is not None or time.monotonic() > deadline:
                    raise AssertionError(
                        f"mlflow ui did not start: {(tmp_path / 'mlflow-ui.log').read_text()}"
                    ) from None
                time.sleep(0.5)
        yield url
    finally:
        process.terminate()
        process.wait(timeout=30)
        log.close()


def test_mlflow_ui_shows_a_train_run_in_chromium(
    tracker: Tracker, mlflow_ui: str, tmp_path: Path
) -> None:
    """The run page of a train run, rendered by a real headless Chromium: its DOM names the
    run's parameters and metrics, and its screenshot is a drawn page, not a blank one."""
    chromium = require_tool("chromium", "chromium")
    run = runs(tracker, "train")[0]
    page = f"{mlflow_ui}/#/experiments/{run.info.experiment_id}/runs/{run.info.run_id}"
    shot = tmp_path / "run.png"
    flags = [
        *("--headless", "--no-sandbox", "--disable-gpu", "--no-first-run"),
        *("--disable-background-networking", "--disable-component-update", "--disable-sync"),
        f"--user-data-dir={tmp_path / 'profile'}",
        "--window-size=1400,1000",
        "--virtual-time-budget=20000",  # the page is a React app: let it fetch and draw
    ]
    dom = subprocess.run(
        [chromium, *flags, "--dump-dom", page], capture_output=True, text=True, timeout=120
    ).stdout
    for shown in ("lifeloop/classifier", "Parameters", "small_cnn", "holdout_accuracy"):
        assert shown in dom, shown
    subprocess.run(
        [chromium, *flags, f"--screenshot={shot}", page],
        check=True,
        capture_output=True,
        timeout=120,
    )
    image = np.asarray(Image.open(shot).convert("L"))
    assert image.shape == (1000, 1400)
    assert (image < 200).mean() > 0.01  # text and controls, not an empty page
