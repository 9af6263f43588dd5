"""The asyncio client: the same answers as LifeloopClient, over tritonclient's aio clients."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable
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
    to_samples,
)
from lifeloop.client._transport import (
    _as_client_error,
    answered_version,
    config_payload,
    split_url,
)
from lifeloop.client.errors import ClientError


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
            kwargs = {"as_json": True} if self.protocol == "grpc" else {}
            try:
                response = await self._client.get_model_config(name, **kwargs)
            except Exception as exc:
                raise _as_client_error(exc, self.url, f"config of {name!r}") from exc
            data = config_payload(response, self.protocol)
            self._info[name] = ModelInfo.from_config(config_from_json(data))
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
            logits, answered = await self.infer(part, model=info.name, version=version)
            if logits.shape[1] > len(info.labels):
                info = await self.model_info(info.name, refresh=True)
            answers.extend(decode(logits, info=info, version=answered, top_k=top_k))
        return answers

    async def infer(
        self, batch: np.ndarray, *, model: str | None = None, version: int | None = None
    ) -> tuple[np.ndarray, int]:
        info = await self.model_info(model)
        tensor = self._triton.InferInput(info.input_name, list(batch.shape), info.input_dtype)
        tensor.set_data_from_numpy(batch)
        output = self._triton.InferRequestedOutput(info.output_name)
        try:
            result = await self._client.infer(
                info.name, [tensor], model_version=str(version or ""), outputs=[output]
            )
        except Exception as exc:
            raise _as_client_error(exc, self.url, f"inference on {info.name!r}") from exc
        return result.as_numpy(info.output_name), answered_version(result, self.protocol)
