"""`pip install lifeloop` with no extras, as an app developer installs it (`make client-venv`,
which `make test` runs, builds it in .venv-client from today's source): its client and
commands work against a real server, without torch, and a command that needs an extra says
which, in one line."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from lifeloop.client import LifeloopClient
from lifeloop.retrain import ImageFolder, TrainResult
from lifeloop.serve import TritonServer
from tests.integration.debian import missing

ROOT = Path(__file__).resolve().parents[2]
CLIENT_VENV = ROOT / ".venv-client"


@pytest.fixture(scope="module")
def client_bin() -> Path:
    bin_dir = CLIENT_VENV / "bin"
    if not (bin_dir / "lifeloop").is_file():
        missing(f"no client-only install at {CLIENT_VENV}: run `make client-venv` (make test does)")
    return bin_dir


def run(bin_dir: Path, *args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(bin_dir / args[0]), *map(str, args[1:])],
        capture_output=True,
        text=True,
        timeout=120,
        env={"PATH": f"{bin_dir}:/usr/bin:/bin", "HOME": str(ROOT)},
    )


def test_the_client_install_has_no_torch_server_or_locust(client_bin: Path) -> None:
    for package in ("torch", "torchvision", "onnx", "onnxruntime", "pytriton", "locust"):
        done = run(client_bin, "python", "-c", f"import {package}")
        assert done.returncode != 0, f"{package} is in the client-only install"
    done = run(client_bin, "python", "-c", "import lifeloop, lifeloop.client; print('ok')")
    assert done.stdout.strip() == "ok", done.stderr
    size = subprocess.run(["du", "-sm", str(CLIENT_VENV)], capture_output=True, text=True)
    megabytes = int(size.stdout.split()[0])
    assert megabytes < 1024, f"the client-only install takes {megabytes} MB"


def test_the_client_install_classifies_and_lists_versions(
    client_bin: Path, server: TritonServer, digits: ImageFolder
) -> None:
    _, held = digits.split()
    paths = [s.path for s in held[:12]]
    done = run(client_bin, "lifeloop", "classify", "--url", server.grpc_url, "--top-k", "1", *paths)
    assert done.returncode == 0, done.stderr
    printed = [line for line in done.stdout.splitlines() if line.strip()]
    with LifeloopClient(server.grpc_url) as client:
        answers = client.classify(paths, top_k=1)
    assert len(printed) == len(paths)
    for line, path, answer in zip(printed, paths, answers, strict=True):
        assert line.startswith(f"{path}: {answer.label} ") and line.endswith(f"(v{answer.version})")
    listed = run(
        client_bin,
        "lifeloop",
        "versions",
        "--repository",
        server.config.repository,
        "--model",
        "classifier",
        "--url",
        server.http_url,
    )
    assert listed.returncode == 0, listed.stderr
    assert "│ 1 " in listed.stdout and "READY" in listed.stdout


def test_a_command_that_needs_an_extra_says_which_in_one_line(
    client_bin: Path, trained: TrainResult, tmp_path: Path
) -> None:
    repo = tmp_path / "model_repository"
    done = run(client_bin, "lifeloop", "export", "--checkpoint", trained.path, "-r", repo)
    assert done.returncode == 1
    assert done.stderr.strip().splitlines() == [
        "error: lifeloop export needs torch, which this install lacks: "
        "pip install 'lifeloop[export]'"
    ]
    assert not repo.exists() or not any(repo.iterdir())
