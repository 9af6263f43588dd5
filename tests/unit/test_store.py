"""The store on real SQLite and on a real PostgreSQL server: the same tests on both."""

from __future__ import annotations

import threading
import uuid
from datetime import timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa

from lifeloop.errors import FeedbackError, StoreError
from lifeloop.store import Store
from lifeloop.store.database import Event, Prediction, now


def predictions(n: int, *, version: int = 1, route: str = "champion") -> list[Prediction]:
    return [
        Prediction(
            request_id=uuid.uuid4().hex,
            model="digits",
            version=version,
            route=route,
            labels=[str(i % 10), str((i + 1) % 10)],
            scores=[0.9, 0.1],
            content_hash=f"{i:032x}",
        )
        for i in range(n)
    ]


def test_predictions_and_feedback_round_trip(store: Store) -> None:
    batch = predictions(10)
    store.record_predictions(batch)
    assert store.count_predictions("digits") == 10
    row = store.prediction(batch[3].request_id)
    assert row is not None and row["label"] == "3" and row["version"] == 1
    assert store.add_feedback([(batch[0].request_id, "0"), (batch[1].request_id, "7")]) == 2
    store.add_feedback([(batch[1].request_id, "new-class")])  # a second label replaces the first
    labelled = {r.request_id: (r.predicted, r.label) for r in store.labelled("digits")}
    assert labelled == {batch[0].request_id: ("0", "0"), batch[1].request_id: ("1", "new-class")}


def test_bad_feedback_leaves_the_store_unchanged(store: Store) -> None:
    batch = predictions(3)
    store.record_predictions(batch)
    store.add_feedback([(batch[0].request_id, "0")])
    with pytest.raises(FeedbackError, match="unknown request id 'missing'"):
        store.add_feedback([(batch[1].request_id, "1"), ("missing", "2")])
    with pytest.raises(FeedbackError, match="empty label"):
        store.add_feedback([(batch[2].request_id, "  ")])
    assert store.count_feedback() == 1
    assert [r.label for r in store.labelled("digits")] == ["0"]


def test_arm_scores_count_labelled_and_wrong_per_arm(store: Store) -> None:
    since = now() - timedelta(seconds=1)
    champion, canary = predictions(10), predictions(4, version=2, route="canary")
    store.record_predictions(champion + canary)
    store.add_feedback([(p.request_id, p.labels[0]) for p in champion[:8]])
    store.add_feedback(
        [(p.request_id, "wrong") for p in canary[:3]]
        + [(canary[3].request_id, canary[3].labels[0])]
    )
    scores = store.arm_scores("digits", since)
    assert (scores[("champion", 1)].labelled, scores[("champion", 1)].wrong) == (8, 0)
    assert (scores[("canary", 2)].labelled, scores[("canary", 2)].wrong) == (4, 3)
    assert scores[("canary", 2)].error_rate == pytest.approx(0.75)
    assert store.arm_scores("digits", now() + timedelta(hours=1)) == {}


def test_history_and_training_records(store: Store) -> None:
    for action, champion in (("init", 1), ("promote", 2)):
        store.add_event(
            Event(
                model="digits",
                action=action,
                champion=champion,
                candidate=None,
                previous=None,
                canary_weight=0.0,
                shadow=False,
                reason=f"test {action}",
                created_at=now(),
            )
        )
    assert [(e.action, e.champion) for e in store.history("digits")] == [
        ("init", 1),
        ("promote", 2),
    ]
    store.record_training("digits", 2, ["b", "a"], {"0": 5, "new": 3}, {"accuracy": 0.95})
    record = store.training("digits", 2)
    assert record is not None and record["request_ids"] == ["a", "b"]
    assert record["counts"] == {"0": 5, "new": 3}
    assert store.trained_request_ids("digits") == {"a", "b"}


def test_two_writers_share_one_store(store: Store) -> None:
    """Several servers (here: engines) writing the same store at once lose nothing."""
    other = Store(store.url)
    batches = [predictions(20) for _ in range(10)]
    try:
        threads = [
            threading.Thread(target=(store if i % 2 else other).record_predictions, args=(b,))
            for i, b in enumerate(batches)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    finally:
        other.close()
    assert store.count_predictions("digits") == 200


def test_unreachable_store_fails_at_open_in_one_line(tmp_path: Path) -> None:
    from lifeloop.serve.launcher import free_port

    url = f"postgresql://lifeloop:secret@127.0.0.1:{free_port()}/lifeloop"
    with pytest.raises(StoreError) as caught:
        Store(url)
    message = str(caught.value)
    assert "cannot open the store at postgresql://lifeloop:***@127.0.0.1" in message
    assert "\n" not in message and "secret" not in message
    with pytest.raises(StoreError, match="does not exist"):
        Store(f"sqlite:///{tmp_path / 'missing' / 'store.db'}")
    with pytest.raises(StoreError, match="cannot open the store"):
        Store("nosuchdb://x")


def test_sqlite_store_is_in_wal_mode(tmp_path: Path) -> None:
    with Store(f"sqlite:///{tmp_path / 's.db'}") as store, store.engine.connect() as c:
        assert c.execute(sa.text("PRAGMA journal_mode")).scalar() == "wal"


def test_a_url_without_host_or_credentials_takes_them_from_libpq_variables(
    postgres_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """docker-compose and Kubernetes write `postgresql+psycopg://` into the feedback model's
    config and pass PGHOST, PGPORT, PGUSER, PGPASSWORD and PGDATABASE from a Secret, so no
    password lands in config.pbtxt."""
    import sqlalchemy as sa

    from lifeloop.serve.launcher import free_port
    from lifeloop.store.database import metadata

    server = sa.engine.make_url(postgres_url)
    for name, value in {
        "PGHOST": server.host,
        "PGPORT": server.port,
        "PGUSER": server.username,
        "PGDATABASE": server.database,
    }.items():
        monkeypatch.setenv(name, str(value))
    with Store("postgresql+psycopg://") as store:
        store.record_predictions(predictions(3))
        assert store.count_predictions("digits") == 3
        metadata.drop_all(store.engine)
    monkeypatch.setenv("PGPORT", str(free_port()))
    with pytest.raises(StoreError, match="cannot open the store at postgresql"):
        Store("postgresql+psycopg://")
