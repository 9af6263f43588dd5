"""Shared fixtures: the digits data, a small trained checkpoint, helpers to publish it, and
the store on real SQLite and a real PostgreSQL server.

Training and export happen once per session; tests copy what they need into their own
repositories so they never share mutable state."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from lifeloop.datasets import load_arrays
from lifeloop.export import Checkpoint, export_checkpoint
from lifeloop.preprocessing import PIXELS
from lifeloop.retrain import ImageFolder, TrainResult, train, write_digits
from lifeloop.rollout.replicas import load_published
from lifeloop.store import Store
from lifeloop.store.database import metadata
from tests.integration.postgres import cluster_or_skip


@pytest.fixture(scope="session")
def digits(tmp_path_factory: pytest.TempPathFactory) -> ImageFolder:
    return write_digits(tmp_path_factory.mktemp("digits"))


@pytest.fixture(scope="session")
def trained(digits: ImageFolder, tmp_path_factory: pytest.TempPathFactory) -> TrainResult:
    out = tmp_path_factory.mktemp("ckpt") / "small_cnn.pt"
    return train(digits.root, arch="small_cnn", epochs=3, out=out, progress=False)


@pytest.fixture(scope="session")
def held_out(digits: ImageFolder, trained: TrainResult) -> tuple[np.ndarray, np.ndarray]:
    """The held-out digits as training takes them (normalized): `samples=` of an export."""
    _, held = digits.split()
    return load_arrays(held, trained.checkpoint.preprocessing)


@pytest.fixture(scope="session")
def served_held_out(digits: ImageFolder, trained: TrainResult) -> tuple[np.ndarray, np.ndarray]:
    """The held-out digits as a version exported by default takes them: pixels 0..255."""
    _, held = digits.split()
    return load_arrays(held, trained.checkpoint.preprocessing.with_kind(PIXELS))


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """One real PostgreSQL server for the store tests of the whole session."""
    with cluster_or_skip() as server:
        yield server.url


@pytest.fixture(params=["sqlite", "postgresql"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    """A store on real SQLite, then on the real PostgreSQL server (left empty after)."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'store.db'}"
    else:
        url = request.getfixturevalue("postgres_url")
    with Store(url) as opened:
        yield opened
        if request.param == "postgresql":
            metadata.drop_all(opened.engine)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Tests marked `gpu` need CUDA; without it they skip and say why."""
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU (torch.cuda.is_available() is False)")
    for item in items:
        if item.get_closest_marker("gpu") is not None:  # not keywords: a param id "gpu" is one
            item.add_marker(skip)


def publish_trained(
    checkpoint: Checkpoint,
    repository: Path,
    model: str = "classifier",
    *,
    server_url: str | None = None,
    **kwargs,
):
    """As `lifeloop export --servers` does: write the versions, then have every server load
    them (EXPLICIT mode)."""
    result = export_checkpoint(checkpoint, repository, model, **kwargs)
    for published in result.by_format.values():
        load_published(server_url, published)
    return result
