"""Typed clients for lifeloop's served classifiers, over tritonclient HTTP or gRPC.

A client's I/O goes through its transport (TritonTransport, or AsyncTritonTransport for
AsyncLifeloopClient); pass `transport=` a fake with Transport's methods to run a client with
no server."""

from lifeloop.client._async import AsyncLifeloopClient
from lifeloop.client._codec import Classification, ModelInfo, to_samples
from lifeloop.client._sync import LifeloopClient, Prepared, ServerControl
from lifeloop.client._transport import (
    AsyncTransport,
    InferRequest,
    InferResult,
    Transport,
    split_url,
)
from lifeloop.client._triton import AsyncTritonTransport, TritonTransport
from lifeloop.contract import API_KEY_ENV, API_KEY_HEADER
from lifeloop.errors import ClientError

__all__ = [
    "API_KEY_ENV",
    "API_KEY_HEADER",
    "AsyncLifeloopClient",
    "AsyncTransport",
    "AsyncTritonTransport",
    "Classification",
    "ClientError",
    "InferRequest",
    "InferResult",
    "LifeloopClient",
    "ModelInfo",
    "Prepared",
    "ServerControl",
    "Transport",
    "TritonTransport",
    "split_url",
    "to_samples",
]
