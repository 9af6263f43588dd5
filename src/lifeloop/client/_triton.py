"""lifeloop's transports over tritonclient's HTTP and gRPC clients, synchronous and asyncio.

Triton answers the two protocols with different types (dicts over HTTP, protobufs over gRPC);
these turn both into plain dicts and ints, and every failure into a one-line ClientError that
names the URL and the model."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from lifeloop.client._transport import InferRequest, InferResult, Scheme, split_url
from lifeloop.contract import API_KEY_ENV, API_KEY_HEADER
from lifeloop.errors import ClientError

# A server started with model control restricted (`--http-restricted-api` and
# `--grpc-restricted-protocol` on `model-repository`, as docker-compose and Kubernetes run it)
# answers loads, unloads and the repository index only to requests carrying this header with
# the key; lifeloop sends it, from this variable, whenever it is set.
# Over gRPC, Triton (2.51, NGC 24.10) reads a restricted protocol's header under this prefix.
GRPC_RESTRICTED_PREFIX = "triton-grpc-protocol-"


def model_control_headers(protocol: Scheme) -> dict[str, str] | None:
    key = os.environ.get(API_KEY_ENV, "")
    if not key:
        return None
    prefix = GRPC_RESTRICTED_PREFIX if protocol == "grpc" else ""
    return {prefix + API_KEY_HEADER: key}


class TritonTransport:
    """LifeloopClient's Transport: a synchronous tritonclient for one server over one
    protocol, with the model-control calls ServerControl makes besides."""

    def __init__(self, url: str, protocol: str | None = None, *, timeout_s: float = 60.0) -> None:
        self.url, self.protocol = split_url(url, protocol)
        self.timeout_s = timeout_s
        if self.protocol == "grpc":
            import tritonclient.grpc as triton

            self.triton: Any = triton
            self.client: Any = triton.InferenceServerClient(self.url)
        else:
            import tritonclient.http as triton

            self.triton = triton
            self.client = triton.InferenceServerClient(
                self.url, connection_timeout=timeout_s, network_timeout=timeout_s
            )

    def close(self) -> None:
        self.client.close()
        # tritonclient's __del__ closes the client a second time. Under gevent, a grpc
        # channel closed twice blocks forever in a futex, so a headless Locust run that had
        # already closed its clients in on_stop never exited. One close is enough.
        self.client.close = _closed

    def _call(self, what: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except Exception as exc:
            raise _as_client_error(exc, self.url, what) from exc

    def is_ready(self, model: str | None = None) -> bool:
        try:
            return bool(
                self.client.is_model_ready(model) if model else self.client.is_server_ready()
            )
        except Exception:
            return False

    def is_live(self) -> bool:
        try:
            return bool(self.client.is_server_live())
        except Exception:
            return False

    def model_config(self, model: str) -> dict[str, Any]:
        get = self.client.get_model_config
        response = self._call(f"config of {model!r}", get, model, **_as_json(self.protocol))
        return config_payload(response, self.protocol)

    def repository_index(self) -> list[dict[str, Any]]:
        get = self.client.get_model_repository_index
        data = self._control("repository index", get, **_as_json(self.protocol))
        return list(data.get("models", [])) if self.protocol == "grpc" else list(data)

    def statistics(self, model: str = "") -> list[dict[str, Any]]:
        get = self.client.get_inference_statistics
        data = self._call(f"statistics of {model!r}", get, model, **_as_json(self.protocol))
        return list(data.get("model_stats", []))

    def load_model(self, model: str) -> None:
        self._control(f"load of {model!r}", self.client.load_model, model)

    def unload_model(self, model: str) -> None:
        self._control(f"unload of {model!r}", self.client.unload_model, model)

    def _control(self, what: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
        """A model-control call, with the restricted API's key when one is set."""
        headers = model_control_headers(self.protocol)
        return self._call(what, fn, *args, headers=headers, **kwargs)

    def prepare(self, request: InferRequest) -> Encoded:
        return encode(self.triton, request)

    def send(self, prepared: Encoded, *, version: int | None = None) -> InferResult:
        extra = {"client_timeout": self.timeout_s} if self.protocol == "grpc" else {}
        what = f"inference on {prepared.model!r}"
        result = self._call(what, self.client.infer, **prepared.arguments(version), **extra)
        return decode_result(result, prepared, self.protocol)


