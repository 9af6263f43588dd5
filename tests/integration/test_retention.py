"""`lifeloop store purge` on real SQLite and a real PostgreSQL server, with real files: it
removes exactly what is past the window and keeps what training and loaded versions need;
and a router started with LIFELOOP_KEPT_INPUT_KEY keeps its inputs encrypted."""

from __future__ import annotations

import os
import time
import uuid
from datetime import timedelta
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from lifeloop.cli import app
from lifeloop.errors import StoreError
from lifeloop.retrain import TrainResult
from lifeloop.serve import TritonServer
from lifeloop.serve.install import install_router
from lifeloop.serve.sampling import KeepRule
from lifeloop.store import Store, blobs
from lifeloop.store.database import Prediction, now
from lifeloop.store.retention import evict_to_budget, parse_age, parse_size, purge
from tests.conftest import publish_trained
from tests.integration.conftest import server_config

DAY = 86400


def served(store: Store, blob_dir: Path, n: int, *, age_days: float) -> list[Prediction]:
    """n predictions served `age_days` ago, their inputs kept in one file of that age."""
    path = blobs.write_batch(blobs.new_path(blob_dir), np.zeros((n, 1, 8, 8), np.float32))
    at = now() - timedelta(days=age_days)
    os.utime(path, (at.timestamp(), at.timestamp()))
    batch = [
        Prediction(
            request_id=uuid.uuid4().hex,
            model="digits",
            version=1,
            route="champion",
            labels=["1"],
            scores=[1.0],
            content_hash="0" * 32,
            blob=str(path),
            blob_row=i,
            created_at=at,
        )
        for i in range(n)
    ]
    store.record_predictions(batch)
    return batch


def test_purge_removes_exactly_what_is_past_the_window(store: Store, tmp_path: Path) -> None:
    blob_dir = tmp_path / "blobs"
    old = served(store, blob_dir, 4, age_days=40)  # gone, with its file
    trained = served(store, blob_dir, 3, age_days=40)  # kept: v2 was trained on two of them
    labelled = served(store, blob_dir, 2, age_days=40)
    fresh = served(store, blob_dir, 2, age_days=1)
    store.add_feedback([(p.request_id, "1") for p in labelled + trained[:2]])
    store.record_training("digits", 2, [p.request_id for p in trained[:2]], {"1": 2}, {})
    stray = blob_dir / "ab" / f"{uuid.uuid4().hex}.npy"  # a file no prediction points at
    stray.parent.mkdir(parents=True, exist_ok=True)
    np.save(stray, np.zeros(3))
    os.utime(stray, (time.time() - 40 * DAY,) * 2)
    checkpoints = tmp_path / "checkpoints" / "digits"
    checkpoints.mkdir(parents=True)
    for version, age in ((1, 40), (2, 40), (3, 1)):
        (checkpoints / f"{version}.pt").write_bytes(b"x")
        os.utime(checkpoints / f"{version}.pt", (time.time() - age * DAY,) * 2)

    result = purge(
        store,
        older_than=parse_age("30d"),
        blob_dirs=[blob_dir],
        checkpoint_dir=checkpoints.parent,
        loaded={"digits": {1}},  # v1 serves: its checkpoint stays, however old
        batch_size=2,  # several short transactions
    )
    left = store.request_ids("digits")
    assert left == {p.request_id for p in trained[:2] + fresh}
    assert result.predictions == 4 + 1 + 2 and result.protected_trained == 2
    assert result.feedback == 2  # the labels of the purged labelled predictions
    files = {Path(p.blob) for p in old + trained + labelled + fresh}
    assert {f for f in files if f.exists()} == {Path(trained[0].blob), Path(fresh[0].blob)}
    assert not stray.exists() and result.kept_inputs == 3
    assert [p.name for p in result.checkpoints] == ["2.pt"]
    assert sorted(p.name for p in checkpoints.iterdir()) == ["1.pt", "3.pt"]

    again = purge(store, older_than=parse_age("30d"), blob_dirs=[blob_dir], include_trained=True)
    assert again.predictions == 2 and store.request_ids("digits") == {p.request_id for p in fresh}
    assert not Path(trained[0].blob).exists()


def test_keep_labelled_keeps_old_predictions_with_feedback(store: Store, tmp_path: Path) -> None:
    blob_dir = tmp_path / "blobs"
    labelled = served(store, blob_dir, 2, age_days=40)
    unlabelled = served(store, blob_dir, 2, age_days=40)
    store.add_feedback([(labelled[0].request_id, "1")])
    result = purge(store, older_than=timedelta(days=30), blob_dirs=[blob_dir], keep_labelled=True)
    assert store.request_ids("digits") == {labelled[0].request_id}
    assert result.protected_labelled == 1 and result.predictions == 3
    assert Path(labelled[0].blob).exists() and not Path(unlabelled[0].blob).exists()


