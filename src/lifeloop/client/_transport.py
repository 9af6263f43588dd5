"""One seam over tritonclient's HTTP and gRPC clients, so the rest of lifeloop is written once.

Triton answers the two protocols with different types (dicts over HTTP, protobufs over gRPC);
this module turns both into plain dicts and ints, and every failure into a one-line ClientError
that names the URL and the model."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from lifeloop.contract import API_KEY_ENV, API_KEY_HEADER
from lifeloop.errors import ClientError

Protocol = Literal["grpc", "http"]

# A server started with model control restricted (`--http-restricted-api` and
# `--grpc-restricted-protocol` on `model-repository`, as docker-compose and Kubernetes run it)
# answers loads, unloads and the repository index only to requests carrying this header with
# the key; lifeloop sends it, from this variable, whenever it is set.
# Over gRPC, Triton (2.51, NGC 24.10) reads a restricted protocol's header under this prefix.
GRPC_RESTRICTED_PREFIX = "triton-grpc-protocol-"


def model_control_headers(protocol: Protocol) -> dict[str, str] | None:
    key = os.environ.get(API_KEY_ENV, "")
    if not key:
        return None
    prefix = GRPC_RESTRICTED_PREFIX if protocol == "grpc" else ""
    return {prefix + API_KEY_HEADER: key}


def split_url(url: str, protocol: str | None = None) -> tuple[str, Protocol]:
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


class Transport:
    """A synchronous tritonclient for one server over one protocol."""

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

    def is_ready(self) -> bool:
        try:
            return bool(self.client.is_server_ready())
        except Exception:
            return False

    def is_live(self) -> bool:
        try:
            return bool(self.client.is_server_live())
        except Exception:
            return False

    def is_model_ready(self, model: str, version: str = "") -> bool:
        try:
            return bool(self.client.is_model_ready(model, version))
        except Exception:
            return False

    def model_config(self, model: str) -> dict[str, Any]:
        kwargs = {"as_json": True} if self.protocol == "grpc" else {}
        response = self._call(f"config of {model!r}", self.client.get_model_config, model, **kwargs)
        return config_payload(response, self.protocol)

    def repository_index(self) -> list[dict[str, Any]]:
        if self.protocol == "grpc":
            data = self._call(
                "repository index",
                self.client.get_model_repository_index,
                headers=model_control_headers(self.protocol),
                as_json=True,
            )
            return list(data.get("models", []))
        index = self._call(
            "repository index",
            self.client.get_model_repository_index,
            headers=model_control_headers(self.protocol),
        )
        return list(index)

    def statistics(self, model: str = "") -> list[dict[str, Any]]:
        kwargs = {"as_json": True} if self.protocol == "grpc" else {}
        data = self._call(
            f"statistics of {model!r}", self.client.get_inference_statistics, model, **kwargs
        )
        return list(data.get("model_stats", []))

    def load_model(self, model: str) -> None:
        self._call(
            f"load of {model!r}",
            self.client.load_model,
            model,
            headers=model_control_headers(self.protocol),
        )

    def unload_model(self, model: str) -> None:
        self._call(
            f"unload of {model!r}",
            self.client.unload_model,
            model,
            headers=model_control_headers(self.protocol),
        )

    def prepare(
        self, model: str, inputs: dict[str, tuple[np.ndarray, str]], outputs: list[str]
    ) -> Prepared:
        """Encode a request's tensors once, so that it can be sent many times."""
        tensors = []
        for name, (array, dtype) in inputs.items():
            tensor = self.triton.InferInput(name, list(array.shape), dtype)
            tensor.set_data_from_numpy(array)
            tensors.append(tensor)
        wanted = [self.triton.InferRequestedOutput(n) for n in outputs]
        return Prepared(model, tensors, wanted, list(outputs))

    def send(
        self, prepared: Prepared, *, version: str = "", request_id: str = ""
    ) -> tuple[dict[str, np.ndarray], int]:
        """One request -> (outputs by name, the version that answered)."""
        extra = {"client_timeout": self.timeout_s} if self.protocol == "grpc" else {}
        result = self._call(
            f"inference on {prepared.model!r}",
            self.client.infer,
            prepared.model,
            prepared.inputs,
            model_version=version,
            outputs=prepared.outputs,
            request_id=request_id,
            **extra,
        )
        names = prepared.output_names
        return {n: result.as_numpy(n) for n in names}, answered_version(result, self.protocol)

    def infer(
        self,
        model: str,
        inputs: dict[str, tuple[np.ndarray, str]],
        outputs: list[str],
        *,
        version: str = "",
        request_id: str = "",
    ) -> tuple[dict[str, np.ndarray], int]:
        """One request -> (outputs by name, the version that answered)."""
        prepared = self.prepare(model, inputs, outputs)
        return self.send(prepared, version=version, request_id=request_id)


@dataclass(frozen=True)
class Prepared:
    """A request whose tensors are already encoded for one protocol."""

    model: str
    inputs: list[Any]
    outputs: list[Any]
    output_names: list[str]


def config_payload(response: dict[str, Any], protocol: str) -> dict[str, Any]:
    """get_model_config's answer -> the config dict (gRPC wraps it in {"config": ...})."""
    return response["config"] if protocol == "grpc" else response


def _closed() -> None:
    """close() of a client that is already closed."""


def answered_version(result: Any, protocol: str) -> int:
    response = result.get_response()
    raw = response.model_version if protocol == "grpc" else response.get("model_version", "0")
    return int(raw or 0)


def _as_client_error(exc: Exception, url: str, what: str) -> ClientError:
    # tritonclient's InferenceServerException carries its text in a message() method.
    method = getattr(exc, "message", None)
    message = method() if callable(method) else None
    text = " ".join(str(message or exc).split())
    refused = isinstance(exc, ConnectionError | OSError) or "failed to connect" in text.lower()
    refused = refused or ("unavailable" in text.lower() and "model" not in text.lower())
    if refused:
        return ClientError(
            f"cannot reach Triton at {url} ({text}); start it with `lifeloop serve` or fix --url"
        )
    if "restricted" in text.lower():
        return ClientError(
            f"{what} refused at {url}: model control is restricted ({text}); set {API_KEY_ENV} "
            "to the server's key"
        )
    return ClientError(f"{what} failed at {url}: {text}")
