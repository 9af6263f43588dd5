"""`lifeloop loadtest` from Python: check the target, run Locust in its own process, return the
report. The Locust process is separate because Locust monkey-patches the interpreter."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from lifeloop.client import ClientError, LifeloopClient
from lifeloop.errors import LoadTestError
from lifeloop.loadtest.config import LoadTestConfig

Event = dict[str, Any]


def preflight(config: LoadTestConfig) -> None:
    """Fail before any load is sent: an unreachable server or an unknown model."""
    with LifeloopClient(config.url, config.protocol, model=config.model, timeout_s=10) as client:
        if not client.is_live():
            raise LoadTestError(
                f"cannot reach a ready Triton at {client.url} over {config.protocol}; start it "
                "with `lifeloop serve` or fix --url/--protocol"
            )
        try:
            client.model_info()
        except ClientError as exc:
            raise LoadTestError(f"model {config.model!r} cannot be load-tested: {exc}") from exc
        if not client.is_model_ready(config.model):
            raise LoadTestError(
                f"model {config.model!r} is not ready on {client.url}; load it (or check "
                "`lifeloop versions --url`) before load-testing"
            )


def run_loadtest(
    config: LoadTestConfig, *, on_event: Callable[[Event], None] | None = None
) -> dict[str, Any]:
    preflight(config)
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(config.to_json())
    limit_s = config.duration_s + config.users / config.spawn_rate + 4 * config.window + 120
    with open(out / "locust.log", "w") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "lifeloop.loadtest.headless", str(out / "config.json")],
            stdout=subprocess.PIPE,
            stderr=log,
            text=True,
        )
        assert process.stdout is not None
        try:
            for line in process.stdout:
                try:
                    event = json.loads(line)
                except ValueError:
                    continue
                if on_event:
                    on_event(event)
            code = process.wait(timeout=limit_s)
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()
    if code != 0:
        tail = (out / "locust.log").read_text().strip().splitlines()[-1:] or ["(empty log)"]
        raise LoadTestError(
            f"the Locust process failed with code {code}: {tail[0]} (see {out / 'locust.log'})"
        )
    report: dict[str, Any] = json.loads((out / "report.json").read_text())
    if report.get("all_failed"):
        causes = report.get("failures_by_cause", {})
        cause = max(causes, key=causes.get) if causes else "unknown"
        raise LoadTestError(
            f"all {report['requests']} requests failed, so there is no throughput to report; "
            f"most common cause: {cause}"
        )
    if not report.get("requests"):
        raise LoadTestError(
            f"no request completed in {config.duration_s:g} s; raise --duration or check the server"
        )
    return report
