"""`lifeloop quickstart` fills the folder git keeps empty with a trained digits classifier,
the router, the feedback model and the image ensemble; a real tritonserver then serves
digits through the router and as PNG bytes through the ensemble."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from typer.testing import CliRunner

from lifeloop import contract
from lifeloop.cli import app
from lifeloop.client import LifeloopClient
from lifeloop.datasets import scan
from lifeloop.demo import model_folders
from lifeloop.export import load
from lifeloop.export.pipeline import archived_checkpoint
from lifeloop.repository import Manifest, read_config, version_numbers
from lifeloop.serve import TritonServer
from lifeloop.store import Store
from lifeloop.store.database import default_store_url
from tests.integration.conftest import server_config

ROOT = Path(__file__).resolve().parents[2]
DIGITS = tuple(str(d) for d in range(10))
MODELS = ["classifier", "classifier_image", "feedback", "preprocess", "router"]
EPOCHS = 2  # the demo trains 4; 2 already classifies digits well
runner = CliRunner()


def accuracy(labels: list[str], truth: list[str]) -> float:
    return float(np.mean([a == b for a, b in zip(labels, truth, strict=True)]))


def invoke(*args: object):
    return runner.invoke(app, [str(a) for a in args])


@pytest.fixture(scope="module")
def filled(tmp_path_factory: pytest.TempPathFactory) -> Path:
    repository = tmp_path_factory.mktemp("quickstart") / "model_repository"
    repository.mkdir()
    for name in ("README.md", ".gitignore"):  # the folder as a clone has it
        shutil.copy(ROOT / "model_repository" / name, repository / name)
    result = invoke("quickstart", "--repository", repository, "--epochs", EPOCHS)
    assert result.exit_code == 0, result.output
    assert "lifeloop serve --repository" in result.output
    return repository


def test_quickstart_writes_the_classifier_router_feedback_and_image_ensemble(
    filled: Path,
) -> None:
    assert model_folders(filled) == MODELS
    assert (filled / "README.md").is_file()  # left in place, and no model to Triton

    classifier = read_config(filled / "classifier")
    assert classifier is not None and classifier.backend == "onnxruntime"
    assert version_numbers(filled / "classifier") == [1]
    manifest = Manifest.from_json((filled / "classifier" / "1" / "manifest.json").read_text())
    assert manifest.labels == DIGITS
    assert manifest.parity["passed"] and not manifest.parity["vacuous"]
    assert manifest.evaluation["holdout_accuracy"] > 0.8

    router = read_config(filled / "router")
    assert router is not None and router.backend == "python"
    assert router.parameters[contract.CLASSIFIER_PARAM] == "classifier"
    assert router.parameters[contract.STORE_PARAM] == default_store_url(filled.resolve())
    feedback = read_config(filled / "feedback")
    assert feedback is not None and feedback.backend == "python"
    assert feedback.parameters[contract.ROUTER_PARAM] == "router"
    ensemble = read_config(filled / "classifier_image")
    assert ensemble is not None and ensemble.platform == "ensemble"
    assert [s.model for s in ensemble.ensemble_steps] == ["preprocess", "classifier"]
    preprocess = read_config(filled / "preprocess")
    assert preprocess is not None and preprocess.backend == "python"

    # The digits stay beside the repository, and the checkpoint retraining starts from names
    # them: retrain replays them.
    data = filled.parent / "model_repository.data"
    assert scan(data).labels == DIGITS
    checkpoint = load(archived_checkpoint(filled, "classifier", 1))
    assert checkpoint.labels == DIGITS
    assert checkpoint.training["data"] == str(data.resolve())
    assert checkpoint.training["epochs"] == EPOCHS


def test_quickstart_refuses_a_repository_with_models_and_if_empty_leaves_it(
    filled: Path,
) -> None:
    refused = invoke("quickstart", "--repository", filled, "--epochs", 1)
    assert refused.exit_code == 1, refused.output
    lines = [line for line in refused.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), refused.output
    assert "already holds classifier, classifier_image, feedback" in lines[0]
    skipped = invoke("quickstart", "--repository", filled, "--if-empty", "--epochs", 1)
    assert skipped.exit_code == 0, skipped.output
    assert "left as it is" in skipped.output
    assert model_folders(filled) == MODELS and version_numbers(filled / "classifier") == [1]


def test_the_filled_repository_classifies_digits_through_the_router_and_the_ensemble(
    filled: Path,
) -> None:
    folder = scan(filled.parent / "model_repository.data")
    samples = folder.samples[:: len(folder.samples) // 30][:30]  # every class, one batch
    truth = [folder.labels[s.label] for s in samples]
    with TritonServer(server_config(filled)) as server:
        with LifeloopClient(server.grpc_url, model="router") as client:
            client.wait_until_ready(60, model="router")
            answers = client.classify([s.path for s in samples], top_k=1)
            assert {a.version for a in answers} == {1}
            assert accuracy([a.label for a in answers], truth) > 0.8
            assert client.feedback([answers[0].request_id], [truth[0]]) == 1

        with grpcclient.InferenceServerClient(server.grpc_url) as plain:
            images = [Path(s.path).read_bytes() for s in samples]
            tensor = grpcclient.InferInput("IMAGE", [len(images), 1], "BYTES")
            tensor.set_data_from_numpy(np.array(images, dtype=np.object_).reshape(-1, 1))
            wanted = [grpcclient.InferRequestedOutput("logits", class_count=1)]
            top = plain.infer("classifier_image", [tensor], outputs=wanted).as_numpy("logits")
        labels = [row[0].decode().split(":", 2)[2] for row in top]
        assert accuracy(labels, truth) > 0.8

    with Store(default_store_url(filled.resolve())) as store:
        labelled = {row.request_id: row.label for row in store.labelled("classifier")}
    assert labelled[answers[0].request_id] == truth[0]
