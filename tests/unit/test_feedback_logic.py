"""The feedback model's per-request logic without Triton: decoding, pairing ids with labels,
which answer a request gets, and when an unknown id is worth retrying (the integration tests
send the same requests through tritonserver)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from lifeloop.errors import FeedbackError, JournalFull, StoreUnavailable
from lifeloop.serve.feedback import (
    Outcome,
    Reply,
    decode_strings,
    label_pairs,
    reply,
    spooled_retry,
)
from lifeloop.store.database import Prediction, Store


@pytest.fixture
def store(tmp_path: Path):
    with Store(f"sqlite:///{tmp_path / 'store.db'}") as opened:
        opened.record_predictions(
            [
                Prediction(
                    request_id=rid,
                    model="digits",
                    version=1,
                    route="champion",
                    labels=["3"],
                    scores=[0.9],
                    content_hash="0" * 32,
                )
                for rid in ("a1", "b2")
            ]
        )
        yield opened


def test_decode_strings_flattens_rows_and_replaces_bad_utf8() -> None:
    tensor = np.array([[b"a1"], [b"\xffx"], ["b2"]], dtype=np.object_)
    assert decode_strings(tensor) == ["a1", "\ufffdx", "b2"]


def test_pairs_follow_row_order() -> None:
    assert label_pairs(["a1", "b2"], ["3", "7"]) == [("a1", "3"), ("b2", "7")]


def test_more_ids_than_labels_is_refused_before_the_store_is_asked() -> None:
    def add(pairs: list[tuple[str, str]]) -> None:
        raise AssertionError("the store was asked")

    assert reply(["a1", "b2"], ["3"], add) == Reply(
        Outcome.INVALID,
        message="feedback has 2 request ids and 1 labels; send one label per id",
    )


def test_accepted_feedback_counts_its_rows(store: Store) -> None:
    assert reply(["a1", "b2"], ["3", "7"], store.add_feedback) == Reply(
        Outcome.ACCEPTED, accepted=2
    )
    assert store.count_feedback() == 2


@pytest.mark.parametrize(
    ("ids", "labels", "message"),
    [
        (
            ["a1", "nope"],
            ["3", "7"],
            "feedback names unknown request id 'nope'; use ids returned by the router's "
            "request_id output",
        ),
        (["a1"], [" "], "feedback for request 'a1' has an empty label; pass the true class"),
        ([""], ["3"], "feedback has an empty request id; pass the id the router returned"),
    ],
)
def test_the_callers_mistakes_are_invalid_and_write_nothing(
    store: Store, ids: list[str], labels: list[str], message: str
) -> None:
    assert reply(ids, labels, store.add_feedback) == Reply(Outcome.INVALID, message=message)
    assert store.count_feedback() == 0


@pytest.mark.parametrize(
    "error",
    [StoreUnavailable("the store did not take the feedback"), JournalFull("journal full")],
)
def test_store_errors_are_unavailable(error: Exception) -> None:
    def add(pairs: list[tuple[str, str]]) -> None:
        raise error

    assert reply(["a1"], ["3"], add) == Reply(Outcome.UNAVAILABLE, message=str(error))


def test_an_unexpected_error_is_not_turned_into_an_answer() -> None:
    def add(pairs: list[tuple[str, str]]) -> None:
        raise KeyError("bug")

    with pytest.raises(KeyError):
        reply(["a1"], ["3"], add)


def test_an_unknown_id_while_the_router_has_spooled_predictions_is_a_retry() -> None:
    unknown = FeedbackError("feedback names unknown request id 'zz'; use ids returned ...")
    retry = spooled_retry(unknown, lambda: 3)
    assert isinstance(retry, StoreUnavailable)
    assert str(retry) == (
        "feedback names unknown request id 'zz'; use ids returned ...; the router has 3 "
        "predictions spooled after a store outage that may hold it, send it again shortly"
    )
    assert spooled_retry(unknown, lambda: 0) is None


def test_the_spool_is_not_read_for_other_mistakes() -> None:
    def pending() -> int:
        raise AssertionError("the spool was read")

    empty = FeedbackError("feedback for request 'a1' has an empty label; pass the true class")
    assert spooled_retry(empty, pending) is None
