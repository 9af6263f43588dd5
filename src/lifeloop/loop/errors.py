"""Errors of the learning loop: the store, feedback, rollout and retraining."""

from __future__ import annotations

from lifeloop.errors import LifeloopError


class StoreError(LifeloopError):
    """The store cannot be opened or written."""


class FeedbackError(LifeloopError):
    """Feedback that names an unknown request id, or carries no label."""


class RolloutError(LifeloopError):
    """A rollout change that cannot be made (no candidate to promote, nothing to roll back to)."""


class RetrainError(LifeloopError):
    """A retrain that has nothing to learn from, or a candidate the gate refused."""
