"""The router's batch planner with numbers, without Triton (the integration tests run the same
code inside tritonserver through lifeloop.serve.router)."""

from __future__ import annotations

import random
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from lifeloop.errors import RolloutError
from lifeloop.rollout.policy import RoutingPolicy
from lifeloop.serve.routing import (
    Answer,
    Kept,
    answer_routes,
    group_routes,
    keep_decisions,
    kept_rows,
    label_name,
    log_batch,
    plan_routes,
    sample_rows,
    shadow_top1,
    split_answers,
)
from lifeloop.serve.sampling import KeepRule
from lifeloop.store.blobs import content_hash

LABELS = ("zero", "one", "two")
BLOB = Path("/kept/ab/batch.npy")
CHAMPION_ONLY = RoutingPolicy(model="digits", champion=1)
CANARY = RoutingPolicy(model="digits", champion=1, candidate=2, canary_weight=0.25)
SHADOW = RoutingPolicy(model="digits", champion=1, candidate=2, shadow=True)


class Draws:
    """A random source that returns these numbers in turn and fails when asked for more."""

    def __init__(self, *values: float) -> None:
        self.values = list(values)

    def random(self) -> float:
        if not self.values:
            raise AssertionError("drew more random numbers than the test scripted")
        return self.values.pop(0)


def ids() -> Callable[[], str]:
    counter = iter(range(100))
    return lambda: f"id{next(counter)}"


def images(n: int, start: float) -> np.ndarray:
    """n images of shape (2,), distinct values so that content hashes differ."""
    return np.arange(start, start + 2 * n, dtype=np.float32).reshape(n, 2)


def kept_all(arrays: list[np.ndarray]) -> Kept:
    """Every image kept, in batch order, with its real content hash."""
    images = np.concatenate(arrays)
    return Kept(
        hashes=[content_hash(image) for image in images],
        rows=list(range(len(images))),
        blob=str(BLOB),
    )


def answer(version: int, route: str, top: list[list[int]], n: int | None = None) -> Answer:
    n = len(top) if n is None else n
    scores = [[0.5 - 0.1 * k for k in range(len(row))] for row in top]
    return Answer(np.zeros((n, 3), np.float32), version, route, top, scores)


def test_canary_weight_sends_a_seeded_quarter_of_requests_to_the_candidate() -> None:
    # random.Random(7) draws 0.324 0.151 0.651 0.072 0.536 0.366 0.058 0.507: three below 0.25.
    routes = plan_routes(CANARY, 8, random.Random(7))
    canary, champion = ("canary", 2), ("champion", 1)
    assert routes == [champion, canary, champion, canary, champion, champion, canary, champion]


def test_a_draw_equal_to_the_canary_weight_goes_to_the_champion() -> None:
    draws = Draws(0.25, 0.2499, 0.0)
    assert plan_routes(CANARY, 3, draws) == [("champion", 1), ("canary", 2), ("canary", 2)]
    assert draws.values == []


@pytest.mark.parametrize("policy", [CHAMPION_ONLY, SHADOW], ids=["no-candidate", "shadow-only"])
def test_no_random_draw_when_no_canary_takes_traffic(policy: RoutingPolicy) -> None:
    assert plan_routes(policy, 4, Draws()) == [("champion", 1)] * 4


def test_groups_keep_request_order_and_first_appearance_order() -> None:
    groups = group_routes([("canary", 2), ("champion", 1), ("canary", 2), ("champion", 1)])
    assert list(groups.items()) == [(("canary", 2), [0, 2]), (("champion", 1), [1, 3])]


def test_one_top_k_over_the_version_batch_is_split_back_per_request() -> None:
    logits = np.array([[2.0, 0.0, 1.0, -1.0], [0.0, 3.0, 0.0, 0.0], [1.0, 1.0, 1.0, 1.0]])
    first, second = split_answers(logits, [2, 1], version=3, route="canary", top_k=2)
    assert (first.version, first.route, second.version, second.route) == (3, "canary", 3, "canary")
    np.testing.assert_array_equal(first.logits, logits[:2])
    np.testing.assert_array_equal(second.logits, logits[2:])
    assert first.top == [[0, 2], [1, 0]]
    # e^2 / (e^2 + 1 + e + e^-1) and e / (...); e^3 / (e^3 + 3) and 1 / (e^3 + 3)
    np.testing.assert_allclose(first.scores, [[0.643914, 0.236883], [0.870049, 0.043317]], 1e-5)
    assert second.top == [[0, 1]]  # a tie keeps the lower index first
    assert second.scores == [[0.25, 0.25]]


