"""The learning loop against the real tritonserver: the router and its prediction log,
feedback through Triton, canary and shadow, promote and rollback under a Locust load,
automatic rollback, and a SIGKILLed server that loses no acknowledged record."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import threading
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from lifeloop.client import AsyncLifeloopClient, ClientError, LifeloopClient
from lifeloop.export import Checkpoint
from lifeloop.retrain import TrainResult
from lifeloop.rollout import Rollout, read_policy
from lifeloop.serve import TritonServer
from lifeloop.serve.install import install_router
from lifeloop.serve.sampling import KeepRule
from lifeloop.store import Store, blobs
from tests.conftest import publish_trained
from tests.integration.conftest import server_config


def permuted(checkpoint: Checkpoint) -> Checkpoint:
    """The same network with its head's rows rotated: every answer names the wrong class."""
    state = {k: v.clone() for k, v in checkpoint.state_dict.items()}
    head = [k for k, v in state.items() if k.endswith("weight") and v.ndim == 2][-1]
    bias = head.removesuffix("weight") + "bias"
    state[head] = torch.roll(state[head], 1, dims=0)
    state[bias] = torch.roll(state[bias], 1, dims=0)
    return replace(checkpoint, state_dict=state)


@pytest.fixture(scope="module")
def loop_repo(tmp_path_factory: pytest.TempPathFactory, trained: TrainResult, held_out) -> Path:
    repo = tmp_path_factory.mktemp("loop") / "model_repository"
    publish_trained(trained.checkpoint, repo, "digits", samples=held_out[0])  # v1
    publish_trained(trained.checkpoint, repo, "digits", samples=held_out[0])  # v2
    publish_trained(permuted(trained.checkpoint), repo, "digits")  # v3: wrong on purpose
    install_router(repo, "digits", champion=1, keep=KeepRule.everything())
    return repo


@pytest.fixture(scope="module")
def loop_server(loop_repo: Path) -> Iterator[TritonServer]:
    with TritonServer(server_config(loop_repo)) as running:
        yield running


@pytest.fixture
def store(loop_repo: Path) -> Iterator[Store]:
    with Store.for_repository(loop_repo) as opened:
        yield opened


@pytest.fixture
def rollout(loop_repo: Path, loop_server: TritonServer, store: Store) -> Iterator[Rollout]:
    control = Rollout(loop_repo, store, server_url=loop_server.http_url)
    yield control
    # Leave v1 alone as champion for the next test.
    policy = control.policy
    if policy.candidate is not None:
        control.withdraw(reason="test cleanup")
    if control.policy.champion != 1:
        if control.policy.previous == 1:
            control.rollback(reason="test cleanup")
        else:
            control.start_candidate(1, reason="test cleanup")
            control.promote(reason="test cleanup")


def client_for(server: TritonServer) -> LifeloopClient:
    client = LifeloopClient(server.grpc_url, model="router")
    client.wait_until_ready(120, model="router")
    client.wait_until_ready(120, model="feedback")
    return client


def test_router_answers_and_logs_every_prediction(
    loop_server, store, served_held_out, trained
) -> None:
    x, _ = served_held_out
    before = store.count_predictions("digits")
    with client_for(loop_server) as client:
        answers = client.classify(x[:20], top_k=3)
        direct = client.classify(x[:20], top_k=3, model="digits", version=1)
    ids = [a.request_id for a in answers]
    assert len(set(ids)) == 20 and all(ids)
    assert {a.version for a in answers} == {1}
    assert [a.label for a in answers] == [d.label for d in direct]
    assert store.count_predictions("digits") == before + 20
    for answer, sample in zip(answers, x[:20], strict=True):
        row = store.prediction(answer.request_id)
        assert row is not None and row["version"] == 1 and row["route"] == "champion"
        assert row["label"] == answer.label
        kept = blobs.load(row["blob"], row["blob_row"])
        assert blobs.holds_pixels(row["blob"])  # so retraining normalises it
        # The digits are sent as pixel levels, so they are kept as uint8: exactly what was sent.
        assert row["kept_as"] == "uint8" and np.array_equal(kept, sample)
        assert row["content_hash"] == blobs.content_hash(sample.astype(np.uint8))


def test_feedback_through_triton_and_bad_feedback(loop_server, store, served_held_out) -> None:
    x, y = served_held_out
    with client_for(loop_server) as client:
        answers = client.classify(x[:5])
        labels = [client.model_info().labels[i] for i in y[:5]]
        assert client.feedback([a.request_id for a in answers], labels) == 5
        written = store.count_feedback()
        with pytest.raises(ClientError, match="unknown request id 'nope'"):
            client.feedback([answers[0].request_id, "nope"], ["1", "2"])
        with pytest.raises(ClientError, match="empty label"):
            client.feedback([answers[0].request_id], [" "])
        assert store.count_feedback() == written
        # A label may name a class the model does not know yet.
        client.feedback([answers[1].request_id], ["eleven"])
    labelled = {row.request_id: row.label for row in store.labelled("digits")}
    assert labelled[answers[0].request_id] == labels[0]
    assert labelled[answers[1].request_id] == "eleven"


