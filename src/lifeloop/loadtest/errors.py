"""Errors of the load-test package."""

from __future__ import annotations

from lifeloop.errors import LifeloopError


class LoadTestError(LifeloopError):
    """A load test that cannot start, or whose measurement means nothing."""
