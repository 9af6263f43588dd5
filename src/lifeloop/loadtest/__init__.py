"""Load tests that measure like perf_analyzer and drive load with Locust.

Nothing is imported eagerly: the Locust process (`lifeloop.loadtest.headless`) must
monkey-patch the interpreter with gevent before ssl, grpc or tritonclient are imported."""

from __future__ import annotations

from lifeloop.lazy import lazy_exports

_EXPORTS = {
    "LoadTestConfig": "lifeloop.loadtest.config",
    "LoadTestError": "lifeloop.errors",
    "run_loadtest": "lifeloop.loadtest.runner",
}
__all__ = sorted(_EXPORTS)

__getattr__ = lazy_exports(__name__, _EXPORTS)