def test_top_k_above_the_class_count_keeps_every_class() -> None:
    (only,) = split_answers(np.array([[0.0, 1.0, 2.0]]), [1], version=1, route="champion", top_k=5)
    assert only.top == [[2, 1, 0]]


def test_each_version_is_called_once_and_a_failing_version_fails_only_its_requests() -> None:
    arrays = [images(2, 0), images(1, 10), images(1, 20), images(3, 30)]
    routes = [("champion", 1), ("canary", 2), ("champion", 1), ("canary", 2)]
    calls = []

    def infer(version: int, batch: np.ndarray) -> np.ndarray:
        calls.append((version, batch.copy()))
        if version == 2:
            raise RuntimeError("digits v2: not loaded")
        return np.column_stack([batch[:, 0], -batch[:, 0], np.zeros(len(batch))])

    answers = answer_routes(arrays, routes, infer, top_k=1)
    assert [v for v, _ in calls] == [1, 2]
    np.testing.assert_array_equal(calls[0][1], np.concatenate([arrays[0], arrays[2]]))
    np.testing.assert_array_equal(calls[1][1], np.concatenate([arrays[1], arrays[3]]))
    assert isinstance(answers[1], RuntimeError) and answers[1] is answers[3]
    assert str(answers[1]) == "digits v2: not loaded"
    first, third = answers[0], answers[2]
    assert isinstance(first, Answer) and isinstance(third, Answer)
    np.testing.assert_array_equal(first.logits, [[0.0, -0.0, 0.0], [2.0, -2.0, 0.0]])
    np.testing.assert_array_equal(third.logits, [[20.0, -20.0, 0.0]])
    assert first.top == [[0], [0]] and third.top == [[0]]
    assert (first.version, first.route) == (1, "champion")


def test_shadow_is_the_candidates_top1_on_every_image() -> None:
    calls = []

    def infer(version: int, batch: np.ndarray) -> np.ndarray:
        calls.append((version, len(batch)))
        return np.array([[0.0, 1.0, 0.5], [3.0, 1.0, 2.0], [0.0, 0.0, 9.0]])

    top1 = shadow_top1(SHADOW, [images(2, 0), images(1, 4)], infer)
    assert calls == [(2, 3)]
    assert top1 is not None and top1.tolist() == [1, 0, 2]


def test_no_shadow_without_shadow_mode_and_a_failing_shadow_is_only_not_recorded() -> None:
    def fails(version: int, batch: np.ndarray) -> np.ndarray:
        raise RuntimeError("candidate down")

    def never(version: int, batch: np.ndarray) -> np.ndarray:
        raise AssertionError("shadow ran without shadow mode")

    assert shadow_top1(SHADOW, [images(1, 0)], fails) is None
    assert shadow_top1(CANARY, [images(1, 0)], never) is None


def test_records_follow_request_then_image_order_with_their_fields() -> None:
    arrays = [images(2, 0), images(1, 10)]
    answers: list[Answer | Exception] = [
        answer(1, "champion", [[2, 0], [1, 3]]),
        answer(2, "canary", [[0, 1]]),
    ]
    batch = log_batch(
        answers,
        arrays,
        model="digits",
        labels=LABELS,
        policy=CANARY,
        shadow=None,
        kept=kept_all(arrays),
        new_id=ids(),
    )
    assert batch.request_ids == [["id0", "id1"], ["id2"]]
    rows = [
        (r.request_id, r.model, r.version, r.route, list(r.labels), list(r.scores), r.blob_row)
        for r in batch.records
    ]
    assert rows == [
        ("id0", "digits", 1, "champion", ["two", "zero"], [0.5, 0.4], 0),
        ("id1", "digits", 1, "champion", ["one", "3"], [0.5, 0.4], 1),  # 3 has no label yet
        ("id2", "digits", 2, "canary", ["zero", "one"], [0.5, 0.4], 2),
    ]
    assert {r.blob for r in batch.records} == {str(BLOB)}
    assert [r.content_hash for r in batch.records] == [
        content_hash(arrays[0][0]),
        content_hash(arrays[0][1]),
        content_hash(arrays[1][0]),
    ]
    assert len({r.content_hash for r in batch.records}) == 3
    assert all(r.shadow_version is None and r.shadow_label is None for r in batch.records)


