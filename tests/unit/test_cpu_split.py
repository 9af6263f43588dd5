"""The CPU split's arithmetic on fixed numbers: per-request shares and how busy the cores were."""

from __future__ import annotations

import pytest

from lifeloop.loadtest.cpu import ROLES, CpuSplit


def _split(
    before: tuple[float, ...],
    after: tuple[float, ...],
    *,
    requests: int,
    wall_s: float,
    cores: int,
) -> CpuSplit:
    """CPU seconds of (client, tritonserver, stubs) at the start and the end of a span."""
    return CpuSplit.of(
        dict(zip(ROLES, before, strict=True)),
        dict(zip(ROLES, after, strict=True)),
        requests=requests,
        wall_s=wall_s,
        cores=cores,
    )


def test_cpu_seconds_by_role_become_milliseconds_per_request() -> None:
    split = _split((10.0, 5.0, 2.0), (10.5, 5.3, 3.2), requests=1000, wall_s=1.0, cores=2)
    assert (split.client_ms, split.tritonserver_ms, split.stubs_ms) == pytest.approx(
        (0.5, 0.3, 1.2)
    )
    assert split.total_ms == pytest.approx(2.0)
    # 2 CPU seconds in 1 s of wall time on 2 cores: every core busy.
    assert split.busy == pytest.approx(1.0)
    assert split.to_dict()["busy"] == pytest.approx(1.0)


def test_a_stub_gone_inside_the_span_counts_nothing_rather_than_less_than_nothing() -> None:
    split = _split((1.0, 1.0, 9.0), (1.2, 1.1, 0.5), requests=100, wall_s=2.0, cores=4)
    assert split.stubs_ms == 0.0
    assert split.client_ms == pytest.approx(2.0) and split.tritonserver_ms == pytest.approx(1.0)
    assert split.busy == pytest.approx(0.3 / 8)


def test_a_span_without_requests_reports_zero_per_request() -> None:
    split = _split((0.0, 0.0, 0.0), (1.0, 1.0, 1.0), requests=0, wall_s=1.0, cores=2)
    assert split.total_ms == 0.0 and split.busy == 0.0
