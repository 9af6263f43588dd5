"""The real clients run against fake transports: what they send, and how they read the answer."""

from __future__ import annotations

import asyncio
import json
from dataclasses import replace
from typing import Any

import numpy as np
import pytest
from google.protobuf import json_format

from lifeloop.client import (
    AsyncLifeloopClient,
    ClientError,
    InferRequest,
    InferResult,
    LifeloopClient,
    TritonTransport,
)
from lifeloop.contract import CLASSIFIER_PARAM, LABELS_PARAM, PREPROCESSING_PARAM
from lifeloop.preprocessing import Preprocessing
from lifeloop.repository.config import DataType, TensorSpec, classifier_config, to_proto

LABELS = ["cat", "dog", "fox"]
SURE = float(np.exp(4) / (np.exp(4) + 2))  # the softmax score of logits (4, 0, 0)


def triton_json(config: Any) -> dict[str, Any]:
    """A config as Triton's HTTP API answers get_model_config."""
    return json_format.MessageToDict(to_proto(config), preserving_proto_field_name=True)


def classifier(labels: list[str] = LABELS) -> Any:
    return classifier_config(
        "classifier",
        input_name="input",
        input_shape=(3, 8, 8),
        output_name="logits",
        max_batch_size=2,
        parameters={
            LABELS_PARAM: json.dumps(labels),
            PREPROCESSING_PARAM: json.dumps(Preprocessing(size=8).to_dict()),
        },
    )


def router() -> Any:
    routed = (
        TensorSpec(name="model_version", data_type=DataType.INT64, dims=(1,)),
        TensorSpec(name="request_id", data_type=DataType.STRING, dims=(1,)),
    )
    config = classifier()
    return replace(
        config,
        name="router",
        outputs=config.outputs + routed,
        parameters={CLASSIFIER_PARAM: "classifier"},
        warmup=(),
    )


def marked(value: int) -> np.ndarray:
    """A preprocessed input the fake answers with class `value`."""
    return np.full((3, 8, 8), value, np.float32)


class FakeTransport:
    """A server in a dict: each model's config, and logits that pick the class an input is
    filled with. It records the configs asked for and every request sent."""

    def __init__(self, *configs: Any, version: int = 3) -> None:
        self.configs = {c.name: triton_json(c) for c in configs}
        self.version = version
        self.asked: list[str] = []
        self.sent: list[tuple[InferRequest, int | None]] = []
        self.unreachable = False
        self.closed = False

    def is_ready(self, model: str | None = None) -> bool:
        return not self.unreachable

    def is_live(self) -> bool:
        return not self.unreachable

    def model_config(self, model: str) -> dict[str, Any]:
        if self.unreachable:
            raise ClientError("cannot reach Triton at fake:8001 (connection refused)")
        self.asked.append(model)
        return self.configs[model]

    def prepare(self, request: InferRequest) -> InferRequest:
        return request

    def send(self, prepared: InferRequest, *, version: int | None = None) -> InferResult:
        self.sent.append((prepared, version))
        if prepared.model == "feedback":
            return InferResult({"accepted": np.array([[True]])}, 1)
        batch, _ = prepared.inputs["input"]
        logits = np.eye(len(LABELS), dtype=np.float32)[batch[:, 0, 0, 0].astype(int)] * 4
        outputs = {"logits": logits}
        if "request_id" in prepared.outputs:  # a router: which version answered each image
            rows = np.arange(len(batch)) + len(self.sent) * 10
            outputs["model_version"] = (rows % 2 + 1).reshape(-1, 1)
            outputs["request_id"] = np.array([[f"r{i}".encode()] for i in rows], np.object_)
        return InferResult(outputs, version or self.version)

    def close(self) -> None:
        self.closed = True


class AsyncFake:
    """FakeTransport behind AsyncTransport's awaited methods."""

    def __init__(self, fake: FakeTransport) -> None:
        self.fake = fake

    async def is_ready(self, model: str | None = None) -> bool:
        return self.fake.is_ready(model)

    async def model_config(self, model: str) -> dict[str, Any]:
        return self.fake.model_config(model)

    def prepare(self, request: InferRequest) -> InferRequest:
        return request

    async def send(self, prepared: InferRequest, *, version: int | None = None) -> InferResult:
        return self.fake.send(prepared, version=version)

    async def close(self) -> None:
        self.fake.close()


def sent(fake: FakeTransport) -> list[tuple[str, tuple[int, ...], str, tuple[str, ...], Any]]:
    return [
        (r.model, r.inputs["input"][0].shape, r.inputs["input"][1], r.outputs, v)
        for r, v in fake.sent
    ]


def test_classify_sends_max_batch_size_parts_and_labels_the_logits_in_order() -> None:
    fake = FakeTransport(classifier())
    with LifeloopClient("fake:8001", transport=fake) as client:
        answers = client.classify([marked(2), marked(0), marked(1)], top_k=2, version=7)
        again = client.classify([marked(1)], top_k=1)
    assert [a.label for a in answers] == ["fox", "cat", "dog"]
    assert answers[0].labels[1] == "cat" and answers[0].indices == (2, 0)
    assert answers[0].scores[0] == pytest.approx(SURE)
    assert {(a.model, a.version, a.request_id) for a in answers} == {("classifier", 7, None)}
    assert again[0].label == "dog" and again[0].version == 3
    assert sent(fake) == [
        ("classifier", (2, 3, 8, 8), "FP32", ("logits",), 7),
        ("classifier", (1, 3, 8, 8), "FP32", ("logits",), 7),
        ("classifier", (1, 3, 8, 8), "FP32", ("logits",), None),
    ]
    assert fake.asked == ["classifier"]  # the config is read once
    assert fake.closed


