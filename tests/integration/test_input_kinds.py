"""Pixels in, right labels out: a version exported by default normalises in its graph, so a
client that only reads Triton's metadata and config and resizes an image gets the right
answer; and a repository may hold versions of both kinds behind one router."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from lifeloop.client import LifeloopClient
from lifeloop.contract import INPUT_KIND_PARAM
from lifeloop.preprocessing import NORMALIZED, PIXELS
from lifeloop.repository import read_config
from lifeloop.retrain import ImageFolder, TrainResult
from lifeloop.rollout import Rollout
from lifeloop.serve import TritonServer
from lifeloop.serve.install import install_router
from lifeloop.serve.sampling import KeepRule
from lifeloop.store import Store
from tests.conftest import publish_trained
from tests.integration import triton_image_client
from tests.integration.conftest import server_config


def test_the_standard_client_imports_nothing_of_lifeloop() -> None:
    tree = ast.parse(Path(triton_image_client.__file__).read_text())
    imported = {
        alias.name
        for node in ast.walk(tree)
        if isinstance(node, ast.Import)
        for alias in node.names
    } | {node.module or "" for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    assert imported and not any(name.split(".")[0] == "lifeloop" for name in imported)


def test_a_client_reading_only_metadata_and_config_gets_lifeloops_accuracy(
    server: TritonServer, digits: ImageFolder
) -> None:
    _, held = digits.split()
    paths = [s.path for s in held]
    truth = [digits.labels[s.label] for s in held]
    config = read_config(server.config.repository / "classifier")
    assert config is not None and config.inputs[0].format.value == "FORMAT_NCHW"
    assert config.parameters[INPUT_KIND_PARAM] == PIXELS

    standard = triton_image_client.classify(server.http_url, "classifier", paths)
    with LifeloopClient(server.grpc_url) as client:
        own = [a.label for a in client.classify(paths, top_k=1)]
    standard_accuracy = np.mean([a == t for a, t in zip(standard, truth, strict=True)])
    own_accuracy = np.mean([a == t for a, t in zip(own, truth, strict=True)])
    assert own_accuracy >= 0.9
    assert standard_accuracy == own_accuracy
    assert standard == own


def test_the_standard_client_refuses_a_normalized_version_without_format(
    tmp_path: Path, trained: TrainResult
) -> None:
    """What Triton's client said before: a config without `format` is refused, as it should
    be for a model of lifeloop 0.1; the parse is the client's own, not a lifeloop check."""
    metadata = {
        "inputs": [{"name": "input", "datatype": "FP32", "shape": [-1, 3, 32, 32]}],
        "outputs": [{"name": "logits", "datatype": "FP32", "shape": [-1, -1]}],
    }
    config = {"max_batch_size": 32, "input": [{"name": "input", "format": "FORMAT_NONE"}]}
    with pytest.raises(ValueError, match="unexpected input format FORMAT_NONE"):
        triton_image_client.parse_model(metadata, config)


@pytest.fixture(scope="module")
def mixed(
    tmp_path_factory: pytest.TempPathFactory, trained: TrainResult, held_out
) -> Iterator[tuple[TritonServer, Path]]:
    """v1 takes normalized inputs (exported with the flag off), v2 pixels, behind a router."""
    repo = tmp_path_factory.mktemp("mixed") / "model_repository"
    publish_trained(trained.checkpoint, repo, "digits", samples=held_out[0], input_kind=NORMALIZED)
    publish_trained(trained.checkpoint, repo, "digits", samples=held_out[0])
    install_router(repo, "digits", champion=1, keep=KeepRule.everything())
    with TritonServer(server_config(repo)) as server:
        yield server, repo


def test_a_router_serves_versions_of_both_kinds_the_same_images(
    mixed: tuple[TritonServer, Path],
    trained: TrainResult,
    digits: ImageFolder,
    held_out,
    served_held_out,
) -> None:
    server, repo = mixed
    normalized, y = held_out
    pixels, _ = served_held_out
    truth = [trained.checkpoint.labels[i] for i in y]
    with LifeloopClient(server.grpc_url, model="router") as client:
        client.wait_until_ready(60, model="router")
        # Clients send what the newest version (v2) takes: pixels. The champion, v1, takes
        # normalized inputs: the router converts.
        assert client.model_info().preprocessing.input_kind == PIXELS
        by_v1 = client.classify(pixels, top_k=1)
        direct_v1 = client.classify(normalized, top_k=1, model="digits", version=1)
        # Image files sent to v1 directly are prepared as v1 takes them, not as the newest.
        files_v1 = client.classify(
            [s.path for s in digits.split()[1]], top_k=1, model="digits", version=1
        )
        with Store.for_repository(repo) as store:
            rollout = Rollout(repo, store, server_url=server.http_url)
            rollout.start_candidate(2, reason="test: v2 takes pixels")
            direct_v2 = client.classify(pixels, top_k=1, model="digits", version=2)
            rollout.promote(reason="test: v2 takes pixels")
        by_v2 = client.classify(pixels, top_k=1)
    assert {a.version for a in by_v1} == {1} and {a.version for a in by_v2} == {2}
    assert [a.label for a in by_v1] == [a.label for a in direct_v1]
    assert [a.label for a in files_v1] == [a.label for a in direct_v1]
    assert [a.label for a in by_v2] == [a.label for a in direct_v2]
    # The same checkpoint in both kinds: the same answers, and the right ones.
    assert [a.label for a in by_v1] == [a.label for a in by_v2]
    assert np.mean([a.label == t for a, t in zip(by_v2, truth, strict=True)]) >= 0.9
