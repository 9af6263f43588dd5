"""The learning bench's bookkeeping and the gate's rule when classes are added, on fixed
answers. tests/integration/test_learning_bench.py runs the stream itself on real data."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from lifeloop.retrain.cycle import RetrainSettings, f1_scores, grow_labels, judge, quota
from lifeloop.retrain.learning import _noisy, _thin, forgetting, targets
from lifeloop.retrain.training import class_weights


class Answers(nn.Module):
    """Answers image i with class answers[i]: the held-out images are 0..n-1."""

    def __init__(self, answers: list[int], classes: int) -> None:
        super().__init__()
        self.answers = torch.tensor(answers)
        self.classes = classes

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        picked = self.answers[x[:, 0, 0, 0].long()]
        return nn.functional.one_hot(picked, self.classes).float()


# Ten coats (0), ten shirts (1), ten pullovers (2, the new class).
Y = np.array([0] * 10 + [1] * 10 + [2] * 10)
X = np.arange(30, dtype=np.float32).reshape(30, 1, 1, 1)
OLD, GROWN = ("coat", "shirt"), ("coat", "shirt", "pullover")
# The champion knows two classes and calls every pullover a coat.
CHAMPION = Answers([0] * 10 + [1] * 10 + [0] * 10, 2)


def test_a_candidate_that_learns_a_look_alike_class_passes_on_f1() -> None:
    # Two coats now called pullovers: coat accuracy drops 20 points, but the champion's
    # 1.0 came from calling all ten pullovers coats; its coat F1 is 0.667, the candidate's
    # 0.842.
    candidate = Answers([0] * 8 + [2] * 2 + [1] * 10 + [0] + [2] * 9, 3)
    verdict = judge(CHAMPION, OLD, candidate, GROWN, X, Y, RetrainSettings())
    assert verdict.passed, verdict.refused
    assert verdict.champion_per_class["coat"] == 1.0 and verdict.candidate_per_class["coat"] == 0.8
    assert f1_scores(np.array(CHAMPION.answers), Y, GROWN)["coat"] == pytest.approx(2 / 3)


def test_a_candidate_that_gives_an_old_class_away_is_refused_on_f1() -> None:
    candidate = Answers([2] * 10 + [1] * 10 + [2] * 10, 3)  # every coat is a pullover now
    verdict = judge(CHAMPION, OLD, candidate, GROWN, X, Y, RetrainSettings(min_delta=-1))
    assert verdict.refused == (
        "class 'coat' F1 drops 66.7 points (0.667 -> 0.000), more than max_drop 2",
    )


def test_without_new_classes_the_gate_compares_accuracy() -> None:
    y, x = Y[:20], X[:20]
    champion = Answers(list(y), 2)
    candidate = Answers([0] * 9 + [1] + [1] * 10, 2)
    verdict = judge(champion, OLD, candidate, OLD, x, y, RetrainSettings())
    assert verdict.refused == (
        "held-out accuracy 0.9500 is below the champion's 1.0000 + min_delta 0",
        "class 'coat' accuracy drops 10.0 points (1.000 -> 0.900), more than max_drop 2",
    )


def test_labels_only_grow_in_order_of_first_appearance() -> None:
    assert grow_labels(("a", "b"), ["c", "a", "d", "c"]) == ("a", "b", "c", "d")


def test_the_replay_quota_takes_at_most_n_per_class_in_order() -> None:
    y = np.array([0] * 5 + [1] * 2 + [2] * 9)
    picked = quota(y, 3, seed=0)
    assert np.bincount(y[picked]).tolist() == [3, 2, 3]
    assert list(picked) == sorted(picked) and quota(y, 3, seed=0).tolist() == picked.tolist()


def test_noisy_labels_are_wrong_at_the_share_asked_and_never_by_chance_right() -> None:
    rng = np.random.default_rng(0)
    names = ["a"] * 5000
    noisy = _noisy(names, ["a", "b", "c"], 0.2, rng)
    wrong = sum(n != "a" for n in noisy) / len(names)
    assert wrong == pytest.approx(0.2, abs=0.02) and set(noisy) == {"a", "b", "c"}


def test_a_rarer_class_keeps_one_in_ratio() -> None:
    members = np.arange(1000)
    assert len(_thin(members, 10.0, np.random.default_rng(0))) == 100
    assert _thin(members, 1.0, np.random.default_rng(0)) is members


def _rounds(per_round: list[dict[str, float]]) -> list[dict]:
    return [{"learners": {"lifeloop": {"per_class": pc}}} for pc in per_round]


def test_forgetting_is_best_before_the_end_minus_final_and_first_minus_final() -> None:
    rounds = _rounds(
        [
            {"a": 0.9, "b": 0.0, "c": 0.0},
            {"a": 0.95, "b": 0.8, "c": 0.0},
            {"a": 0.85, "b": 0.9, "c": 0.7},
        ]
    )
    got = forgetting(rounds, "lifeloop", {"a": 0, "b": 1, "c": 2})
    assert got == {
        "a": {"max_minus_final": pytest.approx(0.1), "first_minus_final": pytest.approx(0.05)},
        "b": {"max_minus_final": pytest.approx(-0.1), "first_minus_final": pytest.approx(-0.1)},
    }


def test_targets_are_met_or_missed_from_the_figures() -> None:
    def final(lifeloop: float, naive: float, joint: float) -> dict:
        return {
            name: {"all_accuracy": value}
            for name, value in (("lifeloop", lifeloop), ("naive", naive), ("joint", joint))
        }

    clean = {
        "rounds": [{"learners": final(0.80, 0.20, 0.85)}],
        "forgetting": {"lifeloop": {"a": {"max_minus_final": 0.04}}},
    }
    accepted = {
        "accepted": True,
        "test_accuracy": {
            "seen_before": 0.5,
            "seen_after": 0.7,
            "old_f1_drop": 0.05,  # more than max_drop (2 points)
        },
    }
    noisy = {
        "settings": {"retrain": {"max_drop": 0.02}},
        "rounds": [{"round": 1, "gate": accepted}],
    }
    rows = targets({"clean": clean, "noisy": noisy})
    assert [(row["met"], row["value"]) for row in rows] == [
        (False, 0.05),
        (True, 0.04),
        (True, 0.65),
        (False, [1]),
    ]


def test_capped_weights_count_no_class_above_the_cap_and_average_one() -> None:
    y = np.array([0] * 600 + [1] * 150 + [3] * 50)  # class 2 absent
    weights = class_weights(y, cap=150)
    effective = [weights[c].item() * int(np.sum(y == c)) for c in (0, 1, 3)]
    # Class 0's 600 images count as 150, like class 1's; class 3's 50 are not raised.
    assert effective[0] == pytest.approx(effective[1]) == pytest.approx(3 * effective[2])
    assert weights[2].item() == 0.0
    assert float(weights[torch.from_numpy(y)].mean()) == pytest.approx(1.0)
