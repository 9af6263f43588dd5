"""Several tritonservers that share one model repository (a ReadWriteMany volume, say), in
EXPLICIT mode: after a change on disk, every replica is asked to load it, in parallel, and
each is waited on until it serves the new state. A replica that fails or lags is named,
with what it said; the others keep what they loaded."""

from __future__ import annotations

import socket
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from lifeloop.client import ServerControl
from lifeloop.errors import ClientError, ReplicaError

if TYPE_CHECKING:
    from lifeloop.repository import PublishedVersion

ServerUrls = str | Sequence[str] | None


# `dns+http://triton-headless:8000` stands for every address the name resolves to: a
# Kubernetes headless Service lists one per ready pod, so a publish reaches the replicas the
# autoscaler runs now, not a list written down before it scaled.
DNS_PREFIX = "dns+"


def server_urls(spec: ServerUrls) -> list[str]:
    """ "URL,URL" or a list of URLs -> the URLs, in order, each once; a `dns+` URL becomes
    one URL per address its host resolves to."""
    if spec is None:
        return []
    parts = spec.split(",") if isinstance(spec, str) else list(spec)
    urls = [u for p in parts if p and p.strip() for u in _expand(p.strip())]
    return list(dict.fromkeys(urls))


def _expand(url: str) -> list[str]:
    if not url.startswith(DNS_PREFIX):
        return [url]
    target = urlsplit(url.removeprefix(DNS_PREFIX))
    if target.scheme not in ("http", "grpc") or not target.hostname:
        raise ClientError(f"{url!r} is not dns+http://HOST:PORT or dns+grpc://HOST:PORT", url=url)
    port = target.port or (8001 if target.scheme == "grpc" else 8000)
    try:
        found = socket.getaddrinfo(target.hostname, port, proto=socket.IPPROTO_TCP)
    except OSError as exc:
        raise ClientError(
            f"cannot resolve {target.hostname!r} in {url!r} ({exc}); name the headless Service "
            "of the tritonserver pods, or list the servers",
            url=url,
        ) from exc
    hosts = sorted({str(address[4][0]) for address in found})
    return [f"{target.scheme}://{f'[{h}]' if ':' in h else h}:{port}" for h in hosts]


@dataclass(frozen=True)
class ReplicaResult:
    url: str
    ok: bool
    detail: str  # what it serves now, or why it does not


def load_everywhere(
    spec: ServerUrls,
    models: Sequence[str],
    *,
    ready: dict[str, set[int]] | None = None,
    what: str = "load the change",
    timeout_s: float = 120.0,
) -> list[ReplicaResult]:
    """Ask each server to load `models`, in order, then wait until the versions in `ready`
    are READY there. Raises ReplicaError naming the servers that did not get there."""
    urls = server_urls(spec)
    if not urls:
        return []

    def one(url: str) -> ReplicaResult:
        try:
            with ServerControl(url, timeout_s=timeout_s) as server:
                for model in models:
                    server.load_model(model)
                states = _wait_ready(server, ready or {}, timeout_s)
            return ReplicaResult(url, True, states)
        except Exception as exc:
            text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            return ReplicaResult(url, False, text[:200])

    with ThreadPoolExecutor(max_workers=min(16, len(urls))) as pool:
        results = list(pool.map(one, urls))
    if not all(r.ok for r in results):
        raise ReplicaError(results, what)
    return results


def _wait_ready(server: ServerControl, ready: dict[str, set[int]], timeout_s: float) -> str:
    deadline = time.monotonic() + timeout_s
    while True:
        states = {model: server.version_states(model) for model in ready}
        missing = {
            model: sorted(v for v in versions if states[model].get(v) != "READY")
            for model, versions in ready.items()
        }
        if not any(missing.values()):
            return (
                ", ".join(
                    f"{model} v{','.join(map(str, sorted(versions)))} READY"
                    for model, versions in ready.items()
                )
                or "loaded"
            )
        if time.monotonic() > deadline:
            late = "; ".join(
                f"{model} v{v}: {states[model].get(v, 'not in its index')}"
                for model, versions in missing.items()
                for v in versions
            )
            raise ClientError(f"not READY within {timeout_s:g}s ({late})")
        time.sleep(0.2)


def load_published(spec: ServerUrls, published: PublishedVersion) -> list[ReplicaResult]:
    """Ask every server of `spec` to load a version `lifeloop.repository.publish` wrote, and
    wait until each serves the versions its policy loads. Fronting models reload too: Triton
    reads a label file when it loads a model. No servers: nothing to do (POLL mode)."""
    return load_everywhere(
        spec,
        list(published.reload),
        ready={published.model: set(published.serving)},
        what=f"serve {published.model} v{published.version}",
    )


def version_states(url: str, model: str) -> dict[int, str]:
    """What one server reports for each version of `model`; {} when it cannot be asked."""
    try:
        with ServerControl(url) as server:
            return server.version_states(model)
    except ClientError:
        return {}
