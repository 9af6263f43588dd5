"""`lifeloop bench-learning` on real data: the digits through the CLI, and a Fashion-MNIST
subset from Debian's package, with lifeloop's own retrain functions against naive
fine-tuning and joint training."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from lifeloop.cli import app
from lifeloop.datasets import FASHION_MNIST, fashion_mnist
from lifeloop.errors import DataError
from lifeloop.retrain.cycle import RetrainSettings
from lifeloop.retrain.learning import LEARNERS, StreamSettings, run_stream
from tests.integration.debian import missing

runner = CliRunner()


def test_bench_learning_on_the_digits_writes_every_round_and_target(tmp_path) -> None:
    result = runner.invoke(
        app,
        [
            "bench-learning",
            "--data",
            "digits",
            "--out",
            str(tmp_path),
            "--rounds",
            "3",
            "--classes-per-round",
            "3",
            "--epochs",
            "3",
            "--variants",
            "clean,noisy",
            "--replay-per-class",
            "120",
        ],
    )
    assert result.exit_code == 0, result.output
    assert "class order (seed 0):" in result.output and "learning.json" in result.output
    report = json.loads((tmp_path / "learning.json").read_text())
    page = (tmp_path / "learning.html").read_text()
    assert page.count("<svg") == 2 * 3 and 'id="noisy-forgetting"' in page
    clean = report["variants"]["clean"]
    assert [r["round"] for r in clean["rounds"]] == [0, 1, 2]
    assert [len(r["new_classes"]) for r in clean["rounds"]] == [3, 3, 3]
    first, final = clean["rounds"][0]["learners"], clean["rounds"][-1]["learners"]
    # Round 0 is one version for all three learners.
    assert len({f["all_accuracy"] for f in first.values()}) == 1
    for learner in LEARNERS:
        figures = final[learner]
        assert set(figures["per_class"]) == {str(d) for d in range(10)}
        assert 0 <= figures["all_accuracy"] <= figures["seen_accuracy"] <= 1
    # Naive fine-tuning on the new classes alone forgets the first ones; lifeloop replays.
    first_classes = clean["rounds"][0]["new_classes"]
    naive = clean["forgetting"]["naive"]
    assert set(naive) == set(first_classes + clean["rounds"][1]["new_classes"])
    assert max(f["max_minus_final"] for f in naive.values()) > 0.5
    assert final["lifeloop"]["seen_accuracy"] > final["naive"]["seen_accuracy"] + 0.3
    assert clean["settings"]["retrain"]["replay_per_class"] == 120
    for r in clean["rounds"][1:]:
        gate = r["gate"]
        assert gate["feedback"] > 0 and gate["accepted"] == (not gate["refused"])
        assert 0 < gate["replayed"] <= 120 * (len(r["seen"]) - len(r["new_classes"]))
    assert len(report["targets"]) == 4
    assert all(isinstance(row["met"], bool) for row in report["targets"])
    assert len(report["variants"]["noisy"]["rounds"]) == 3


def test_bench_learning_streams_a_fashion_mnist_subset() -> None:
    if not (FASHION_MNIST / "train-images-idx3-ubyte.gz").is_file():
        missing(f"Fashion-MNIST is not at {FASHION_MNIST}: install Debian's dataset-fashion-mnist")
    train, test = fashion_mnist("train"), fashion_mnist("test")
    assert (len(train), len(test)) == (60000, 10000) and train.images.shape[1:] == (28, 28)
    lines: list[str] = []
    settings = StreamSettings(
        rounds=2,
        classes_per_round=2,
        limit_per_class=150,
        validation_per_class=50,
        retrain=RetrainSettings(epochs=2),
    )
    report = run_stream(train, test, settings, say=lines.append)
    assert lines[0].startswith("class order (seed 0): ") and len(lines) == 3
    final = report["rounds"][-1]
    assert len(final["seen"]) == 4 and set(final["learners"]) == set(LEARNERS)
    # Two rounds of two classes: four of ten classes seen, so all-class accuracy is at most
    # 0.4, and above chance among the four for every learner that learned them.
    assert final["learners"]["joint"]["all_accuracy"] <= 0.4
    assert final["learners"]["joint"]["seen_accuracy"] > 0.5
    assert report["settings"]["limit_per_class"] == 150


def test_a_missing_fashion_mnist_says_how_to_get_it(tmp_path) -> None:
    result = runner.invoke(
        app, ["bench-learning", "--data", str(tmp_path / "nowhere"), "--out", str(tmp_path)]
    )
    assert result.exit_code == 1
    assert "data folder" in result.output and "does not exist" in result.output
    with pytest.raises(DataError, match="apt-get install dataset-fashion-mnist"):
        fashion_mnist("train", root=tmp_path)