def test_a_sample_rate_of_one_keeps_every_image_without_a_draw() -> None:
    assert sample_rows(3, 1.0, Draws()) == [0, 1, 2]


def test_half_sample_rate_draws_once_per_image_and_numbers_the_kept_rows() -> None:
    draws = Draws(0.1, 0.7, 0.5, 0.4999)
    assert sample_rows(4, 0.5, draws) == [0, None, None, 1]  # 0.5 is not below 0.5
    assert draws.values == []


def test_failed_requests_keep_no_inputs_and_the_rest_are_renumbered() -> None:
    arrays = [images(2, 0), images(3, 10), images(2, 20)]
    answers: list[Answer | Exception] = [
        answer(1, "champion", [[0], [1]]),
        RuntimeError("digits v2: not loaded"),
        answer(1, "champion", [[2], [2]]),
    ]
    drawn = [0, None, 1, 2, None, None, 3]
    rule = KeepRule(uniform=0.5, uncertain_below=0.0, disagreeing=False)
    decisions = keep_decisions(drawn, answers, arrays, rule=rule)
    assert decisions == [
        ("uniform", 0.5),
        (None, 0.5),
        *[(None, None)] * 3,  # the failed request's images: no record, no chance
        (None, 0.5),
        ("uniform", 0.5),
    ]
    rows = kept_rows(decisions)
    assert rows == [0, None, None, None, None, None, 1]
    batch = log_batch(
        answers,
        arrays,
        model="digits",
        labels=LABELS,
        policy=CHAMPION_ONLY,
        shadow=None,
        kept=Kept(
            hashes=[f"h{i}" for i in range(7)], rows=rows, blob=str(BLOB), decisions=decisions
        ),
        new_id=ids(),
    )
    assert batch.request_ids == [["id0", "id1"], None, ["id2", "id3"]]
    assert [
        (r.content_hash, r.blob_row, r.blob, r.kept_by, r.keep_rate) for r in batch.records
    ] == [
        ("h0", 0, str(BLOB), "uniform", 0.5),
        ("h1", None, None, None, 0.5),
        ("h5", None, None, None, 0.5),  # the failed request's three images are skipped
        ("h6", 1, str(BLOB), "uniform", 0.5),
    ]


def scored(version: int, route: str, top1: list[float]) -> Answer:
    """An answer whose images' top-1 scores are `top1` (class 0 each)."""
    top = [[0, 1] for _ in top1]
    scores = [[p, 1 - p] for p in top1]
    return Answer(np.zeros((len(top1), 3), np.float32), version, route, top, scores)


def test_uncertain_answers_are_kept_without_a_draw_and_weigh_one() -> None:
    arrays = [images(4, 0)]
    answers: list[Answer | Exception] = [scored(1, "champion", [0.9, 0.3, 0.49, 0.3])]
    rule = KeepRule(uniform=0.01, uncertain_below=0.5)
    # the last image was also drawn: it belongs to the uniform sample, at its stratum's rate
    decisions = keep_decisions([None, None, None, 0], answers, arrays, rule=rule)
    assert decisions == [(None, 0.01), ("uncertain", 1.0), ("uncertain", 1.0), ("uniform", 1.0)]
    assert kept_rows(decisions) == [None, 0, 1, 2]


