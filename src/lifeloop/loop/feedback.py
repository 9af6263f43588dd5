"""Feedback: true labels for served request ids, through Triton's own protocol, and the
automatic rollback that watches them.

The `feedback` Python model takes `request_id` and `label` (BYTES, one pair per row). Each
request is written in its own transaction: an unknown id or an empty label fails that request
with a one-line error and leaves the store unchanged, and never fails the other requests of
the batch. After each batch it checks the canary (at most twice a second): once the canary
has `rollback_min_labelled` labelled answers and its error rate exceeds the champion's by more
than `rollback_margin`, the candidate is withdrawn and the event recorded."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np

from lifeloop.errors import LifeloopError
from lifeloop.loop.policy import read_policy
from lifeloop.loop.rollout import Rollout
from lifeloop.loop.router import STORE_PARAM
from lifeloop.loop.store import ArmScore, Store
from lifeloop.serve.ort_runner import parameters

ROUTER_PARAM = "lifeloop.router"


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
    return [
        v.decode("utf-8", errors="replace") if isinstance(v, bytes) else str(v)
        for v in array.reshape(-1)
    ]


class FeedbackModel:
    """What the feedback model's model.py delegates to; `pb` is triton_python_backend_utils."""

    check_interval_s = 0.5

    def __init__(self, pb: Any, repository: Path, router: str, store_url: str) -> None:
        self.pb = pb
        self.store = Store(store_url)
        read_policy(repository / router)  # fail the load now if the router is not set up
        self.rollout = Rollout(repository, self.store, router=router)
        self._checked = 0.0

    @classmethod
    def from_args(cls, args: dict[str, str], pb: Any) -> FeedbackModel:
        config = json.loads(args["model_config"])
        params = parameters(config)
        repository = Path(args["model_repository"]).parent
        return cls(pb, repository, params.get(ROUTER_PARAM, "router"), params[STORE_PARAM])

    def close(self) -> None:
        self.store.close()

    def execute(self, requests: list[Any]) -> list[Any]:
        pb = self.pb
        responses = []
        for request in requests:
            ids = decode_strings(pb.get_input_tensor_by_name(request, "request_id").as_numpy())
            labels = decode_strings(pb.get_input_tensor_by_name(request, "label").as_numpy())
            try:
                if len(ids) != len(labels):
                    raise LifeloopError(
                        f"feedback has {len(ids)} request ids and {len(labels)} labels; "
                        "send one label per id"
                    )
                self.store.add_feedback(zip(ids, labels, strict=True), source="triton")
            except LifeloopError as exc:
                responses.append(pb.InferenceResponse(error=pb.TritonError(str(exc))))
                continue
            accepted = np.ones((len(ids), 1), dtype=bool)
            responses.append(pb.InferenceResponse(output_tensors=[pb.Tensor("accepted", accepted)]))
        now = time.monotonic()
        if now - self._checked >= self.check_interval_s:
            self._checked = now
            try:
                check_canary(self.rollout)
            except LifeloopError as exc:
                _log_error(pb, f"lifeloop automatic rollback check failed: {exc}")
        return responses


def _log_error(pb: Any, message: str) -> None:
    logger = getattr(pb, "Logger", None)
    if logger is not None:
        logger.log_error(message)
