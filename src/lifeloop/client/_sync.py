"""The synchronous client: classify images against a served classifier, and control a server."""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any

from lifeloop.client._codec import (
    Classification,
    ImageLike,
    ModelInfo,
    check_top_k,
    config_from_json,
)
from lifeloop.client._session import Session, not_ready
from lifeloop.client._transport import InferRequest, InferResult, Transport, split_url
from lifeloop.client._triton import TritonTransport
from lifeloop.repository.config import ModelConfig


class _Base:
    def __init__(self, url: str, protocol: str | None, transport: Transport) -> None:
        self.url, self.protocol = split_url(url, protocol)
        self._transport = transport

    def close(self) -> None:
        self._transport.close()

    def __enter__(self) -> Any:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def is_ready(self) -> bool:
        """Whether the server answers and is ready; never raises."""
        return self._transport.is_ready()

    def is_live(self) -> bool:
        """Whether the server answers at all (ready or not); never raises."""
        return self._transport.is_live()

    def is_model_ready(self, model: str) -> bool:
        """Whether `model` is loaded and ready; never raises."""
        return self._transport.is_ready(model)

    def model_config(self, model: str) -> ModelConfig:
        """The config the server is serving `model` with (what it loaded, not the file)."""
        return config_from_json(self._transport.model_config(model))

    def wait_until_ready(self, timeout_s: float = 60.0, *, model: str | None = None) -> None:
        """Block until `model` is ready (or, without a model, the whole server), or raise after
        timeout_s. Triton's server readiness is strict: one UNAVAILABLE model anywhere makes
        it false, so a model's own readiness is what a caller of that model waits for."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self._transport.is_ready(model):
                return
            time.sleep(0.2)
        raise not_ready(self.url, timeout_s, model)


class ServerControl(_Base):
    """Repository and statistics calls: load, unload, list, read counters."""

    def __init__(self, url: str, protocol: str | None = "http", *, timeout_s: float = 120.0):
        self._server = TritonTransport(url, protocol, timeout_s=timeout_s)
        super().__init__(url, protocol, self._server)

    def load_model(self, model: str) -> None:
        self._server.load_model(model)

    def unload_model(self, model: str) -> None:
        self._server.unload_model(model)

    def repository_index(self) -> list[dict[str, Any]]:
        return self._server.repository_index()

    def version_states(self, model: str) -> dict[int, str]:
        """{version: state} for `model` as the server sees it (READY, UNAVAILABLE, ...)."""
        return {
            int(entry["version"]): entry.get("state", "")
            for entry in self.repository_index()
            if entry.get("name") == model and str(entry.get("version", "")).isdigit()
        }

    def statistics(self, model: str = "") -> list[dict[str, Any]]:
        return self._server.statistics(model)


@dataclass(frozen=True)
class Prepared:
    """A request its transport has encoded once, for LifeloopClient.send to repeat."""

    request: InferRequest
    encoded: Any


class LifeloopClient(_Base):
    """A classifier client over tritonclient HTTP or gRPC.

        with LifeloopClient("localhost:8001", protocol="grpc") as client:
            client.wait_until_ready(timeout_s=30)
            answer = client.classify(["cat.png"], top_k=3)[0]
            print(answer.label, answer.scores[0], answer.version)

    Labels and preprocessing come from the served model's config, where `lifeloop export`
    records them from each version's manifest. `transport` replaces the tritonclient one (a
    test's fake, say; see Transport); `timeout_s` is then the transport's business."""

    def __init__(
        self,
        url: str,
        protocol: str | None = "grpc",
        *,
        model: str = "classifier",
        timeout_s: float = 60.0,
        transport: Transport | None = None,
    ) -> None:
        transport = transport or TritonTransport(url, protocol, timeout_s=timeout_s)
        super().__init__(url, protocol, transport)
        self.model = model
        self._session = Session()

    def model_info(self, model: str | None = None, *, refresh: bool = False) -> ModelInfo:
        name = model or self.model
        info = self._session.known(name, refresh=refresh)
        if info is None:
            config = self.model_config(name)
            routed = ModelInfo.routed_classifier(config)
            info = self._session.learn(name, config, self.model_config(routed) if routed else None)
        return info

    def classify(
        self,
        inputs: Iterable[ImageLike],
        top_k: int = 5,
        *,
        model: str | None = None,
        version: int | None = None,
    ) -> list[Classification]:
        """Classify images (files, PIL images, pixel arrays or preprocessed arrays); one answer
        per input, in order. Inputs are sent in batches of the model's max_batch_size."""
        check_top_k(top_k)
        info = self.model_info(model)
        answers: list[Classification] = []
        for request in self._session.batches(inputs, info, version):
            result = self._send(request, version)
            if self._session.outgrown(info, result):
                info = self.model_info(info.name, refresh=True)
            answers.extend(self._session.answers(info, result, top_k))
        return answers

    def feedback(
        self, request_ids: Sequence[str], labels: Sequence[str], *, model: str = "feedback"
    ) -> int:
        """Attach true labels to request ids a router returned, through the feedback model.
        All or none: an unknown id or an empty label raises ClientError and stores nothing."""
        request = self._session.feedback(request_ids, labels, model)
        if request is not None:
            self._send(request)
        return len(request_ids)

    def prepare(self, batch: Any, *, model: str | None = None) -> Prepared:
        """Encode a preprocessed float32 batch once, for `send` to repeat (load generators)."""
        request = self.model_info(model).request(batch)
        return Prepared(request, self._transport.prepare(request))

    def send(self, prepared: Prepared, *, version: int | None = None) -> tuple[Any, int]:
        """Send a prepared request: (logits, the version that answered)."""
        result = self._transport.send(prepared.encoded, version=version)
        return self._session.logits(result, prepared.request.outputs[0])

    def infer(
        self, batch: Any, *, model: str | None = None, version: int | None = None
    ) -> tuple[Any, int]:
        """Raw logits for a preprocessed float32 batch, and the version that answered."""
        info = self.model_info(model)
        result = self._send(info.request(batch, [info.output_name]), version)
        return self._session.logits(result, info.output_name)

    def _send(self, request: InferRequest, version: int | None = None) -> InferResult:
        return self._transport.send(self._transport.prepare(request), version=version)
