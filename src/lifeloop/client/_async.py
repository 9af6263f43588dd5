"""The asyncio client: the same answers as LifeloopClient, over tritonclient's aio clients."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable, Sequence
from types import TracebackType
from typing import Any

import numpy as np

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
from lifeloop.client._transport import (
    _as_client_error,
    answered_version,
    config_payload,
    split_url,
)
from lifeloop.errors import ClientError
from lifeloop.repository import config as cfg


class AsyncLifeloopClient:
    """`async with AsyncLifeloopClient(url) as client: await client.classify([...])`."""

    def __init__(
        self,
        url: str,
        protocol: str | None = "grpc",
        *,
        model: str = "classifier",
        timeout_s: float = 60.0,
    ) -> None:
        self.url, self.protocol = split_url(url, protocol)
        self.model = model
        self.timeout_s = timeout_s
        if self.protocol == "grpc":
            import tritonclient.grpc.aio as triton
        else:
            import tritonclient.http.aio as triton  # type: ignore[no-redef]
        self._triton: Any = triton
        self._client: Any = triton.InferenceServerClient(self.url)
        self._info: dict[str, ModelInfo] = {}

    async def close(self) -> None:
        await self._client.close()

    async def __aenter__(self) -> AsyncLifeloopClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def wait_until_ready(self, timeout_s: float = 60.0, *, model: str | None = None) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            try:
                # A model's own readiness (see LifeloopClient.wait_until_ready).
                ready = (
                    self._client.is_model_ready(model) if model else self._client.is_server_ready()
                )
                if await ready:
                    return
            except Exception:
                pass
            await asyncio.sleep(0.2)
        raise ClientError(
            f"Triton at {self.url} was not ready within {timeout_s:g}s; check the server log"
        )

    async def model_info(self, model: str | None = None, *, refresh: bool = False) -> ModelInfo:
        name = model or self.model
        if refresh or name not in self._info:
            config = await self._config(name)
            routed = ModelInfo.routed_classifier(config)
            classifier = await self._config(routed) if routed else None
            self._info[name] = ModelInfo.from_config(config, classifier)
        return self._info[name]

    async def classify(
        self,
        inputs: Iterable[ImageLike],
        top_k: int = 5,
        *,
        model: str | None = None,
        version: int | None = None,
    ) -> list[Classification]:
        check_top_k(top_k)
        info = await self.model_info(model)
        batch = to_samples(inputs, info)
        answers: list[Classification] = []
        for part in chunks(batch, info.max_batch_size):
            outputs, answered = await self._infer(info, part, version)
            logits = outputs[info.output_name]
            if logits.shape[1] > len(info.labels):
                info = await self.model_info(info.name, refresh=True)
            versions, ids = routed_answers(outputs, answered)
            answers.extend(
                decode(logits, info=info, version=versions, top_k=top_k, request_ids=ids)
            )
        return answers

    async def infer(
        self, batch: np.ndarray, *, model: str | None = None, version: int | None = None
    ) -> tuple[np.ndarray, int]:
        """Raw logits for a preprocessed float32 batch, and the version that answered (for a
        router, the version that answered its first image)."""
        info = await self.model_info(model)
        outputs, answered = await self._infer(info, batch, version)
        versions, _ = routed_answers(outputs, answered)
        first = versions[0] if isinstance(versions, list) and versions else answered
        return outputs[info.output_name], int(first)

    async def feedback(
        self, request_ids: Sequence[str], labels: Sequence[str], *, model: str = "feedback"
    ) -> int:
        """Attach true labels to request ids a router returned (see LifeloopClient.feedback)."""
        inputs = feedback_inputs(request_ids, labels)
        if not inputs:
            return 0
        tensors = []
        for name, array in inputs.items():
            tensor = self._triton.InferInput(name, list(array.shape), "BYTES")
            tensor.set_data_from_numpy(array)
            tensors.append(tensor)
        try:
            await self._client.infer(
                model, tensors, outputs=[self._triton.InferRequestedOutput("accepted")]
            )
        except Exception as exc:
            raise _as_client_error(exc, self.url, f"feedback to {model!r}") from exc
        return len(request_ids)

    async def _config(self, name: str) -> cfg.ModelConfig:
        kwargs = {"as_json": True} if self.protocol == "grpc" else {}
        try:
            response = await self._client.get_model_config(name, **kwargs)
        except Exception as exc:
            raise _as_client_error(exc, self.url, f"config of {name!r}") from exc
        return config_from_json(config_payload(response, self.protocol))

    async def _infer(
        self, info: ModelInfo, batch: np.ndarray, version: int | None
    ) -> tuple[dict[str, np.ndarray], int]:
        tensor = self._triton.InferInput(info.input_name, list(batch.shape), info.input_dtype)
        tensor.set_data_from_numpy(batch)
        outputs = [self._triton.InferRequestedOutput(name) for name in info.outputs]
        try:
            result = await self._client.infer(
                info.name, [tensor], model_version=str(version or ""), outputs=outputs
            )
        except Exception as exc:
            raise _as_client_error(exc, self.url, f"inference on {info.name!r}") from exc
        return (
            {name: result.as_numpy(name) for name in info.outputs},
            answered_version(result, self.protocol),
        )
