"""The spool journal on a real filesystem: frames survive a new owner, a torn tail is cut,
the size bound holds, and a dead owner's journal is found by its free lock."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from lifeloop.errors import JournalFull, StoreError
from lifeloop.store import journal
from lifeloop.store.journal import Journal, orphans


def records(n: int, start: int = 0) -> list[dict]:
    return [{"request_id": f"r{i}", "label": str(i % 10)} for i in range(start, start + n)]


def test_frames_come_back_in_order_and_drain_to_empty(tmp_path: Path) -> None:
    spool = Journal.create(tmp_path, "me", segment_bytes=200)
    for i in range(5):
        spool.append(records(3, start=3 * i))
    assert spool.pending_records == 15 and len(list(tmp_path.glob("*/*.journal"))) > 1
    frames = list(spool.frames())
    assert [r["request_id"] for f in frames for r in f.records] == [f"r{i}" for i in range(15)]
    spool.consume(frames[:2])
    assert spool.pending_records == 9
    assert [f.records[0]["request_id"] for f in spool.frames()] == ["r6", "r9", "r12"]
    spool.consume(list(spool.frames()))
    assert spool.pending_records == 0 and spool.reset_if_drained()
    assert not list(spool.folder.glob("*.journal"))
    spool.append(records(1, start=99))  # usable again after the reset
    assert [f.records for f in spool.frames()] == [records(1, start=99)]


def test_a_torn_tail_is_cut_and_what_was_acknowledged_is_kept(tmp_path: Path) -> None:
    spool = Journal.create(tmp_path, "dead")
    spool.append(records(2))
    folder = spool.folder
    segment = next(folder.glob("*.journal"))
    with open(segment, "ab") as handle:  # a kill in the middle of the next write
        handle.write(journal.HEADER.pack(500, 0) + b'[{"request_id": "half')
    spool.close()
    (adopted,) = orphans(tmp_path)
    assert adopted.pending_records == 2
    assert [r["request_id"] for f in adopted.frames() for r in f.records] == ["r0", "r1"]
    adopted.append(records(1, start=2))  # appends after the cut, not after the torn bytes
    assert [r["request_id"] for f in adopted.frames() for r in f.records] == ["r0", "r1", "r2"]


def test_the_size_bound_refuses_a_frame_and_leaves_nothing_of_it(tmp_path: Path) -> None:
    spool = Journal.create(tmp_path, "me", max_bytes=300)
    spool.append(records(3))
    size = spool.pending_bytes
    with pytest.raises(JournalFull, match="raise lifeloop.spool_max_bytes"):
        spool.append(records(10))
    assert spool.pending_bytes == size and spool.pending_records == 3


def test_a_living_owners_journal_is_never_taken_and_a_dead_ones_is(tmp_path: Path) -> None:
    mine = Journal.create(tmp_path, "me")
    mine.append(records(1))
    assert list(orphans(tmp_path)) == []  # held by this process
    # Another process writes a journal and dies without closing it.
    script = textwrap.dedent(
        f"""
        import os
        from lifeloop.store.journal import Journal
        spool = Journal.create({str(tmp_path)!r}, "other")
        spool.append([{{"request_id": "theirs"}}])
        os._exit(0)
        """
    )
    subprocess.run([sys.executable, "-c", script], check=True)
    (theirs,) = orphans(tmp_path)
    assert [r["request_id"] for f in theirs.frames() for r in f.records] == ["theirs"]
    assert journal.pending_records(tmp_path) == 2
    theirs.consume(list(theirs.frames()))
    theirs.close(remove_if_empty=True)
    assert not theirs.folder.exists()
    assert journal.pending_records(tmp_path) == 1


def test_a_full_disk_is_a_one_line_error_and_leaves_no_torn_frame(tmp_path: Path) -> None:
    if not os.path.exists("/dev/full"):
        pytest.skip("no /dev/full on this machine to stand for a full disk")
    spool = Journal.create(tmp_path, "me")
    spool.append(records(1))
    segment = next(spool.folder.glob("*.journal"))
    size = segment.stat().st_size
    # A new segment that the disk refuses: /dev/full answers every write with ENOSPC.
    target = spool.folder / f"{2:010d}{journal.SEGMENT_SUFFIX}"
    target.symlink_to("/dev/full")
    spool.segment_bytes = size  # the next frame starts segment 2
    with pytest.raises(JournalFull, match="No space left on device") as caught:
        spool.append(records(1, start=1))
    assert "\n" not in str(caught.value) and "lifeloop.spool_dir" in str(caught.value)
    target.unlink()
    assert segment.stat().st_size == size and spool.pending_records == 1


def test_a_bad_size_limit_is_refused(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match="size limit must be positive"):
        Journal.create(tmp_path, "me", max_bytes=0)
