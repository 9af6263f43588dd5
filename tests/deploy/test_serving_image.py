"""The Triton image's Python side, rehearsed on this machine. The image runs lifeloop's
Python models (router, feedback, preprocess) on a Python 3.11 venv that holds only
deploy/docker/requirements-serve.txt and lifeloop without its dependencies. Here a venv built
the same way (plus onnxruntime, standing in for the image's native ONNX Runtime backend)
hosts those models in a real tritonserver. The image's pins must match pyproject's."""

from __future__ import annotations

import io
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from PIL import Image

from lifeloop.client import LifeloopClient
from lifeloop.retrain import TrainResult
from lifeloop.serve import ServerConfig, ServerError, TritonServer
from lifeloop.serve.ensemble import install_image_ensemble
from lifeloop.serve.install import install_router
from lifeloop.serve.sampling import KeepRule
from lifeloop.store import Store
from tests.conftest import publish_trained
from tests.deploy import DOCKERFILE, PROJECT, ROOT

REQUIREMENTS = ROOT / "deploy" / "docker" / "requirements-serve.txt"
_PIN = re.compile(r"^([A-Za-z0-9_.-]+)(\[[^\]]*\])?==(\S+)$")


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def pins(lines: list[str]) -> dict[str, str]:
    found = {}
    for line in lines:
        match = _PIN.match(line.strip())
        if match:
            found[canonical(match.group(1))] = match.group(3)
    return found


def project_requirements() -> list[str]:
    """The core dependencies and every extra's."""
    extras = PROJECT["optional-dependencies"].values()
    return [*PROJECT["dependencies"], *(r for extra in extras for r in extra)]


def project_pins() -> dict[str, str]:
    return pins(project_requirements())


def test_the_images_pins_are_pyprojects() -> None:
    lines = [line for line in REQUIREMENTS.read_text().splitlines() if line and line[0] != "#"]
    serving = pins(lines)
    assert len(serving) == len(lines) == 6, lines  # every line is an exact pin
    wanted: dict[str, SpecifierSet] = {}
    for requirement in map(Requirement, project_requirements()):
        name = canonical(requirement.name)
        wanted[name] = wanted.get(name, SpecifierSet()) & requirement.specifier
    for name, version in serving.items():
        assert name in wanted and version in wanted[name], (name, version, wanted.get(name))
    assert project_pins()["tritonclient"] == serving["tritonclient"]
    installs = re.findall(r"pip install --no-deps (\S+)==(\S+)", DOCKERFILE.read_text())
    assert installs == [("nvidia-pytriton", project_pins()["nvidia-pytriton"])]


def test_the_stub_the_image_links_is_where_the_wheel_puts_it() -> None:
    import pytriton

    linked = re.search(r"ln -sf (\S+)", DOCKERFILE.read_text())
    assert linked is not None
    inside = linked.group(1).split("/site-packages/", 1)[1]
    stub = Path(pytriton.__file__).parents[1] / inside
    assert stub.is_file() and "/3.11/" in inside


@pytest.fixture(scope="module")
def serving_python(tmp_path_factory: pytest.TempPathFactory) -> Path:
    venv = tmp_path_factory.mktemp("serving") / "venv"
    python = venv / "bin" / "python"
    onnxruntime = f"onnxruntime=={project_pins()['onnxruntime']}"
    base = getattr(sys, "_base_executable", sys.executable)
    for command in (
        [base, "-m", "venv", str(venv)],
        [python, "-m", "pip", "install", "-q", "-r", str(REQUIREMENTS), onnxruntime],
        [python, "-m", "pip", "install", "-q", "--no-deps", str(ROOT)],
    ):
        done = subprocess.run(command, capture_output=True, text=True, timeout=900)
        assert done.returncode == 0, done.stderr[-2000:]
    return python


@pytest.fixture(scope="module")
def served(
    tmp_path_factory: pytest.TempPathFactory, serving_python: Path, trained: TrainResult, held_out
) -> Iterator[tuple[TritonServer, Path]]:
    repo = tmp_path_factory.mktemp("image-rehearsal") / "model_repository"
    publish_trained(trained.checkpoint, repo, "digits", samples=held_out[0])
    install_router(repo, "digits", champion=1, keep=KeepRule.everything())
    install_image_ensemble(repo, "digits")
    config = ServerConfig.on_free_ports(
        repo, log_file=repo.parent / "tritonserver.log", python=serving_python
    )
    with TritonServer(config) as server:
        yield server, repo


def test_the_serving_venv_has_no_training_stack(serving_python: Path) -> None:
    for package in ("torch", "locust", "typer"):
        done = subprocess.run([serving_python, "-c", f"import {package}"], capture_output=True)
        assert done.returncode != 0, f"{package} is in the serving venv"


def test_the_python_models_run_on_the_serving_requirements_alone(served, served_held_out) -> None:
    server, repo = served
    x, y = served_held_out
    with LifeloopClient(server.grpc_url, model="router") as client:
        for model in ("router", "feedback", "digits_image"):
            client.wait_until_ready(120, model=model)
        routed = client.classify(x[:8])
        assert {a.version for a in routed} == {1} and all(a.request_id for a in routed)
        assert client.feedback([a.request_id for a in routed], [str(t) for t in y[:8]]) == 8
        direct = client.classify(x[:8], model="digits")
        assert [a.label for a in routed] == [d.label for d in direct]
        pixels = np.clip(np.random.default_rng(0).random((28, 28, 3)) * 255, 0, 255)
        buffer = io.BytesIO()
        Image.fromarray(pixels.astype(np.uint8)).save(buffer, format="PNG")
        # decoded and preprocessed by the preprocess model, as the client would have done
        [through_image] = client.classify([buffer.getvalue()], model="digits_image")
        [on_tensors] = client.classify([Image.open(buffer)], model="digits")
        assert through_image.version == 1
        assert through_image.labels == on_tensors.labels
        assert through_image.scores == pytest.approx(on_tensors.scores, abs=1e-5)
    with Store.for_repository(repo) as store:
        assert store.count_feedback() == 8
        assert store.count_predictions("digits") == 8


def test_a_models_python_of_another_version_is_refused(tmp_path: Path) -> None:
    fake = tmp_path / "python3"
    fake.write_text("#!/bin/sh\necho 3.10\n")
    fake.chmod(0o755)
    config = ServerConfig.on_free_ports(tmp_path, python=fake)
    with pytest.raises(ServerError, match="is 3.10, but the python backend stub here is built"):
        TritonServer(config).start()
