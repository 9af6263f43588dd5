"""One real tritonserver for the integration tier, on free ports, in EXPLICIT mode.

Tests that change a model publish under their own model name, so they never disturb each
other's versions."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from lifeloop.retrain import TrainResult
from lifeloop.serve import ServerConfig, TritonServer
from lifeloop.serve.supervisor import describe_exit, keep_crash_log
from tests.conftest import publish_trained


def server_config(repository: Path, **kwargs) -> ServerConfig:
    return ServerConfig.on_free_ports(
        repository, log_file=repository.parent / "tritonserver.log", **kwargs
    )


@pytest.fixture(scope="session")
def repository(tmp_path_factory: pytest.TempPathFactory, trained: TrainResult, held_out) -> Path:
    repo = tmp_path_factory.mktemp("integration") / "model_repository"
    publish_trained(trained.checkpoint, repo, "classifier", samples=held_out[0])
    return repo


@pytest.fixture(scope="session")
def server(repository: Path) -> Iterator[TritonServer]:
    with TritonServer(server_config(repository)) as running:
        yield running


@pytest.fixture(autouse=True)
def _servers_outlive_each_test(request: pytest.FixtureRequest) -> Iterator[None]:
    """A server fixture that died during a test fails that test, with its log, and is started
    again, so one crash shows where it happened instead of failing every test after it."""
    yield
    for value in getattr(request.node, "funcargs", {}).values():
        if not isinstance(value, TritonServer) or (code := value.exit_code()) is None:
            continue
        tail = value.log_tail(20)
        kept = keep_crash_log(value.log_path)
        value.stop()
        value.start()
        pytest.fail(
            f"tritonserver {describe_exit(code)} during this test; it was started again for "
            f"the tests after it. Its log is kept as {kept}; last lines:\n{tail}"
        )
