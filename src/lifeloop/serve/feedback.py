"""Feedback: true labels for served request ids, through Triton's own protocol, and the
automatic rollback that watches them.

The `feedback` Python model takes `request_id` and `label` (BYTES, one pair per row). Each
request is written in its own transaction: an unknown id or an empty label fails that request
with a one-line error (INVALID_ARG: HTTP 400, gRPC INVALID_ARGUMENT) and leaves the store
unchanged, and never fails the other requests of the batch; a fault of the server's is
INTERNAL. A label is acknowledged only once committed: when the store does not commit within
`lifeloop.store_timeout_ms` (default 2 s), or when the id may still sit in the router's spool
after an outage, the request fails with UNAVAILABLE, and sending it again is safe (a second
label for an id replaces the first). `execute` never waits on the store for longer than that
bound.

A background thread checks the canary after feedback (at most twice a second): once the
canary has `rollback_min_labelled` labelled answers and its error rate exceeds the champion's
by more than `rollback_margin`, the candidate is withdrawn and the event recorded."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Any

import numpy as np

from lifeloop.contract import (
    ACCEPTED_OUTPUT,
    LABEL_INPUT,
    REQUEST_ID_INPUT,
    ROUTER_PARAM,
    SPOOL_DIR_PARAM,
    STORE_PARAM,
    STORE_TIMEOUT_PARAM,
    parameters,
)
from lifeloop.errors import FeedbackError, LifeloopError, StoreUnavailable
from lifeloop.rollout.policy import read_policy
from lifeloop.rollout.rollout import Rollout
from lifeloop.serve.responses import invalid, log, unavailable
from lifeloop.serve.router import default_spool_dir
from lifeloop.store import journal
from lifeloop.store.database import ArmScore, Store


def check_canary(rollout: Rollout) -> str | None:
    """Withdraw a canary that does worse than the champion on labelled feedback; returns the
    reason when it did."""
    policy = rollout.policy
    since = policy.since
    if policy.candidate is None or policy.canary_weight <= 0 or since is None:
        return None
    scores = rollout.store.arm_scores(policy.model, since)
    canary = scores.get(("canary", policy.candidate), ArmScore(labelled=0, wrong=0))
    champion = scores.get(("champion", policy.champion), ArmScore(labelled=0, wrong=0))
    if canary.labelled < policy.rollback_min_labelled:
        return None
    gap = canary.error_rate - champion.error_rate
    if gap <= policy.rollback_margin:
        return None
    reason = (
        f"canary v{policy.candidate} error rate {canary.error_rate:.3f} over "
        f"{canary.labelled} labelled requests exceeds champion v{policy.champion}'s "
        f"{champion.error_rate:.3f} ({champion.labelled} labelled) by more than "
        f"{policy.rollback_margin:g}"
    )
    rollout.withdraw(reason=reason, action="auto-rollback")
    return reason


def decode_strings(array: np.ndarray) -> list[str]:
    """A BYTES tensor of any shape -> its values as text, in row order (bad UTF-8 replaced)."""
    return [
        v.decode("utf-8", errors="replace") if isinstance(v, bytes) else str(v)
        for v in array.reshape(-1)
    ]


class Outcome(Enum):
    ACCEPTED = "accepted"
    INVALID = "invalid"  # INVALID_ARG: the caller's mistake
    UNAVAILABLE = "unavailable"  # not acknowledged, safe to send again


@dataclass(frozen=True)
class Reply:
    """What one feedback request is answered: `accepted` labels, or an error message."""

    outcome: Outcome
    accepted: int = 0
    message: str = ""


def label_pairs(ids: list[str], labels: list[str]) -> list[tuple[str, str]]:
    """(request id, label) per row, or FeedbackError when the counts differ."""
    if len(ids) != len(labels):
        raise FeedbackError(
            f"feedback has {len(ids)} request ids and {len(labels)} labels; send one label per id"
        )
    return list(zip(ids, labels, strict=True))


def reply(ids: list[str], labels: list[str], add: Callable[[list[tuple[str, str]]], None]) -> Reply:
    """Write one request's labels through `add` and say how it is answered: FeedbackError is
    the caller's mistake, any other LifeloopError means the labels may not be kept. Anything
    else is a fault of the server's and escapes: Triton answers it INTERNAL."""
    try:
        add(label_pairs(ids, labels))
    except FeedbackError as exc:
        return Reply(Outcome.INVALID, message=str(exc))
    except LifeloopError as exc:
        return Reply(Outcome.UNAVAILABLE, message=str(exc))
    return Reply(Outcome.ACCEPTED, accepted=len(ids))


