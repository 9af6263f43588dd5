"""Commands that make and publish models: `train`, `digits`, `export`, `publish`,
`versions`, `image init`, `quickstart`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from lifeloop.cli._common import (
    ModelName,
    NewVersion,
    PublishServers,
    Repository,
    StoreUrl,
    TrackingUri,
    _errors,
    console,
    print_replicas,
    tracked,
)

app = typer.Typer()


@app.command()
@_errors
def export(
    checkpoint: Annotated[Path, typer.Option(help="Checkpoint: lifeloop's, or a bare state_dict.")],
    repository: Repository = Path("model_repository"),
    model: ModelName = "classifier",
    arch: Annotated[
        str | None, typer.Option(help="Architecture: small_cnn or a torchvision classifier.")
    ] = None,
    num_classes: Annotated[
        int | None, typer.Option(help="Class count of a bare state_dict.")
    ] = None,
    labels: Annotated[Path | None, typer.Option(help="File with one label per line.")] = None,
    input_size: Annotated[
        int | None, typer.Option(help="Input height and width in pixels.")
    ] = None,
    version: NewVersion = None,
    server_url: PublishServers = None,
    samples: Annotated[
        Path | None, typer.Option(help="Image folder whose images join the parity check.")
    ] = None,
    atol: Annotated[float, typer.Option(help="Parity: absolute tolerance.")] = 1e-4,
    rtol: Annotated[float, typer.Option(help="Parity: relative tolerance.")] = 1e-3,
    max_batch_size: Annotated[
        int, typer.Option(help="Config max_batch_size when the model is new.")
    ] = 32,
    formats: Annotated[
        str,
        typer.Option(
            "--format",
            help="Comma-separated: onnx, onnx-int8, onnx-fp16, tensorrt-fp16, tensorrt-int8. "
            "Each is its own model: NAME, NAME_int8, NAME_fp16, NAME_trt_fp16, ...",
        ),
    ] = "onnx",
    calibration: Annotated[
        Path | None,
        typer.Option(help="Images to calibrate INT8 on (default: the checkpoint's training data)."),
    ] = None,
    eval_dir: Annotated[
        Path | None,
        typer.Option(
            help="Labelled images for the INT8/FP16 gate and the drift reference (default: the "
            "checkpoint's held-out split)."
        ),
    ] = None,
    max_accuracy_drop: Annotated[
        float, typer.Option(help="INT8/FP16 gate: top-1 lost against fp32 (0.01 = 1 point).")
    ] = 0.01,
    min_agreement: Annotated[
        float, typer.Option(help="INT8/FP16 gate: least top-1 agreement with fp32.")
    ] = 0.98,
    normalize_in_graph: Annotated[
        bool,
        typer.Option(
            help="The graph normalises (x/255 - mean)/std as its first op, so the version takes "
            "pixels 0..255 (any client that only resizes gets the right answer); off: it takes "
            "normalized inputs."
        ),
    ] = True,
    response_cache: Annotated[
        bool | None,
        typer.Option(
            "--response-cache/--no-response-cache",
            help="Turn Triton's response cache on or off in the model's config (default: as "
            "it is; off for a new model). The server needs `lifeloop serve --cache-mb N`.",
        ),
    ] = None,
    tracking_uri: TrackingUri = None,
) -> None:
    """Export a checkpoint to ONNX, gate it on parity with PyTorch, publish the next version.

    INT8 and FP16 are gated on accuracy against the fp32 export; one refused format
    publishes none."""
    from lifeloop.export import CheckpointError, Tolerance, export_checkpoint, load
    from lifeloop.export.formats import FP16, INT8, parse_formats
    from lifeloop.export.quantize import QualityGate
    from lifeloop.preprocessing import NORMALIZED, PIXELS
    from lifeloop.rollout.replicas import load_published

    if num_classes is not None and labels is not None:
        raise CheckpointError("pass --num-classes or --labels, not both")
    names = _read_labels(labels) if labels else None
    if num_classes is not None:
        if num_classes < 2:
            raise CheckpointError(f"--num-classes must be >= 2, got {num_classes}")
        names = tuple(str(i) for i in range(num_classes))
    loaded = load(checkpoint, arch=arch, labels=names, input_size=input_size)
    sample_arrays = None
    if samples is not None:
        from lifeloop.datasets import load_arrays, scan

        folder = scan(samples)
        sample_arrays, _ = load_arrays(
            list(folder.samples[:: max(1, len(folder.samples) // 64)]), loaded.preprocessing
        )
    chosen = parse_formats(formats)
    gate = QualityGate(max_accuracy_drop=max_accuracy_drop, min_agreement=min_agreement)
    precision = None
    if INT8 in chosen or FP16 in chosen:
        from lifeloop.export.calibration import precision_data

        precision = precision_data(
            loaded, calibration_dir=calibration, eval_dir=eval_dir, gate=gate
        )
    from lifeloop.export.calibration import reference_images

    reference = precision.x_held if precision else reference_images(loaded, eval_dir)
    with tracked(repository, tracking_uri, model, "export") as run:
        result = export_checkpoint(
            loaded,
            repository,
            model,
            samples=sample_arrays,
            tolerance=Tolerance(atol, rtol),
            version=version,
            max_batch_size=max_batch_size,
            formats=chosen,
            precision=precision,
            input_kind=PIXELS if normalize_in_graph else NORMALIZED,
            response_cache=response_cache,
            reference=reference,
        )
        if run is not None:
            from lifeloop.export.tracked import log_export

            run.link("checkpoint", checkpoint)
            log_export(run, result)
    console.print(result.parity.summary())
    for fmt, report in result.quality.items():
        console.print(
            f"{fmt}: top-1 {report.accuracy:.4f} against fp32's {report.fp32_accuracy:.4f}, "
            f"agreement {report.agreement:.2%} on {report.held_out} held-out images: passed"
        )
    for fmt, published in result.by_format.items():
        console.print(
            f"published {published.model} version {published.version} ({fmt}) at {published.path}"
        )
        print_replicas(load_published(server_url, published))
    if reference is None:
        console.print(
            "no drift reference: the checkpoint's training data is not here; pass --eval-dir "
            "DIR so that `lifeloop drift` can test this version's traffic"
        )


@app.command()
@_errors
def publish(
    source: Annotated[
        Path, typer.Argument(help="A version folder with its manifest.json, made by an export.")
    ],
    repository: Repository = Path("model_repository"),
    model: Annotated[
        str | None, typer.Option(help="Model to publish under (default: the manifest's).")
    ] = None,
    version: NewVersion = None,
    server_url: PublishServers = None,
) -> None:
    """Publish a version exported elsewhere (another machine, a GPU host's TensorRT plan):
    checked against its manifest, then published atomically and loaded on every server."""
    from lifeloop.repository import publish_folder
    from lifeloop.rollout.replicas import load_published

    published = publish_folder(repository, source, model, version=version)
    console.print(
        f"published {published.model} version {published.version} "
        f"({published.manifest.format}) at {published.path}"
    )
    print_replicas(load_published(server_url, published))


def _read_labels(path: Path) -> tuple[str, ...]:
    from lifeloop.export import CheckpointError

    try:
        names = tuple(line.strip() for line in path.read_text().splitlines() if line.strip())
    except OSError as exc:
        raise CheckpointError(
            f"cannot read labels file {path} ({exc}); pass a text file, one label per line"
        ) from exc
    if len(names) < 2 or len(set(names)) != len(names):
        raise CheckpointError(f"labels file {path} needs at least 2 unique labels, one per line")
    return names


image_app = typer.Typer(help="Let clients send encoded JPEG and PNG images.", no_args_is_help=True)
app.add_typer(image_app, name="image")


@image_app.command("init")
@_errors
def image_init(
    repository: Repository = Path("model_repository"),
    model: ModelName = "classifier",
    preprocess: Annotated[str, typer.Option(help="Name of the preprocess model.")] = "preprocess",
    ensemble: Annotated[
        str | None, typer.Option(help="Name of the ensemble (default: <model>_image).")
    ] = None,
    max_image_bytes: Annotated[
        int, typer.Option(help="Larger encoded images fail their own request.")
    ] = 20 * 1024 * 1024,
    max_image_pixels: Annotated[
        int, typer.Option(help="Images with more pixels (width x height) fail before decoding.")
    ] = 40_000_000,
    formats: Annotated[
        str, typer.Option(help="Image formats accepted, as Pillow names them.")
    ] = "JPEG,PNG",
    url: Annotated[
        str | None,
        typer.Option(
            "--url",
            "--servers",
            help="Triton HTTP URL, or URL,URL,...: load both models there (EXPLICIT mode).",
        ),
    ] = None,
    router: Annotated[
        str | None,
        typer.Option(
            help="Route through this router (default ensemble <router>_image): every image "
            "is logged, gets a request id, and is kept as the bytes the client sent."
        ),
    ] = None,
) -> None:
    """Write a preprocess model and an ensemble (preprocess -> classifier, or -> router) for
    raw images."""
    from lifeloop.serve.ensemble import install_image_ensemble
    from lifeloop.serve.preprocess import ImageLimits

    kinds = tuple(f.strip().upper() for f in formats.split(",") if f.strip())
    done = install_image_ensemble(
        repository,
        model,
        preprocess=preprocess,
        ensemble=ensemble,
        limits=ImageLimits(max_bytes=max_image_bytes, max_pixels=max_image_pixels, formats=kinds),
        server_url=url,
        router=router,
    )
    console.print(
        f"ensemble {done.ensemble!r} ({done.preprocess!r} -> {done.router or done.classifier!r})"
        " written: send "
        f"{'/'.join(done.limits.formats)} bytes as IMAGE (BYTES, one per request row)"
    )


@app.command()
@_errors
def versions(
    repository: Repository = Path("model_repository"),
    model: ModelName = "classifier",
    url: Annotated[
        str | None, typer.Option(help="Server (HTTP) to ask for each version's state.")
    ] = None,
) -> None:
    """List a model's versions: state, labels, parity and creation time."""
    from lifeloop.repository import list_versions
    from lifeloop.rollout.replicas import version_states

    rows = list_versions(repository, model, states=version_states(url, model) if url else None)
    table = Table(title=f"{model} in {repository}")
    for column in (
        "version",
        "state",
        "labels",
        "format",
        "parity max|diff|",
        "top-1 agree",
        "created",
    ):
        table.add_column(column)
    for row in rows:
        table.add_row(
            str(row.version),
            row.state,
            str(row.labels),
            row.format,
            "-" if row.parity_max_abs_diff is None else f"{row.parity_max_abs_diff:.2g}",
            "-" if row.parity_top1_agreement is None else f"{row.parity_top1_agreement:.1%}",
            row.created_at or row.problem,
        )
    console.print(table)
    if not rows:
        console.print(f"{model} has no published versions yet")


@app.command()
@_errors
def train(
    data: Annotated[Path, typer.Option(help="ImageFolder: <data>/<label>/<image>.")],
    out: Annotated[Path, typer.Option(help="Checkpoint to write.")],
    arch: Annotated[str, typer.Option(help="small_cnn or a torchvision classifier.")] = "small_cnn",
    epochs: Annotated[int, typer.Option(help="Passes over the training split.")] = 4,
    input_size: Annotated[
        int | None, typer.Option(help="Input size in pixels (default 32 for small_cnn, else 224).")
    ] = None,
    batch_size: int = 64,
    lr: float = 2e-3,
    holdout: Annotated[
        float, typer.Option(help="Share of each class held out for evaluation.")
    ] = 0.2,
    seed: int = 0,
    repository: Annotated[
        Path,
        typer.Option(
            "--repository", "-r", help="The repository whose MLflow store records the run."
        ),
    ] = Path("model_repository"),
    model: Annotated[
        str, typer.Option("--model", "-m", help="The model it is for: the MLflow experiment.")
    ] = "classifier",
    tracking_uri: TrackingUri = None,
    precision: Annotated[
        str,
        typer.Option(
            help="fp32; bf16 (autocast, on CPUs with avx512_bf16 or AMX); fp16 (autocast and "
            "a gradient scaler, on a CUDA GPU); auto: measured, fp32 where the others are "
            "slower or missing."
        ),
    ] = "fp32",
    search: Annotated[
        int,
        typer.Option(
            help="Search the hyperparameters over N trials (Optuna TPE, pruned on validation "
            "accuracy); the defaults are the first trial and --epochs the most any trial gets."
        ),
    ] = 0,
    study_storage: Annotated[
        str | None,
        typer.Option(help="Optuna storage of the search (default: SQLite beside the repository)."),
    ] = None,
) -> None:
    """Train a classifier and save a lifeloop checkpoint."""
    from lifeloop.retrain import train as run_train

    if search:
        from lifeloop.retrain.search import describe

        with tracked(repository, tracking_uri, model, "train-search") as run:
            found = _search(
                data,
                out,
                arch=arch,
                epochs=epochs,
                input_size=input_size,
                holdout=holdout,
                seed=seed,
                precision=precision,
                trials=search,
                storage=study_storage or _default_storage(repository),
                run=run,
            )
        pruned = sum(t["state"] == "PRUNED" for t in found.trials)
        console.print(
            f"search: {len(found.trials)} trials ({pruned} pruned) in study {found.study!r} "
            f"at {found.storage}; best: {describe(found.best)}"
        )
        console.print(
            f"held-out accuracy {found.trained.holdout_accuracy:.3f} (best of {search}) against "
            f"{found.defaults_held_out:.3f} (the defaults): {found.gain:+.1f} points; "
            f"checkpoint {found.trained.path}"
        )
        return
    with tracked(repository, tracking_uri, model, "train") as run:
        result = run_train(
            data,
            arch=arch,
            epochs=epochs,
            out=out,
            input_size=input_size,
            batch_size=batch_size,
            lr=lr,
            holdout=holdout,
            seed=seed,
            run=run,
            precision=precision,
        )
    console.print(
        f"precision {result.precision.name} ({result.precision.why}); held-out accuracy "
        f"{result.holdout_accuracy:.3f}; checkpoint {result.path}"
    )


def _default_storage(repository: Path) -> str:
    from lifeloop.retrain.search import default_storage

    return default_storage(repository)


def _search(  # type: ignore[no-untyped-def]
    data: Path,
    out: Path,
    *,
    arch: str,
    epochs: int,
    input_size: int | None,
    holdout: float,
    seed: int,
    precision: str,
    trials: int,
    storage: str,
    run,
):
    """`train --search`: the study, in one MLflow run with a child run per trial."""
    from lifeloop.retrain.search import search_train

    if run is not None:
        run.params({"arch": arch, "max_epochs": epochs, "trials": trials})
        run.tags({"lifeloop.study_storage": storage})
    found = search_train(
        data,
        arch=arch,
        out=out,
        trials=trials,
        max_epochs=epochs,
        storage=storage,
        input_size=input_size,
        holdout=holdout,
        seed=seed,
        precision=precision,
        run=run,
        say=console.print,
    )
    if run is not None:
        run.params({f"best.{k}": v for k, v in found.best.items()})
        run.metrics(
            {
                "best_validation_accuracy": found.best_validation,
                "defaults_holdout_accuracy": found.defaults_held_out,
                "gain_points": found.gain,
            }
        )
        run.tags({"lifeloop.study": found.study})
    return found


@app.command()
@_errors
def prune(
    checkpoint: Annotated[Path, typer.Option(help="The dense checkpoint (lifeloop's).")],
    data: Annotated[Path, typer.Option(help="ImageFolder it was trained on: fine-tune and gate.")],
    out: Annotated[Path, typer.Option(help="Where the pruned checkpoint is written.")],
    ratio: Annotated[float, typer.Option(help="Share of channels removed per layer.")] = 0.5,
    epochs: Annotated[int, typer.Option(help="Fine-tuning epochs after the cut.")] = 4,
    max_accuracy_drop: Annotated[
        float,
        typer.Option(help="Gate: held-out top-1 lost against the dense model (0.01 = 1 point)."),
    ] = 0.01,
    repository: Repository = Path("model_repository"),
    model: ModelName = "classifier",
    server_url: PublishServers = None,
    tracking_uri: TrackingUri = None,
) -> None:
    """Remove channels with Torch-Pruning, fine-tune, gate on held-out accuracy against the
    dense model, then export and publish the next version. A refused cut publishes nothing."""
    from lifeloop.export import export_checkpoint, load
    from lifeloop.export.quantize import QualityGate
    from lifeloop.retrain.prune import PruneSettings
    from lifeloop.retrain.prune import prune as run_prune
    from lifeloop.rollout.replicas import load_published

    dense = load(checkpoint)
    settings = PruneSettings(
        ratio=ratio,
        epochs=epochs,
        gate=QualityGate(max_accuracy_drop=max_accuracy_drop, min_agreement=0.0),
    )
    with tracked(repository, tracking_uri, model, "prune") as run:
        if run is not None:
            run.params({"ratio": ratio, "epochs": epochs, "max_accuracy_drop": max_accuracy_drop})
            run.link("dense_checkpoint", checkpoint)
        result = run_prune(dense, data, out, settings)
        figures = result.figures()
        console.print(
            f"pruned {ratio:.0%}: params {figures['params_before']:,} -> "
            f"{figures['params_after']:,}, MACs {figures['macs_before']:,} -> "
            f"{figures['macs_after']:,}; held-out top-1 {result.report.accuracy:.4f} against "
            f"the dense model's {result.report.fp32_accuracy:.4f} on "
            f"{result.report.held_out} images: passed; checkpoint {result.path}"
        )
        exported = export_checkpoint(
            result.checkpoint,
            repository,
            model,
            samples=result.x_held[:64],
            evaluation={"holdout_accuracy": result.report.accuracy, "pruning": figures},
            reference=result.x_held,
        )
        if run is not None:
            from lifeloop.export.tracked import log_export

            run.metrics(
                {
                    k: float(v)
                    for k, v in figures.items()
                    if isinstance(v, int | float) and not isinstance(v, bool)
                }
            )
            run.link("checkpoint", result.path)
            log_export(run, exported)
    console.print(exported.parity.summary())
    published = exported.published
    console.print(f"published {published.model} version {published.version} at {published.path}")
    print_replicas(load_published(server_url, published))


@app.command()
@_errors
def digits(
    out: Annotated[Path, typer.Option(help="Folder to write the PNGs into.")] = Path("runs/digits"),
) -> None:
    """Write scikit-learn's bundled digits (no download) as an ImageFolder of PNGs."""
    from lifeloop.retrain import write_digits

    folder = write_digits(out)
    console.print(f"{len(folder.samples)} images in {len(folder.labels)} classes at {folder.root}")


@app.command()
@_errors
def quickstart(
    repository: Repository = Path("model_repository"),
    epochs: Annotated[int, typer.Option(help="Epochs for the classifier, as in the demo.")] = 4,
    store: StoreUrl = None,
    data: Annotated[
        Path | None,
        typer.Option(
            help="Where the digits are written (default: <repository>.data beside it); "
            "retraining replays them."
        ),
    ] = None,
    if_empty: Annotated[
        bool,
        typer.Option(
            "--if-empty",
            help="Leave a repository that already holds a model as it is, and exit 0.",
        ),
    ] = False,
) -> None:
    """Fill an empty repository with a classifier trained on the demo's digits (all ten), the
    router, the feedback model and the image ensemble: no download, about a minute on CPU."""
    from lifeloop.demo import model_folders
    from lifeloop.demo import quickstart as fill

    held = model_folders(repository)
    if held and if_empty:
        console.print(f"{repository} already holds {', '.join(held)}: left as it is")
        return
    done = fill(repository, epochs=epochs, data_dir=data, store_url=store, console=console)
    console.print(
        f"{', '.join(done.published.models)} written to {repository} (held-out accuracy "
        f"{done.holdout_accuracy:.3f}); serve them with `lifeloop serve --repository "
        f"{repository}`"
    )
