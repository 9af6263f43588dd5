"""A repository made by lifeloop 0.1 keeps serving after the upgrade: its router and feedback
model.py shells import lifeloop.loop.*, which lifeloop.loop re-exports for one release, and
`lifeloop router init` rewrites them to import lifeloop.serve.*."""

from __future__ import annotations

from pathlib import Path

from typer.testing import CliRunner

import lifeloop.serve
from lifeloop.cli import app
from lifeloop.client import LifeloopClient
from lifeloop.retrain import TrainResult
from lifeloop.serve import TritonServer
from lifeloop.serve.install import install_router
from lifeloop.store import Store
from tests.conftest import publish_trained
from tests.integration.conftest import server_config

SHELLS = Path(lifeloop.serve.__file__).parent / "models"


def shell_0_1(name: str) -> str:
    """The model.py shell lifeloop 0.1 copied into repositories: today's, with the import
    path of then (the only line that differed)."""
    return (SHELLS / f"{name}.py").read_text().replace("lifeloop.serve.", "lifeloop.loop.")


def test_a_repository_made_by_0_1_serves_through_the_router(
    tmp_path: Path, trained: TrainResult, served_held_out
) -> None:
    repo = tmp_path / "model_repository"
    publish_trained(trained.checkpoint, repo, "digits")
    install_router(repo, "digits")
    for name in ("router", "feedback"):
        (repo / name / "1" / "model.py").write_text(shell_0_1(name))
    assert "from lifeloop.loop.router import Router" in (repo / "router/1/model.py").read_text()

    x, y = served_held_out
    with (
        TritonServer(server_config(repo)) as server,
        LifeloopClient(server.grpc_url, model="router") as client,
    ):
        answers = client.classify(list(x[:4]))
        ids = [a.request_id or "" for a in answers]
        assert all(ids) and {a.version for a in answers} == {1}
        assert client.feedback(ids, [str(label) for label in y[:4]]) == 4
    with Store.for_repository(repo) as store:
        assert store.count_predictions("digits") == 4
        assert store.count_feedback() == 4

    result = CliRunner().invoke(
        app, ["router", "init", "--repository", str(repo), "--model", "digits"]
    )
    assert result.exit_code == 0, result.output
    for name, module in (("router", "router"), ("feedback", "feedback")):
        shell = (repo / name / "1" / "model.py").read_text()
        assert f"from lifeloop.serve.{module} import" in shell
        assert "lifeloop.loop" not in shell.split('"""')[-1]  # only the docstring may say it
