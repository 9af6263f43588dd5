"""Errors of the export package."""

from __future__ import annotations

from lifeloop.errors import LifeloopError


class CheckpointError(LifeloopError):
    """A checkpoint that is missing, unreadable, or does not fit its architecture."""


class ExportError(LifeloopError):
    """An architecture that is unknown or cannot be exported to ONNX."""


class ParityError(ExportError):
    """The exported model does not answer like the PyTorch model; nothing was published."""
