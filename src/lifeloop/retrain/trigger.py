"""`lifeloop retrain --when`: retrain only when there is a reason to, and say why in one line.

- `always`: every run retrains (the default);
- `labels>=N`: at least N labels have come back on answers no published version was trained
  on yet;
- `drift`: the champion's newest answers have drifted from its held-out softmax
  (lifeloop.drift, as `lifeloop drift` tests them);
- several, comma-separated (`drift,labels>=500`): any of them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from lifeloop.drift import ALPHA
from lifeloop.errors import RetrainError
from lifeloop.rollout.policy import read_policy
from lifeloop.rollout.served_drift import DEFAULT_WINDOW, served_drift
from lifeloop.store.database import Store

_LABELS = re.compile(r"labels\s*>=\s*(\d+)")


@dataclass(frozen=True)
class Trigger:
    kind: str  # always, labels or drift
    labels: int = 0  # for labels: how many new labels are enough

    @classmethod
    def parse(cls, text: str) -> Trigger:
        text = text.strip()
        if text in ("always", "drift"):
            return cls(text)
        found = _LABELS.fullmatch(text)
        if found and int(found.group(1)) >= 1:
            return cls("labels", int(found.group(1)))
        raise RetrainError(
            f"--when {text!r} is not a trigger; use always, drift or labels>=N "
            "(e.g. labels>=500), or several comma-separated"
        )


def parse_when(text: str) -> tuple[Trigger, ...]:
    """`--when`: one trigger or several, comma-separated (any of them retrains)."""
    return tuple(Trigger.parse(part) for part in text.split(","))


@dataclass(frozen=True)
class Decision:
    retrain: bool
    why: str


def decide(
    triggers: tuple[Trigger, ...],
    repository: Path,
    store: Store,
    model: str,
    *,
    router: str = "router",
    window: int = DEFAULT_WINDOW,
    alpha: float = ALPHA,
) -> Decision:
    """Retrain on the first trigger that holds; when none does, say why for each."""
    reasons = []
    for trigger in triggers:
        decision = _decide(
            trigger, repository, store, model, router=router, window=window, alpha=alpha
        )
        if decision.retrain:
            return decision
        reasons.append(decision.why.removeprefix("not retraining: "))
    return Decision(False, "not retraining: " + "; ".join(reasons))


def _decide(
    trigger: Trigger,
    repository: Path,
    store: Store,
    model: str,
    *,
    router: str = "router",
    window: int = DEFAULT_WINDOW,
    alpha: float = ALPHA,
) -> Decision:
    if trigger.kind == "always":
        return Decision(True, "retraining: --when always")
    if trigger.kind == "labels":
        trained = store.trained_request_ids(model)
        new = sum(1 for row in store.labelled(model) if row.request_id not in trained)
        if new >= trigger.labels:
            return Decision(True, f"retraining: {new} new labels, --when labels>={trigger.labels}")
        return Decision(
            False,
            f"not retraining: {new} new labels, fewer than --when labels>={trigger.labels}",
        )
    champion = read_policy(Path(repository) / router).champion
    (found,) = served_drift(
        repository, store, model, window=window, alpha=alpha, versions=[champion]
    )
    if found.result is None:
        return Decision(False, f"not retraining: champion v{champion}: {found.reason}")
    figures = (
        f"p = {found.result.p_value:.2g} over its newest {found.answers} answers, class "
        f"{found.result.worst_class!r} moved most"
    )
    if found.drifted:
        return Decision(True, f"retraining: champion v{champion} has drifted ({figures})")
    return Decision(False, f"not retraining: champion v{champion} has not drifted ({figures})")
