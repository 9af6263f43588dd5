"""What a router keeps, inside the real tritonserver: the inputs whose answers were uncertain
and those a shadowing candidate disagrees with, each prediction saying why and with what
chance, and nothing else when its uniform share is 0; and a router with a disk budget
evicts its oldest unlabelled inputs past it, never a labelled one, and says so on Triton's
metrics endpoint."""

from __future__ import annotations

import contextlib
import json
import os
import time
import urllib.request
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
BUDGET = 16_000  # bytes: ten of the single-image files 40 requests write


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
    install_router(  # a second router, every input kept, in its own folder, under a budget
        repo,
        "digits",
        router="budgeted",
        feedback="budgeted_feedback",
        champion=1,
        keep=KeepRule.everything(),
        blob_dir=repo.parent / "budgeted_blobs",
        keep_budget=BUDGET,
        keep_budget_every_s=0.5,
    )
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


def on_disk(folder: Path) -> int:
    """Bytes of the kept-input files in `folder`, while the router may be evicting them."""
    total = 0
    for path in folder.rglob("*.npy"):
        with contextlib.suppress(FileNotFoundError):
            total += path.stat().st_size
    return total


def budget_series(server: TritonServer) -> dict[str, float]:
    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(server.metrics_url, timeout=10) as response:
        text = response.read().decode()
    return {
        s.name: s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.labels.get("router") == "budgeted" and "kept_input" in s.name
    }


def test_a_router_over_its_budget_evicts_the_oldest_unlabelled_inputs(
    keep_server, keep_repo, served_held_out
) -> None:
    x = served_held_out[0][:40]
    folder = keep_repo.parent / "budgeted_blobs"
    with LifeloopClient(keep_server.grpc_url, model="budgeted") as client:
        client.wait_until_ready(120, model="budgeted")
        client.wait_until_ready(120, model="budgeted_feedback")
        ids = [client.classify(x[i : i + 1])[0].request_id for i in range(len(x))]
        labelled = [ids[0], ids[1], ids[20]]  # two of the oldest
        assert client.feedback(labelled, ["0", "1", "2"], model="budgeted_feedback") == 3
    files = sorted(
        (p for p in folder.rglob("*.npy")), key=lambda p: p.stat().st_mtime_ns, reverse=True
    )
    assert on_disk(folder) > BUDGET  # the traffic passed the budget
    # Files under a minute old are never evicted (their batch may not be committed yet): the
    # test makes them two minutes older, keeping their order.
    for p in files:
        at = p.stat().st_mtime - 120
        os.utime(p, (at, at))
    deadline = time.monotonic() + 60
    while on_disk(folder) > BUDGET:
        assert time.monotonic() < deadline, "the router's budget pass never evicted"
        time.sleep(0.5)
    with Store.for_repository(keep_repo) as store:
        kept = [store.prediction(rid)["blob"] is not None for rid in ids]  # type: ignore[index]
    assert all(kept[ids.index(rid)] for rid in labelled)  # never a labelled input
    evicted = [i for i, k in enumerate(kept) if not k]
    unlabelled_kept = [i for i, k in enumerate(kept) if k and ids[i] not in labelled]
    assert evicted and unlabelled_kept and max(evicted) < min(unlabelled_kept)  # oldest first
    deadline = time.monotonic() + 30
    while budget_series(keep_server).get("lifeloop_kept_inputs_evicted_total", 0) < len(evicted):
        assert time.monotonic() < deadline, budget_series(keep_server)
        time.sleep(0.5)
    series = budget_series(keep_server)
    assert series["lifeloop_kept_input_budget_bytes"] == BUDGET
    assert series["lifeloop_kept_input_bytes"] <= BUDGET
    assert series["lifeloop_kept_input_evicted_bytes_total"] > 0
