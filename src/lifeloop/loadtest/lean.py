"""The lean client: asyncio gRPC or HTTP with `concurrency` requests always in flight and no
per-request work beyond sending and timing. The reference that Locust's throughput
is compared with, and the load generator of `bench` and `tune`."""

from __future__ import annotations

import asyncio
import itertools
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from lifeloop.client import split_url
from lifeloop.errors import LoadTestError
from lifeloop.loadtest.stats import Measurement, Meter

Send = Callable[[], Awaitable[None]]
Payload = Callable[[], bytes]  # the input tensor's bytes of the next request


@dataclass(frozen=True)
class Repeats:
    """A stream of inputs where a `share` of requests repeat one of `hot` images (drawn
    uniformly) and the rest are each new: what a response cache sees. Every input is the
    base batch with its first four elements set to the image's number (three base-256
    digits) and the stream's seed, so making one costs a copy, streams of other seeds share
    no input, and a batch of pixel levels stays pixel levels."""

    share: float
    hot: int = 100
    seed: int = 0

    def __post_init__(self) -> None:
        if not 0 <= self.share <= 1 or self.hot < 1:
            raise LoadTestError(
                f"repeats share must be in 0..1 and hot >= 1, got {self.share} and {self.hot}"
            )

    def payloads(self, batch: np.ndarray) -> Payload:
        rng = np.random.default_rng(self.seed)
        fresh = itertools.count(self.hot)
        work = np.ascontiguousarray(batch, dtype=np.float32).copy()

        def payload() -> bytes:
            number = int(rng.integers(self.hot)) if rng.random() < self.share else next(fresh)
            digits = (number % 256, number // 256 % 256, number // 65536 % 256, self.seed % 256)
            work.reshape(-1)[:4] = digits
            return work.tobytes()

        return payload


@dataclass(frozen=True, eq=False)
class Cycle:
    """A stream that sends these images one per request, in turn, over and over: what a
    model whose cost depends on the input (a cascade) must be measured on."""

    images: np.ndarray  # [n, *input shape], as the model takes them

    def payloads(self, batch: np.ndarray) -> Payload:
        if len(self.images) == 0 or self.images.shape[1:] != batch.shape[1:]:
            raise LoadTestError(
                f"cycle images are shaped {self.images.shape[1:]}, the model takes "
                f"{batch.shape[1:]}; pass images of the model's input shape"
            )
        encoded = [np.ascontiguousarray(i[None], dtype=np.float32).tobytes() for i in self.images]
        turn = itertools.cycle(encoded)
        return lambda: next(turn)


class Stream(Protocol):
    def payloads(self, batch: np.ndarray) -> Payload: ...


def _fixed(batch: np.ndarray) -> Payload:
    data = np.ascontiguousarray(batch).tobytes()
    return lambda: data


class _Failed(Exception):
    """One request failed; its text is the cause counted in the measurement."""


@asynccontextmanager
async def _grpc_sender(
    url: str,
    model: str,
    batch: np.ndarray,
    input_name: str,
    output_name: str,
    payload: Payload | None = None,
    datatype: str = "FP32",
) -> AsyncIterator[Send]:
    """The request is serialised once, through the gRPC stubs tritonclient ships, so the
    client's cost per request is only gRPC's own; with `payload`, each request carries the
    next input bytes it gives (for BYTES, already in Triton's length-prefixed form)."""
    import grpc
    from tritonclient.grpc import service_pb2, service_pb2_grpc

    address, _ = split_url(url, "grpc")
    limit = [("grpc.max_send_message_length", -1), ("grpc.max_receive_message_length", -1)]
    channel = grpc.aio.insecure_channel(address, options=limit)
    stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
    tensor = service_pb2.ModelInferRequest().InferInputTensor(
        name=input_name, datatype=datatype, shape=list(batch.shape)
    )
    request = service_pb2.ModelInferRequest(
        model_name=model,
        inputs=[tensor],
        outputs=[service_pb2.ModelInferRequest().InferRequestedOutputTensor(name=output_name)],
        raw_input_contents=[np.ascontiguousarray(batch).tobytes()],
    )

    def next_request() -> Any:
        # A new message per request: one in flight may not be serialised yet.
        return service_pb2.ModelInferRequest(
            model_name=model,
            inputs=request.inputs,
            outputs=request.outputs,
            raw_input_contents=[payload()] if payload is not None else [],
        )

    async def send() -> None:
        try:
            await stub.ModelInfer(request if payload is None else next_request())
        except grpc.aio.AioRpcError as exc:
            raise _Failed(str(exc.details())) from exc

    try:
        yield send
    finally:
        await channel.close()


@asynccontextmanager
async def _http_sender(
    url: str,
    model: str,
    batch: np.ndarray,
    input_name: str,
    output_name: str,
    payload: Payload | None = None,
) -> AsyncIterator[Send]:
    """The body is encoded once in KServe v2's binary tensor extension (what tritonclient.http
    sends with binary_data), and posted through aiohttp with one connection per coroutine."""
    import aiohttp

    address, _ = split_url(url, "http")
    streaming = payload is not None
    next_data = payload or _fixed(batch)
    data = next_data()
    header = json.dumps(
        {
            "inputs": [
                {
                    "name": input_name,
                    "shape": list(batch.shape),
                    "datatype": "FP32",
                    "parameters": {"binary_data_size": len(data)},
                }
            ],
            "outputs": [{"name": output_name, "parameters": {"binary_data": True}}],
        }
    ).encode()
    body = header + data
    headers = {
        "Inference-Header-Content-Length": str(len(header)),
        "Content-Type": "application/octet-stream",
    }
    endpoint = f"http://{address}/v2/models/{model}/infer"
    session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))

    async def send() -> None:
        # every input of a stream is as long as the first, so the header stays right
        sent = header + next_data() if streaming else body
        try:
            async with session.post(endpoint, data=sent, headers=headers) as response:
                answer = await response.read()
        except aiohttp.ClientError as exc:
            raise _Failed(str(exc) or type(exc).__name__) from exc
        if response.status != 200:
            raise _Failed(f"HTTP {response.status}: {answer[:200].decode(errors='replace')}")

    try:
        yield send
    finally:
        await session.close()


