"""The restart budget and the words `lifeloop serve` uses about a dead server. The restarts
themselves run against a real tritonserver in tests/integration/test_cli.py."""

from __future__ import annotations

import inspect
import signal
from datetime import UTC, datetime

from lifeloop.cli.serving import serve
from lifeloop.serve.supervisor import (
    DEFAULT_MAX_RESTARTS,
    RestartBudget,
    describe_exit,
    keep_crash_log,
)


def test_the_budget_allows_its_limit_in_any_window_and_forgets_older_restarts() -> None:
    budget = RestartBudget(limit=2, window_s=600)
    assert budget.take(0) and budget.take(100)
    assert not budget.take(599)  # two in the last ten minutes already
    assert budget.take(600) and budget.used == 2  # the one at 0 has left the window
    assert not budget.take(650)
    assert budget.describe() == "at most 2 in 10 min"


def test_a_budget_of_zero_never_restarts() -> None:
    assert not RestartBudget(limit=0).take(0)


def test_exits_are_described_by_code_or_signal_and_segfaults_name_the_known_bug() -> None:
    assert describe_exit(1) == "exited with code 1"
    assert describe_exit(-signal.SIGKILL) == "was killed by SIGKILL"
    assert "triton-inference-server/server#7368" in describe_exit(-signal.SIGSEGV)
    assert describe_exit(-200) == "was killed by signal 200"


def test_crash_logs_are_kept_side_by_side_even_within_one_second(tmp_path) -> None:
    when = datetime(2026, 12, 7, 21, 0, 0, tzinfo=UTC)
    log = tmp_path / "tritonserver.log"
    kept = []
    for text in ("first", "second"):
        log.write_text(text)
        kept.append(keep_crash_log(log, when))
    assert [p.name for p in kept] == [
        "tritonserver.log.crashed-20261207T210000",
        "tritonserver.log.crashed-20261207T210000-1",
    ]
    assert [p.read_text() for p in kept] == ["first", "second"] and not log.exists()
    assert keep_crash_log(log, when) is None  # nothing to keep


def test_serve_defaults_to_the_supervisors_budget() -> None:
    option = inspect.signature(serve).parameters["max_restarts"]
    assert option.default == DEFAULT_MAX_RESTARTS
