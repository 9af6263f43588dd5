"""The learning loop's commands: `router init`, `feedback`, `candidate`, `canary`, `shadow`,
`promote`, `rollback`, `cascade`, `history`, `retrain`, `store purge`, `store new-key`."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from lifeloop.cli._common import (
    ModelName,
    Reason,
    Repository,
    RouterName,
    ServerUrl,
    StoreUrl,
    TrackingUri,
    _errors,
    console,
    print_replicas,
)
from lifeloop.contract import (
    DEFAULT_DRIFT_WINDOW,
    DEFAULT_KEEP_BUDGET,
    DEFAULT_KEEP_UNCERTAIN_BELOW,
    DEFAULT_SAMPLE_RATE,
)

app = typer.Typer()

router_app = typer.Typer(help="Set up the router and feedback models.", no_args_is_help=True)
app.add_typer(router_app, name="router")
cascade_app = typer.Typer(
    help="A light model before the champion: it answers what it is sure of, the rest escalates.",
    no_args_is_help=True,
)
app.add_typer(cascade_app, name="cascade")


def _rollout(  # type: ignore[no-untyped-def]
    repository: Path,
    store: str | None,
    router: str,
    url: str | None,
    tracking: str | None = None,
):
    """The rollout, keeping MLflow's champion and candidate aliases in step (in the store
    `tracking` names; by default the one beside the repository)."""
    from lifeloop.rollout import Rollout
    from lifeloop.store import Store
    from lifeloop.tracking import Tracker

    return Rollout(
        repository,
        Store.for_repository(repository, store),
        router=router,
        server_url=url,
        tracker=Tracker.for_repository(repository, tracking),
    )


def _done(rollout, *, sync: bool = False) -> None:  # type: ignore[no-untyped-def]
    if sync:
        rollout.sync_aliases()
    print_replicas(rollout.replicas)
    if rollout.registry_warning:
        console.print(f"warning: {rollout.registry_warning}")


def _show(policy) -> None:  # type: ignore[no-untyped-def]
    candidate = f"v{policy.candidate}" if policy.candidate else "none"
    console.print(
        f"{policy.model}: champion v{policy.champion}, candidate {candidate}, canary weight "
        f"{policy.canary_weight:g}, shadow {'on' if policy.shadow else 'off'}, previous "
        f"{'v' + str(policy.previous) if policy.previous else 'none'}, cascade "
        f"{policy.cascade.describe() if policy.cascade else 'off'}"
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
        float,
        typer.Option(
            help="Share of all inputs kept at random for retraining, 0..1 (1 keeps every "
            "input; the default keeps a day at 100 requests/s of 224x224 under 10 GB with "
            "the uncertain ones: see docs/learning-loop.md)."
        ),
    ] = DEFAULT_SAMPLE_RATE,
    keep_uncertain_below: Annotated[
        float,
        typer.Option(
            help="Also keep every input whose answer's top-1 score is below this (0: none)."
        ),
    ] = DEFAULT_KEEP_UNCERTAIN_BELOW,
    keep_disagreeing: Annotated[
        bool,
        typer.Option(help="Also keep every input a shadowing candidate answers differently."),
    ] = True,
    keep_budget: Annotated[
        str,
        typer.Option(
            help="Disk the kept inputs may take (10GB, 500MB, 1.5GiB; 0: no limit); past it "
            "the oldest unlabelled go, checked every minute."
        ),
    ] = DEFAULT_KEEP_BUDGET,
    top_k: Annotated[int, typer.Option(help="Labels and scores logged per prediction.")] = 5,
    drift_window: Annotated[
        int,
        typer.Option(
            help="Newest answers per version the router's drift gauge tests against the "
            "version's held-out softmax (0: no gauge)."
        ),
    ] = DEFAULT_DRIFT_WINDOW,
    champion: Annotated[
        int | None, typer.Option(help="Champion version (default: the newest).")
    ] = None,
    url: ServerUrl = None,
    spool_dir: Annotated[
        Path | None,
        typer.Option(
            help="Where the router journals predictions the store cannot take in time "
            "(default: <repository>.spool/<router> beside the repository)."
        ),
    ] = None,
    store_timeout_ms: Annotated[
        int, typer.Option(help="How long a batch waits on the store before it is spooled.")
    ] = 250,
    spool_max_bytes: Annotated[
        int, typer.Option(help="Size limit of the spool (default 1 GiB).")
    ] = 1 << 30,
    spool_when_full: Annotated[
        str,
        typer.Option(
            help="With the spool full: refuse (answer UNAVAILABLE, lose nothing) or drop "
            "(answer, log nothing, count it)."
        ),
    ] = "refuse",
    tracking_uri: TrackingUri = None,
) -> None:
    """Put a router (canary, shadow, prediction log) and a feedback model before a classifier."""
    from lifeloop.serve.install import install_router
    from lifeloop.serve.sampling import KeepRule

    done = install_router(
        repository,
        model,
        router=router,
        feedback=feedback,
        store_url=store,
        blob_dir=blob_dir,
        keep=KeepRule(
            uniform=sample_rate,
            uncertain_below=keep_uncertain_below,
            disagreeing=keep_disagreeing,
        ),
        keep_budget=keep_budget,
        top_k=top_k,
        drift_window=drift_window,
        champion=champion,
        server_url=url,
        spool_dir=spool_dir,
        store_timeout_ms=store_timeout_ms,
        spool_max_bytes=spool_max_bytes,
        spool_when_full=spool_when_full,
    )
    console.print(f"router {done.router!r} and feedback model {done.feedback!r} written")
    console.print(f"store: {done.store_url}; inputs kept in {done.blob_dir}")
    budget = f"up to {done.keep_budget:,} bytes" if done.keep_budget else "no size limit"
    console.print(f"kept: {done.keep.describe()}; {budget}")
    console.print(
        f"spool: {done.spool.folder} (after {store_timeout_ms} ms, up to "
        f"{done.spool.max_bytes} bytes, then {done.spool.when_full.value})"
    )
    _show(done.policy)
    # The registry's champion alias from the start, as each rollout change keeps it.
    _done(_rollout(repository, store, router, None, tracking_uri), sync=True)


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
    tracking_uri: TrackingUri = None,
) -> None:
    """Make a published version the candidate, as a canary, a shadow, or both."""
    rollout = _rollout(repository, store, router, url, tracking_uri)
    _show(rollout.start_candidate(version, canary_weight=weight, shadow=shadow, reason=reason))
    _done(rollout)


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
    from lifeloop.errors import RolloutError

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
    tracking_uri: TrackingUri = None,
) -> None:
    """The candidate becomes champion; the champion stays loaded for rollback."""
    rollout = _rollout(repository, store, router, url, tracking_uri)
    _show(rollout.promote(reason=reason))
    _done(rollout)


@app.command()
@_errors
def rollback(
    repository: Repository = Path("model_repository"),
    router: RouterName = "router",
    store: StoreUrl = None,
    url: ServerUrl = None,
    reason: Reason = "",
    tracking_uri: TrackingUri = None,
) -> None:
    """The previous champion answers again, at once (it never left memory)."""
    rollout = _rollout(repository, store, router, url, tracking_uri)
    _show(rollout.rollback(reason=reason))
    _done(rollout)


LightModel = Annotated[str, typer.Option("--light", help="The light model (a served classifier).")]
LightVersion = Annotated[
    int | None, typer.Option(help="The light model's version (default: its newest).")
]


@cascade_app.command("on")
@_errors
def cascade_on(
    light: LightModel,
    threshold: Annotated[
        float, typer.Option(help="Images the light model scores below this (top-1) escalate.")
    ],
    light_version: LightVersion = None,
    repository: Repository = Path("model_repository"),
    router: RouterName = "router",
    store: StoreUrl = None,
    url: ServerUrl = None,
    reason: Reason = "",
) -> None:
    """Turn the cascade on at a threshold you choose (`calibrate` chooses one for you)."""
    rollout = _rollout(repository, store, router, url)
    _show(rollout.cascade(light, threshold, version=light_version, reason=reason))
    print_replicas(rollout.replicas)


@cascade_app.command("calibrate")
@_errors
def cascade_calibrate(
    light: LightModel,
    eval_dir: Annotated[Path, typer.Option(help="Labelled held-out images, one folder per class.")],
    max_drop: Annotated[
        float, typer.Option(help="Accuracy the cascade may lose against the heavy model, points.")
    ] = 0.5,
    light_version: LightVersion = None,
    repository: Repository = Path("model_repository"),
    router: RouterName = "router",
    store: StoreUrl = None,
    url: ServerUrl = None,
    dry_run: Annotated[
        bool, typer.Option(help="Print the figures; leave the policy as it is.")
    ] = False,
    out: Annotated[Path | None, typer.Option(help="Write the figures as JSON here.")] = None,
    reason: Reason = "",
) -> None:
    """Pick the lowest threshold whose held-out accuracy stays within --max-drop points of the
    champion alone, print the trade-off, and turn the cascade on at it."""
    import dataclasses
    import json

    from lifeloop.client import LifeloopClient
    from lifeloop.errors import RolloutError
    from lifeloop.rollout import server_urls
    from lifeloop.rollout.cascade import calibrate, measure, table_rows

    servers = server_urls(url)
    if not servers:
        raise RolloutError("calibrate asks a running server; pass --url http://HOST:8000")
    rollout = _rollout(repository, store, router, url)
    policy = rollout.policy
    version = rollout.prepare_light(light, light_version)
    # The first server answers for all: they serve the same repository. Like --url
    # everywhere else, a URL without a scheme is HTTP.
    with LifeloopClient(servers[0], None if "://" in servers[0] else "http") as client:
        outcomes = measure(
            client,
            eval_dir,
            heavy=(policy.model, policy.champion),
            light=(light, version),
        )
    result = calibrate(outcomes, max_drop)
    table = Table(
        title=f"cascade {light} v{version} before {policy.model} v{policy.champion}: "
        f"heavy alone {result.heavy_accuracy:.4f}, light alone {result.light_accuracy:.4f}, "
        f"{len(outcomes.confidence)} images"
    )
    for column in ("threshold", "accuracy", "change (points)", "light answers"):
        table.add_column(column)
    for row in table_rows(result):
        table.add_row(*row)
    console.print(table)
    if out:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(dataclasses.asdict(result), indent=2) + "\n")
    if result.chosen is None:
        raise RolloutError(
            f"no threshold keeps the cascade within {max_drop:g} points of {policy.model} "
            f"alone; the policy is unchanged (raise --max-drop, or train a better light model)"
        )
    if dry_run:
        return
    chosen = result.chosen
    _show(
        rollout.cascade(
            light,
            chosen.threshold,
            version=version,
            reason=reason
            or f"calibrated: {light} v{version} below {chosen.threshold:.4g} escalates; "
            f"{100 * (chosen.accuracy - result.heavy_accuracy):+.2f} points, "
            f"{chosen.light_fraction:.0%} light",
        )
    )
    print_replicas(rollout.replicas)


@cascade_app.command("off")
@_errors
def cascade_off(
    repository: Repository = Path("model_repository"),
    router: RouterName = "router",
    store: StoreUrl = None,
    url: ServerUrl = None,
    reason: Reason = "",
) -> None:
    """Every image goes to the champion (or canary) again, from the router's next batch."""
    _show(_rollout(repository, store, router, url).cascade_off(reason=reason))


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

    from lifeloop.store import Store

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