async def _measure(
    sender: AbstractAsyncContextManager[Send],
    *,
    concurrency: int,
    window_s: float,
    max_s: float,
) -> Measurement:
    """`concurrency` coroutines, each sending the same pre-built request as soon as its last
    answer arrives."""
    # The warm-up lets the server see every batch size the batcher forms (onnxruntime plans
    # memory per shape on first use) before anything is measured.
    meter = Meter(window_s=window_s, max_s=max_s, warmup_s=max(window_s, 5.0))
    stop = asyncio.Event()
    async with sender as send:

        async def worker() -> None:
            while not stop.is_set():
                began = time.perf_counter()
                try:
                    await send()
                except _Failed as exc:
                    meter.add((time.perf_counter() - began) * 1000, ok=False, error=str(exc)[:120])
                else:
                    meter.add((time.perf_counter() - began) * 1000)

        workers = [asyncio.create_task(worker()) for _ in range(concurrency)]
        try:
            while not meter.done():
                await asyncio.sleep(min(0.25, window_s / 4))
        finally:
            stop.set()
            await asyncio.gather(*workers, return_exceptions=True)
    return meter.result()


def measure_lean(
    url: str,
    model: str,
    input_shape: tuple[int, ...],
    *,
    concurrency: int,
    protocol: str = "grpc",
    batch_size: int = 1,
    window_s: float = 2.0,
    max_s: float = 20.0,
    input_name: str = "input",
    output_name: str = "logits",
    seed: int = 0,
    repeats: Stream | None = None,
    pixels: bool = False,
) -> Measurement:
    """Closed-loop throughput (requests/s) and latency of a served model at `concurrency`,
    over gRPC (grpc.aio) or HTTP (aiohttp): the same input every time, or the stream of
    `repeats`. The input is noise: standard normal, or with `pixels` (for a model that takes
    pixels) random integer levels 0..255, as an image's are."""
    rng = np.random.default_rng(seed)
    shape = (batch_size, *input_shape)
    batch = (rng.integers(0, 256, shape) if pixels else rng.standard_normal(shape)).astype(
        np.float32
    )
    opener = {"grpc": _grpc_sender, "http": _http_sender}[protocol]
    payload = repeats.payloads(batch) if repeats is not None else None
    sender = opener(url, model, batch, input_name, output_name, payload)
    return asyncio.run(_measure(sender, concurrency=concurrency, window_s=window_s, max_s=max_s))


def measure_lean_encoded(
    url: str,
    model: str,
    images: list[bytes],
    *,
    concurrency: int,
    window_s: float = 2.0,
    max_s: float = 20.0,
    input_name: str = "IMAGE",
    output_name: str = "logits",
) -> Measurement:
    """`measure_lean` for an image ensemble over gRPC: each request carries the next of the
    encoded `images` in turn, one per request, as BYTES."""
    framed = [len(image).to_bytes(4, "little") + image for image in images]
    turn = itertools.cycle(framed)
    shape = np.zeros((1, 1), dtype=np.uint8)  # the request's shape; the bytes are the payload
    sender = _grpc_sender(
        url, model, shape, input_name, output_name, lambda: next(turn), datatype="BYTES"
    )
    return asyncio.run(_measure(sender, concurrency=concurrency, window_s=window_s, max_s=max_s))


def measure_raw(
    onnx_path: str,
    input_shape: tuple[int, ...],
    batch_size: int,
    *,
    window_s: float = 2.0,
    max_s: float = 20.0,
    seed: int = 0,
) -> Measurement:
    """In-process onnxruntime at one batch size: throughput counts batches per second."""
    import onnxruntime as ort

    session = ort.InferenceSession(onnx_path, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    batch = (
        np.random.default_rng(seed).standard_normal((batch_size, *input_shape)).astype(np.float32)
    )
    began = time.perf_counter()
    session.run(None, {name: batch})  # first run: allocations, not measured
    # A window must hold many runs, or one run more or less moves its throughput by a lot.
    window_s = max(window_s, 10 * (time.perf_counter() - began))
    meter = Meter(window_s=window_s, max_s=max(max_s, 5 * window_s))
    while not meter.done():
        began = time.perf_counter()
        session.run(None, {name: batch})
        meter.add((time.perf_counter() - began) * 1000)
    return meter.result()


def raw_cpu_ms_per_sample(
    onnx_path: str, input_shape: tuple[int, ...], batch_size: int, *, seconds: float = 2.0
) -> float:
    """CPU milliseconds (every thread of this process) that in-process onnxruntime spends
    per sample at one batch size: the least a served request of that model can cost."""
    import onnxruntime as ort

    session = ort.InferenceSession(onnx_path, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    batch = np.random.default_rng(0).standard_normal((batch_size, *input_shape)).astype(np.float32)
    session.run(None, {name: batch})  # first run: allocations, not measured
    runs, began, cpu = 0, time.perf_counter(), time.process_time()
    while runs < 3 or time.perf_counter() - began < seconds:
        session.run(None, {name: batch})
        runs += 1
    return (time.process_time() - cpu) * 1000 / (runs * batch_size)
