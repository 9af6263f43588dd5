"""Triton's response cache on the classifiers the router calls, never on the router: a repeat
hits (Triton's own counters say so), the router still logs every request, and the version is
part of the key, so a promote never serves the old version's answer."""

from __future__ import annotations

import dataclasses
import re
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from lifeloop.client import LifeloopClient, ServerControl
from lifeloop.export import Checkpoint
from lifeloop.loadtest.bench import cache_counts
from lifeloop.repository import read_config, write_config
from lifeloop.retrain import ImageFolder, TrainResult
from lifeloop.rollout import Rollout
from lifeloop.serve import TritonServer
from lifeloop.serve.ensemble import install_image_ensemble
from lifeloop.serve.install import install_router
from lifeloop.serve.sampling import KeepRule
from lifeloop.store import Store
from tests.conftest import publish_trained
from tests.integration.conftest import server_config


def sharper(checkpoint: Checkpoint) -> Checkpoint:
    """The same classes with logits twice as large: the same labels, other scores, so an
    answer shows which version computed it."""
    state = {
        k: v * 2 if k.startswith("classifier.") else v for k, v in checkpoint.state_dict.items()
    }
    return dataclasses.replace(checkpoint, state_dict=state)


@pytest.fixture(scope="module")
def cached(
    tmp_path_factory: pytest.TempPathFactory, trained: TrainResult, held_out
) -> Iterator[tuple[TritonServer, Path]]:
    repo = tmp_path_factory.mktemp("cache") / "model_repository"
    publish_trained(trained.checkpoint, repo, "digits", samples=held_out[0], response_cache=True)
    publish_trained(sharper(trained.checkpoint), repo, "digits", samples=held_out[0])
    install_router(repo, "digits", champion=1, keep=KeepRule.everything())
    images = install_image_ensemble(repo, "digits")
    ensemble = read_config(repo / images.ensemble)
    assert ensemble is not None
    write_config(repo, dataclasses.replace(ensemble, response_cache=True))
    with TritonServer(server_config(repo, cache_mb=16)) as server:
        yield server, repo


def metric(server: TritonServer, name: str, model: str) -> float:
    text = urllib.request.urlopen(server.metrics_url, timeout=10).read()
    pattern = rf'^{name}\{{[^}}]*model="{model}"[^}}]*\}} (\S+)$'
    return sum(float(v) for v in re.findall(pattern, text.decode(), re.M))


def test_the_classifier_caches_and_the_router_does_not(
    cached: tuple[TritonServer, Path], served_held_out
) -> None:
    server, repo = cached
    classifier, router = read_config(repo / "digits"), read_config(repo / "router")
    assert classifier is not None and classifier.response_cache
    assert router is not None and not router.response_cache
    x = served_held_out[0][:1]
    hits_before, _ = cache_counts(server, "digits")
    with Store.for_repository(repo) as store:
        logged_before = store.count_predictions("digits")
    with LifeloopClient(server.grpc_url, model="router") as client:
        client.wait_until_ready(60, model="router")
        answers = [client.classify(x, top_k=3)[0] for _ in range(4)]
    assert len({a.request_id for a in answers}) == 4  # the router ran for every request
    assert len({tuple(a.scores) for a in answers}) == 1
    hits, misses = cache_counts(server, "digits")
    assert hits - hits_before >= 3 and misses >= 1
    assert cache_counts(server, "router")[0] == 0
    assert metric(server, "nv_cache_num_hits_per_model", "digits") >= 3
    with Store.for_repository(repo) as store:
        assert store.count_predictions("digits") == logged_before + 4


def test_a_promote_never_answers_from_the_old_versions_cache(
    cached: tuple[TritonServer, Path], served_held_out
) -> None:
    server, repo = cached
    x = served_held_out[0][1:2]
    with LifeloopClient(server.grpc_url, model="router") as client:
        client.wait_until_ready(60, model="router")
        first = [client.classify(x, top_k=3)[0] for _ in range(2)]  # v1, then v1 from cache
        with Store.for_repository(repo) as store:
            rollout = Rollout(repo, store, server_url=server.http_url)
            rollout.start_candidate(2, reason="test: cache across a promote")
            [direct] = client.classify(x, top_k=3, model="digits", version=2)
            rollout.promote(reason="test: cache across a promote")
        after = client.classify(x, top_k=3)[0]
    assert {a.version for a in first} == {1} and after.version == 2
    assert after.labels == first[0].labels
    assert after.scores == pytest.approx(direct.scores)
    assert not np.allclose(after.scores, first[0].scores)


def test_a_top_level_ensemble_is_cached_whole(
    cached: tuple[TritonServer, Path], digits: ImageFolder
) -> None:
    """Triton 2.51 caches a top-level ensemble's answer: a hit skips the preprocess model's
    decoding as well as the classifier."""
    server, _ = cached
    png = digits.samples[0].path.read_bytes()
    before = cache_counts(server, "digits_image")[0]
    decoded_before = executions(server, "preprocess")
    with LifeloopClient(server.grpc_url, model="digits_image") as client:
        client.wait_until_ready(60, model="digits_image")
        answers = [client.classify([png], top_k=1)[0] for _ in range(3)]
    assert len({a.label for a in answers}) == 1
    assert cache_counts(server, "digits_image")[0] - before >= 2
    assert executions(server, "preprocess") - decoded_before <= 1


def executions(server: TritonServer, model: str) -> int:
    with ServerControl(server.http_url) as control:
        return sum(int(s["execution_count"]) for s in control.statistics(model))


def inference_and_execution_counts(server: TritonServer, model: str) -> tuple[int, int]:
    with ServerControl(server.http_url) as control:
        stats = control.statistics(model)
    return (
        sum(int(s["inference_count"]) for s in stats),
        sum(int(s["execution_count"]) for s in stats),
    )


def test_repeats_hit_under_concurrency_when_the_router_batches(
    cached: tuple[TritonServer, Path], served_held_out
) -> None:
    """The router batches concurrent requests; it asks a cached classifier once per request,
    so a repeat still hits although its batch-mates differ."""
    server, _ = cached
    x = served_held_out[0][10:14]
    hits_before, _ = cache_counts(server, "digits")
    routed_before = inference_and_execution_counts(server, "router")

    def send(i: int) -> str:
        with LifeloopClient(server.grpc_url, model="router") as client:
            return client.classify(x[i % 4 : i % 4 + 1], top_k=1)[0].label

    with ThreadPoolExecutor(8) as pool:
        for _ in range(6):
            labels = list(pool.map(send, range(8)))
            assert labels[:4] == labels[4:]
    inferences, executions = (
        a - b
        for a, b in zip(
            inference_and_execution_counts(server, "router"), routed_before, strict=True
        )
    )
    assert inferences == 48 and executions < inferences  # the router did batch requests
    hits = cache_counts(server, "digits")[0] - hits_before
    assert hits >= 48 - 16, f"{hits} hits of 48 requests over 4 images"
