"""Commands that run and query the server: `serve`, `classify`."""

from __future__ import annotations

import contextlib
import signal
from pathlib import Path
from typing import Annotated, Any

import typer

from lifeloop.cli._common import (
    ModelName,
    Repository,
    _errors,
    console,
)

app = typer.Typer()


@app.command()
@_errors
def serve(
    repository: Repository = Path("model_repository"),
    http_port: Annotated[int, typer.Option(help="HTTP/REST port.")] = 8000,
    grpc_port: Annotated[int, typer.Option(help="gRPC port.")] = 8001,
    metrics_port: Annotated[int, typer.Option(help="Prometheus metrics port.")] = 8002,
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    control_mode: Annotated[
        str, typer.Option(help="explicit (load on request) or poll.")
    ] = "explicit",
    poll_secs: Annotated[int, typer.Option(help="Poll interval in poll mode.")] = 5,
    log_file: Annotated[
        Path | None, typer.Option(help="Server log (default beside the repository).")
    ] = None,
    api_key: Annotated[
        str | None,
        typer.Option(
            envvar="LIFELOOP_API_KEY",
            show_envvar=True,
            help="Restrict loads, unloads and the repository index to clients sending this key "
            "(lifeloop sends LIFELOOP_API_KEY).",
        ),
    ] = None,
    cache_mb: Annotated[
        int,
        typer.Option(
            help="Triton's local response cache in MiB (0: off), for the models whose config "
            "enables it (lifeloop export --response-cache)."
        ),
    ] = 0,
    max_restarts: Annotated[
        int,
        typer.Option(
            help="Start tritonserver again when it dies by itself (2.51 can crash when a gRPC "
            "request is cancelled), at most this many times in 10 minutes; 0: never."
        ),
    ] = 5,  # supervisor.DEFAULT_MAX_RESTARTS (this module imports lazily)
) -> None:
    """Run the real tritonserver on a repository until Ctrl-C or SIGTERM, and start it again
    if it crashes."""
    from lifeloop.serve import ControlMode, ServerConfig, ServerError, TritonServer
    from lifeloop.serve.supervisor import RestartBudget, supervise

    if control_mode not in ("explicit", "poll"):
        raise ServerError(f"--control-mode {control_mode!r} is not explicit or poll")
    if max_restarts < 0:
        raise ServerError(f"--max-restarts must be 0 or more, got {max_restarts}")
    config = ServerConfig(
        repository=repository,
        http_port=http_port,
        grpc_port=grpc_port,
        metrics_port=metrics_port,
        host=host,
        control_mode=ControlMode(control_mode),
        poll_secs=poll_secs,
        log_file=log_file,
        api_key=api_key,
        cache_mb=cache_mb,
    )
    stopping = False

    def _stop(signum: int, frame: Any) -> None:
        nonlocal stopping
        stopping = True

    previous = signal.signal(signal.SIGTERM, _stop)
    try:
        with TritonServer(config) as server:
            console.print(
                f"tritonserver ready: http {server.http_url}, grpc {server.grpc_url}, "
                f"metrics {server.metrics_url}; log {server.log_path}. Ctrl-C stops it."
            )
            with contextlib.suppress(KeyboardInterrupt):
                supervise(
                    server,
                    stopping=lambda: stopping,
                    budget=RestartBudget(max_restarts),
                    say=lambda line: console.print(line, markup=False, highlight=False),
                )
            console.print("stopping tritonserver")
    finally:
        signal.signal(signal.SIGTERM, previous)


@app.command()
@_errors
def classify(
    images: Annotated[list[Path], typer.Argument(help="Image files.")],
    url: Annotated[
        str, typer.Option(help="Triton URL (host:port, or grpc:// / http://).")
    ] = "localhost:8001",
    model: ModelName = "classifier",
    protocol: Annotated[str, typer.Option(help="grpc or http.")] = "grpc",
    top_k: Annotated[int, typer.Option(help="How many classes to show per image.")] = 3,
) -> None:
    """Classify images through Triton and print the top-k for each."""
    from lifeloop.client import LifeloopClient

    with LifeloopClient(url, protocol, model=model) as client:
        answers = client.classify(images, top_k=top_k)
    for path, answer in zip(images, answers, strict=True):
        ranked = ", ".join(
            f"{label} {score:.3f}"
            for label, score in zip(answer.labels, answer.scores, strict=True)
        )
        console.print(f"{path}: {ranked}  (v{answer.version})")
