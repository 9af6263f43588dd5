"""Errors of the client package."""

from __future__ import annotations

from lifeloop.errors import LifeloopError


class ClientError(LifeloopError):
    """An unreachable server, an unknown model, a failed request or unusable input."""
