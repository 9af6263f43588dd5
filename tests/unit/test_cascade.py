"""The cascade's logic with numbers, without Triton: which images the light model answers,
what escalates, how answers merge back in order and what is logged; the threshold that
`calibrate` picks; the policy file; and the store column for the answering model. The
integration tests run the same code inside tritonserver (tests/integration/test_cascade.py)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import sqlalchemy as sa

from lifeloop.errors import RolloutError
from lifeloop.rollout.cascade import Outcomes, calibrate, point
from lifeloop.rollout.policy import Cascade, RoutingPolicy
from lifeloop.serve.routing import (
    LIGHT_ROUTE,
    Answer,
    Kept,
    answer_routes,
    first_pass,
    log_batch,
)
from lifeloop.store import Store
from lifeloop.store.database import Prediction

LABELS = ("zero", "one", "two")
BLOB = Path("/kept/ab/batch.npy")
CASCADE = Cascade(light="digits_int8", version=4, threshold=0.9)


def images(n: int, start: float) -> np.ndarray:
    return np.arange(start, start + 2 * n, dtype=np.float32).reshape(n, 2)


def heavy(version: int, batch: np.ndarray) -> np.ndarray:
    """The heavy model: class 2 for every image, logits marked by the image's first value."""
    return np.column_stack([batch[:, 0], np.zeros(len(batch)), np.full(len(batch), 100.0)])


# Light logits for 5 images: sure (0), unsure, sure (1), unsure, sure (0).
LIGHT_LOGITS = np.array(
    [[9.0, 0, 0], [1.0, 0.9, 0.8], [0, 9.0, 0], [0.5, 0.4, 0.3], [9.0, 0, 0]], np.float32
)


def light_pass(trusted: frozenset[int] = frozenset({1, 2})):
    return first_pass(
        "digits_int8", 4, LIGHT_LOGITS, threshold=CASCADE.threshold, top_k=2, trusted=trusted
    )


def test_confident_images_are_answered_by_the_light_model_and_the_rest_escalate() -> None:
    arrays = [images(2, 0), images(2, 10), images(1, 20)]
    routes = [("champion", 1), ("canary", 2), ("champion", 1)]
    calls = []

    def infer(version: int, batch: np.ndarray) -> np.ndarray:
        calls.append((version, batch[:, 0].tolist()))
        return heavy(version, batch)

    answers = answer_routes(arrays, routes, infer, top_k=2, light=light_pass())
    # One sub-batch per arm, only of escalated images; the last request makes no call.
    assert calls == [(1, [2.0]), (2, [12.0])]
    first, second, third = answers
    assert isinstance(first, Answer) and isinstance(second, Answer) and isinstance(third, Answer)
    assert [first.answered_by(j) for j in range(2)] == [
        ("digits_int8", 4, LIGHT_ROUTE),
        (None, 1, "champion"),
    ]
    assert [second.answered_by(j) for j in range(2)] == [
        ("digits_int8", 4, LIGHT_ROUTE),
        (None, 2, "canary"),
    ]
    assert third.answered_by(0) == ("digits_int8", 4, LIGHT_ROUTE)
    # Rows in request order: the light model's logits, then the heavy model's.
    np.testing.assert_array_equal(first.logits, [LIGHT_LOGITS[0], [2.0, 0.0, 100.0]])
    np.testing.assert_array_equal(second.logits, [LIGHT_LOGITS[2], [12.0, 0.0, 100.0]])
    assert first.top == [[0, 1], [2, 0]] and second.top[0] == [1, 0]
    assert first.versions().tolist() == [[4], [1]] and third.versions().tolist() == [[4]]


def test_an_arm_whose_labels_the_light_model_lacks_gets_every_image() -> None:
    """The candidate (v2) knows a class the light model does not: its requests all escalate,
    the champion's still use the light model."""
    arrays = [images(2, 0), images(2, 10)]
    routes = [("champion", 1), ("canary", 2)]
    answers = answer_routes(arrays, routes, heavy, top_k=1, light=light_pass(frozenset({1})))
    first, second = answers
    assert isinstance(first, Answer) and isinstance(second, Answer)
    assert first.by_light == (True, False)
    assert second.light is None  # the arm's own answer, as without a cascade
    assert [second.answered_by(j)[2] for j in range(2)] == ["canary", "canary"]


def test_a_failing_heavy_arm_fails_only_its_requests() -> None:
    def infer(version: int, batch: np.ndarray) -> np.ndarray:
        if version == 2:
            raise RuntimeError("digits v2: not loaded")
        return heavy(version, batch)

    arrays = [images(2, 0), images(2, 10), images(1, 20)]
    routes = [("champion", 1), ("canary", 2), ("canary", 2)]
    first, second, third = answer_routes(arrays, routes, infer, top_k=1, light=light_pass())
    assert isinstance(first, Answer) and isinstance(second, RuntimeError)
    # All of this request's images were the light model's: the broken arm was never asked.
    assert isinstance(third, Answer) and third.by_light == (True,)


