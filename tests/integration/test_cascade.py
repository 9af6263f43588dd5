"""The router's confidence cascade against the real tritonserver: the light model answers the
images it is sure of and the heavy one the rest, the log and Triton's metrics say which
answered, canary and shadow still work beside it, a heavy version with classes the light one
lacks gets every image, and `lifeloop cascade calibrate` keeps held-out accuracy within
--max-drop."""

from __future__ import annotations

import json
import shutil
import urllib.request
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from lifeloop.client import LifeloopClient
from lifeloop.export import Checkpoint
from lifeloop.retrain import ImageFolder, TrainResult
from lifeloop.rollout import Rollout
from lifeloop.serve import TritonServer
from lifeloop.serve.install import install_router
from lifeloop.serve.sampling import KeepRule
from lifeloop.store import Store
from tests.conftest import publish_trained
from tests.integration.conftest import server_config

LIGHT = "digits_light"


def head(state: dict[str, torch.Tensor]) -> tuple[str, str]:
    weight = [k for k, v in state.items() if k.endswith("weight") and v.ndim == 2][-1]
    return weight, weight.removesuffix("weight") + "bias"


def blurred(checkpoint: Checkpoint) -> Checkpoint:
    """A weaker light model: the head's weights with seeded noise, so it is unsure of more
    images and wrong on some that the trained model gets right."""
    state = {k: v.clone() for k, v in checkpoint.state_dict.items()}
    weight, _ = head(state)
    noise = torch.randn(state[weight].shape, generator=torch.Generator().manual_seed(0))
    state[weight] = state[weight] + 0.6 * state[weight].std() * noise
    return replace(checkpoint, state_dict=state)


def with_new_class(checkpoint: Checkpoint) -> Checkpoint:
    """The trained model and an eleventh class it never predicts: what retraining with a new
    class publishes before the light model learns it."""
    state = {k: v.clone() for k, v in checkpoint.state_dict.items()}
    weight, bias = head(state)
    state[weight] = torch.cat([state[weight], torch.zeros(1, state[weight].shape[1])])
    state[bias] = torch.cat([state[bias], torch.full((1,), -50.0)])
    return replace(checkpoint, labels=(*checkpoint.labels, "eleven"), state_dict=state)


@pytest.fixture(scope="module")
def cascade_repo(tmp_path_factory: pytest.TempPathFactory, trained: TrainResult, held_out) -> Path:
    repo = tmp_path_factory.mktemp("cascade") / "model_repository"
    publish_trained(trained.checkpoint, repo, "digits", samples=held_out[0])  # v1: heavy
    publish_trained(trained.checkpoint, repo, "digits", samples=held_out[0])  # v2: candidate
    publish_trained(with_new_class(trained.checkpoint), repo, "digits")  # v3: one more class
    publish_trained(blurred(trained.checkpoint), repo, LIGHT, samples=held_out[0])
    install_router(repo, "digits", champion=1, keep=KeepRule.everything())
    return repo


@pytest.fixture(scope="module")
def cascade_server(cascade_repo: Path) -> Iterator[TritonServer]:
    with TritonServer(server_config(cascade_repo)) as running:
        yield running


@pytest.fixture
def rollout(cascade_repo: Path, cascade_server: TritonServer) -> Iterator[Rollout]:
    with Store.for_repository(cascade_repo) as store:
        control = Rollout(cascade_repo, store, server_url=cascade_server.http_url)
        yield control
        if control.policy.candidate is not None:
            control.withdraw(reason="test cleanup")
        control.cascade_off(reason="test cleanup")


@pytest.fixture
def client(cascade_server: TritonServer) -> Iterator[LifeloopClient]:
    with LifeloopClient(cascade_server.grpc_url, model="router") as opened:
        opened.wait_until_ready(120, model="router")
        yield opened


