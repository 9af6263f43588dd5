"""The keep rule inside the real tritonserver: a router keeps the inputs whose answers were
uncertain and those a shadowing candidate disagrees with, records why and with what chance
in each prediction, and keeps nothing else when its uniform share is 0."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from lifeloop.client import LifeloopClient
from lifeloop.retrain import TrainResult
from lifeloop.rollout import Rollout
from lifeloop.serve import TritonServer
from lifeloop.serve.install import install_router
from lifeloop.serve.sampling import KeepRule
from lifeloop.store import Store, blobs
from tests.conftest import publish_trained
from tests.integration.conftest import server_config
from tests.integration.test_loop import permuted

N = 60


@pytest.fixture(scope="module")
def threshold(trained: TrainResult, held_out) -> float:
    """The median top-1 softmax of the first N held-out digits: about half are 'uncertain'."""
    with torch.no_grad():
        logits = trained.checkpoint.build_model()(torch.from_numpy(held_out[0][:N]))
    return float(torch.softmax(logits, dim=1).max(dim=1).values.median())


@pytest.fixture(scope="module")
def keep_repo(tmp_path_factory: pytest.TempPathFactory, trained: TrainResult, threshold) -> Path:
    repo = tmp_path_factory.mktemp("keep") / "model_repository"
    publish_trained(trained.checkpoint, repo, "digits")  # v1
    publish_trained(permuted(trained.checkpoint), repo, "digits")  # v2: disagrees on every input
    rule = KeepRule(uniform=0.0, uncertain_below=threshold, disagreeing=True)
    install_router(repo, "digits", champion=1, keep=rule)
    return repo


@pytest.fixture(scope="module")
def keep_server(keep_repo: Path) -> Iterator[TritonServer]:
    with TritonServer(server_config(keep_repo)) as running:
        yield running


def test_only_uncertain_answers_are_kept_each_with_its_reason_and_chance(
    keep_server, keep_repo, served_held_out, threshold
) -> None:
    x = served_held_out[0][:N]
    with LifeloopClient(keep_server.grpc_url, model="router") as client:
        client.wait_until_ready(120, model="router")
        answers = client.classify(x, top_k=1)
    kept, unkept = 0, 0
    with Store.for_repository(keep_repo) as store:
        for answer, sample in zip(answers, x, strict=True):
            row = store.prediction(answer.request_id)
            assert row is not None
            if json.loads(row["scores"])[0] < threshold:  # the router's own softmax
                kept += 1
                assert (row["kept_by"], row["keep_rate"], row["kept_as"]) == (
                    "uncertain",
                    1.0,
                    "uint8",
                )
                assert np.array_equal(blobs.load(row["blob"], row["blob_row"]), sample)
            else:
                unkept += 1
                assert (row["blob"], row["kept_by"], row["keep_rate"]) == (None, None, 0.0)
    # The threshold is the median of the same images' scores (from PyTorch, not the ONNX
    # graph the server runs, so not exactly half): both kinds are there.
    assert kept >= N // 4 and unkept >= N // 4


def test_a_disagreeing_shadow_keeps_what_the_champion_was_sure_of(
    keep_server, keep_repo, served_held_out, threshold
) -> None:
    x = served_held_out[0][:N]
    with Store.for_repository(keep_repo) as store:
        rollout = Rollout(keep_repo, store, server_url=keep_server.http_url)
        rollout.start_candidate(2, reason="test: a candidate that disagrees")
        rollout.shadow(True, reason="test")
        try:
            with LifeloopClient(keep_server.grpc_url, model="router") as client:
                answers = client.classify(x, top_k=1)
            rows = [store.prediction(a.request_id) for a in answers]
        finally:
            rollout.withdraw(reason="test cleanup")
    reasons = [row["kept_by"] for row in rows if row is not None]
    expected = [
        "uncertain" if json.loads(row["scores"])[0] < threshold else "disagreed"
        for row in rows
        if row is not None
    ]
    assert len(reasons) == N and reasons == expected
    assert "disagreed" in reasons
