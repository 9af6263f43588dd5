"""Which served inputs the router keeps for retraining: every input whose answer was uncertain
(top-1 softmax below a threshold, or a shadowing candidate disagreeing with the answer), and
a uniform sample of all of them.

Feedback labels what people look at, and people look at what the model was unsure of: those
are the inputs retraining learns most from. The uniform sample is the unbiased part: accuracy
estimates and anything else that must describe the traffic as it is use it alone, or weigh
each kept input by `1 / keep_rate`, the chance an input like it had of being kept.

Each prediction records the rule's outcome: `kept_by` (uniform, uncertain, disagreed, or None
where not kept) and `keep_rate`. The uniform draw is made for every input before it is
answered, and an input it picks is `uniform` even when it was uncertain too, so that the
uniform sample is one of all traffic."""

from __future__ import annotations

from dataclasses import dataclass

from lifeloop.contract import (
    DEFAULT_KEEP_UNCERTAIN_BELOW,
    DEFAULT_SAMPLE_RATE,
    KEEP_DISAGREEING_PARAM,
    KEEP_UNCERTAIN_BELOW_PARAM,
    SAMPLE_RATE_PARAM,
)
from lifeloop.errors import RolloutError

UNIFORM = "uniform"
UNCERTAIN = "uncertain"
DISAGREED = "disagreed"


@dataclass(frozen=True, kw_only=True)
class KeepRule:
    """`uniform`: the share of all inputs kept at random (1 keeps every input, 0 none at
    random). `uncertain_below`: an answer whose top-1 softmax is below it is kept (0: none).
    `disagreeing`: an answer a shadowing candidate's top-1 disagrees with is kept."""

    uniform: float = DEFAULT_SAMPLE_RATE
    uncertain_below: float = DEFAULT_KEEP_UNCERTAIN_BELOW
    disagreeing: bool = True

    def __post_init__(self) -> None:
        settings = (("sample_rate", self.uniform), ("keep_uncertain_below", self.uncertain_below))
        for setting, value in settings:
            if not 0.0 <= value <= 1.0:
                raise RolloutError(f"{setting} must be in 0..1, got {value}", setting=setting)

    @classmethod
    def everything(cls) -> KeepRule:
        """Keep every input: what a small deployment, the demo and the bench use."""
        return cls(uniform=1.0)

    @classmethod
    def from_parameters(cls, params: dict[str, str]) -> KeepRule:
        """A router config's parameters. A router written before the rule existed kept its
        sample rate at random and nothing else, and goes on doing so."""
        return cls(
            uniform=float(params.get(SAMPLE_RATE_PARAM, "1.0")),
            uncertain_below=float(params.get(KEEP_UNCERTAIN_BELOW_PARAM, "0")),
            disagreeing=params.get(KEEP_DISAGREEING_PARAM, "false") == "true",
        )

    def to_parameters(self) -> dict[str, str]:
        return {
            SAMPLE_RATE_PARAM: f"{self.uniform:g}",
            KEEP_UNCERTAIN_BELOW_PARAM: f"{self.uncertain_below:g}",
            KEEP_DISAGREEING_PARAM: "true" if self.disagreeing else "false",
        }

    @property
    def keeps_everything(self) -> bool:
        return self.uniform >= 1.0

    def decide(self, drawn: bool, top1: float, disagrees: bool) -> tuple[str | None, float]:
        """One answered input -> (why it is kept, or None; the chance that an input answered
        as it was is kept). `drawn` is its uniform draw."""
        uncertain = top1 < self.uncertain_below
        disagreed = self.disagreeing and disagrees
        rate = 1.0 if uncertain or disagreed else self.uniform
        if drawn:
            return UNIFORM, rate
        if uncertain:
            return UNCERTAIN, rate
        if disagreed:
            return DISAGREED, rate
        return None, rate

    def describe(self) -> str:
        if self.keeps_everything:
            return "every input"
        parts = [f"{self.uniform:.3g} of inputs at random"]
        if self.uncertain_below > 0:
            parts.append(f"every answer with top-1 below {self.uncertain_below:g}")
        if self.disagreeing:
            parts.append("every answer a shadowing candidate disagrees with")
        return ", ".join(parts)
