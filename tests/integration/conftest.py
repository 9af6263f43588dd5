"""One real tritonserver for the integration tier, on free ports, in EXPLICIT mode.

Tests that change a model publish under their own model name, so they never disturb each
other's versions."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from lifeloop.retrain import TrainResult
from lifeloop.serve import ServerConfig, TritonServer
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