def test_async_client_through_the_router_over_both_protocols(loop_server, store, served_held_out):
    x, y = served_held_out

    async def run(url: str, protocol: str) -> tuple[list, int]:
        async with AsyncLifeloopClient(url, protocol, model="router") as client:
            await client.wait_until_ready(60, model="router")
            answers = await client.classify(list(x[:6]), top_k=2)
            labels = [(await client.model_info()).labels[i] for i in y[:6]]
            sent = await client.feedback([a.request_id for a in answers], labels)
            with pytest.raises(ClientError, match="unknown request id 'nope'"):
                await client.feedback(["nope"], ["1"])
            return answers, sent

    for url, protocol in ((loop_server.grpc_url, "grpc"), (loop_server.http_url, "http")):
        answers, sent = asyncio.run(run(url, protocol))
        assert sent == 6 and {a.version for a in answers} == {1}
        labelled = {row.request_id: row.label for row in store.labelled("digits")}
        for answer, truth in zip(answers, y[:6], strict=True):
            assert store.prediction(answer.request_id)["label"] == answer.label
            assert labelled[answer.request_id] == str(truth)


def test_canary_splits_traffic_and_shadow_records_agreement(
    loop_server, rollout, store, served_held_out
) -> None:
    x, _ = served_held_out
    before = router_counters(loop_server)
    rollout.start_candidate(2, canary_weight=0.5, reason="test canary")
    with client_for(loop_server) as client:
        # The router routes per request (a request's images stay together), so send 200
        # one-image requests: a split of batched requests would count 32 images per draw.
        versions = [client.classify(x[i : i + 1])[0].version for i in range(200)]
        assert 40 < versions.count(2) < 160 and versions.count(1) + versions.count(2) == 200
        rollout.canary(0.0, reason="test shadow")
        rollout.shadow(True, reason="test shadow")
        shadowed = client.classify(x[:30])
    assert {a.version for a in shadowed} == {1}
    total, agreed = store.shadow_agreement("digits", 2)
    assert total >= 30 and agreed == total  # v2 has v1's weights
    actions = [e.action for e in store.history("digits")]
    assert actions[-3:] == ["candidate", "canary", "shadow"]
    # The same counts on Triton's /metrics, for Prometheus and the Grafana dashboard.
    after = router_counters(loop_server)
    grew = {key: after[key] - before.get(key, 0.0) for key in after}
    routed = {k: v for k, v in grew.items() if k[0] == "lifeloop_routed_images_total"}
    assert routed[("lifeloop_routed_images_total", "canary", "2")] == versions.count(2)
    assert routed[("lifeloop_routed_images_total", "champion", "1")] == versions.count(1) + 30
    assert grew[("lifeloop_shadow_compared_total", "", "2")] == 30
    assert grew[("lifeloop_shadow_agreed_total", "", "2")] == 30


def router_counters(server: TritonServer) -> dict[tuple[str, str, str], float]:
    """The router's counters on Triton's metrics endpoint: (name, route, version or
    candidate) -> value."""
    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(server.metrics_url, timeout=10) as response:
        text = response.read().decode()
    found = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name.startswith("lifeloop_") and sample.labels.get("model") == "digits":
                which = sample.labels.get("version") or sample.labels.get("candidate", "")
                key = (sample.name, sample.labels.get("route", ""), which)
                found[key] = sample.value
    return found


def test_promote_and_rollback_under_load_take_effect_within_2s(
    loop_server, rollout, served_held_out, tmp_path
) -> None:
    from lifeloop.loadtest import LoadTestConfig, run_loadtest

    x, _ = served_held_out
    rollout.start_candidate(2, reason="test promote")
    report: dict = {}
    config = LoadTestConfig(
        url=loop_server.grpc_url,
        model="router",
        users=8,
        spawn_rate=8,
        duration_s=14,
        window_s=2,
        stability_windows=99,  # run the whole duration
        metrics_url=loop_server.metrics_url,
        out=str(tmp_path / "load"),
    )
    load = threading.Thread(target=lambda: report.update(run_loadtest(config)))
    load.start()
    try:
        with client_for(loop_server) as client:
            time.sleep(4)
            for change, expected in ((rollout.promote, 2), (rollout.rollback, 1)):
                change(reason="test under load")
                changed = time.monotonic()
                while client.classify(x[:1])[0].version != expected:
                    assert time.monotonic() - changed < 2.0, f"v{expected} not serving after 2 s"
                    time.sleep(0.02)
                time.sleep(3)
    finally:
        load.join(timeout=120)
    assert report["requests"] > 100
    assert report["failures"] == 0, report["failure_causes"]


