"""Start and stop a real tritonserver from a typed config.

with TritonServer(ServerConfig(repository=Path("model_repository"))) as server:
    print(server.http_url, server.grpc_url)
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from types import TracebackType

from lifeloop.contract import API_KEY_HEADER
from lifeloop.errors import LifeloopError, ServerError
from lifeloop.export.formats import TENSORRT
from lifeloop.repository.manifest import Manifest
from lifeloop.serve.runtime import Runtime, check_python, prepare_runtime


class ControlMode(StrEnum):
    EXPLICIT = "explicit"
    POLL = "poll"


@dataclass(frozen=True, kw_only=True)
class ServerConfig:
    repository: Path
    http_port: int = 8000
    grpc_port: int = 8001
    metrics_port: int = 8002
    host: str = "127.0.0.1"
    control_mode: ControlMode = ControlMode.EXPLICIT
    poll_secs: int = 5
    # EXPLICIT mode: models loaded at start ("*" = every model in the repository).
    load_models: tuple[str, ...] = ("*",)
    log_file: Path | None = None
    log_verbose: int = 0
    startup_timeout_s: float = 180.0
    exit_timeout_s: int = 10
    # Per-stub shared memory for the python backend: room for a batch of 224x224 images
    # without growing the region request by request.
    python_shm_bytes: int = 64 << 20
    # When set, loads, unloads and the repository index answer only requests that carry it
    # (header `lifeloop-key`, which lifeloop's clients send from LIFELOOP_API_KEY); inference,
    # health, metadata and statistics stay open.
    api_key: str | None = None
    # The Python whose packages lifeloop's Python models import (a venv's bin/python3);
    # default: the one running lifeloop. The same major.minor as this one.
    python: Path | None = None
    # Triton's local response cache, in MiB (0: off); models opt in with response_cache.
    cache_mb: int = 0
    extra_args: tuple[str, ...] = field(default_factory=tuple)

    def __post_init__(self) -> None:
        object.__setattr__(self, "repository", Path(self.repository))
        object.__setattr__(self, "control_mode", ControlMode(self.control_mode))
        ports = (self.http_port, self.grpc_port, self.metrics_port)
        if len(set(ports)) != 3 or not all(0 < p < 65536 for p in ports):
            raise ServerError(
                "http, grpc and metrics ports must be three different ports in 1..65535, "
                f"got {ports}"
            )
        if self.poll_secs < 1:
            raise ServerError(f"poll_secs must be >= 1, got {self.poll_secs}", setting="poll_secs")
        if self.cache_mb < 0:
            raise ServerError(f"cache_mb must be >= 0 MiB, got {self.cache_mb}", setting="cache_mb")

    @classmethod
    def on_free_ports(cls, repository: Path, **kwargs: object) -> ServerConfig:
        """A config whose three ports are free now (for demos, benches and tests that run
        beside whatever else listens on this machine)."""
        # Each free_port() binds and releases port 0, so the OS may hand the same port out
        # twice; draw until the three differ.
        chosen: list[int] = []
        while len(chosen) < 3:
            port = free_port()
            if port not in chosen:
                chosen.append(port)
        ports = dict(zip(("http_port", "grpc_port", "metrics_port"), chosen, strict=True))
        return cls(repository=repository, **ports, **kwargs)  # type: ignore[arg-type]

    @property
    def log_path(self) -> Path:
        if self.log_file is not None:
            return Path(self.log_file)
        return self.repository.parent / f"tritonserver-{self.http_port}.log"

    def argv(self, runtime: Runtime) -> list[str]:
        args = [
            str(runtime.tritonserver),
            f"--model-repository={self.repository.resolve()}",
            f"--backend-directory={runtime.backends}",
            f"--cache-directory={runtime.caches}",
            f"--http-address={self.host}",
            f"--grpc-address={self.host}",
            f"--metrics-address={self.host}",
            f"--http-port={self.http_port}",
            f"--grpc-port={self.grpc_port}",
            f"--metrics-port={self.metrics_port}",
            # p50..p99 per model as Prometheus summaries, for dashboards and alerts.
            "--metrics-config=summary_latencies=true",
            f"--model-control-mode={self.control_mode.value}",
            f"--exit-timeout-secs={self.exit_timeout_s}",
            f"--log-verbose={self.log_verbose}",
            f"--backend-config=python,shm-default-byte-size={self.python_shm_bytes}",
            f"--backend-config=python,shm-growth-byte-size={self.python_shm_bytes}",
        ]
        if self.api_key:
            restriction = f"model-repository:{API_KEY_HEADER}={self.api_key}"
            args += [
                f"--http-restricted-api={restriction}",
                f"--grpc-restricted-protocol={restriction}",
            ]
        if self.cache_mb:
            args.append(f"--cache-config=local,size={self.cache_mb << 20}")
        if self.control_mode is ControlMode.POLL:
            args.append(f"--repository-poll-secs={self.poll_secs}")
        else:
            args += [f"--load-model={m}" for m in self.load_models]
        return args + list(self.extra_args)


def check_port_free(host: str, port: int, what: str) -> None:
    """Refuse a port something listens on. Like tritonserver's own sockets this one reuses the
    address, so the closing connections a crashed server leaves behind do not count."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            raise ServerError(
                f"{what} port {port} is in use; pick another with --{what}-port or stop the "
                "process that holds it"
            ) from exc


