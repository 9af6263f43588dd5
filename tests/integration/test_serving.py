"""Publish -> load -> infer against the real tritonserver, over both protocols."""

from __future__ import annotations

import asyncio
import re
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from lifeloop.client import AsyncLifeloopClient, ClientError, LifeloopClient, ServerControl
from lifeloop.repository import list_versions
from lifeloop.rollout.replicas import version_states
from tests.conftest import publish_trained


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_published_model_classifies_held_out_digits(server, digits, protocol: str) -> None:
    _, held = digits.split()
    url = server.http_url if protocol == "http" else server.grpc_url
    with LifeloopClient(url, protocol) as client:
        client.wait_until_ready(30, model="classifier")
        answers = client.classify([s.path for s in held[:120]], top_k=3)
    truth = [digits.labels[s.label] for s in held[:120]]
    accuracy = np.mean([a.label == t for a, t in zip(answers, truth, strict=True)])
    assert accuracy >= 0.9
    assert {a.version for a in answers} == {1}
    assert all(len(a.labels) == 3 and a.scores[0] >= a.scores[1] >= a.scores[2] for a in answers)


def test_async_client_gives_the_same_answers(server, served_held_out) -> None:
    x = served_held_out[0][:10]

    async def run(protocol: str, url: str):
        async with AsyncLifeloopClient(url, protocol) as client:
            await client.wait_until_ready(30, model="classifier")
            return await client.classify(list(x), top_k=2)

    with LifeloopClient(server.grpc_url) as client:
        expected = client.classify(list(x), top_k=2)
    for protocol, url in (("grpc", server.grpc_url), ("http", server.http_url)):
        answers = asyncio.run(run(protocol, url))
        assert [a.labels for a in answers] == [e.labels for e in expected]
        np.testing.assert_allclose(
            [a.scores for a in answers], [e.scores for e in expected], rtol=1e-4
        )


def test_dynamic_batching_forms_batches_under_concurrency(server, served_held_out) -> None:
    x = served_held_out[0]

    def before() -> tuple[int, int]:
        with ServerControl(server.http_url) as control:
            stats = next(s for s in control.statistics("classifier") if s["version"] == "1")
        return int(stats["inference_count"]), int(stats["execution_count"])

    inferences_0, executions_0 = before()

    def worker(offset: int) -> None:
        with LifeloopClient(server.grpc_url) as client:
            for i in range(25):
                client.infer(x[(offset + i) % len(x)][None])

    with ThreadPoolExecutor(16) as pool:
        list(pool.map(worker, range(16)))
    inferences_1, executions_1 = before()
    requests, executions = inferences_1 - inferences_0, executions_1 - executions_0
    assert requests == 16 * 25
    assert executions < requests * 0.8, f"{executions} executions for {requests} requests"


def test_malformed_requests_get_clear_errors_while_concurrent_good_ones_succeed(
    server, served_held_out
) -> None:
    good = served_held_out[0][:1]
    successes: list[int] = []
    lock = threading.Lock()

    def send_good() -> None:
        with LifeloopClient(server.grpc_url) as client:
            for _ in range(30):
                client.infer(good)
                with lock:
                    successes.append(1)

    def bad(name: str, array: np.ndarray, dtype: str) -> str:
        client = httpclient.InferenceServerClient(server.http_url)
        tensor = httpclient.InferInput(name, list(array.shape), dtype)
        tensor.set_data_from_numpy(array)
        try:
            client.infer("classifier", [tensor])
        except InferenceServerException as exc:
            return str(exc)
        finally:
            client.close()
        return "no error"

    threads = [threading.Thread(target=send_good) for _ in range(4)]
    for thread in threads:
        thread.start()
    cases = {
        "shape": bad("input", np.zeros((1, 3, 16, 16), np.float32), "FP32"),
        "dtype": bad("input", np.zeros((1, 3, 32, 32), np.float64), "FP64"),
        "name": bad("pixels", np.zeros((1, 3, 32, 32), np.float32), "FP32"),
    }
    for thread in threads:
        thread.join()
    assert len(successes) == 120
    assert re.search(r"unexpected shape for input .input.*Expected \[-1,3,32,32\]", cases["shape"])
    assert (
        "input 'input' data-type is 'FP64', but model 'classifier' expects 'FP32'" in cases["dtype"]
    )
    assert "unexpected inference input 'pixels'" in cases["name"]


def test_hot_reload_serves_a_new_version(server, trained, served_held_out) -> None:
    repo = Path(server.config.repository)
    first = publish_trained(trained.checkpoint, repo, "hot", server_url=server.http_url)
    with LifeloopClient(server.grpc_url, model="hot") as client:
        assert client.classify([served_held_out[0][0]])[0].version == first.published.version
        second = publish_trained(trained.checkpoint, repo, "hot", server_url=server.http_url)
        assert client.classify([served_held_out[0][0]])[0].version == second.published.version
        # The previous version stays loaded (latest 2) and can be asked for by number.
        assert (
            client.classify([served_held_out[0][0]], version=first.published.version)[0].version
            == 1
        )
    rows = list_versions(repo, "hot", states=version_states(server.http_url, "hot"))
    states = {r.version: r.state for r in rows}
    assert states == {1: "READY", 2: "READY"}


def test_version_changed_after_publishing_is_refused_and_previous_keeps_serving(
    server, trained, served_held_out
) -> None:
    repo = Path(server.config.repository)
    publish_trained(trained.checkpoint, repo, "guarded", server_url=server.http_url)
    tampered = publish_trained(trained.checkpoint, repo, "guarded")  # on disk, not loaded yet
    with open(tampered.published.path / "model.onnx", "r+b") as handle:
        handle.seek(200)
        handle.write(b"\x01\x02\x03\x04")
    with ServerControl(server.http_url) as control:
        with pytest.raises(
            ClientError, match="load of 'guarded' failed.*does not match its manifest"
        ):
            control.load_model("guarded")
        assert control.version_states("guarded")[1] == "READY"
    with LifeloopClient(server.grpc_url, model="guarded") as client:
        # The refused version must not make callers of this (or any other) model wait.
        client.wait_until_ready(5, model="guarded")
        client.wait_until_ready(5, model="classifier")
        assert client.classify([served_held_out[0][0]])[0].version == 1
    assert "model.onnx does not match its manifest" in server.log_path.read_text()


def test_unknown_model_and_unreachable_server_get_one_line_errors(server) -> None:
    with (
        LifeloopClient(server.grpc_url, model="nope") as client,
        pytest.raises(ClientError, match="config of 'nope' failed") as info,
    ):
        client.classify([np.zeros((3, 32, 32), np.float32)])
    assert "\n" not in str(info.value)
    with (
        LifeloopClient("127.0.0.1:1", "http") as client,
        pytest.raises(ClientError, match="cannot reach Triton at 127.0.0.1:1"),
    ):
        client.classify([np.zeros((3, 32, 32), np.float32)])


def test_grpc_statistics_and_repository_index_match_http(server) -> None:
    with (
        ServerControl(server.grpc_url, "grpc") as grpc_control,
        ServerControl(server.http_url) as http_control,
    ):
        assert grpc_control.version_states("classifier") == http_control.version_states(
            "classifier"
        )
    client = grpcclient.InferenceServerClient(server.grpc_url)
    assert client.is_model_ready("classifier")
    client.close()