def cascade_counts(server: TritonServer) -> dict[str, float]:
    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(server.metrics_url, timeout=10) as response:
        text = response.read().decode()
    return {
        s.labels["outcome"]: s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name == "lifeloop_cascade_images_total" and s.labels.get("light") == LIGHT
    }


def test_sure_images_are_answered_by_the_light_model_and_the_rest_by_the_heavy_one(
    rollout: Rollout, client: LifeloopClient, cascade_server: TritonServer, served_held_out
) -> None:
    x = served_held_out[0][:48]
    light = client.classify(x, top_k=3, model=LIGHT, version=1)
    heavy = client.classify(x, top_k=3, model="digits", version=1)
    confidence = np.array([a.scores[0] for a in light])
    threshold = float(np.median(confidence))
    rollout.cascade(LIGHT, threshold, reason="test")
    before = cascade_counts(cascade_server)
    answers = client.classify(x, top_k=3)
    sure = confidence >= threshold
    assert 0 < sure.sum() < len(x)
    assert [a.model for a in answers] == [LIGHT if s else "digits" for s in sure]
    for answer, by_light, heavy_answer in zip(answers, light, heavy, strict=True):
        expected = by_light if answer.model == LIGHT else heavy_answer
        assert answer.labels == expected.labels and answer.version == expected.version
        np.testing.assert_allclose(answer.scores, expected.scores, rtol=1e-4)
    with Store.for_repository(rollout.repository) as store:
        rows = [store.prediction(a.request_id or "") for a in answers]
    assert all(r is not None for r in rows)
    assert [(r["route"], r["answered_by"], r["version"]) for r in rows if r] == [
        ("light", LIGHT, 1) if s else ("champion", None, 1) for s in sure
    ]
    after = cascade_counts(cascade_server)
    assert after["light"] - before.get("light", 0) == sure.sum()
    assert after["escalated"] - before.get("escalated", 0) == len(x) - sure.sum()


def test_canary_and_shadow_work_with_the_cascade_on(
    rollout: Rollout, client: LifeloopClient, served_held_out
) -> None:
    x = served_held_out[0][:60]
    confidence = np.array([a.scores[0] for a in client.classify(x, model=LIGHT, version=1)])
    rollout.cascade(LIGHT, float(np.quantile(confidence, 0.3)), reason="test")
    rollout.start_candidate(2, canary_weight=0.5, shadow=True, reason="test")
    answers = [client.classify(image[None], top_k=1)[0] for image in x]  # one request each
    with Store.for_repository(rollout.repository) as store:
        rows = [store.prediction(a.request_id or "") for a in answers]
    routes = [r["route"] for r in rows if r]
    assert len(routes) == len(x) and {"light", "champion", "canary"} <= set(routes)
    for answer, row in zip(answers, rows, strict=True):
        assert row is not None
        # Shadow compares the candidate with whatever answered, never with itself.
        if row["route"] == "canary":
            assert (answer.model, answer.version, row["shadow_version"]) == ("digits", 2, None)
        else:
            assert row["shadow_version"] == 2 and row["shadow_label"] is not None
            assert answer.model == (LIGHT if row["route"] == "light" else "digits")


def test_a_heavy_version_with_classes_the_light_model_lacks_gets_every_image(
    rollout: Rollout, client: LifeloopClient, served_held_out
) -> None:
    x = served_held_out[0][:16]
    rollout.cascade(LIGHT, 0.0, reason="test")  # the light model would answer everything
    assert {a.model for a in client.classify(x)} == {LIGHT}
    rollout.start_candidate(3, canary_weight=1.0, reason="test")
    answers = client.classify(x)
    assert {(a.model, a.version) for a in answers} == {("digits", 3)}


def held_out_folder(digits: ImageFolder, out: Path) -> Path:
    _, held = digits.split()
    for sample in held:
        target = out / digits.labels[sample.label]
        target.mkdir(parents=True, exist_ok=True)
        shutil.copy(sample.path, target / sample.path.name)
    return out