def test_canary_with_permuted_labels_is_withdrawn(loop_server, loop_repo, store, served_held_out):
    x, y = served_held_out
    rollout = Rollout(loop_repo, store, server_url=loop_server.http_url)
    rollout.start_candidate(3, canary_weight=0.2, reason="test bad canary")
    policy = rollout.policy
    with client_for(loop_server) as client:
        names = client.model_info().labels
        deadline = time.monotonic() + 90
        while read_policy(loop_repo / "router").candidate == 3:
            assert time.monotonic() < deadline, "the bad canary was never withdrawn"
            answers = client.classify(x[:64])
            client.feedback([a.request_id for a in answers], [names[i] for i in y[:64]])
    # The check runs on the feedback model's own thread, which writes the policy, then the
    # history: the event follows the policy by a moment.
    while store.history("digits")[-1].action != "auto-rollback":
        assert time.monotonic() < deadline + 10, store.history("digits")[-1]
        time.sleep(0.05)
    event = store.history("digits")[-1]
    assert event.action == "auto-rollback" and event.candidate is None
    assert "canary v3 error rate" in event.reason
    scores = store.arm_scores("digits", policy.since)
    assert scores[("canary", 3)].labelled >= policy.rollback_min_labelled
    assert scores[("canary", 3)].error_rate > 0.9


def test_sigkill_loses_no_acknowledged_record(
    tmp_path: Path, trained: TrainResult, served_held_out
) -> None:
    x, y = served_held_out
    repo = tmp_path / "model_repository"
    publish_trained(trained.checkpoint, repo, "digits")
    install_router(repo, "digits", keep=KeepRule.everything())
    acknowledged: list[str] = []
    labelled: list[str] = []
    errors: list[str] = []
    with TritonServer(server_config(repo)) as server:
        stop = threading.Event()

        def traffic() -> None:
            with client_for(server) as client:
                names = client.model_info().labels
                while not stop.is_set():
                    try:
                        answers = client.classify(x[:8])
                        acknowledged.extend(a.request_id for a in answers)
                        ids = [a.request_id for a in answers[:4]]
                        client.feedback(ids, [names[i] for i in y[:4]])
                        labelled.extend(ids)
                    except ClientError as exc:
                        errors.append(str(exc))
                        return

        workers = [threading.Thread(target=traffic) for _ in range(4)]
        for worker in workers:
            worker.start()
        time.sleep(5)
        os.kill(server.process.pid, signal.SIGKILL)
        server.process.wait(timeout=10)
        stop.set()
        for worker in workers:
            worker.join(timeout=30)
    assert len(acknowledged) > 50 and errors, "the load should have run into the kill"
    with Store.for_repository(repo) as store:
        assert store.request_ids("digits") >= set(acknowledged)
        stored = {row.request_id for row in store.labelled("digits")}
    assert stored >= set(labelled)


def test_rollout_commands_and_their_one_line_errors(
    loop_server, loop_repo, rollout, store, served_held_out
):
    from typer.testing import CliRunner

    from lifeloop.cli import app

    runner = CliRunner()
    repo = ["--repository", str(loop_repo), "--url", loop_server.http_url]

    def run(*args: str) -> str:
        result = runner.invoke(app, list(args))
        assert result.exit_code == 0, result.output
        return result.output

    def fails(*args: str) -> str:
        result = runner.invoke(app, list(args))
        assert result.exit_code == 1, result.output
        lines = result.output.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: "), result.output
        return lines[0]

    assert "no candidate to promote" in fails("promote", *repo)
    assert "no previous champion" in fails("rollback", *repo)
    assert "canary traffic and shadow need a candidate" in fails("canary", "--weight", "0.5", *repo)
    assert "has no version 99" in fails("candidate", "--version", "99", *repo)
    assert "on or off" in fails("shadow", "maybe", *repo)
    assert "candidate v2" in run("candidate", "--version", "2", *repo, "--reason", "cli test")
    assert "must be in 0..1" in fails("canary", "--weight", "1.5", *repo)
    assert "canary weight 0.25" in run("canary", "--weight", "0.25", *repo)
    assert "shadow on" in run("shadow", "on", *repo)
    assert "champion v2" in run("promote", *repo, "--reason", "cli promote")
    assert "champion v1" in run("rollback", *repo)
    assert "rollout history" in run("history", "--repository", str(loop_repo))
    lines = run("history", "--repository", str(loop_repo), "--model", "digits", "--json")
    events = [json.loads(line) for line in lines.strip().splitlines()]
    assert [e["action"] for e in events[-5:]] == [
        "candidate",
        "canary",
        "shadow",
        "promote",
        "rollback",
    ]
    assert events[-2]["reason"] == "cli promote" and events[-2]["champion"] == 2
    assert "no feedback given" in fails("feedback", "--url", loop_server.grpc_url)
    assert "unknown request id" in fails(
        "feedback", "--url", loop_server.grpc_url, "--request-id", "x", "--label", "1"
    )
    with client_for(loop_server) as client:
        rid = client.classify(served_held_out[0][:1])[0].request_id
    assert "1 labels stored" in run(
        "feedback", "--url", loop_server.grpc_url, "--request-id", rid, "--label", "3"
    )
    assert store.labelled("digits")[-1].label == "3"
