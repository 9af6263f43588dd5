"""A full disk fails cleanly, on a real (small tmpfs) filesystem: a publish that does not fit
writes nothing into the repository and says so in one line, and a router whose store and
kept inputs sit on a full disk goes on answering, spooling what the store cannot take."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from lifeloop.client import LifeloopClient
from lifeloop.repository import RepositoryError
from lifeloop.repository.publish import version_numbers
from lifeloop.retrain import TrainResult
from lifeloop.serve import TritonServer
from lifeloop.serve.install import install_router
from lifeloop.serve.sampling import KeepRule
from lifeloop.store import Store
from tests.conftest import publish_trained
from tests.integration.conftest import server_config


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 16 MiB tmpfs, unmounted at the end."""
    mount = tmp_path / "disk"
    mount.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root")
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", str(mount)],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def fill(disk: Path, leave_bytes: int) -> Path:
    """A file that takes all but `leave_bytes` of the disk."""
    import shutil

    ballast = disk / "ballast"
    size = shutil.disk_usage(disk).free - leave_bytes
    with open(ballast, "wb") as handle:
        handle.write(b"\0" * max(size, 0))
    return ballast


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def test_a_publish_that_does_not_fit_writes_nothing(small_disk, trained: TrainResult) -> None:
    repo = small_disk / "model_repository"
    publish_trained(trained.checkpoint, repo, "digits")  # v1 fits
    before = snapshot(repo)
    fill(small_disk, leave_bytes=200 << 10)  # less than one version
    with pytest.raises(RepositoryError) as caught:
        publish_trained(trained.checkpoint, repo, "digits")
    message = str(caught.value)
    assert "\n" not in message and "publishing digits v2 needs" in message
    assert str(repo / "digits") in message and "nothing was written" in message
    assert version_numbers(repo / "digits") == [1]
    assert snapshot(repo) == before  # no staging folder, no config or label change


def test_a_disk_that_fills_during_the_copy_leaves_no_staging(
    small_disk, trained: TrainResult, monkeypatch
) -> None:
    repo = small_disk / "model_repository"
    publish_trained(trained.checkpoint, repo, "digits")
    before = snapshot(repo / "digits" / "1")
    fill(small_disk, leave_bytes=200 << 10)
    # Past the free-space check (another writer filled the disk after it): the copy itself
    # runs out of space on the real filesystem.
    publishing = sys.modules["lifeloop.repository.publish"]  # the package re-exports publish()
    monkeypatch.setattr(publishing, "check_free_space", lambda *_: None)
    with pytest.raises(RepositoryError, match="publishing digits v2 needs .* nothing was written"):
        publish_trained(trained.checkpoint, repo, "digits")
    assert version_numbers(repo / "digits") == [1]
    assert not list((repo / "digits").glob(".staging-*"))
    assert snapshot(repo / "digits" / "1") == before


def test_a_router_on_a_full_disk_keeps_answering(
    small_disk, tmp_path, trained: TrainResult, served_held_out
) -> None:
    x, _ = served_held_out
    repo = tmp_path / "model_repository"
    publish_trained(trained.checkpoint, repo, "digits")
    store_url = f"sqlite:///{small_disk / 'store.db'}"
    installed = install_router(
        repo,
        "digits",
        store_url=store_url,
        blob_dir=small_disk / "blobs",
        keep=KeepRule.everything(),
    )  # the spool stays beside the repository, on a disk with room
    with TritonServer(server_config(repo)) as server:
        with LifeloopClient(server.grpc_url, model="router") as client:
            client.wait_until_ready(120, model="router")
            ids = {a.request_id for a in client.classify(x[:4])}
            ballast = fill(small_disk, leave_bytes=0)
            for i in range(30):
                answers = client.classify(x[i : i + 4])  # raises on any failed request
                ids |= {a.request_id for a in answers}
            assert list(installed.spool.folder.glob("*/*.journal")), "nothing was spooled"
            ballast.unlink()  # room again: the spool drains into the store
            deadline = time.monotonic() + 60
            with Store(store_url) as store:
                while not store.request_ids("digits") >= ids:
                    assert time.monotonic() < deadline, "the spool did not drain"
                    time.sleep(0.25)
                kept = [store.prediction(rid)["blob"] for rid in ids]
        assert server.process.poll() is None
    # The inputs of the batches sent while the disk was full were not kept; the rest were.
    assert None in kept and any(kept)
    assert not list((small_disk / "blobs").rglob(".*.tmp")), "a half-written input was left"
