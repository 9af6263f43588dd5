"""The router's ids: UUIDv7, ordered by time, and distinct."""

from __future__ import annotations

import time
import uuid

from lifeloop.store.ids import new_id


def test_ids_are_uuid7_ordered_by_millisecond_and_distinct() -> None:
    first = new_id()
    time.sleep(0.002)
    later = [new_id() for _ in range(1000)]
    assert all(first < i for i in later)  # a later millisecond sorts after
    assert len(set(later)) == 1000
    parsed = uuid.UUID(first)
    assert parsed.version == 7 and parsed.variant == uuid.RFC_4122 and parsed.hex == first
    stamp_ms = int(first[:12], 16)
    assert abs(stamp_ms - time.time() * 1000) < 60_000
