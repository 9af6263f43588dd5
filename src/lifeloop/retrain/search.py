"""`lifeloop train --search N`: the hyperparameters, chosen by Optuna's TPE sampler.

A validation split is carved out of the training split (the held-out split stays untouched
for the final score). Each trial trains on the rest with sampled hyperparameters, reports
its validation accuracy after every epoch, and is pruned when it falls below the median of
the trials before it at the same epoch. The first trial is `train`'s defaults, so the study
always holds the baseline, and the output is the best trial's model, scored on the held-out
split beside the defaults' model: best-of-N against the defaults on images no trial chose by.

Each trial is an MLflow child run of the search's run. The study lives in an Optuna storage
(SQLite beside the repository by default, next to the MLflow store), so `optuna-dashboard`
or a later `--search` can read it.
"""

from __future__ import annotations

import copy
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from lifeloop.errors import DataError
from lifeloop.export.architectures import build
from lifeloop.retrain.training import (
    TrainResult,
    evaluate,
    finish,
    fit,
    pick_precision,
    prepare,
)
from lifeloop.tracking import Run, Stopped

VALIDATION = 0.15  # of the training split, per class
# train's defaults: the study's first trial.
DEFAULTS: dict[str, Any] = {
    "lr": 2e-3,
    "weight_decay": 1e-4,
    "batch_size": 64,
    "augment": 0.0,
}


def default_storage(repository: Path) -> str:
    repository = Path(repository).resolve()
    return f"sqlite:///{repository.parent / (repository.name + '.optuna.db')}"


@dataclass(frozen=True)
class SearchResult:
    trained: TrainResult  # the best trial's model, saved, scored on the held-out split
    best: dict[str, Any]
    best_validation: float
    defaults_held_out: float  # the defaults' model (trial 0) on the held-out split
    trials: list[dict[str, Any]]
    study: str
    storage: str

    @property
    def gain(self) -> float:
        """Held-out accuracy of the best trial over the defaults', in points."""
        return (self.trained.holdout_accuracy - self.defaults_held_out) * 100


class _Pruned(Stopped):
    """A trial Optuna's pruner stopped: KILLED in MLflow, pruned in the study."""