def test_light_answers_are_logged_with_the_light_model_and_shadow_compares_with_them() -> None:
    arrays = [images(2, 0), images(2, 10)]
    routes = [("champion", 1), ("canary", 2)]
    policy = RoutingPolicy(model="digits", champion=1, candidate=2, shadow=True, cascade=CASCADE)
    answers = answer_routes(arrays, routes, heavy, top_k=2, light=light_pass())
    shadow = np.array([0, 1, 1, 2])  # the candidate's top-1 on every image
    counter = iter(range(10))
    batch = log_batch(
        answers,
        arrays,
        model="digits",
        labels=LABELS,
        policy=policy,
        shadow=shadow,
        kept=Kept(hashes=["h"] * 4, rows=[0, 1, 2, 3], blob=str(BLOB)),
        new_id=lambda: f"id{next(counter)}",
    )
    got = [
        (r.version, r.route, r.answered_by, r.labels[0], r.shadow_version, r.shadow_label)
        for r in batch.records
    ]
    assert got == [
        (4, "light", "digits_int8", "zero", 2, "zero"),
        (1, "champion", None, "two", 2, "one"),
        (4, "light", "digits_int8", "one", 2, "one"),
        (2, "canary", None, "two", None, None),  # the candidate is not compared with itself
    ]


def outcomes(confidence, light, heavy_right) -> Outcomes:
    return Outcomes(
        np.array(confidence, np.float32), np.array(light, bool), np.array(heavy_right, bool)
    )


def test_calibrate_picks_the_lowest_threshold_within_the_budget() -> None:
    # Ten images, heavy right on all but the last. The light model is wrong on its two
    # least confident images (0.5, 0.6) and right on the others.
    found = outcomes(
        [0.99, 0.98, 0.97, 0.95, 0.9, 0.85, 0.8, 0.7, 0.6, 0.5],
        [1, 1, 1, 1, 1, 1, 1, 1, 0, 0],
        [1, 1, 1, 1, 1, 1, 1, 1, 1, 0],
    )
    within_nothing = calibrate(found, max_drop=0.0)
    # Heavy alone: 0.9. Keeping down to 0.7 on the light model is still 0.9 (it is right
    # there); 0.6 costs one image.
    assert within_nothing.heavy_accuracy == pytest.approx(0.9)
    assert within_nothing.chosen is not None
    assert within_nothing.chosen.threshold == pytest.approx(0.7)
    assert within_nothing.chosen.accuracy == pytest.approx(0.9)
    assert within_nothing.chosen.light_fraction == pytest.approx(0.8)
    # Ten points allow the 0.6 image too; the 0.5 one is the heavy model's miss anyway,
    # so every image goes to the light model at 0.8 accuracy.
    generous = calibrate(found, max_drop=10.0)
    assert generous.chosen is not None and generous.chosen.threshold == pytest.approx(0.5)
    assert generous.chosen.accuracy == pytest.approx(0.8)
    assert generous.chosen.light_fraction == 1.0
    assert point(found, 0.95).light_fraction == pytest.approx(0.4)


def test_calibrate_counts_tied_confidences_together_and_may_find_nothing() -> None:
    # Two images at the top confidence, one of them wrong: no threshold separates them.
    tied = outcomes([1.0, 1.0, 0.4], [1, 0, 1], [1, 1, 1])
    result = calibrate(tied, max_drop=0.0)
    assert result.chosen is None  # 1.0 keeps both; nothing above 1.0 is a threshold
    assert [p.threshold for p in result.points] == [0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99]
    with pytest.raises(RolloutError, match="max-drop"):
        calibrate(tied, max_drop=-1)


def test_the_policy_round_trips_its_cascade_and_refuses_bad_ones() -> None:
    policy = RoutingPolicy(model="digits", champion=1, cascade=CASCADE)
    again = RoutingPolicy.from_json(policy.to_json())
    assert again == policy and again.cascade == CASCADE
    assert RoutingPolicy.from_json(policy.evolve(cascade=None).to_json()).cascade is None
    with pytest.raises(RolloutError, match="threshold must be in 0..1"):
        Cascade(light="x", version=1, threshold=1.5)
    with pytest.raises(RolloutError, match="another model"):
        RoutingPolicy(
            model="digits", champion=1, cascade=Cascade(light="digits", version=1, threshold=0.5)
        )
    with pytest.raises(RolloutError, match="not a routing policy"):
        RoutingPolicy.from_json('{"model": "d", "champion": 1, "cascade": {"light": "x"}}')


def test_a_store_made_before_the_cascade_gains_its_column(store: Store) -> None:
    """An older store's predictions table lacks `answered_by`: opening it adds the column,
    and old rows read as answered by the model itself."""
    with store.engine.begin() as c:
        c.execute(sa.text("ALTER TABLE predictions DROP COLUMN answered_by"))
    old = Store(store.url)  # a newer lifeloop opens the older store
    old.record_predictions(
        [
            Prediction(
                request_id="r1",
                model="digits",
                version=4,
                route=LIGHT_ROUTE,
                answered_by="digits_int8",
                labels=["one"],
                scores=[0.99],
                content_hash="h",
            )
        ]
    )
    row = old.prediction("r1")
    assert row is not None and row["answered_by"] == "digits_int8" and row["route"] == "light"
    old.close()
