"""Typed clients for lifeloop's served classifiers, over tritonclient HTTP or gRPC."""

from lifeloop.client._async import AsyncLifeloopClient
from lifeloop.client._codec import Classification, ModelInfo
from lifeloop.client._sync import LifeloopClient, ServerControl
from lifeloop.contract import API_KEY_ENV, API_KEY_HEADER
from lifeloop.errors import ClientError

__all__ = [
    "API_KEY_ENV",
    "API_KEY_HEADER",
    "AsyncLifeloopClient",
    "Classification",
    "ClientError",
    "LifeloopClient",
    "ModelInfo",
    "ServerControl",
]