def test_a_router_answers_per_image_and_feedback_goes_to_the_feedback_model() -> None:
    fake = FakeTransport(router(), classifier())
    with LifeloopClient("fake:8001", model="router", transport=fake) as client:
        answers = client.classify([marked(0), marked(1), marked(2)], top_k=1)
        assert client.feedback([a.request_id or "" for a in answers[:2]], ["cat", "eleven"]) == 2
        assert client.feedback([], []) == 0
    assert fake.asked == ["router", "classifier"]  # labels come from the routed classifier
    assert [(a.label, a.model, a.version, a.request_id) for a in answers] == [
        ("cat", "classifier", 1, "r10"),
        ("dog", "classifier", 2, "r11"),
        ("fox", "classifier", 1, "r20"),
    ]
    request, version = fake.sent[-1]
    assert (request.model, request.outputs, version) == ("feedback", ("accepted",), None)
    assert {name: dtype for name, (_, dtype) in request.inputs.items()} == {
        "request_id": "BYTES",
        "label": "BYTES",
    }
    assert request.inputs["label"][0].tolist() == [[b"cat"], [b"eleven"]]
    assert len(fake.sent) == 3  # no request for no ids


def test_a_prepared_request_is_encoded_once_and_sent_as_often_as_asked() -> None:
    fake = FakeTransport(classifier())
    with LifeloopClient("fake:8001", transport=fake) as client:
        prepared = client.prepare(np.stack([marked(1)]))
        results = [client.send(prepared, version=5) for _ in range(2)]
        logits, version = client.infer(np.stack([marked(2)]))
    assert [int(r[0].argmax()) for r in results] == [1, 1] and results[0][1] == 5
    assert int(logits.argmax()) == 2 and version == 3
    assert fake.sent[0][0] is fake.sent[1][0] is prepared.request


def test_new_classes_in_an_answer_refresh_the_labels() -> None:
    fake = FakeTransport(classifier(LABELS[:2]))
    with LifeloopClient("fake:8001", transport=fake) as client:
        assert client.model_info().labels == ("cat", "dog")
        fake.configs["classifier"] = triton_json(classifier())  # a version with a third class
        assert client.classify([marked(2)], top_k=1)[0].label == "fox"
    assert fake.asked == ["classifier", "classifier"]


def test_the_async_client_sends_and_answers_as_the_sync_one() -> None:
    fake = FakeTransport(classifier())

    async def run() -> tuple[list[Any], tuple[Any, int]]:
        async with AsyncLifeloopClient("fake:8001", transport=AsyncFake(fake)) as client:
            await client.wait_until_ready(1)
            answers = await client.classify([marked(2), marked(0), marked(1)], top_k=2, version=7)
            return answers, await client.infer(np.stack([marked(1)]))

    answers, (logits, version) = asyncio.run(run())
    assert [a.label for a in answers] == ["fox", "cat", "dog"]
    assert answers[0].scores[0] == pytest.approx(SURE) and answers[0].version == 7
    assert int(logits.argmax()) == 1 and version == 3
    assert sent(fake)[:2] == [
        ("classifier", (2, 3, 8, 8), "FP32", ("logits",), 7),
        ("classifier", (1, 3, 8, 8), "FP32", ("logits",), 7),
    ]
    assert fake.asked == ["classifier"] and fake.closed


def test_an_unreachable_server_raises_client_error_and_sends_nothing() -> None:
    fake = FakeTransport(classifier())
    fake.unreachable = True
    with LifeloopClient("fake:8001", transport=fake) as client:
        with pytest.raises(ClientError, match="top_k must be >= 1"):
            client.classify([marked(0)], top_k=0)
        with pytest.raises(ClientError, match="cannot reach Triton at fake:8001"):
            client.classify([marked(0)])
        assert not client.is_live()
        with pytest.raises(ClientError, match="model 'classifier' on Triton at fake:8001") as err:
            client.wait_until_ready(0, model="classifier")
    assert err.value.url == "fake:8001" and err.value.model == "classifier"
    assert fake.sent == []


def test_tritonclient_failures_become_one_line_client_errors_naming_the_url() -> None:
    class Refusing:
        def get_model_config(self, model: str) -> None:
            raise ConnectionRefusedError(111, "Connection refused")

        def infer(self, model_name: str, **_: Any) -> None:
            raise RuntimeError(f"Request for unknown model: '{model_name}'\n is not found")

    transport = TritonTransport("http://h:8000")
    transport.client = Refusing()
    with pytest.raises(ClientError, match="cannot reach Triton at h:8000.*lifeloop serve") as err:
        transport.model_config("classifier")
    assert err.value.url == "h:8000"
    request = InferRequest(
        model="nope", inputs={"input": (np.stack([marked(0)]), "FP32")}, outputs=("logits",)
    )
    with pytest.raises(ClientError, match="^inference on 'nope' failed at h:8000: Request for"):
        transport.send(transport.prepare(request))