def test_the_size_trigger_evicts_the_oldest_unlabelled_first_and_never_a_labelled_input(
    store: Store, tmp_path: Path
) -> None:
    blob_dir = tmp_path / "blobs"
    # Oldest first: each file holds 4 inputs of 1x8x8 float32 (256 bytes of data each).
    oldest = served(store, blob_dir, 4, age_days=5)
    labelled = served(store, blob_dir, 4, age_days=4)  # one labelled input keeps the file
    trained = served(store, blob_dir, 4, age_days=3)  # labelled, and v2 was trained on it
    older = served(store, blob_dir, 4, age_days=2)
    newest = served(store, blob_dir, 4, age_days=1)
    store.add_feedback([(labelled[2].request_id, "1"), (trained[0].request_id, "1")])
    store.record_training("digits", 2, [trained[0].request_id], {"1": 1}, {})
    size = Path(oldest[0].blob).stat().st_size
    # Room for three files: the two oldest unlabelled ones go, the labelled ones stay.
    result = evict_to_budget(store, [blob_dir], 3 * size, batch_size=1)
    assert (result.evicted_files, result.evicted_bytes, result.evicted_inputs) == (2, 2 * size, 8)
    assert result.kept_bytes == 3 * size and not result.over
    assert result.protected_bytes == 2 * size
    exists = [Path(batch[0].blob).exists() for batch in (oldest, labelled, trained, older, newest)]
    assert exists == [False, True, True, False, True]
    for p in oldest + older:  # the predictions stay, pointing at no input, saying why kept
        row = store.prediction(p.request_id)
        assert row is not None and (row["blob"], row["blob_row"], row["kept_as"]) == (None,) * 3
    row = store.prediction(labelled[0].request_id)  # unlabelled, in a labelled input's file
    assert row is not None and row["blob"] == labelled[0].blob
    # Retraining still reads every labelled input.
    assert {
        r.request_id for r in store.labelled("digits") if r.blob and Path(r.blob).is_file()
    } == {
        labelled[2].request_id,
        trained[0].request_id,
    }
    # Under a budget only labelled inputs could meet, it stops and says so.
    again = evict_to_budget(store, [blob_dir], size, batch_size=1)
    assert again.evicted_files == 1 and again.over and again.kept_bytes == 2 * size
    assert Path(labelled[0].blob).exists() and Path(trained[0].blob).exists()


def test_the_size_trigger_leaves_files_a_router_may_not_have_committed_yet(
    store: Store, tmp_path: Path
) -> None:
    blob_dir = tmp_path / "blobs"
    young = served(store, blob_dir, 2, age_days=0)  # written just now
    result = evict_to_budget(store, [blob_dir], 1)
    assert result.evicted_files == 0 and result.over and Path(young[0].blob).exists()


@pytest.mark.parametrize(
    ("text", "size"),
    [("10GB", 10**10), ("500MB", 5 * 10**8), ("1.5GiB", 3 * 2**29), ("2048", 2048), ("0", 0)],
)
def test_sizes_read_as_people_write_them(text: str, size: int) -> None:
    assert parse_size(text) == size


@pytest.mark.parametrize("bad", ["ten", "-1GB", "10 parsecs", ""])
def test_a_bad_size_is_a_one_line_error(bad: str) -> None:
    with pytest.raises(StoreError, match="max_kept_bytes takes a size like 10GB"):
        parse_size(bad)


def test_purge_asks_for_a_trigger(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["store", "purge", "--repository", str(tmp_path)])
    assert result.exit_code == 1
    assert "say what to purge: --older-than 30d (by age), --max-kept-bytes 10GB" in result.output


@pytest.mark.parametrize("bad", ["30", "thirty days", "-1d", "0h"])
def test_a_bad_window_is_a_one_line_error(bad: str) -> None:
    with pytest.raises(StoreError, match="older_than"):
        parse_age(bad)


def test_the_router_encrypts_kept_inputs_and_purge_runs_beside_it(
    tmp_path: Path, trained: TrainResult, served_held_out, monkeypatch
) -> None:
    from cryptography.fernet import Fernet

    from lifeloop.client import LifeloopClient

    x, _ = served_held_out
    key = Fernet.generate_key().decode()
    monkeypatch.setenv(blobs.KEY_ENV, key)  # tritonserver inherits it
    repo = tmp_path / "model_repository"
    publish_trained(trained.checkpoint, repo, "digits")
    install_router(repo, "digits", keep=KeepRule.everything())
    with (
        TritonServer(server_config(repo)) as server,
        LifeloopClient(server.grpc_url, model="router") as client,
    ):
        client.wait_until_ready(120, model="router")
        answers = client.classify(x[:5])
        with Store.for_repository(repo) as store:
            row = store.prediction(answers[0].request_id)
        assert row is not None and row["blob"].endswith(".npy.fernet")
        np.testing.assert_allclose(
            blobs.load(row["blob"], row["blob_row"], fernet=Fernet(key.encode())),
            x[0],
            atol=1e-6,
        )
        # A purge while the router serves: nothing is young enough to go.
        result = CliRunner().invoke(
            app, ["store", "purge", "--older-than", "30d", "--repository", str(repo)]
        )
        assert result.exit_code == 0, result.output
        assert "0 predictions" in result.output
        assert len(client.classify(x[:5])) == 5
