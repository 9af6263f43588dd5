"""Errors of the serve package."""

from __future__ import annotations

from lifeloop.errors import LifeloopError


class ServerError(LifeloopError):
    """tritonserver could not be prepared, started or stopped."""
