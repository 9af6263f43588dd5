"""`lifeloop retrain` on real data, a real SQLite store and real exports: new classes are
learned, a candidate trained on shuffled labels is refused, and nothing new means nothing
published. (The served loop, router to promotion, runs in the demo test.)"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from lifeloop.datasets import Sample, link_folder, load_arrays, scan
from lifeloop.errors import RetrainError
from lifeloop.export.checkpoint import load as load_checkpoint
from lifeloop.export.pipeline import archived_checkpoint
from lifeloop.preprocessing import PIXELS
from lifeloop.repository.publish import version_numbers
from lifeloop.retrain import ImageFolder, TrainResult, cycle, train
from lifeloop.retrain.cycle import RetrainSettings, retrain
from lifeloop.retrain.training import predict
from lifeloop.rollout import read_policy
from lifeloop.rollout.rollout import Rollout
from lifeloop.serve.install import install_router
from lifeloop.serve.sampling import KeepRule
from lifeloop.store import Store, blobs
from lifeloop.store.blobs import default_blob_dir
from lifeloop.store.database import Prediction
from tests.conftest import publish_trained

OLD = [str(d) for d in range(8)]
ROUTER_BATCH = 32  # images a router batch keeps in one file, at most


@pytest.fixture(scope="module")
def splits(digits: ImageFolder) -> tuple[list[Sample], list[Sample]]:
    return digits.split(holdout=0.25, seed=1)


@pytest.fixture(scope="module")
def eval_dir(digits: ImageFolder, splits, tmp_path_factory) -> Path:
    return link_folder(tmp_path_factory.mktemp("eval"), digits, splits[1])


@pytest.fixture(scope="module")
def v1(digits: ImageFolder, splits, tmp_path_factory) -> TrainResult:
    """A champion that never saw digits 8 and 9."""
    old = [s for s in splits[0] if digits.labels[s.label] in OLD]
    data = link_folder(tmp_path_factory.mktemp("v1data"), digits, old)
    return train(data, arch="small_cnn", epochs=4, out=data.parent / "v1.pt", progress=False)


def make_repo(root: Path, v1: TrainResult) -> Path:
    repository = root / "model_repository"
    publish_trained(v1.checkpoint, repository, "digits")
    install_router(repository, "digits", keep=KeepRule.everything())
    return repository


@pytest.fixture
def repo(tmp_path: Path, v1: TrainResult) -> Path:
    return make_repo(tmp_path, v1)


def send_feedback(
    repository: Path,
    digits: ImageFolder,
    samples: list[Sample],
    v1: TrainResult,
    *,
    shuffle=False,
    fernet=None,
    pixels_from: int | None = None,
    encoded_from: int | None = None,
    prefix: str = "r",
) -> list[str]:
    """What the router and the feedback model write for served images: a prediction with its
    input kept as a blob, then the true (or, with shuffle, a random) label. Inputs are kept as
    routers kept them before they served pixels (normalised float32); with `pixels_from`,
    those from that index on as a router keeps pixel inputs now (uint8, in a pixels file);
    with `encoded_from`, those from that index on as a router behind the image ensemble keeps
    them (the PNG files' bytes, as a client sent them)."""
    x, y = load_arrays(samples, v1.checkpoint.preprocessing)
    names = [digits.labels[i] for i in y]
    if shuffle:
        names = list(np.random.default_rng(3).permutation(names))
    cut = len(x) if pixels_from is None else pixels_from
    files = []
    for start in range(0, cut, ROUTER_BATCH):
        path = blobs.new_path(default_blob_dir(repository), encrypted=fernet is not None)
        batch = x[start : min(start + ROUTER_BATCH, cut)]
        files.append((blobs.write_batch(path, batch, fernet=fernet), batch))
    end = len(x) if encoded_from is None else encoded_from
    if cut < end:
        pixels, _ = load_arrays(samples[cut:end], v1.checkpoint.preprocessing.with_kind(PIXELS))
        levels = blobs.as_pixels(pixels)
        assert levels is not None and blobs.kept_as(levels) == "uint8"
        path = blobs.new_path(default_blob_dir(repository), input_kind=PIXELS)
        files.append((blobs.write_batch(path, levels), levels))
    if end < len(x):
        sent = [sample.path.read_bytes() for sample in samples[end:]]
        path = blobs.new_path(default_blob_dir(repository), encoded=True)
        files.append((blobs.write_encoded(path, sent), sent))
    records = []
    for kept, batch in files:
        encoded = isinstance(batch, list)
        for i, sample in enumerate(batch):
            records.append(
                Prediction(
                    request_id=f"{prefix}{len(records):05d}",
                    model="digits",
                    version=1,
                    route="champion",
                    labels=["0"],
                    scores=[1.0],
                    content_hash=blobs.encoded_hash(sample)
                    if encoded
                    else blobs.content_hash(sample),
                    blob=str(kept),
                    blob_row=i,
                    kept_as=blobs.ENCODED if encoded else blobs.kept_as(batch),
                )
            )
    with Store.for_repository(repository) as store:
        store.record_predictions(records)
        store.add_feedback([(r.request_id, n) for r, n in zip(records, names, strict=True)])
    return [r.request_id for r in records]


def test_retrain_learns_new_classes_and_starts_a_canary(repo, digits, splits, v1, eval_dir):
    ids = send_feedback(repo, digits, splits[0][::2], v1)
    with Store.for_repository(repo) as store:
        report = retrain(
            repo, "digits", store, eval_dir=eval_dir, settings=RetrainSettings(), progress=False
        )
        record = store.training("digits", 2)
        event = store.history("digits")[-1]
    assert report.refused == [] and report.version == 2
    assert report.new_classes == ("8", "9")
    assert report.candidate_accuracy >= 0.90 > report.champion_accuracy
    assert report.champion_per_class["9"] == 0.0 < report.candidate_per_class["9"]
    for name in OLD:
        assert report.champion_per_class[name] - report.candidate_per_class[name] <= 0.02
    assert version_numbers(repo / "digits") == [1, 2]
    policy = read_policy(repo / "router")
    assert (policy.champion, policy.candidate, policy.canary_weight) == (1, 2, 0.2)
    assert record is not None and sorted(record["request_ids"]) == sorted(ids)
    assert record["counts"]["9"] > 0 and event.action == "candidate"


def test_a_class_learned_from_feedback_is_replayed_by_the_next_retrain(
    repo, digits, splits, v1, eval_dir, tmp_path
):
    # v1's training folder has no 8s: the only 8s are the feedback v2 was trained on.
    eights = [s for s in splits[0] if digits.labels[s.label] == "8"]
    nines = [s for s in splits[0] if digits.labels[s.label] == "9"]
    settings = RetrainSettings(replay_per_class=100)
    first_ids = send_feedback(repo, digits, eights, v1, prefix="a")
    no_nines = [s for s in splits[1] if digits.labels[s.label] != "9"]
    first_eval = link_folder(tmp_path / "eval", digits, no_nines)
    with Store.for_repository(repo) as store:
        first = retrain(
            repo, "digits", store, eval_dir=first_eval, settings=settings, progress=False
        )
        Rollout(repo, store).promote(reason="test: v2 knows the 8s")
        send_feedback(repo, digits, nines, v1, prefix="b")
        second = retrain(
            repo, "digits", store, eval_dir=eval_dir, settings=settings, progress=False
        )
    assert first.version == 2 and first.counts["8"] == len(first_ids), first.refused
    assert second.version == 3, second.refused
    # The second retrain trains on the new 9s and replays up to 100 of each digit, the 8s
    # included: the only 8s it can replay are the first retrain's feedback.
    assert len(eights) > 100 and second.counts["8"] == 100
    assert second.counts["9"] == len(nines) and all(second.counts[d] == 100 for d in OLD)
    assert second.feedback_used == len(nines) and second.replayed == 100 * 9


def test_retraining_reads_inputs_kept_in_any_form_alike(tmp_path, digits, splits, v1, eval_dir):
    """Stores that routers filled before and after they kept pixels as uint8, and encoded
    images, give retraining the same arrays: the same feedback kept all as normalised
    float32, or a third each as float32, uint8 pixels and the PNG bytes sent. (Two trainings
    on the same arrays differ in the last digit here, so it is the arrays `retrain` trains on
    that are compared, exactly; then the mixed store retrains.)"""
    samples = splits[0][::2]
    third = len(samples) // 3
    read = []
    for name, pixels_from, encoded_from in (("floats", None, None), ("mixed", third, 2 * third)):
        repository = make_repo(tmp_path / name, v1)
        send_feedback(
            repository, digits, samples, v1, pixels_from=pixels_from, encoded_from=encoded_from
        )
        with Store.for_repository(repository) as store:
            forms = {store.prediction(f"r{i:05d}")["kept_as"] for i in (0, third, len(samples) - 1)}
            data = cycle._read_dataset(
                repository, "digits", store, "router", None, eval_dir, RetrainSettings()
            )
        read.append((forms, data))
    (floats, a), (mixed, b) = read
    assert floats == {"float32"} and mixed == {"float32", "uint8", "encoded"}
    assert a.request_ids == b.request_ids and len(a.x_train) > len(samples)
    assert np.array_equal(a.x_train, b.x_train) and np.array_equal(a.y_train, b.y_train)
    with Store.for_repository(repository) as store:
        report = retrain(repository, "digits", store, eval_dir=eval_dir, progress=False)
    assert report.version == 2 and report.candidate_accuracy >= 0.90


def test_gate_refuses_a_candidate_trained_on_shuffled_labels(repo, digits, splits, v1, eval_dir):
    send_feedback(repo, digits, splits[0], v1, shuffle=True)
    settings = RetrainSettings(replay_per_class=10, epochs=6, lr=3e-3)
    with Store.for_repository(repo) as store:
        report = retrain(
            repo, "digits", store, eval_dir=eval_dir, settings=settings, progress=False
        )
        assert store.training("digits", 2) is None
    assert report.refused and report.version is None
    assert version_numbers(repo / "digits") == [1]
    assert read_policy(repo / "router").candidate is None


def test_retrain_without_new_labelled_data_publishes_nothing(repo, digits, splits, v1, eval_dir):
    with Store.for_repository(repo) as store:
        with pytest.raises(RetrainError, match="no new labelled data .* nothing published"):
            retrain(repo, "digits", store, eval_dir=eval_dir, progress=False)
        send_feedback(repo, digits, splits[0][::2], v1)
        assert retrain(repo, "digits", store, eval_dir=eval_dir, progress=False).version == 2
        with pytest.raises(RetrainError, match="0 labels since the last retrain"):
            retrain(repo, "digits", store, eval_dir=eval_dir, progress=False)
    assert version_numbers(repo / "digits") == [1, 2]


def test_torchrun_retrain_on_two_processes_matches_one_process(
    tmp_path, digits, splits, v1, eval_dir
):
    """The same feedback in two repositories: one retrained in this process, the other by
    `torchrun --nproc-per-node 2 -m lifeloop retrain` (DDP over gloo). Training is chaotic in
    its last digits (a 1e-6 nudge to the starting weights moves them as far as DDP does), so
    the two candidates must agree in what they do, not bit for bit."""
    single, ddp = make_repo(tmp_path / "single", v1), make_repo(tmp_path / "ddp", v1)
    for repository in (single, ddp):
        send_feedback(repository, digits, splits[0][::2], v1)
    with Store.for_repository(single) as store:
        one = retrain(single, "digits", store, eval_dir=eval_dir, progress=False)

    report = tmp_path / "ddp.json"
    command = [
        *(sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2"),
        *("-m", "lifeloop", "retrain", "--repository", str(ddp), "--model", "digits"),
        *("--eval-dir", str(eval_dir), "--out", str(report)),
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    two = json.loads(report.read_text())

    assert one.version == two["version"] == 2
    assert one.counts == two["counts"] and one.feedback_used == two["feedback_used"]
    assert abs(one.candidate_accuracy - two["candidate_accuracy"]) <= 0.02
    x, _ = load_arrays(list(scan(eval_dir).samples), v1.checkpoint.preprocessing)
    answers = [
        predict(load_checkpoint(archived_checkpoint(r, "digits", 2)).build_model(), x)
        for r in (single, ddp)
    ]
    assert np.mean(answers[0] == answers[1]) >= 0.97


def test_encrypted_kept_inputs_round_trip_and_a_wrong_key_fails_in_one_line(
    repo, digits, splits, v1, eval_dir, monkeypatch
):
    from cryptography.fernet import Fernet
    from typer.testing import CliRunner

    from lifeloop.cli import app

    key = Fernet.generate_key().decode()
    send_feedback(repo, digits, splits[0][::2], v1, fernet=blobs.cipher(key))
    kept = list(default_blob_dir(repo).rglob("*.npy.fernet"))
    assert kept and not list(default_blob_dir(repo).rglob("*.npy"))
    for path in kept:
        with pytest.raises(ValueError):  # ciphertext at rest, not an array
            np.load(path, allow_pickle=False)
    runner = CliRunner()
    command = ["retrain", "--repository", str(repo), "--model", "digits"]
    command += ["--eval-dir", str(eval_dir)]
    for env, says in (
        (None, "is encrypted; set LIFELOOP_KEPT_INPUT_KEY to the router's key"),
        (Fernet.generate_key().decode(), "does not decrypt with LIFELOOP_KEPT_INPUT_KEY"),
        ("not-a-key", "LIFELOOP_KEPT_INPUT_KEY is not a Fernet key"),
    ):
        if env is None:
            monkeypatch.delenv(blobs.KEY_ENV, raising=False)
        else:
            monkeypatch.setenv(blobs.KEY_ENV, env)
        result = runner.invoke(app, command)
        lines = result.output.strip().splitlines()
        assert result.exit_code == 1 and len(lines) == 1 and says in lines[0], result.output
    assert version_numbers(repo / "digits") == [1]
    monkeypatch.setenv(blobs.KEY_ENV, key)
    with Store.for_repository(repo) as store:
        report = retrain(repo, "digits", store, eval_dir=eval_dir, progress=False)
    assert report.version == 2 and report.new_classes == ("8", "9")
