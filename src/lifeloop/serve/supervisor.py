"""Keep a tritonserver up: `lifeloop serve` starts it again when it dies by itself.

tritonserver 2.51, the one nvidia-pytriton carries and NGC's 24.10 image, can crash with
SIGSEGV when a gRPC client cancels a request, by a deadline or by closing its channel mid-call
(triton-inference-server/server#7368, fixed in 24.12). A crashed server loses nothing it
acknowledged (the router's journal holds it), but it answers nothing until it is started again.
Compose and Kubernetes do that by their restart policies; `lifeloop serve` does it here, within
a budget, so a server that dies at every start is not restarted forever.
"""

from __future__ import annotations

import signal
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from lifeloop.errors import ServerError
from lifeloop.serve.launcher import TritonServer

DEFAULT_MAX_RESTARTS = 5
RESTART_WINDOW_S = 600.0


@dataclass
class RestartBudget:
    """At most `limit` restarts in any `window_s` seconds."""

    limit: int = DEFAULT_MAX_RESTARTS
    window_s: float = RESTART_WINDOW_S
    _times: deque[float] = field(default_factory=deque)

    def take(self, now: float) -> bool:
        """Spend one restart at `now` (monotonic seconds), or say the budget is spent."""
        while self._times and now - self._times[0] >= self.window_s:
            self._times.popleft()
        if len(self._times) >= self.limit:
            return False
        self._times.append(now)
        return True

    @property
    def used(self) -> int:
        return len(self._times)

    def describe(self) -> str:
        return f"at most {self.limit} in {self.window_s / 60:g} min"


def describe_exit(code: int) -> str:
    """'was killed by SIGSEGV (...)' or 'exited with code 1', for a sentence about the server."""
    if code >= 0:
        return f"exited with code {code}"
    try:
        name = signal.Signals(-code).name
    except ValueError:
        name = f"signal {-code}"
    if -code == signal.SIGSEGV:
        return (
            f"was killed by {name} (tritonserver 2.51 does this when a gRPC request is "
            "cancelled: triton-inference-server/server#7368)"
        )
    return f"was killed by {name}"


def keep_crash_log(log: Path, now: datetime | None = None) -> Path | None:
    """Move a dead server's log aside, so the restarted server's log does not overwrite it."""
    stamp = (now or datetime.now(UTC)).strftime("%Y%m%dT%H%M%S")
    kept = log.with_name(f"{log.name}.crashed-{stamp}")
    count = 1
    while kept.exists():  # two crashes in one second
        kept, count = log.with_name(f"{log.name}.crashed-{stamp}-{count}"), count + 1
    try:
        log.rename(kept)
    except OSError:
        return None
    return kept


def supervise(
    server: TritonServer,
    *,
    stopping: Callable[[], bool],
    budget: RestartBudget,
    say: Callable[[str], None],
    poll_s: float = 0.2,
) -> None:
    """Return once stopping() is true. Each time the server dies by itself, keep its log and
    start it again on the same ports, within `budget`. Raises ServerError once the budget is
    spent, or when a restart itself fails."""
    while not stopping():
        code = server.exit_code()
        if code is None:
            time.sleep(poll_s)
            continue
        tail = server.log_tail()
        kept = keep_crash_log(server.log_path)
        where = f"; its log is kept as {kept}" if kept else ""
        if not budget.take(time.monotonic()):
            why = (
                "--max-restarts is 0"
                if budget.limit == 0
                else f"it was restarted {budget.describe()} already"
            )
            raise ServerError(
                f"tritonserver {describe_exit(code)}, and {why}, so it is not started again"
                f"{where}. Last log lines:\n{tail}"
            )
        say(
            f"tritonserver {describe_exit(code)}; starting it again (restart {budget.used}, "
            f"{budget.describe()}){where}. Last log lines:\n{tail}"
        )
        server.stop()  # sweeps the backend stubs left in its process group
        server.start()
        say(f"tritonserver ready again: http {server.http_url}, grpc {server.grpc_url}")
