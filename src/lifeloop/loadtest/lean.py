"""The lean client: asyncio gRPC with `concurrency` requests always in flight and no
per-request work beyond sending and timing. The reference that Locust's throughput
is compared with, and the load generator of `bench` and `tune`."""

from __future__ import annotations

import asyncio
import time

import numpy as np

from lifeloop.client._transport import split_url
from lifeloop.loadtest.stats import Measurement, Meter


async def _measure(
    url: str,
    model: str,
    batch: np.ndarray,
    *,
    concurrency: int,
    window_s: float,
    max_s: float,
    input_name: str,
    output_name: str,
) -> Measurement:
    """`concurrency` coroutines, each sending the same pre-built request as soon as its last
    answer arrives. The request is serialised once, through the gRPC stubs tritonclient ships,
    so the client's cost per request is only gRPC's own."""
    import grpc
    from tritonclient.grpc import service_pb2, service_pb2_grpc

    address, _ = split_url(url, "grpc")
    limit = [("grpc.max_send_message_length", -1), ("grpc.max_receive_message_length", -1)]
    channel = grpc.aio.insecure_channel(address, options=limit)
    stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
    tensor = service_pb2.ModelInferRequest().InferInputTensor(
        name=input_name, datatype="FP32", shape=list(batch.shape)
    )
    request = service_pb2.ModelInferRequest(
        model_name=model,
        inputs=[tensor],
        outputs=[service_pb2.ModelInferRequest().InferRequestedOutputTensor(name=output_name)],
        raw_input_contents=[np.ascontiguousarray(batch).tobytes()],
    )
    # The warm-up lets the server see every batch size the batcher forms (onnxruntime plans
    # memory per shape on first use) before anything is measured.
    meter = Meter(window_s=window_s, max_s=max_s, warmup_s=max(window_s, 5.0))
    stop = asyncio.Event()

    async def worker() -> None:
        while not stop.is_set():
            began = time.perf_counter()
            try:
                await stub.ModelInfer(request)
            except grpc.aio.AioRpcError as exc:
                meter.add(
                    (time.perf_counter() - began) * 1000, ok=False, error=str(exc.details())[:120]
                )
            else:
                meter.add((time.perf_counter() - began) * 1000)

    workers = [asyncio.create_task(worker()) for _ in range(concurrency)]
    try:
        while not meter.done():
            await asyncio.sleep(min(0.25, window_s / 4))
    finally:
        stop.set()
        await asyncio.gather(*workers, return_exceptions=True)
        await channel.close()
    return meter.result()


def measure_lean(
    url: str,
    model: str,
    input_shape: tuple[int, ...],
    *,
    concurrency: int,
    batch_size: int = 1,
    window_s: float = 2.0,
    max_s: float = 20.0,
    input_name: str = "input",
    output_name: str = "logits",
    seed: int = 0,
) -> Measurement:
    """Closed-loop throughput (requests/s) and latency of a served model at `concurrency`."""
    batch = (
        np.random.default_rng(seed).standard_normal((batch_size, *input_shape)).astype(np.float32)
    )
    return asyncio.run(
        _measure(
            url,
            model,
            batch,
            concurrency=concurrency,
            window_s=window_s,
            max_s=max_s,
            input_name=input_name,
            output_name=output_name,
        )
    )


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
