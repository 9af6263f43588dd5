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
from lifeloop.store.retention import parse_age, purge
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
