"""The seam between lifeloop's clients and a server: the request a client sends, the result it
gets back, and the few methods a transport has. TritonTransport and AsyncTritonTransport are the
real ones; a test hands a client a fake with the same methods (HTTPX's MockTransport, for Triton):

    client = LifeloopClient("localhost:8001", transport=FakeTransport())

A transport raises ClientError, naming the URL and the model, for anything but a readiness
probe; the clients add no I/O of their own."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal, Protocol

import numpy as np

from lifeloop.errors import ClientError

Scheme = Literal["grpc", "http"]


@dataclass(frozen=True, kw_only=True)
class InferRequest:
    """One inference call: each input's tensor and Triton data type ("FP32", "BYTES"), by
    input name, and the outputs wanted, in the order the client reads them."""

    model: str
    inputs: dict[str, tuple[np.ndarray, str]]
    outputs: tuple[str, ...]


@dataclass(frozen=True)
class InferResult:
    """A server's answer: the wanted outputs by name, and the version of the model asked that
    answered (for a router, the router's own; its outputs say which classifier answered)."""

    outputs: dict[str, np.ndarray]
    version: int


class Transport(Protocol):
    """What LifeloopClient needs from a server."""

    def is_ready(self, model: str | None = None) -> bool:
        """Whether `model`, or without one the whole server, is ready; never raises."""
        ...

    def is_live(self) -> bool:
        """Whether the server answers at all, ready or not; never raises."""
        ...

    def model_config(self, model: str) -> dict[str, Any]:
        """The config `model` is served with, as Triton's JSON API writes it."""
        ...

    def prepare(self, request: InferRequest) -> Any:
        """`request` encoded for the wire once, for `send` to repeat; a fake may return it."""
        ...

    def send(self, prepared: Any, *, version: int | None = None) -> InferResult:
        """Send what `prepare` returned, to `version` of its model (None: the server's pick)."""
        ...

    def close(self) -> None: ...


class AsyncTransport(Protocol):
    """What AsyncLifeloopClient needs from a server: Transport's calls, awaited (prepare only
    encodes, so it is not)."""

    async def is_ready(self, model: str | None = None) -> bool: ...

    async def model_config(self, model: str) -> dict[str, Any]: ...

    def prepare(self, request: InferRequest) -> Any: ...

    async def send(self, prepared: Any, *, version: int | None = None) -> InferResult: ...

    async def close(self) -> None: ...


def split_url(url: str, protocol: str | None = None) -> tuple[str, Scheme]:
    """ "grpc://host:8001" or "host:8000" (+ protocol) -> ("host:port", protocol)."""
    scheme, sep, rest = url.partition("://")
    if sep:
        if scheme not in ("http", "grpc"):
            raise ClientError(f"URL {url!r} has scheme {scheme!r}; use http:// or grpc://")
        url, protocol = rest, protocol or scheme
    protocol = protocol or "grpc"
    if protocol not in ("http", "grpc"):
        raise ClientError(f"protocol {protocol!r} is not http or grpc")
    if ":" not in url:
        url = f"{url}:{8001 if protocol == 'grpc' else 8000}"
    return url.rstrip("/"), protocol  # type: ignore[return-value]