@app.command()
@_errors
def drift(
    repository: Repository = Path("model_repository"),
    model: ModelName = "classifier",
    window: Annotated[
        int, typer.Option(help="Each version's newest answers to test.", min=2)
    ] = 300,
    alpha: Annotated[
        float, typer.Option(help="Significance: a p-value below it is drift.", min=0, max=1)
    ] = 0.05,
    store: StoreUrl = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON lines instead.")] = False,
) -> None:
    """Has served traffic drifted? Per version: its newest answers against its softmax on
    held-out images (stored at publish), per-class KS, Bonferroni-corrected."""
    import json

    from lifeloop.rollout.served_drift import served_drift
    from lifeloop.store import Store

    with Store.for_repository(repository, store) as opened:
        found = served_drift(repository, opened, model, window=window, alpha=alpha)
    if as_json:
        for f in found:
            typer.echo(
                json.dumps(
                    {
                        "model": model,
                        "version": f.version,
                        "answers": f.answers,
                        "since": f.since.isoformat() if f.since else None,
                        "verdict": f.verdict,
                        **(f.result.to_dict() if f.result else {}),
                    }
                )
            )
        return
    if not found:
        console.print(f"no answers of {model!r} in the store yet: nothing to test")
        return
    table = Table(title=f"drift of {model}: newest {window} answers per version, alpha {alpha:g}")
    for column in ("version", "answers", "since (UTC)", "KS statistic", "moved most", "p-value"):
        table.add_column(column)
    table.add_column("verdict")
    for f in found:
        r = f.result
        table.add_row(
            f"v{f.version}",
            str(f.answers),
            f.since.strftime("%Y-%m-%d %H:%M:%S") if f.since else "-",
            f"{r.statistic:.3f}" if r else "-",
            r.worst_class if r else "-",
            f"{r.p_value:.2g}" if r else "-",
            ("[red]drift[/]" if r.drifted else "no drift") if r else f.reason,
        )
    console.print(table)


