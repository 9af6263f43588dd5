"""The `lifeloop` command: thin Typer commands over the library, one module per group
(model, serving, measure, loop). Heavy imports are lazy so `lifeloop --help` stays fast."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from lifeloop.cli import loop, measure, model, serving
from lifeloop.cli._common import _errors, console

app = typer.Typer(
    help="Lifelong-learning image classification on NVIDIA Triton Inference Server.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
for group in (model, serving, measure, loop):
    app.add_typer(group.app)


@app.command()
@_errors
def demo(
    out: Annotated[
        Path, typer.Option(help="Folder for the run's data, models and summary.json.")
    ] = Path("runs/demo"),
    epochs: Annotated[int, typer.Option(help="Epochs for v1.")] = 4,
) -> None:
    """Train, export, serve, classify and hot-reload, end to end on this machine."""
    from lifeloop.demo import run_demo

    summary = run_demo(out, epochs=epochs, console=console)
    if summary["failed_requests"]:
        raise typer.Exit(1)


def main() -> None:
    app()
