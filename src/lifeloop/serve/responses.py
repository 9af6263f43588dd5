"""Errors and log lines for lifeloop's Python models in Triton, given the python backend's
utils module `pb`: the right error code for whose fault it is, and Triton's own log.

A request that is the caller's fault (an ImageError, RequestError or FeedbackError) is
answered INVALID_ARG: HTTP 400, gRPC INVALID_ARGUMENT. Anything else is the server's fault
and stays INTERNAL (HTTP 500, gRPC INTERNAL), except a store that may recover, UNAVAILABLE."""

from __future__ import annotations

import re
from typing import Any

from lifeloop.errors import FeedbackError, ImageError, RequestError

CALLER_ERRORS: tuple[type[Exception], ...] = (ImageError, RequestError, FeedbackError)

# `<_io.BytesIO object at 0x7f...>` and the like: noise to a caller, and an address leaked.
_REPR = re.compile(r"\s*<[^<>]* at 0x[0-9a-fA-F]+>")


def error_for(pb: Any, exc: BaseException) -> Any:
    """INVALID_ARG for the caller's mistakes (CALLER_ERRORS), INTERNAL for anything else."""
    if isinstance(exc, CALLER_ERRORS):
        return invalid(pb, str(exc))
    return internal(pb, str(exc) or type(exc).__name__)


def unavailable(pb: Any, message: str) -> Any:
    """UNAVAILABLE (HTTP 503, gRPC UNAVAILABLE): not the caller's fault, and safe to retry."""
    return _error(pb, message, "UNAVAILABLE")


def invalid(pb: Any, message: str) -> Any:
    """INVALID_ARG (HTTP 400, gRPC INVALID_ARGUMENT): the caller's mistake."""
    return _error(pb, message, "INVALID_ARG")


def internal(pb: Any, message: str) -> Any:
    """INTERNAL (HTTP 500, gRPC INTERNAL): the server's fault."""
    return _error(pb, message, "INTERNAL")


def without_reprs(message: str) -> str:
    """`message` without Python object reprs (`<_io.BytesIO object at 0x7f...>`)."""
    return _REPR.sub("", message)


def log(pb: Any, level: str, message: str) -> None:
    """One line in tritonserver's log at `level` (info, warn, error)."""
    logger = getattr(pb, "Logger", None)
    if logger is not None:
        getattr(logger, f"log_{level}")(message)


def _error(pb: Any, message: str, code: str) -> Any:
    message = without_reprs(message)
    if hasattr(pb.TritonError, code):  # python backends before 23.04 know no codes
        return pb.TritonError(message, getattr(pb.TritonError, code))
    return pb.TritonError(message)
