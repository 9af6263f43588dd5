"""Errors and log lines for lifeloop's Python models in Triton, given the python backend's
utils module `pb`: the right error code for whose fault it is, and Triton's own log."""

from __future__ import annotations

from typing import Any


def unavailable(pb: Any, message: str) -> Any:
    """UNAVAILABLE (HTTP 503, gRPC UNAVAILABLE): not the caller's fault, and safe to retry."""
    return _error(pb, message, "UNAVAILABLE")


def invalid(pb: Any, message: str) -> Any:
    """INVALID_ARG (HTTP 400, gRPC INVALID_ARGUMENT): the caller's mistake."""
    return _error(pb, message, "INVALID_ARG")


def log(pb: Any, level: str, message: str) -> None:
    """One line in tritonserver's log at `level` (info, warn, error)."""
    logger = getattr(pb, "Logger", None)
    if logger is not None:
        getattr(logger, f"log_{level}")(message)


def _error(pb: Any, message: str, code: str) -> Any:
    if hasattr(pb.TritonError, code):  # python backends before 23.04 know no codes
        return pb.TritonError(message, getattr(pb.TritonError, code))
    return pb.TritonError(message)