def spooled_retry(exc: FeedbackError, pending: Callable[[], int]) -> StoreUnavailable | None:
    """An id the store does not know may still sit in the router's spool after an outage:
    then the caller is told to retry (UNAVAILABLE), not that the id is wrong. `pending`
    (the spool's record count) is read only for an unknown id."""
    if "unknown request id" not in str(exc):
        return None
    spooled = pending()
    if not spooled:
        return None
    return StoreUnavailable(
        f"{exc}; the router has {spooled} predictions spooled after a store "
        "outage that may hold it, send it again shortly"
    )


class FeedbackModel:
    """What the feedback model's model.py delegates to; `pb` is triton_python_backend_utils."""

    check_interval_s = 0.5

    def __init__(
        self,
        pb: Any,
        repository: Path,
        router: str,
        store_url: str,
        *,
        spool_dir: Path | None = None,
        timeout_s: float = 2.0,
    ) -> None:
        self.pb = pb
        self.timeout_s = timeout_s
        self.spool_dir = spool_dir or default_spool_dir(repository, router)
        read_policy(repository / router)  # fail the load now if the router is not set up
        self.store = Store(store_url, connect=False)  # loads while the database is down
        self.rollout = Rollout(repository, self.store, router=router)
        # One thread owns the store writes, so that execute can stop waiting on one.
        self._writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="lifeloop-feedback")
        self._labelled = threading.Event()
        self._closing = threading.Event()
        self._checker = threading.Thread(target=self._check, name="lifeloop-canary", daemon=True)
        self._checker.start()

    @classmethod
    def from_args(cls, args: dict[str, str], pb: Any) -> FeedbackModel:
        config = json.loads(args["model_config"])
        params = parameters(config)
        repository = Path(args["model_repository"]).parent
        spool = params.get(SPOOL_DIR_PARAM)
        return cls(
            pb,
            repository,
            params.get(ROUTER_PARAM, "router"),
            params[STORE_PARAM],
            spool_dir=Path(spool) if spool else None,
            timeout_s=float(params.get(STORE_TIMEOUT_PARAM, "2000")) / 1000,
        )

    def close(self) -> None:
        self._closing.set()
        self._labelled.set()
        self._checker.join(5)
        self._writer.shutdown(wait=False, cancel_futures=True)
        self.store.close()

    def execute(self, requests: list[Any]) -> list[Any]:
        pb = self.pb
        responses = []
        for request in requests:
            ids = decode_strings(pb.get_input_tensor_by_name(request, REQUEST_ID_INPUT).as_numpy())
            labels = decode_strings(pb.get_input_tensor_by_name(request, LABEL_INPUT).as_numpy())
            responses.append(self._response(reply(ids, labels, self._add)))
        self._labelled.set()
        return responses

    def _response(self, answer: Reply) -> Any:
        pb = self.pb
        if answer.outcome is Outcome.INVALID:
            return pb.InferenceResponse(error=invalid(pb, answer.message))
        if answer.outcome is Outcome.UNAVAILABLE:
            return pb.InferenceResponse(error=unavailable(pb, answer.message))
        accepted = np.ones((answer.accepted, 1), dtype=bool)
        return pb.InferenceResponse(output_tensors=[pb.Tensor(ACCEPTED_OUTPUT, accepted)])

    def _add(self, pairs: list[tuple[str, str]]) -> None:
        """Write `pairs` within the bound, or raise: FeedbackError for the caller's mistakes,
        StoreUnavailable when the label may not be kept."""
        future = self._writer.submit(self.store.add_feedback, pairs, source="triton")
        try:
            future.result(timeout=self.timeout_s)
        except FutureTimeout:
            future.cancel()  # still queued: never written; running: may commit, retry is safe
            raise StoreUnavailable(
                f"the store did not take the feedback within {self.timeout_s * 1000:g} ms; "
                "it was not acknowledged, send it again"
            ) from None
        except FeedbackError as exc:
            retry = spooled_retry(exc, lambda: journal.pending_records(self.spool_dir))
            if retry is not None:
                raise retry from exc
            raise

    def _check(self) -> None:
        """The automatic rollback, off the request path: its store reads may wait."""
        while not self._closing.is_set():
            self._labelled.wait()
            self._labelled.clear()
            if self._closing.is_set():
                return
            try:
                check_canary(self.rollout)
            except LifeloopError as exc:
                log(self.pb, "error", f"lifeloop automatic rollback check failed: {exc}")
            except Exception as exc:  # the store's driver, an I/O error: the next check retries
                log(self.pb, "error", f"lifeloop automatic rollback check failed: {exc!r}")
            self._closing.wait(self.check_interval_s)