def test_calibrate_keeps_held_out_accuracy_within_max_drop(
    rollout: Rollout,
    client: LifeloopClient,
    cascade_server: TritonServer,
    digits: ImageFolder,
    tmp_path: Path,
) -> None:
    from typer.testing import CliRunner

    from lifeloop.cli import app

    eval_dir = held_out_folder(digits, tmp_path / "eval")
    args = ["cascade", "calibrate", "--light", LIGHT, "--eval-dir", str(eval_dir)]
    args += ["--repository", str(rollout.repository), "--url", cascade_server.http_url]
    figures = {}
    for drop in ("3", "0.5"):  # the one left in force is 0.5
        out = tmp_path / f"drop{drop}.json"
        result = CliRunner().invoke(app, [*args, "--max-drop", drop, "--out", str(out)])
        assert result.exit_code == 0, result.output
        assert "(chosen)" in result.output
        figures[drop] = json.loads(out.read_text())
    strict, loose = figures["0.5"], figures["3"]
    for found, drop in ((strict, 0.5), (loose, 3.0)):
        assert found["chosen"]["accuracy"] >= found["heavy_accuracy"] - drop / 100 - 1e-9
    assert loose["chosen"]["threshold"] <= strict["chosen"]["threshold"]
    assert loose["chosen"]["light_fraction"] >= strict["chosen"]["light_fraction"] > 0
    assert loose["light_accuracy"] < loose["heavy_accuracy"]  # the light model is weaker
    policy = rollout.policy
    assert policy.cascade is not None
    assert policy.cascade.threshold == pytest.approx(strict["chosen"]["threshold"])
    # Through the router, in the same batches the calibration sent, on the same images.
    folder_paths = sorted(eval_dir.glob("*/*"))
    truth = [p.parent.name for p in folder_paths]
    answers = [
        a
        for i in range(0, len(folder_paths), 64)
        for a in client.classify(folder_paths[i : i + 64])
    ]
    accuracy = np.mean([a.label == t for a, t in zip(answers, truth, strict=True)])
    # One image either way: the heavy model sees escalated images in other batches than
    # when asked directly, which can move an answer at the edge.
    one_image = 1 / len(truth)
    assert accuracy >= strict["heavy_accuracy"] - 0.005 - one_image
    light_share = np.mean([a.model == LIGHT for a in answers])
    assert light_share == pytest.approx(strict["chosen"]["light_fraction"], abs=one_image)
    with Store.for_repository(rollout.repository) as store:
        actions = [(e.action, e.reason) for e in store.history("digits")]
    assert actions[-1][0] == "cascade" and actions[-1][1].startswith("calibrated:")


def test_the_router_answers_what_a_request_asks_for_and_logs_every_image(
    cascade_repo: Path, cascade_server: TritonServer, served_held_out
) -> None:
    """A request that names no output gets all four; one that names only `logits` gets only
    it (the router makes no tensor nobody reads), and both are logged."""
    import tritonclient.http as http

    x = np.ascontiguousarray(served_held_out[0][:3])
    with Store.for_repository(cascade_repo) as store:
        before = store.count_predictions("digits")
    client = http.InferenceServerClient(cascade_server.http_url)
    tensor = http.InferInput("input", list(x.shape), "FP32")
    tensor.set_data_from_numpy(x)
    everything = client.infer("router", [tensor])
    assert {o["name"] for o in everything.get_response()["outputs"]} == {
        "logits",
        "model_version",
        "request_id",
        "answered_by",
    }
    only = client.infer("router", [tensor], outputs=[http.InferRequestedOutput("logits")])
    assert [o["name"] for o in only.get_response()["outputs"]] == ["logits"]
    np.testing.assert_allclose(only.as_numpy("logits"), everything.as_numpy("logits"))
    client.close()
    with Store.for_repository(cascade_repo) as store:
        assert store.count_predictions("digits") == before + 2 * len(x)