def test_a_shadowing_candidate_that_disagrees_keeps_the_input_but_never_a_canary_answer() -> None:
    arrays = [images(2, 0), images(1, 10)]
    answers: list[Answer | Exception] = [
        scored(1, "champion", [0.9, 0.9]),
        scored(2, "canary", [0.9]),
    ]
    shadow = np.array([1, 0, 1])  # disagrees with the first champion answer and the canary's
    decisions = keep_decisions([None] * 3, answers, arrays, rule=KeepRule(), shadow=shadow)
    assert decisions == [("disagreed", 1.0), (None, 0.002), (None, 0.002)]
    off = KeepRule(disagreeing=False)
    assert keep_decisions([None] * 3, answers, arrays, rule=off, shadow=shadow)[0] == (None, 0.002)


def test_the_keep_rule_round_trips_through_a_config_and_an_old_router_keeps_its_sample_only() -> (
    None
):
    rule = KeepRule(uniform=0.05, uncertain_below=0.3, disagreeing=False)
    assert KeepRule.from_parameters(rule.to_parameters()) == rule
    old = KeepRule.from_parameters({"lifeloop.blob_sample_rate": "0.5"})
    assert old == KeepRule(uniform=0.5, uncertain_below=0.0, disagreeing=False)
    assert KeepRule.from_parameters({}).keeps_everything  # the first routers kept every input


def test_a_keep_rule_out_of_range_is_refused_naming_the_setting() -> None:
    with pytest.raises(RolloutError, match=r"keep_uncertain_below must be in 0..1, got 1.5"):
        KeepRule(uncertain_below=1.5)
    with pytest.raises(RolloutError, match=r"sample_rate must be in 0..1, got -0.1"):
        KeepRule(uniform=-0.1)


def test_shadow_labels_only_on_champion_answers_at_each_images_batch_offset() -> None:
    arrays = [images(1, 0), images(2, 10), images(1, 20), images(1, 30)]
    answers: list[Answer | Exception] = [
        answer(1, "champion", [[1]]),
        answer(2, "canary", [[0], [0]]),
        RuntimeError("failed"),
        answer(1, "champion", [[2]]),
    ]
    shadow = np.array([2, 0, 1, 1, 7])  # the candidate's top-1 per image of the whole batch
    batch = log_batch(
        answers,
        arrays,
        model="digits",
        labels=LABELS,
        policy=RoutingPolicy(
            model="digits", champion=1, candidate=2, canary_weight=0.5, shadow=True
        ),
        shadow=shadow,
        kept=kept_all(arrays),
        new_id=ids(),
    )
    assert [(r.route, r.shadow_version, r.shadow_label) for r in batch.records] == [
        ("champion", 2, "two"),
        ("canary", None, None),
        ("canary", None, None),
        ("champion", 2, "7"),  # image 4 of the batch, after the failed request's image 3
    ]


def test_label_name_falls_back_to_the_index_for_a_class_without_a_name() -> None:
    assert [label_name(LABELS, i) for i in (0, 2, 3, 10)] == ["zero", "two", "3", "10"]


def test_per_request_calls_keep_each_requests_images_apart_and_its_failure_its_own() -> None:
    """For a cached classifier: one call per request, so the cache key is that request's
    images; a failing call fails only its request."""
    arrays = [images(2, 0), images(1, 10), images(1, 20)]
    calls: list[tuple[int, list[np.ndarray]]] = []

    def infer_each(version: int, batches: list[np.ndarray]) -> list[np.ndarray | Exception]:
        calls.append((version, batches))
        return [
            RuntimeError("v1 refused") if b[0, 0] == 10 else np.tile([[0.0, 5.0, 1.0]], (len(b), 1))
            for b in batches
        ]

    def infer(version: int, batch: np.ndarray) -> np.ndarray:
        raise AssertionError("the batch was concatenated")

    answers = answer_routes(arrays, [("champion", 1)] * 3, infer, 2, infer_each=infer_each)
    assert [v for v, _ in calls] == [1]
    assert [b.tolist() for b in calls[0][1]] == [a.tolist() for a in arrays]
    first, failed, third = answers
    assert isinstance(first, Answer) and first.top == [[1, 2], [1, 2]] and first.version == 1
    assert isinstance(failed, RuntimeError) and str(failed) == "v1 refused"
    assert isinstance(third, Answer) and len(third.logits) == 1
