"""`lifeloop prune` end to end: a pruned version publishes through the parity gate with its
figures in the manifest and serves in the real tritonserver; a cut over the accuracy budget
is refused in one line and publishes nothing."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from typer.testing import CliRunner

from lifeloop.cli import app
from lifeloop.client import LifeloopClient
from lifeloop.retrain import ImageFolder, TrainResult
from lifeloop.serve import TritonServer
from tests.integration.conftest import server_config

runner = CliRunner()


def prune_args(trained: TrainResult, digits: ImageFolder, repo: Path, out: Path, *more: str):
    return [
        *("prune", "--checkpoint", str(trained.path), "--data", str(digits.root)),
        *("--out", str(out), "--repository", str(repo), "--model", "digits", *more),
    ]


def test_a_pruned_version_publishes_with_its_figures_and_serves(
    trained: TrainResult, digits: ImageFolder, tmp_path: Path
) -> None:
    repo = tmp_path / "model_repository"
    done = runner.invoke(app, prune_args(trained, digits, repo, tmp_path / "pruned.pt"))
    assert done.exit_code == 0, done.output
    assert "parity passed" in done.output and "published digits version 1" in done.output
    manifest = json.loads((repo / "digits" / "1" / "manifest.json").read_text())
    pruning = manifest["evaluation"]["pruning"]
    assert pruning["ratio"] == 0.5
    assert pruning["params_after"] < pruning["params_before"] / 2
    assert pruning["macs_after"] < pruning["macs_before"] / 2
    assert pruning["dense_accuracy"] - pruning["accuracy"] <= 0.01
    _, held = digits.split()
    with TritonServer(server_config(repo)) as server, LifeloopClient(server.grpc_url) as client:
        client.wait_until_ready(60, model="digits")
        answers = client.classify([s.path for s in held], top_k=1, model="digits")
    truth = [digits.labels[s.label] for s in held]
    assert np.mean([a.label == t for a, t in zip(answers, truth, strict=True)]) >= 0.9


def test_a_cut_over_the_budget_publishes_nothing(
    trained: TrainResult, digits: ImageFolder, tmp_path: Path
) -> None:
    repo = tmp_path / "model_repository"
    out = tmp_path / "pruned.pt"
    done = runner.invoke(
        app, prune_args(trained, digits, repo, out, "--ratio", "0.9", "--epochs", "0")
    )
    assert done.exit_code == 1
    lines = [line for line in done.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: pruned refused, nothing published")
    assert "points lost, more than 1" in lines[0]
    assert not out.exists() and not (repo / "digits").exists()
