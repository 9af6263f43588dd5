"""`lifeloop soak`: reload under load, and watch memory. N cycles of candidate -> promote ->
rollback, each a real load of the classifier's versions and the models fronting it on every
server, while client threads classify through the router. Triton users report memory that
grows across load/unload cycles (server#4528); this is the check for it.

The report counts requests and failures by cause, compares p99 latency during reloads with
p99 between them, and, for servers on this machine, the resident memory of tritonserver and
its python backend stubs after the warm-up cycle and at the end."""

from __future__ import annotations

import ipaddress
import re
import socket
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np

from lifeloop.errors import SoakError


@dataclass(frozen=True, kw_only=True)
class SoakConfig:
    url: str  # traffic: the router's server, grpc:// or http://
    repository: Path
    model: str  # the classifier the router fronts
    cycles: int
    users: int = 4
    router: str = "router"
    store: str | None = None
    servers: str | None = None  # HTTP URL(s) that load each change; default: url's server
    version: int | None = None  # cycled in as candidate; default: newest but the champion
    max_rss_growth_pct: float = 10.0
    images_per_request: int = 1

    def __post_init__(self) -> None:
        if self.cycles < 1:
            raise SoakError(f"cycles must be >= 1, got {self.cycles}", setting="cycles")
        if self.users < 1:
            raise SoakError(f"users must be >= 1, got {self.users}", setting="users")
        if self.max_rss_growth_pct <= 0:
            raise SoakError(
                f"max_rss_growth_pct must be > 0, got {self.max_rss_growth_pct}",
                setting="max_rss_growth_pct",
            )


@dataclass(frozen=True)
class Request:
    at: float
    latency_s: float
    error: str | None = None


@dataclass(frozen=True)
class Memory:
    """Resident memory of one server: tritonserver and its stubs, in bytes."""

    server: int
    stubs: int
    stub_count: int

    @property
    def total(self) -> int:
        return self.server + self.stubs


@dataclass
class SoakResult:
    cycles: int
    requests: int
    failures: Counter[str]
    p99_reload_ms: float | None
    p99_between_ms: float | None
    reload_s: float  # time spent inside changes
    memory_after_warmup: Memory | None
    memory_at_end: Memory | None
    max_rss_growth_pct: float
    notes: list[str] = field(default_factory=list)

    @property
    def rss_growth_pct(self) -> float | None:
        if self.memory_after_warmup is None or self.memory_at_end is None:
            return None
        start = self.memory_after_warmup.total
        return (self.memory_at_end.total - start) / start * 100 if start else None

    @property
    def failed(self) -> list[str]:
        """Why the soak fails, empty when it passes."""
        why = []
        if self.failures:
            why.append(f"{sum(self.failures.values())} of {self.requests} requests failed")
        growth = self.rss_growth_pct
        if growth is not None and growth > self.max_rss_growth_pct:
            why.append(f"resident memory grew {growth:.1f}% (limit {self.max_rss_growth_pct:g}%)")
        return why


def summarize(
    requests: list[Request],
    reloads: list[tuple[float, float]],
    *,
    cycles: int,
    memory: tuple[Memory | None, Memory | None],
    max_rss_growth_pct: float,
) -> SoakResult:
    """The report from what happened: each request, and the spans the changes took."""

    def reloading(r: Request) -> bool:
        # A request that overlaps a change in any part of its flight saw the reload.
        return any(r.at < end and r.at + r.latency_s > start for start, end in reloads)

    ok = [r for r in requests if r.error is None]
    during = [r.latency_s for r in ok if reloading(r)]
    between = [r.latency_s for r in ok if not reloading(r)]
    return SoakResult(
        cycles=cycles,
        requests=len(requests),
        failures=Counter(_cause(r.error) for r in requests if r.error is not None),
        p99_reload_ms=_p99_ms(during),
        p99_between_ms=_p99_ms(between),
        reload_s=sum(end - start for start, end in reloads),
        memory_after_warmup=memory[0],
        memory_at_end=memory[1],
        max_rss_growth_pct=max_rss_growth_pct,
    )


