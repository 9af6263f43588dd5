"""Kept for repositories made by lifeloop 0.1; see lifeloop.loop."""

from lifeloop.serve.feedback import FeedbackModel  # noqa: F401
