"""Kept for repositories made by lifeloop 0.1; see lifeloop.loop."""

from lifeloop.serve.router import Router  # noqa: F401
