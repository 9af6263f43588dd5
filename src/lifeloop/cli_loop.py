"""The learning loop's commands: `router init`, `feedback`, `candidate`, `canary`, `shadow`,
`promote`, `rollback`, `history`. They register on lifeloop's Typer app (see lifeloop.cli)."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from lifeloop.cli import ModelName, Repository, _errors, app, console

router_app = typer.Typer(help="Set up the router and feedback models.", no_args_is_help=True)
app.add_typer(router_app, name="router")

StoreUrl = Annotated[
    str | None,
    typer.Option(
        "--store",
        help="SQLAlchemy URL of the store (default: SQLite beside the repository).",
    ),
]
RouterName = Annotated[str, typer.Option("--router", help="Name of the router model.")]
ServerUrl = Annotated[
    str | None,
    typer.Option(
        "--url",
        help="Triton HTTP URL: load version-policy changes there (EXPLICIT mode).",
    ),
]
Reason = Annotated[str, typer.Option("--reason", help="Why; kept in the history.")]


def _rollout(repository: Path, store: str | None, router: str, url: str | None):  # type: ignore[no-untyped-def]
    from lifeloop.loop import Rollout, Store

    return Rollout(
        repository, Store.for_repository(repository, store), router=router, server_url=url
    )


def _show(policy) -> None:  # type: ignore[no-untyped-def]
    candidate = f"v{policy.candidate}" if policy.candidate else "none"
    console.print(
        f"{policy.model}: champion v{policy.champion}, candidate {candidate}, canary weight "
        f"{policy.canary_weight:g}, shadow {'on' if policy.shadow else 'off'}, previous "
        f"{'v' + str(policy.previous) if policy.previous else 'none'}"
    )


@router_app.command("init")
@_errors
def router_init(
    repository: Repository = Path("model_repository"),
    model: ModelName = "classifier",
    router: RouterName = "router",
    feedback: Annotated[str, typer.Option(help="Name of the feedback model.")] = "feedback",
    store: StoreUrl = None,
    blob_dir: Annotated[
        Path | None, typer.Option(help="Folder for sampled inputs (default beside the repository).")
    ] = None,
    sample_rate: Annotated[
        float, typer.Option(help="Share of inputs kept as files (retraining needs them).")
    ] = 1.0,
    top_k: Annotated[int, typer.Option(help="Labels and scores logged per prediction.")] = 5,
    champion: Annotated[
        int | None, typer.Option(help="Champion version (default: the newest).")
    ] = None,
    url: ServerUrl = None,
) -> None:
    """Put a router (canary, shadow, prediction log) and a feedback model before a classifier."""
    from lifeloop.loop import install_router

    done = install_router(
        repository,
        model,
        router=router,
        feedback=feedback,
        store_url=store,
        blob_dir=blob_dir,
        sample_rate=sample_rate,
        top_k=top_k,
        champion=champion,
        server_url=url,
    )
    console.print(f"router {done.router!r} and feedback model {done.feedback!r} written")
    console.print(f"store: {done.store_url}; inputs kept in {done.blob_dir}")
    _show(done.policy)


@app.command()
@_errors
def feedback(
    url: Annotated[str, typer.Option(help="Triton URL (grpc:// or http://).")] = "localhost:8001",
    request_id: Annotated[
        list[str] | None, typer.Option("--request-id", help="A request id the router returned.")
    ] = None,
    label: Annotated[
        list[str] | None, typer.Option("--label", help="Its true label (one per --request-id).")
    ] = None,
    file: Annotated[
        Path | None, typer.Option(help="CSV with request_id,label columns (a header row).")
    ] = None,
    model: Annotated[str, typer.Option(help="Name of the feedback model.")] = "feedback",
) -> None:
    """Attach true labels to served request ids; a label may name a class not yet known."""
    from lifeloop.client import ClientError, LifeloopClient

    ids, labels = list(request_id or []), list(label or [])
    if file is not None:
        try:
            with open(file, newline="") as handle:
                rows = list(csv.DictReader(handle))
        except OSError as exc:
            raise ClientError(f"cannot read feedback file {file}: {exc.strerror}") from exc
        if rows and not {"request_id", "label"} <= set(rows[0]):
            raise ClientError(f"{file} needs request_id and label columns; got {list(rows[0])}")
        ids += [r["request_id"] for r in rows]
        labels += [r["label"] for r in rows]
    if not ids:
        raise ClientError("no feedback given; pass --request-id ID --label LABEL, or --file CSV")
    with LifeloopClient(url) as client:
        written = client.feedback(ids, labels, model=model)
    console.print(f"{written} labels stored")


@app.command()
@_errors
def candidate(
    version: Annotated[int, typer.Option(help="The published version to try.")],
    repository: Repository = Path("model_repository"),
    weight: Annotated[float, typer.Option(help="Canary weight 0..1.")] = 0.0,
    shadow: Annotated[bool, typer.Option(help="Shadow the champion with it.")] = False,
    router: RouterName = "router",
    store: StoreUrl = None,
    url: ServerUrl = None,
    reason: Reason = "",
) -> None:
    """Make a published version the candidate, as a canary, a shadow, or both."""
    rollout = _rollout(repository, store, router, url)
    _show(rollout.start_candidate(version, canary_weight=weight, shadow=shadow, reason=reason))


@app.command()
@_errors
def canary(
    weight: Annotated[float, typer.Option(help="Share of traffic for the candidate, 0..1.")],
    repository: Repository = Path("model_repository"),
    router: RouterName = "router",
    store: StoreUrl = None,
    url: ServerUrl = None,
    reason: Reason = "",
) -> None:
    """Set the candidate's share of live traffic."""
    _show(_rollout(repository, store, router, url).canary(weight, reason=reason))


