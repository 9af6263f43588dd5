"""Load tests that measure like perf_analyzer and drive load with Locust.

Nothing is imported eagerly: the Locust process (`lifeloop.loadtest.headless`) must
monkey-patch the interpreter with gevent before ssl, grpc or tritonclient are imported."""

from __future__ import annotations

from importlib import import_module
from typing import Any

_EXPORTS = {
    "LoadTestConfig": "lifeloop.loadtest.config",
    "LoadTestError": "lifeloop.errors",
    "run_loadtest": "lifeloop.loadtest.runner",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'lifeloop.loadtest' has no attribute {name!r}")
