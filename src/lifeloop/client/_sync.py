"""The synchronous client: classify images against a served classifier, and control a server."""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from types import TracebackType
from typing import Any

from lifeloop.client._codec import (
    Classification,
    ImageLike,
    ModelInfo,
    check_top_k,
    chunks,
    config_from_json,
    decode,
    feedback_inputs,
    routed_answers,
    to_samples,
)
from lifeloop.client._transport import Prepared, Transport
from lifeloop.errors import ClientError
from lifeloop.repository.config import ModelConfig


class _Base:
    def __init__(self, url: str, protocol: str | None = None, *, timeout_s: float = 60.0) -> None:
        self._transport = Transport(url, protocol, timeout_s=timeout_s)

    @property
    def url(self) -> str:
        return self._transport.url

    @property
    def protocol(self) -> str:
        return self._transport.protocol

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
        return self._transport.is_model_ready(model)

    def model_config(self, model: str) -> ModelConfig:
        """The config the server is serving `model` with (what it loaded, not the file)."""
        return config_from_json(self._transport.model_config(model))

    def wait_until_ready(self, timeout_s: float = 60.0, *, model: str | None = None) -> None:
        """Block until `model` is ready (or, without a model, the whole server), or raise after
        timeout_s. Triton's server readiness is strict: one UNAVAILABLE model anywhere makes
        it false, so a model's own readiness is what a caller of that model waits for."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self._transport.is_model_ready(model) if model else self._transport.is_ready():
                return
            time.sleep(0.2)
        what = f"model {model!r} on " if model else ""
        raise ClientError(
            f"{what}Triton at {self.url} was not ready within {timeout_s:g}s; check the server "
            "log, or that --url points at it"
        )


class ServerControl(_Base):
    """Repository and statistics calls: load, unload, list, read counters."""

    def __init__(self, url: str, protocol: str | None = "http", *, timeout_s: float = 120.0):
        super().__init__(url, protocol, timeout_s=timeout_s)

    def load_model(self, model: str) -> None:
        self._transport.load_model(model)

    def unload_model(self, model: str) -> None:
        self._transport.unload_model(model)

    def repository_index(self) -> list[dict[str, Any]]:
        return self._transport.repository_index()

    def version_states(self, model: str) -> dict[int, str]:
        """{version: state} for `model` as the server sees it (READY, UNAVAILABLE, ...)."""
        return {
            int(entry["version"]): entry.get("state", "")
            for entry in self.repository_index()
            if entry.get("name") == model and str(entry.get("version", "")).isdigit()
        }

    def statistics(self, model: str = "") -> list[dict[str, Any]]:
        return self._transport.statistics(model)


class LifeloopClient(_Base):
    """A classifier client over tritonclient HTTP or gRPC.

        with LifeloopClient("localhost:8001", protocol="grpc") as client:
            client.wait_until_ready(timeout_s=30)
            answer = client.classify(["cat.png"], top_k=3)[0]
            print(answer.label, answer.scores[0], answer.version)

    Labels and preprocessing come from the served model's config, where `lifeloop export`
    records them from each version's manifest."""

    def __init__(
        self,
        url: str,
        protocol: str | None = "grpc",
        *,
        model: str = "classifier",
        timeout_s: float = 60.0,
    ) -> None:
        super().__init__(url, protocol, timeout_s=timeout_s)
        self.model = model
        self._info: dict[str, ModelInfo] = {}

    def model_info(self, model: str | None = None, *, refresh: bool = False) -> ModelInfo:
        name = model or self.model
        if refresh or name not in self._info:
            config = self.model_config(name)
            routed = ModelInfo.routed_classifier(config)
            classifier = self.model_config(routed) if routed else None
            self._info[name] = ModelInfo.from_config(config, classifier)
        return self._info[name]

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
        batch = to_samples(inputs, info)
        answers: list[Classification] = []
        for part in chunks(batch, info.max_batch_size):
            outputs, answered = self._transport.infer(
                info.name,
                {info.input_name: (part, info.input_dtype)},
                info.outputs,
                version=str(version or ""),
            )
            logits = outputs[info.output_name]
            if logits.shape[1] > len(info.labels):
                # A newer version added classes: its labels are in the refreshed config.
                info = self.model_info(info.name, refresh=True)
            versions, ids = routed_answers(outputs, answered)
            answers.extend(
                decode(logits, info=info, version=versions, top_k=top_k, request_ids=ids)
            )
        return answers

    def feedback(
        self, request_ids: Sequence[str], labels: Sequence[str], *, model: str = "feedback"
    ) -> int:
        """Attach true labels to request ids a router returned, through the feedback model.
        All or none: an unknown id or an empty label raises ClientError and stores nothing."""
        inputs = feedback_inputs(request_ids, labels)
        if not inputs:
            return 0
        self._transport.infer(
            model, {name: (array, "BYTES") for name, array in inputs.items()}, ["accepted"]
        )
        return len(request_ids)

    def prepare(self, batch: Any, *, model: str | None = None) -> Prepared:
        """Encode a preprocessed float32 batch once, for `send` to repeat (load generators)."""
        info = self.model_info(model)
        return self._transport.prepare(
            info.name, {info.input_name: (batch, info.input_dtype)}, info.outputs
        )

    def send(self, prepared: Prepared, *, version: int | None = None) -> tuple[Any, int]:
        """Send a prepared request: (logits, the version that answered)."""
        outputs, answered = self._transport.send(prepared, version=str(version or ""))
        versions, _ = routed_answers(outputs, answered)
        first = versions[0] if isinstance(versions, list) and versions else answered
        return outputs[prepared.output_names[0]], int(first)

    def infer(
        self, batch: Any, *, model: str | None = None, version: int | None = None
    ) -> tuple[Any, int]:
        """Raw logits for a preprocessed float32 batch, and the version that answered."""
        info = self.model_info(model)
        outputs, answered = self._transport.infer(
            info.name,
            {info.input_name: (batch, info.input_dtype)},
            [info.output_name],
            version=str(version or ""),
        )
        return outputs[info.output_name], answered