@app.command()
@_errors
def shadow(
    state: Annotated[str, typer.Argument(help="on or off")],
    repository: Repository = Path("model_repository"),
    router: RouterName = "router",
    store: StoreUrl = None,
    url: ServerUrl = None,
    reason: Reason = "",
) -> None:
    """Run the candidate beside the champion on every request; answer with the champion."""
    from lifeloop.loop import RolloutError

    if state not in ("on", "off"):
        raise RolloutError(f"shadow takes on or off, got {state!r}")
    _show(_rollout(repository, store, router, url).shadow(state == "on", reason=reason))


@app.command()
@_errors
def promote(
    repository: Repository = Path("model_repository"),
    router: RouterName = "router",
    store: StoreUrl = None,
    url: ServerUrl = None,
    reason: Reason = "",
) -> None:
    """The candidate becomes champion; the champion stays loaded for rollback."""
    _show(_rollout(repository, store, router, url).promote(reason=reason))


@app.command()
@_errors
def rollback(
    repository: Repository = Path("model_repository"),
    router: RouterName = "router",
    store: StoreUrl = None,
    url: ServerUrl = None,
    reason: Reason = "",
) -> None:
    """The previous champion answers again, at once (it never left memory)."""
    _show(_rollout(repository, store, router, url).rollback(reason=reason))


@app.command()
@_errors
def history(
    repository: Repository = Path("model_repository"),
    model: Annotated[
        str | None, typer.Option("--model", "-m", help="Only this classifier.")
    ] = None,
    store: StoreUrl = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON lines instead.")] = False,
) -> None:
    """Every change of champion, candidate, canary weight or shadow, with time and reason."""
    import dataclasses
    import json

    from lifeloop.loop import Store

    with Store.for_repository(repository, store) as opened:
        events = opened.history(model)
    if as_json:
        for e in events:
            typer.echo(json.dumps(dataclasses.asdict(e), default=str))
        return
    table = Table(title="rollout history")
    for column in (
        "time (UTC)",
        "model",
        "action",
        "champion",
        "candidate",
        "canary",
        "shadow",
        "reason",
    ):
        table.add_column(column)
    for e in events:
        table.add_row(
            e.created_at.strftime("%Y-%m-%d %H:%M:%S"),
            e.model,
            e.action,
            f"v{e.champion}" if e.champion else "-",
            f"v{e.candidate}" if e.candidate else "-",
            f"{e.canary_weight:g}",
            "on" if e.shadow else "off",
            e.reason,
        )
    console.print(table)
