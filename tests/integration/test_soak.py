"""`lifeloop soak` against a real tritonserver: a short run of real reloads under load that
fails nothing and reports memory, and its refusals in one line."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
from typer.testing import CliRunner

from lifeloop.cli import app
from lifeloop.retrain import TrainResult
from lifeloop.serve import TritonServer
from lifeloop.serve.install import install_router
from lifeloop.serve.sampling import KeepRule
from tests.conftest import publish_trained
from tests.integration.conftest import server_config


@pytest.fixture(scope="module")
def soak_server(tmp_path_factory, trained: TrainResult, held_out) -> Iterator[TritonServer]:
    repo = tmp_path_factory.mktemp("soak") / "model_repository"
    publish_trained(trained.checkpoint, repo, "digits", samples=held_out[0])
    publish_trained(trained.checkpoint, repo, "digits")
    install_router(repo, "digits", champion=1, keep=KeepRule.everything())
    with TritonServer(server_config(repo)) as running:
        yield running


def test_a_short_soak_reloads_under_load_without_a_failure(soak_server: TritonServer) -> None:
    repo = soak_server.config.repository
    result = CliRunner().invoke(
        app,
        [
            "soak",
            "--url",
            f"grpc://{soak_server.grpc_url}",
            "--servers",
            f"http://{soak_server.http_url}",
            "--repository",
            str(repo),
            "--model",
            "digits",
            "--cycles",
            "3",
            "--users",
            "2",
            "--max-rss-growth",
            "50",  # three cycles are too few to judge growth; the 200-cycle run does
            "--json",
        ],
    )
    assert result.exit_code == 0, result.output
    report = json.loads(result.output.strip().splitlines()[-1])
    assert report["requests"] > 50 and report["failures"] == {}
    assert report["p99_reload_ms"] is not None and report["p99_between_ms"] is not None
    assert report["memory_after_warmup"]["stub_count"] >= 2  # router, feedback, classifier
    assert report["memory_at_end"]["server"] > 0
    history = CliRunner().invoke(app, ["history", "--repository", str(repo), "--json"])
    actions = [json.loads(line)["action"] for line in history.output.strip().splitlines()]
    assert actions[-9:] == ["candidate", "promote", "rollback"] * 3


def test_soak_refuses_a_model_with_nothing_to_cycle(soak_server: TritonServer, tmp_path) -> None:
    runner = CliRunner()
    base = ["soak", "--url", f"http://{soak_server.http_url}", "--cycles", "1"]
    repo = str(soak_server.config.repository)
    result = runner.invoke(app, [*base, "--repository", repo, "--model", "other"])
    assert result.exit_code == 1
    assert result.output.strip().splitlines() == [
        "error: router 'router' fronts 'digits', not 'other'; pass --model digits or the "
        "router of 'other'"
    ]
    result = runner.invoke(
        app,
        [
            "soak",
            "--url",
            f"grpc://{soak_server.grpc_url}",
            "--repository",
            repo,
            "--model",
            "digits",
        ],
    )
    assert result.exit_code == 1 and "pass --servers http://HOST:PORT" in result.output