def run_soak(config: SoakConfig, *, progress: Callable[[int], None] | None = None) -> SoakResult:
    from lifeloop.client import ClientError, LifeloopClient
    from lifeloop.repository.publish import version_numbers
    from lifeloop.rollout import Rollout, read_policy
    from lifeloop.store import Store

    repository = Path(config.repository)
    policy = read_policy(repository / config.router)
    if policy.model != config.model:
        raise SoakError(
            f"router {config.router!r} fronts {policy.model!r}, not {config.model!r}; pass "
            f"--model {policy.model} or the router of {config.model!r}"
        )
    if policy.candidate is not None:
        raise SoakError(
            f"{config.model!r} has candidate v{policy.candidate} in rollout; finish it "
            "(promote or withdraw) before a soak, which cycles its own"
        )
    others = [v for v in version_numbers(repository / config.model) if v != policy.champion]
    version = config.version or (max(others) if others else None)
    if version is None or version == policy.champion:
        raise SoakError(
            f"{config.model!r} needs a second version to cycle with champion "
            f"v{policy.champion}; publish one with `lifeloop export`"
        )
    servers = config.servers or _http_url(config.url)
    requests: list[Request] = []
    reloads: list[tuple[float, float]] = []
    stop = threading.Event()
    with Store.for_repository(repository, config.store) as store:
        rollout = Rollout(repository, store, router=config.router, server_url=servers)
        with LifeloopClient(config.url, model=config.router) as probe:
            probe.wait_until_ready(120, model=config.router)
            shape = probe.model_info().input_dims

        def traffic() -> None:
            rng = np.random.default_rng()
            with LifeloopClient(config.url, model=config.router, timeout_s=60) as client:
                while not stop.is_set():
                    batch = rng.random((config.images_per_request, *shape), dtype=np.float32)
                    started = time.monotonic()
                    try:
                        client.classify(batch)
                        requests.append(Request(started, time.monotonic() - started))
                    except ClientError as exc:
                        requests.append(Request(started, time.monotonic() - started, str(exc)))

        threads = [threading.Thread(target=traffic, daemon=True) for _ in range(config.users)]
        for thread in threads:
            thread.start()
        warm: Memory | None = None
        try:
            for cycle in range(config.cycles):
                for change in (
                    lambda: rollout.start_candidate(version, reason="soak"),
                    lambda: rollout.promote(reason="soak"),
                    lambda: rollout.rollback(reason="soak"),
                ):
                    started = time.monotonic()
                    change()
                    reloads.append((started, time.monotonic()))
                if cycle == 0:
                    warm = server_memory(config.url)
                if progress is not None:
                    progress(cycle + 1)
            time.sleep(1.0)  # the last reload's requests land
        finally:
            stop.set()
            for thread in threads:
                thread.join(timeout=90)
        end = server_memory(config.url)
    result = summarize(
        requests,
        reloads,
        cycles=config.cycles,
        memory=(warm, end),
        max_rss_growth_pct=config.max_rss_growth_pct,
    )
    if end is None:
        result.notes.append(
            f"no tritonserver serving {config.url} runs on this machine: memory not measured"
        )
    return result


def server_memory(url: str) -> Memory | None:
    """RSS of the tritonserver on this machine that listens on `url`'s port, and of its
    python backend stubs (its descendants); None when it runs elsewhere."""
    import psutil

    parts = urlsplit(url if "://" in url else f"grpc://{url}")
    if parts.port is None or not _is_local(parts.hostname or "localhost"):
        return None
    flags = (f"--grpc-port={parts.port}", f"--http-port={parts.port}")
    for proc in psutil.process_iter(["name", "cmdline"]):
        cmdline = proc.info.get("cmdline") or []
        if proc.info.get("name") != "tritonserver" or not any(a in flags for a in cmdline):
            continue
        try:
            stubs = [c for c in proc.children(recursive=True) if "stub" in c.name()]
            return Memory(
                server=proc.memory_info().rss,
                stubs=sum(s.memory_info().rss for s in stubs),
                stub_count=len(stubs),
            )
        except psutil.Error:
            return None
    return None


def _is_local(host: str) -> bool:
    try:
        addresses = {a[4][0] for a in socket.getaddrinfo(host, None)}
    except OSError:
        return False
    return all(ipaddress.ip_address(str(a).split("%")[0]).is_loopback for a in addresses)


def _http_url(url: str) -> str:
    parts = urlsplit(url if "://" in url else f"grpc://{url}")
    if parts.scheme == "http":
        return url
    raise SoakError(
        f"{url} is a gRPC URL; pass --servers http://HOST:PORT so each change is loaded there"
    )


def _p99_ms(latencies: list[float]) -> float | None:
    return float(np.percentile(latencies, 99) * 1000) if latencies else None


def _cause(error: str) -> str:
    """Errors by cause: the message without request-specific numbers and ids."""
    text = re.sub(r"\b[0-9a-f]{32}\b", "<id>", error.splitlines()[0])
    text = re.sub(r"\d+(\.\d+)?", "N", text)
    return text[:160]
