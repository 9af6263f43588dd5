"""Two real tritonservers on different ports share one repository in EXPLICIT mode, as
replicas on a ReadWriteMany volume do. Publishing and rollouts load on every replica; one
stopped mid-publish is named, and the other serves one consistent version."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from lifeloop.cli import app
from lifeloop.client import ClientError, LifeloopClient, ServerControl
from lifeloop.errors import ReplicaError
from lifeloop.repository import version_numbers
from lifeloop.retrain import TrainResult
from lifeloop.rollout import Rollout
from lifeloop.rollout.replicas import load_everywhere, load_published, server_urls
from lifeloop.serve import ServerConfig, TritonServer
from lifeloop.serve.install import install_router
from lifeloop.serve.sampling import KeepRule
from lifeloop.store import Store
from tests.conftest import publish_trained

runner = CliRunner()


@pytest.fixture
def replicas(
    tmp_path: Path, trained: TrainResult, held_out
) -> Iterator[tuple[Path, TritonServer, TritonServer]]:
    repo = tmp_path / "model_repository"
    publish_trained(trained.checkpoint, repo, "digits", samples=held_out[0])
    configs = [
        ServerConfig.on_free_ports(repo, log_file=tmp_path / f"triton_{name}.log")
        for name in ("a", "b")
    ]
    with TritonServer(configs[0]) as a, TritonServer(configs[1]) as b:
        yield repo, a, b


def served_versions(url: str, x: np.ndarray) -> set[int]:
    with LifeloopClient(url, "http", model="digits") as client:
        return {answer.version for answer in client.classify(x[:16])}


def test_server_urls_are_split_trimmed_and_deduplicated() -> None:
    assert server_urls(" http://a:8000, http://b:8000,,http://a:8000") == [
        "http://a:8000",
        "http://b:8000",
    ]
    assert server_urls(None) == [] and server_urls(["http://a"]) == ["http://a"]


def test_a_dns_url_stands_for_every_address_its_name_resolves_to() -> None:
    # A headless Service's name resolves to one address per ready pod; here, loopback.
    assert server_urls("dns+http://127.0.0.1:8000") == ["http://127.0.0.1:8000"]
    assert "http://127.0.0.1:9000" in server_urls("dns+http://localhost:9000")
    assert server_urls("dns+grpc://127.0.0.1,http://b:8000") == [
        "grpc://127.0.0.1:8001",
        "http://b:8000",
    ]
    with pytest.raises(ClientError, match="cannot resolve 'no-such-host.invalid'"):
        server_urls("dns+http://no-such-host.invalid:8000")
    with pytest.raises(ClientError, match="is not dns"):
        server_urls("dns+ftp://triton:21")


def test_publish_reaches_every_replica_and_names_one_stopped_mid_publish(
    replicas, trained: TrainResult, served_held_out
) -> None:
    repo, a, b = replicas
    x, _ = served_held_out
    both = f"{a.http_url},{b.http_url}"
    published = publish_trained(trained.checkpoint, repo, "digits").published
    assert published.version == 2
    results = load_published(both, published)
    assert [r.url for r in results] == [a.http_url, b.http_url]
    assert all(r.ok and "digits v1,2 READY" in r.detail for r in results)
    assert served_versions(a.http_url, x) == served_versions(b.http_url, x) == {2}

    b.stop()  # replica b goes away between two publishes
    result = runner.invoke(
        app,
        [
            "export",
            "--checkpoint",
            str(trained.path),
            "--repository",
            str(repo),
            "--model",
            "digits",
            "--servers",
            both,
        ],
    )
    assert result.exit_code == 1, result.output
    error = result.stderr.strip()
    assert error.startswith("error: 1 of 2 servers did not serve digits v3:")
    assert b.http_url in error and f"{a.http_url} did" in error and "\n" not in error
    # The survivor serves the new version, and only it, for every request.
    with ServerControl(a.http_url) as server:
        states = server.version_states("digits")
    assert {v for v, state in states.items() if state == "READY"} == {2, 3}
    assert served_versions(a.http_url, x) == {3}


def test_rollout_switches_every_replica_and_reports_each(
    replicas, trained, served_held_out
) -> None:
    repo, a, b = replicas
    x, _ = served_held_out
    publish_trained(trained.checkpoint, repo, "digits")  # v2, on disk only
    install_router(
        repo, "digits", champion=1, server_url=[a.http_url, b.http_url], keep=KeepRule.everything()
    )
    results = load_everywhere([a.http_url, b.http_url], ["router", "feedback"])
    assert [r.ok for r in results] == [True, True]
    with Store.for_repository(repo) as store:
        rollout = Rollout(repo, store, server_url=[a.http_url, b.http_url])
        rollout.start_candidate(2, reason="test")
        assert [r.url for r in rollout.replicas] == [a.http_url, b.http_url]
        assert all("digits v1,2 READY" in r.detail for r in rollout.replicas)
        rollout.promote(reason="test")
        for server in (a, b):
            with LifeloopClient(server.http_url, "http", model="router") as client:
                client.wait_until_ready(60, model="router")
                assert {answer.version for answer in client.classify(x[:16])} == {2}
        b.stop()
        with pytest.raises(ReplicaError) as lagging:
            rollout.rollback(reason="test")
        assert lagging.value.results[0].ok and not lagging.value.results[1].ok
        assert b.http_url in str(lagging.value)


def test_publish_checks_a_version_made_elsewhere_and_brings_it_to_every_replica(
    replicas, trained: TrainResult, served_held_out, tmp_path: Path
) -> None:
    repo, a, b = replicas
    x, _ = served_held_out
    both = f"{a.http_url},{b.http_url}"
    made = publish_trained(trained.checkpoint, tmp_path / "build", "digits").published
    tampered = tmp_path / "copy" / "digits" / "1"
    shutil.copytree(made.path, tampered)
    onnx = tampered / "model.onnx"
    data = bytearray(onnx.read_bytes())
    data[-1] ^= 1
    onnx.write_bytes(bytes(data))

    refused = runner.invoke(app, ["publish", str(tampered), "--repository", str(repo)])
    assert refused.exit_code == 1
    error = refused.stderr.strip()
    assert "\n" not in error and "nothing published" in error and "model.onnx" in error
    assert version_numbers(repo / "digits") == [1]
    assert not [p for p in (repo / "digits").iterdir() if p.name.startswith(".staging")]
    missing = runner.invoke(app, ["publish", str(tmp_path), "--repository", str(repo)])
    assert missing.exit_code == 1 and "has no manifest.json" in missing.stderr

    done = runner.invoke(
        app, ["publish", str(made.path), "--repository", str(repo), "--servers", both]
    )
    assert done.exit_code == 0, done.output
    assert "published digits version 2 (onnx)" in done.stdout
    assert served_versions(a.http_url, x) == served_versions(b.http_url, x) == {2}