@app.command()
@_errors
def retrain(
    repository: Repository = Path("model_repository"),
    model: ModelName = "classifier",
    store: StoreUrl = None,
    router: RouterName = "router",
    replay: Annotated[
        Path | None,
        typer.Option(
            help="Training data to replay (default: the champion's, from its checkpoint)."
        ),
    ] = None,
    replay_per_class: Annotated[int, typer.Option(help="Replay images per known class.")] = 150,
    eval_dir: Annotated[
        Path | None,
        typer.Option(help="Trusted labelled images to gate on (default: a held-out split)."),
    ] = None,
    epochs: Annotated[int, typer.Option(help="Fine-tuning epochs.")] = 4,
    lr: Annotated[float, typer.Option(help="Peak learning rate.")] = 1e-3,
    min_delta: Annotated[
        float, typer.Option(help="Accuracy the candidate must gain over the champion.")
    ] = 0.0,
    max_drop: Annotated[
        float,
        typer.Option(
            help="Largest drop allowed for any old class (0.02 = 2 points): of its accuracy, "
            "or of its F1 when classes are added."
        ),
    ] = 0.02,
    balanced: Annotated[
        bool,
        typer.Option(
            help="No class counts for more than --replay-per-class images, so that many "
            "labels of a new class do not outweigh the replayed old ones."
        ),
    ] = True,
    canary_weight: Annotated[
        float, typer.Option("--canary", help="Canary weight of a passing candidate.")
    ] = 0.2,
    shadow: Annotated[bool, typer.Option(help="Also shadow the champion with it.")] = False,
    seed: Annotated[int, typer.Option(help="Seed for sampling and training.")] = 0,
    url: ServerUrl = None,
    out: Annotated[Path | None, typer.Option(help="Write the report as JSON here.")] = None,
    when: Annotated[
        str,
        typer.Option(
            help="always; labels>=N: only once N labels came back that no version trained on; "
            "drift: only when the champion's newest answers drifted (see `lifeloop drift`); "
            "several, comma-separated: when any holds."
        ),
    ] = "always",
    tracking_uri: TrackingUri = None,
    precision: Annotated[
        str,
        typer.Option(
            help="fp32; bf16 (CPUs with avx512_bf16 or AMX); fp16 (a CUDA GPU); auto: "
            "measured, fp32 where the others are slower or missing."
        ),
    ] = "fp32",
) -> None:
    """Fine-tune the champion on new labelled feedback (new classes too), gate it, roll it out.

    Run it under `torchrun --nproc-per-node N -m lifeloop retrain ...` to train as N
    data-parallel processes (gloo on CPU, nccl on GPUs); rank 0 gates and publishes."""
    import json

    from lifeloop.errors import RetrainError
    from lifeloop.retrain import distributed
    from lifeloop.retrain.cycle import RetrainSettings, retrain_follower
    from lifeloop.retrain.cycle import retrain as run_retrain
    from lifeloop.retrain.trigger import Trigger, decide, parse_when
    from lifeloop.store import Store
    from lifeloop.tracking import Tracker

    triggers = parse_when(when)
    settings = RetrainSettings(
        epochs=epochs,
        lr=lr,
        replay_per_class=replay_per_class,
        min_delta=min_delta,
        max_drop=max_drop,
        balanced=balanced,
        canary_weight=canary_weight,
        shadow=shadow,
        seed=seed,
        precision=precision,
    )
    with distributed.process_group() as place:  # a return leaves it together, a raise at once
        decision = None
        if place.is_leader:
            with Store.for_repository(repository, store) as opened:
                decision = decide(triggers, repository, opened, model, router=router)
            if triggers != (Trigger("always"),):  # the default needs no saying
                console.print(decision.why)
        # Rank 0 decides for all: every rank goes on, or none does.
        if not distributed.broadcast(decision).retrain:  # type: ignore[attr-defined]
            return
        if not place.is_leader:
            retrain_follower(model, settings)
            return
        tracker = Tracker.for_repository(repository, tracking_uri)
        with Store.for_repository(repository, store) as opened:
            report = run_retrain(
                repository,
                model,
                opened,
                router=router,
                replay_dir=replay,
                eval_dir=eval_dir,
                settings=settings,
                server_url=url,
                tracker=tracker,
            )
    if out:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(report.to_dict(), indent=2, default=str) + "\n")
    table = Table(
        title=f"{model}: champion v{report.champion} vs candidate, "
        f"{report.held_out} held-out images"
    )
    for column in ("class", "champion", "candidate"):
        table.add_column(column)
    for name in report.labels:
        table.add_row(
            name + (" (new)" if name in report.new_classes else ""),
            f"{report.champion_per_class.get(name, 0.0):.3f}",
            f"{report.candidate_per_class.get(name, 0.0):.3f}",
        )
    table.add_row("all", f"{report.champion_accuracy:.4f}", f"{report.candidate_accuracy:.4f}")
    console.print(table)
    console.print(
        f"trained on {report.feedback_used} labelled feedback + {report.replayed} replayed images"
    )
    if report.refused:
        raise RetrainError("candidate refused, nothing published: " + "; ".join(report.refused))
    console.print(f"published {model} v{report.version} as candidate (canary {canary_weight:g})")