class AsyncTritonTransport:
    """AsyncLifeloopClient's AsyncTransport: tritonclient's asyncio client for one server over
    one protocol."""

    def __init__(self, url: str, protocol: str | None = None) -> None:
        self.url, self.protocol = split_url(url, protocol)
        if self.protocol == "grpc":
            import tritonclient.grpc.aio as triton
        else:
            import tritonclient.http.aio as triton  # type: ignore[no-redef]
        self.triton: Any = triton
        self.client: Any = triton.InferenceServerClient(self.url)

    async def close(self) -> None:
        await self.client.close()

    async def _call(self, what: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return await fn(*args, **kwargs)
        except Exception as exc:
            raise _as_client_error(exc, self.url, what) from exc

    async def is_ready(self, model: str | None = None) -> bool:
        try:
            ready = self.client.is_model_ready(model) if model else self.client.is_server_ready()
            return bool(await ready)
        except Exception:
            return False

    async def model_config(self, model: str) -> dict[str, Any]:
        get = self.client.get_model_config
        response = await self._call(f"config of {model!r}", get, model, **_as_json(self.protocol))
        return config_payload(response, self.protocol)

    def prepare(self, request: InferRequest) -> Encoded:
        return encode(self.triton, request)

    async def send(self, prepared: Encoded, *, version: int | None = None) -> InferResult:
        what = f"inference on {prepared.model!r}"
        result = await self._call(what, self.client.infer, **prepared.arguments(version))
        return decode_result(result, prepared, self.protocol)


@dataclass(frozen=True)
class Encoded:
    """A request whose tensors are already encoded for one protocol."""

    model: str
    inputs: list[Any]
    outputs: list[Any]
    output_names: tuple[str, ...]

    def arguments(self, version: int | None) -> dict[str, Any]:
        """tritonclient's infer() arguments for `version` (None: the one the server picks)."""
        return {
            "model_name": self.model,
            "inputs": self.inputs,
            "model_version": str(version or ""),
            "outputs": self.outputs,
        }


def encode(triton: Any, request: InferRequest) -> Encoded:
    """`request` as tritonclient's InferInput and InferRequestedOutput objects of `triton`
    (tritonclient.grpc, .http or their aio modules)."""
    tensors = []
    for name, (array, dtype) in request.inputs.items():
        tensor = triton.InferInput(name, list(array.shape), dtype)
        tensor.set_data_from_numpy(array)
        tensors.append(tensor)
    wanted = [triton.InferRequestedOutput(n) for n in request.outputs]
    return Encoded(request.model, tensors, wanted, request.outputs)


def decode_result(result: Any, prepared: Encoded, protocol: Scheme) -> InferResult:
    outputs = {n: result.as_numpy(n) for n in prepared.output_names}
    return InferResult(outputs, answered_version(result, protocol))


def config_payload(response: dict[str, Any], protocol: str) -> dict[str, Any]:
    """get_model_config's answer -> the config dict (gRPC wraps it in {"config": ...})."""
    return response["config"] if protocol == "grpc" else response


def answered_version(result: Any, protocol: str) -> int:
    response = result.get_response()
    raw = response.model_version if protocol == "grpc" else response.get("model_version", "0")
    return int(raw or 0)


def _as_json(protocol: Scheme) -> dict[str, Any]:
    """gRPC answers protobufs unless asked for JSON; HTTP always answers JSON."""
    return {"as_json": True} if protocol == "grpc" else {}


def _closed() -> None:
    """close() of a client that is already closed."""


def _as_client_error(exc: Exception, url: str, what: str) -> ClientError:
    # tritonclient's InferenceServerException carries its text in a message() method.
    method = getattr(exc, "message", None)
    message = method() if callable(method) else None
    text = " ".join(str(message or exc).split())
    refused = isinstance(exc, ConnectionError | OSError) or "failed to connect" in text.lower()
    refused = refused or ("unavailable" in text.lower() and "model" not in text.lower())
    if refused:
        return ClientError(
            f"cannot reach Triton at {url} ({text}); start it with `lifeloop serve` or fix --url",
            url=url,
        )
    if "restricted" in text.lower():
        return ClientError(
            f"{what} refused at {url}: model control is restricted ({text}); set {API_KEY_ENV} "
            "to the server's key",
            url=url,
        )
    return ClientError(f"{what} failed at {url}: {text}", url=url)
