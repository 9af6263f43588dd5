"""What every command module shares: the console, the error printer, the option types."""

from __future__ import annotations

import contextlib
import functools
import inspect
import typing
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console

from lifeloop.errors import LifeloopError

console = Console()
F = TypeVar("F", bound=Callable[..., Any])


def _errors(fn: F) -> F:
    """Print a LifeloopError as one `error:` line and exit 1, instead of a traceback; and a
    package an extra brings, missing, as the one line that says which extra to install."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except LifeloopError as exc:
            typer.echo(f"error: {with_flag(exc, fn)}", err=True)
            raise typer.Exit(1) from exc
        except ModuleNotFoundError as exc:
            hint = missing_extra(fn.__name__.replace("_", "-"), exc.name or "")
            if hint is None:
                raise
            typer.echo(f"error: {hint}", err=True)
            raise typer.Exit(1) from exc

    return wrapper  # type: ignore[return-value]


# The extra that brings each package a command may import (pyproject's optional-dependencies).
EXTRA_OF_PACKAGE = {
    "torch": "export",
    "torchvision": "export",
    "onnx": "export",
    "onnxscript": "export",
    "onnxruntime": "serve",
    "pytriton": "serve",
    "cryptography": "serve",
    "psycopg": "postgres",
    "sklearn": "train",
    "torch_pruning": "train",
    "locust": "loadtest",
    "gevent": "loadtest",
    "prometheus_client": "loadtest",
    "psutil": "loadtest",
    "matplotlib": "loadtest",
}
# Commands that need more than the extra of the first package they miss.
EXTRA_OF_COMMAND = {
    "export": "export",
    "train": "train",
    "retrain": "train",
    "prune": "train",
    "serve": "serve",
    "loadtest": "loadtest",
    "demo": "all",
    "quickstart": "all",
    "bench": "all",
    "tune": "all",
    "soak": "all",
}


def missing_extra(command: str, module: str) -> str | None:
    """`lifeloop COMMAND needs X: pip install 'lifeloop[EXTRA]'`, for a module that one of
    lifeloop's extras brings; None for any other module (a real import error)."""
    package = module.split(".")[0]
    extra = EXTRA_OF_PACKAGE.get(package)
    if extra is None:
        return None
    extra = EXTRA_OF_COMMAND.get(command, extra)
    return (
        f"lifeloop {command} needs {package}, which this install lacks: "
        f"pip install 'lifeloop[{extra}]'"
    )


UNIT_SUFFIXES = ("_s", "_ms", "_pct")


def with_flag(exc: LifeloopError, command: Callable[..., Any]) -> str:
    """The message, with the library's setting name replaced by the flag of `command` that set
    it: the option of that name, or of that name without its unit (duration_s: --duration)."""
    message = str(exc)
    if exc.setting is None or not message.startswith(exc.setting):
        return message
    flag = flag_of(command, {exc.setting, *(exc.setting.removesuffix(s) for s in UNIT_SUFFIXES)})
    return flag + message.removeprefix(exc.setting) if flag else message


def flag_of(command: Callable[..., Any], names: set[str]) -> str | None:
    """The long flag of the first of `command`'s options named in `names`: as declared in its
    typer.Option, else Typer's default (`max_bytes` is `--max-bytes`); None for no option."""
    hints = typing.get_type_hints(command, include_extras=True)
    for name in inspect.signature(command).parameters:
        if name not in names:
            continue
        infos = getattr(hints.get(name), "__metadata__", ())
        option = next((i for i in infos if isinstance(i, typer.models.OptionInfo)), None)
        if option is None:
            return None  # an argument, or not a Typer parameter
        declared = [option.default, *(option.param_decls or ())]
        longs = [d for d in declared if isinstance(d, str) and d.startswith("--")]
        return longs[0] if longs else "--" + name.replace("_", "-")
    return None


Repository = Annotated[
    Path, typer.Option("--repository", "-r", help="Triton model repository folder.")
]
ModelName = Annotated[str, typer.Option("--model", "-m", help="Model name in the repository.")]
NewVersion = Annotated[int | None, typer.Option(help="Version number (default: the next one).")]
PublishServers = Annotated[
    str | None,
    typer.Option(
        "--servers",
        "--server-url",
        help="Triton HTTP URL, or URL,URL,... for replicas sharing the repository: each "
        "loads the new version and is waited on until it serves it; dns+http://NAME:PORT "
        "means every address NAME resolves to.",
        envvar="LIFELOOP_SERVERS",
    ),
]


StoreUrl = Annotated[
    str | None,
    typer.Option(
        "--store",
        help="SQLAlchemy URL of the store (default: SQLite beside the repository).",
    ),
]
RouterName = Annotated[str, typer.Option("--router", help="Name of the router model.")]
TrackingUri = Annotated[
    str | None,
    typer.Option(
        "--tracking-uri",
        help="MLflow tracking and registry store (default: SQLite beside the repository); "
        "off: no tracking.",
        envvar="LIFELOOP_TRACKING_URI",
    ),
]
ServerUrl = Annotated[
    str | None,
    typer.Option(
        "--url",
        "--servers",
        help="Triton HTTP URL, or URL,URL,... for replicas sharing the repository: each loads "
        "version-policy changes (EXPLICIT mode) and is waited on until it serves them; "
        "dns+http://NAME:PORT means every address NAME resolves to.",
        envvar="LIFELOOP_SERVERS",
    ),
]
Reason = Annotated[str, typer.Option("--reason", help="Why; kept in the history.")]


@contextlib.contextmanager
def tracked(repository: Path, tracking_uri: str | None, model: str, command: str) -> Iterator[Any]:
    """An MLflow run for `command` (a lifeloop.tracking.Run), or None with tracking off; a
    block that raises leaves it FAILED, and prints nothing more than its error."""
    from lifeloop.tracking import Tracker, experiment_name

    tracker = Tracker.for_repository(repository, tracking_uri)
    if tracker is None:
        yield None
        return
    with tracker.run(model, command) as run:
        yield run
    console.print(
        f"MLflow run {run.run_id} in experiment {experiment_name(model)!r} ({tracker.display_uri})"
    )


def print_replicas(results: Any) -> None:
    """One line per server: what it serves now."""
    for result in results:
        console.print(f"  {result.url}: {result.detail}")
