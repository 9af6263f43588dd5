"""`lifeloop train --search 3` on the digits through the CLI, with real Optuna and MLflow
stores beside the repository: the study, one child run per trial under the search's run, and
the best trial's checkpoint scored on the held-out split beside the defaults'."""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest
from typer.testing import CliRunner

from lifeloop.cli import app
from lifeloop.datasets import ImageFolder
from lifeloop.export.checkpoint import load
from lifeloop.retrain.search import DEFAULTS, default_storage, validation_split
from lifeloop.tracking import Tracker, experiment_name

runner = CliRunner()
TRIALS = 3
EPOCHS = 3


@pytest.fixture(scope="module")
def searched(tmp_path_factory: pytest.TempPathFactory, digits: ImageFolder):
    base = tmp_path_factory.mktemp("search")
    repo, out = base / "model_repository", base / "best.pt"
    result = runner.invoke(
        app,
        [
            *("train", "--data", str(digits.root), "--out", str(out), "-r", str(repo)),
            *("--epochs", str(EPOCHS), "--search", str(TRIALS)),
        ],
    )
    assert result.exit_code == 0, result.output
    return repo, out, result.output


def test_the_study_holds_every_trial_and_the_defaults_first(searched) -> None:
    repo, _, output = searched
    storage = default_storage(repo)
    (summary,) = optuna.get_all_study_summaries(storage)
    study = optuna.load_study(study_name=summary.study_name, storage=storage)
    assert len(study.trials) == TRIALS
    assert study.trials[0].params == {**DEFAULTS, "epochs": EPOCHS}
    assert {t.state.name for t in study.trials} <= {"COMPLETE", "PRUNED"}
    assert f"search: {TRIALS} trials" in output and summary.study_name in output


def test_the_best_trial_is_the_checkpoint_scored_beside_the_defaults(searched) -> None:
    repo, out, output = searched
    checkpoint = load(out)
    search = checkpoint.training["search"]
    study = optuna.load_study(study_name=search["study"], storage=default_storage(repo))
    assert search["best"] == study.best_trial.params
    assert search["best_validation"] == study.best_value
    held = checkpoint.training["holdout_accuracy"]
    assert 0.8 < held <= 1 and 0.8 < search["defaults_holdout_accuracy"] <= 1
    assert f"held-out accuracy {held:.3f} (best of {TRIALS}) against " in " ".join(output.split())


def test_each_trial_is_a_child_run_of_the_search(searched) -> None:
    repo, _, _ = searched
    tracker = Tracker.for_repository(repo)
    assert tracker is not None
    client = tracker.client
    experiment = client.get_experiment_by_name(experiment_name("classifier"))
    (parent,) = client.search_runs(
        [experiment.experiment_id], "tags.`lifeloop.command` = 'train-search'"
    )
    children = client.search_runs(
        [experiment.experiment_id], f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'"
    )
    assert parent.info.status == "FINISHED" and len(children) == TRIALS
    assert {c.info.status for c in children} <= {"FINISHED", "KILLED"}  # KILLED: pruned
    for child in children:
        assert set(DEFAULTS) <= set(child.data.params)
        history = client.get_metric_history(child.info.run_id, "validation_accuracy")
        assert history and all(0 <= m.value <= 1 for m in history)
    assert parent.data.metrics["gain_points"] == pytest.approx(
        (parent.data.metrics["holdout_accuracy"] - parent.data.metrics["defaults_holdout_accuracy"])
        * 100
    )


def test_the_validation_split_is_per_class_and_apart_from_training() -> None:
    import numpy as np

    y = np.repeat(np.arange(4), [10, 20, 1, 40])
    fit_idx, valid_idx = validation_split(y, 0.15, seed=0)
    assert not set(fit_idx) & set(valid_idx) and len(fit_idx) + len(valid_idx) == len(y)
    assert [int((y[valid_idx] == c).sum()) for c in range(4)] == [2, 3, 0, 6]


def test_a_search_of_no_trials_is_refused(tmp_path: Path, digits: ImageFolder) -> None:
    result = runner.invoke(
        app,
        [
            *("train", "--data", str(digits.root), "--out", str(tmp_path / "x.pt")),
            *("--search", "-1", "--tracking-uri", "off"),
        ],
    )
    assert result.exit_code == 1
    assert result.output.strip() == "error: --search needs at least 1 trial, got -1"
