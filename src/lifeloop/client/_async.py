"""The asyncio client: the same answers as LifeloopClient, over tritonclient's aio clients."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable, Sequence
from types import TracebackType

import numpy as np

from lifeloop.client._codec import (
    Classification,
    ImageLike,
    ModelInfo,
    check_top_k,
    config_from_json,
)
from lifeloop.client._session import Session, not_ready
from lifeloop.client._transport import AsyncTransport, InferRequest, InferResult, split_url
from lifeloop.client._triton import AsyncTritonTransport
from lifeloop.repository.config import ModelConfig


class AsyncLifeloopClient:
    """`async with AsyncLifeloopClient(url) as client: await client.classify([...])`.

    `transport` replaces the tritonclient one (a test's fake, say; see AsyncTransport)."""

    def __init__(
        self,
        url: str,
        protocol: str | None = "grpc",
        *,
        model: str = "classifier",
        timeout_s: float = 60.0,
        transport: AsyncTransport | None = None,
    ) -> None:
        self.url, self.protocol = split_url(url, protocol)
        self.model = model
        self.timeout_s = timeout_s
        self._transport = transport or AsyncTritonTransport(self.url, self.protocol)
        self._session = Session()

    async def close(self) -> None:
        await self._transport.close()

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
        """Wait until `model` (or, without one, the whole server) is ready, or raise after
        timeout_s (see LifeloopClient.wait_until_ready)."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if await self._transport.is_ready(model):
                return
            await asyncio.sleep(0.2)
        raise not_ready(self.url, timeout_s, model)

    async def model_config(self, model: str) -> ModelConfig:
        """The config the server is serving `model` with (what it loaded, not the file)."""
        return config_from_json(await self._transport.model_config(model))

    async def model_info(self, model: str | None = None, *, refresh: bool = False) -> ModelInfo:
        name = model or self.model
        info = self._session.known(name, refresh=refresh)
        if info is None:
            config = await self.model_config(name)
            routed = ModelInfo.routed_classifier(config)
            classifier = await self.model_config(routed) if routed else None
            info = self._session.learn(name, config, classifier)
        return info

    async def classify(
        self,
        inputs: Iterable[ImageLike],
        top_k: int = 5,
        *,
        model: str | None = None,
        version: int | None = None,
    ) -> list[Classification]:
        """Classify images; one answer per input, in order (see LifeloopClient.classify)."""
        check_top_k(top_k)
        info = await self.model_info(model)
        answers: list[Classification] = []
        for request in self._session.batches(inputs, info, version):
            result = await self._send(request, version)
            if self._session.outgrown(info, result):
                info = await self.model_info(info.name, refresh=True)
            answers.extend(self._session.answers(info, result, top_k))
        return answers

    async def infer(
        self, batch: np.ndarray, *, model: str | None = None, version: int | None = None
    ) -> tuple[np.ndarray, int]:
        """Raw logits for a preprocessed float32 batch, and the version that answered (for a
        router, the version that answered its first image)."""
        info = await self.model_info(model)
        result = await self._send(info.request(batch), version)
        return self._session.logits(result, info.output_name)

    async def feedback(
        self, request_ids: Sequence[str], labels: Sequence[str], *, model: str = "feedback"
    ) -> int:
        """Attach true labels to request ids a router returned (see LifeloopClient.feedback)."""
        request = self._session.feedback(request_ids, labels, model)
        if request is not None:
            await self._send(request)
        return len(request_ids)

    async def _send(self, request: InferRequest, version: int | None = None) -> InferResult:
        return await self._transport.send(self._transport.prepare(request), version=version)