store_app = typer.Typer(help="Retention and privacy of what the loop keeps.", no_args_is_help=True)
app.add_typer(store_app, name="store")


@store_app.command("purge")
@_errors
def store_purge(
    older_than: Annotated[
        str | None,
        typer.Option(help="Age past which things go: 30d, 12h, 90m or 3600s."),
    ] = None,
    max_kept_bytes: Annotated[
        str | None,
        typer.Option(
            help="Size past which the oldest unlabelled kept inputs go: 10GB, 500MB, 1.5GiB."
        ),
    ] = None,
    repository: Repository = Path("model_repository"),
    store: StoreUrl = None,
    keep_labelled: Annotated[
        bool, typer.Option(help="Keep predictions that have feedback, whatever their age.")
    ] = False,
    include_trained: Annotated[
        bool,
        typer.Option(help="Also remove inputs a published version was trained on."),
    ] = False,
    batch_size: Annotated[int, typer.Option(help="Rows per transaction.")] = 500,
) -> None:
    """Retention, by age and by size, in short transactions beside traffic. By age: delete
    predictions, their feedback and kept inputs older than the window, and the archived
    checkpoints of versions nothing loads. By size: while the kept inputs take more than the
    limit, delete the oldest that hold no labelled input (their predictions stay)."""
    from lifeloop.errors import StoreError
    from lifeloop.export.pipeline import archive_dir
    from lifeloop.rollout.policy import loaded_in
    from lifeloop.store import Store
    from lifeloop.store.retention import blob_dirs, evict_to_budget, parse_age, parse_size, purge

    if older_than is None and max_kept_bytes is None:
        raise StoreError(
            "say what to purge: --older-than 30d (by age), --max-kept-bytes 10GB (by size), or both"
        )
    age = None if older_than is None else parse_age(older_than)
    size = None if max_kept_bytes is None else parse_size(max_kept_bytes)
    repository = Path(repository)
    folders = blob_dirs(repository)
    with Store.for_repository(repository, store) as opened:
        if age is not None:
            result = purge(
                opened,
                older_than=age,
                blob_dirs=folders,
                checkpoint_dir=archive_dir(repository),
                loaded=loaded_in(repository),
                keep_labelled=keep_labelled,
                include_trained=include_trained,
                batch_size=batch_size,
            )
            console.print(
                f"purged what was older than {result.before.isoformat(timespec='seconds')}:"
            )
            console.print(f"  {result.predictions} predictions and {result.feedback} labels")
            console.print(
                f"  {result.kept_inputs} kept-input files "
                f"({result.kept_input_bytes / 2**20:.1f} MiB)"
            )
            console.print(f"  {len(result.checkpoints)} archived checkpoints")
            console.print(
                f"kept: {result.protected_trained} old predictions a version was trained on, "
                f"{result.protected_labelled} labelled ones"
            )
        if size is not None:
            evicted = evict_to_budget(opened, folders, size, batch_size=batch_size)
            console.print(
                f"kept inputs over {size:,} bytes: evicted {evicted.evicted_inputs} inputs in "
                f"{evicted.evicted_files} files ({evicted.evicted_bytes / 2**20:.1f} MiB); "
                f"{evicted.kept_bytes / 2**20:.1f} MiB kept, "
                f"{evicted.protected_bytes / 2**20:.1f} MiB of it labelled"
            )
            if evicted.over:
                console.print(
                    "still over: what is left is labelled or under a minute old; raise the "
                    "limit or purge by age"
                )


@store_app.command("new-key")
def store_new_key() -> None:
    """Print a new key for encrypting kept inputs: set it as LIFELOOP_KEPT_INPUT_KEY where
    tritonserver and retraining run."""
    from cryptography.fernet import Fernet

    typer.echo(Fernet.generate_key().decode())
