"""The soak's report from numbers: which requests saw a reload, p99 on each side, failures
by cause, and the memory verdict."""

from __future__ import annotations

import pytest

from lifeloop.errors import SoakError
from lifeloop.loadtest.soak import Memory, Request, SoakConfig, summarize


def test_requests_overlapping_a_reload_count_as_during_it() -> None:
    reloads = [(10.0, 11.0)]
    requests = [
        Request(at=1.0 + i * 0.01, latency_s=0.002)
        for i in range(200)  # well before
    ] + [
        Request(at=9.95, latency_s=0.2),  # in flight when the reload starts
        Request(at=10.5, latency_s=0.3),
        Request(at=12.0, latency_s=0.004),
    ]
    result = summarize(requests, reloads, cycles=1, memory=(None, None), max_rss_growth_pct=10)
    assert result.requests == 203 and not result.failures
    assert result.p99_reload_ms == pytest.approx(299.0, rel=0.01)
    assert result.p99_between_ms is not None and result.p99_between_ms < 5
    assert result.reload_s == pytest.approx(1.0)
    assert result.failed == [] and result.rss_growth_pct is None


def test_failures_group_by_cause_and_fail_the_soak() -> None:
    errors = [
        "v3: model version 3 is not found (request 0123456789abcdef0123456789abcdef)",
        "v4: model version 4 is not found (request fedcba9876543210fedcba9876543210)",
        "connection refused",
    ]
    requests = [Request(at=float(i), latency_s=0.01, error=e) for i, e in enumerate(errors)]
    result = summarize(requests, [], cycles=1, memory=(None, None), max_rss_growth_pct=10)
    assert sorted(result.failures.values()) == [1, 2]
    assert result.failed == ["3 of 3 requests failed"]


def test_memory_growth_over_the_limit_fails_and_under_it_passes() -> None:
    warm = Memory(server=100 << 20, stubs=300 << 20, stub_count=3)
    grown = Memory(server=110 << 20, stubs=340 << 20, stub_count=3)
    ok = [Request(at=0.0, latency_s=0.01)]
    tight = summarize(ok, [], cycles=2, memory=(warm, grown), max_rss_growth_pct=10)
    assert tight.rss_growth_pct == pytest.approx(12.5)
    assert tight.failed == ["resident memory grew 12.5% (limit 10%)"]
    loose = summarize(ok, [], cycles=2, memory=(warm, grown), max_rss_growth_pct=15)
    assert loose.failed == []


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("cycles", 0, "cycles must be >= 1, got 0"),
        ("users", 0, "users must be >= 1, got 0"),
        ("max_rss_growth_pct", 0, "max_rss_growth_pct must be > 0"),
    ],
)
def test_bad_settings_name_their_setting(field: str, value: float, message: str) -> None:
    """The library names its own setting; the CLI replaces it with the flag (test_cli)."""
    settings = {"url": "grpc://x:1", "repository": ".", "model": "m", "cycles": 1}
    with pytest.raises(SoakError, match=message) as raised:
        SoakConfig(**{**settings, field: value})
    assert raised.value.setting == field
