"""Model control restricted to a key, as docker-compose and Kubernetes run tritonserver: loads,
unloads and the repository index need the `lifeloop-key` header, which lifeloop sends from
LIFELOOP_API_KEY; inference stays open."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from lifeloop.client import ClientError, LifeloopClient, ServerControl
from lifeloop.contract import API_KEY_ENV
from lifeloop.retrain import TrainResult
from lifeloop.serve import ServerConfig, TritonServer
from tests.conftest import publish_trained

KEY = "a-key-for-the-test"


@pytest.fixture(scope="module")
def restricted(tmp_path_factory: pytest.TempPathFactory, trained: TrainResult) -> Iterator:
    repo = tmp_path_factory.mktemp("restricted") / "model_repository"
    publish_trained(trained.checkpoint, repo, "digits")
    config = ServerConfig.on_free_ports(repo, log_file=repo.parent / "triton.log", api_key=KEY)
    with TritonServer(config) as server:
        yield server


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_model_control_needs_the_key_and_inference_does_not(
    restricted: TritonServer, protocol: str, served_held_out, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = restricted.http_url if protocol == "http" else restricted.grpc_url
    monkeypatch.delenv(API_KEY_ENV, raising=False)
    with ServerControl(url, protocol) as control:
        for call in (lambda: control.load_model("digits"), control.repository_index):
            with pytest.raises(ClientError) as refused:
                call()
            message = str(refused.value)
            assert "\n" not in message and "restricted" in message and API_KEY_ENV in message

    monkeypatch.setenv(API_KEY_ENV, "not-the-key")
    with ServerControl(url, protocol) as control, pytest.raises(ClientError, match=API_KEY_ENV):
        control.load_model("digits")

    monkeypatch.setenv(API_KEY_ENV, KEY)
    with ServerControl(url, protocol) as control:
        control.load_model("digits")
        assert control.version_states("digits") == {1: "READY"}

    monkeypatch.delenv(API_KEY_ENV)
    with LifeloopClient(url, protocol, model="digits") as client:
        answers = client.classify(served_held_out[0][:4])
    assert [a.version for a in answers] == [1, 1, 1, 1]