def search_train(
    data_dir: Path,
    *,
    arch: str,
    out: Path,
    trials: int,
    max_epochs: int,
    storage: str,
    input_size: int | None = None,
    holdout: float = 0.2,
    seed: int = 0,
    precision: str = "fp32",
    run: Run | None = None,
    say: Callable[[str], None] = lambda _: None,
) -> SearchResult:
    import optuna

    if trials < 1:
        raise DataError(f"--search needs at least 1 trial, got {trials}")
    if max_epochs < 1:
        raise DataError(f"epochs must be >= 1, got {max_epochs}", setting="epochs")
    data = prepare(data_dir, arch=arch, input_size=input_size, holdout=holdout, seed=seed)
    fit_idx, valid_idx = validation_split(data.y_train, VALIDATION, seed)
    x_fit, y_fit = data.x_train[fit_idx], data.y_train[fit_idx]
    x_valid, y_valid = data.x_train[valid_idx], data.y_train[valid_idx]
    # Chosen once (auto measures on the defaults' model) for every trial.
    chosen = pick_precision(precision, build(arch, len(data.labels), aux_heads=False), x_fit, y_fit)
    if run is not None:
        run.params({"precision": chosen.name})
        run.tags({"lifeloop.precision_why": chosen.why})

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    # Unique even for two searches started in the same second into one storage.
    name = f"lifeloop/{arch}/{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}"
    study = optuna.create_study(
        study_name=name,
        storage=storage,
        direction="maximize",
        sampler=optuna.samplers.TPESampler(seed=seed),
        pruner=optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=1),
    )
    study.enqueue_trial({**DEFAULTS, "epochs": max_epochs})
    models: dict[int, nn.Module] = {}  # trial 0 (the defaults) and the best so far

    def objective(trial: optuna.Trial) -> float:
        params: dict[str, Any] = {
            "lr": trial.suggest_float("lr", 3e-4, 1e-2, log=True),
            "weight_decay": trial.suggest_float("weight_decay", 1e-6, 1e-2, log=True),
            "batch_size": trial.suggest_categorical("batch_size", [32, 64, 128]),
            "augment": trial.suggest_float("augment", 0.0, 0.15),
            "epochs": trial.suggest_int("epochs", max(1, max_epochs // 2), max_epochs),
        }
        torch.manual_seed(seed)
        model = build(arch, len(data.labels), aux_heads=False)

        def report(epoch: int, figures: dict[str, float]) -> None:
            accuracy, _ = evaluate(model, x_valid, y_valid, data.labels)
            model.train()
            if child is not None:
                child.metrics({**figures, "validation_accuracy": accuracy}, step=epoch)
            trial.report(accuracy, epoch)
            if trial.should_prune():
                raise _Pruned(f"trial {trial.number} pruned at epoch {epoch + 1}")

        child = None
        try:
            with _child(run, f"trial {trial.number}") as child:
                if child is not None:
                    child.params({**params, "trial": trial.number})
                fit(
                    model,
                    x_fit,
                    y_fit,
                    epochs=params["epochs"],
                    batch_size=params["batch_size"],
                    lr=params["lr"],
                    weight_decay=params["weight_decay"],
                    augment=params["augment"],
                    seed=seed,
                    progress=False,
                    on_epoch=report,
                    precision=chosen,
                )
                accuracy, _ = evaluate(model, x_valid, y_valid, data.labels)
                if child is not None:
                    child.metrics({"validation_accuracy": accuracy})
        except _Pruned as pruned:  # the child run is KILLED by now
            say(f"  {pruned}")
            raise optuna.TrialPruned(str(pruned)) from pruned
        best = study.best_value if _any_complete(study) else -1.0
        if trial.number == 0 or accuracy > best:
            # Keep the defaults' model and the best so far, nothing else.
            for number in [n for n in models if n != 0]:
                del models[number]
            models[trial.number] = copy.deepcopy(model)
        say(f"  trial {trial.number}: validation accuracy {accuracy:.4f} with {describe(params)}")
        return accuracy

    study.optimize(objective, n_trials=trials)
    best_trial = study.best_trial
    defaults_held, _ = evaluate(models[0], data.x_held, data.y_held, data.labels)
    trained = finish(
        models[best_trial.number],
        arch,
        data,
        out,
        {
            "epochs": best_trial.params["epochs"],
            "search": {
                "study": name,
                "storage": storage,
                "trials": trials,
                "best": best_trial.params,
                "best_validation": best_trial.value,
                "defaults_holdout_accuracy": defaults_held,
            },
        },
        run=run,
        precision=chosen,
    )
    return SearchResult(
        trained=trained,
        best=dict(best_trial.params),
        best_validation=float(best_trial.value or 0.0),
        defaults_held_out=defaults_held,
        trials=[
            {"number": t.number, "state": t.state.name, "value": t.value, "params": t.params}
            for t in study.trials
        ],
        study=name,
        storage=storage,
    )


def validation_split(y: np.ndarray, share: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(fit, validation) indices, `share` of each class in validation, stable for a seed."""
    rng = np.random.default_rng(seed)
    fit_idx, valid_idx = [], []
    for c in np.unique(y):
        members = rng.permutation(np.flatnonzero(y == c))
        cut = max(1, round(len(members) * share)) if len(members) > 1 else 0
        valid_idx.append(members[:cut])
        fit_idx.append(members[cut:])
    return np.sort(np.concatenate(fit_idx)), np.sort(np.concatenate(valid_idx))


def _any_complete(study: Any) -> bool:
    return any(t.state.name == "COMPLETE" for t in study.trials)


def _child(run: Run | None, name: str) -> Any:
    import contextlib

    if run is None:
        return contextlib.nullcontext()
    return run.tracker.run(run.model, "train-trial", name=name, parent=run)


def describe(params: dict[str, Any]) -> str:
    return ", ".join(
        f"{k} {v:.2g}" if isinstance(v, float) else f"{k} {v}" for k, v in params.items()
    )