def _die_with_parent() -> None:
    """In the child before exec: ask Linux to SIGTERM tritonserver when the process that
    started it dies, so a killed owner leaves no server holding its ports."""
    import ctypes

    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        pr_set_pdeathsig = 1
        libc.prctl(pr_set_pdeathsig, signal.SIGTERM)


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


class TritonServer:
    """A tritonserver process: started on __enter__ (returns once ready), stopped on __exit__."""

    def __init__(self, config: ServerConfig, *, runtime: Runtime | None = None) -> None:
        self.config = config
        self._runtime = runtime
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def http_url(self) -> str:
        return f"{self.config.host}:{self.config.http_port}"

    @property
    def grpc_url(self) -> str:
        return f"{self.config.host}:{self.config.grpc_port}"

    @property
    def metrics_url(self) -> str:
        return f"http://{self.config.host}:{self.config.metrics_port}/metrics"

    @property
    def log_path(self) -> Path:
        return self.config.log_path

    def __enter__(self) -> TritonServer:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def start(self) -> None:
        config = self.config
        if not config.repository.is_dir():
            hint = "it is a file" if config.repository.exists() else "it does not exist"
            raise ServerError(
                f"model repository {config.repository} is not a folder ({hint}); create it or "
                "publish a model there with `lifeloop export`"
            )
        for port, what in (
            (config.http_port, "http"),
            (config.grpc_port, "grpc"),
            (config.metrics_port, "metrics"),
        ):
            check_port_free(config.host, port, what)
        check_plans(config.repository)
        runtime = self._runtime or prepare_runtime()
        if config.python is not None:
            check_python(config.python)
        config.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(config.log_path, "wb") as log:
            self.process = subprocess.Popen(
                config.argv(runtime),
                stdout=log,
                stderr=subprocess.STDOUT,
                env=runtime.env(python=config.python),
                start_new_session=True,  # its stubs share its group, which stop() sweeps
                preexec_fn=_die_with_parent,
            )
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise

    def _wait_ready(self) -> None:
        assert self.process is not None
        deadline = time.monotonic() + self.config.startup_timeout_s
        url = f"http://{self.http_url}/v2/health/ready"
        while time.monotonic() < deadline:
            code = self.process.poll()
            if code is not None:
                raise ServerError(
                    f"tritonserver exited during start-up with code {code}; see {self.log_path}. "
                    f"Last log lines:\n{self.log_tail()}"
                )
            with (
                contextlib.suppress(urllib.error.URLError, OSError),
                urllib.request.urlopen(url, timeout=2) as response,
            ):
                if response.status == 200:
                    return
            time.sleep(0.2)
        raise ServerError(
            f"tritonserver was not ready within {self.config.startup_timeout_s:g}s; see "
            f"{self.log_path}. Last log lines:\n{self.log_tail()}"
        )

    def is_running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def exit_code(self) -> int | None:
        """How a server this object started ended by itself (neither stop() nor kill() ended
        it): its exit code, negative for the signal that killed it. None while it runs."""
        return None if self.process is None else self.process.poll()

    def log_tail(self, lines: int = 12) -> str:
        """The log's error lines (Triton prefixes them with E) and its last lines: the part
        of a failed start-up that says why."""
        try:
            with open(self.log_path, errors="replace") as handle:
                text = handle.read().splitlines()
        except OSError:
            return "(no log)"
        errors = [line for line in text if line.startswith("E") and line[1:5].isdigit()]
        tail = [line for line in text[-lines:] if not line.startswith(("|", "+"))]
        picked = list(dict.fromkeys(errors[-lines:] + tail))
        return "\n".join(picked).rstrip() or "(empty log)"

    def stop(self, timeout_s: float | None = None) -> int | None:
        """SIGTERM (Triton drains in-flight requests and unloads), then SIGKILL if it hangs."""
        process, self.process = self.process, None
        if process is None:
            return None
        timeout_s = timeout_s if timeout_s is not None else self.config.exit_timeout_s + 20
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(process.pid, signal.SIGKILL)  # any stub left behind
        return process.returncode

    def kill(self) -> None:
        """SIGKILL, as a crash would: no draining, no unloading."""
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()
        self.process = None


def check_plans(repository: Path) -> None:
    """Refuse, before starting, a repository holding a TensorRT plan this machine cannot run:
    none can run without a GPU and tensorrt, and a plan runs only on the GPU model and
    TensorRT version it was built with (its manifest says which)."""
    manifests = []
    for path in sorted(Path(repository).glob("*/[0-9]*/manifest.json")):
        try:
            manifest = Manifest.from_json(path.read_text(), source=str(path))
        except LifeloopError:
            continue  # the version's own load reports it
        if manifest.format in TENSORRT:
            manifests.append(manifest)
    if not manifests:
        return
    from lifeloop.export.tensorrt import check_plan, this_target

    try:
        here = this_target()
    except LifeloopError as exc:
        first = manifests[0]
        raise ServerError(
            f"{first.model} v{first.version} in {repository} is a TensorRT plan and this machine "
            f"cannot run one ({exc}); serve it on the GPU it was built for, or move the model "
            "out of this repository"
        ) from exc
    for manifest in manifests:
        try:
            check_plan(manifest, here)
        except LifeloopError as exc:
            raise ServerError(str(exc)) from exc
