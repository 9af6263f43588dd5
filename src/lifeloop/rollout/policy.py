"""The routing policy: which classifier versions the router sends traffic to.

It is a JSON file beside the router model (`<repository>/<router>/policy.json`), replaced
atomically by the rollout commands and re-read by the router when it changes, so a promotion
or a rollback takes effect on the next batch without reloading anything."""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, replace
from datetime import datetime
from pathlib import Path
from typing import Any

from lifeloop.errors import RolloutError
from lifeloop.repository.publish import loaded_by_policy, read_config, replace_file

POLICY_NAME = "policy.json"


@dataclass(frozen=True, kw_only=True)
class Cascade:
    """A light classifier answers first; rows whose top-1 softmax is below `threshold` go on
    to the heavy arm (the champion, or the candidate by the canary weight)."""

    light: str  # the light model's name in the repository
    version: int  # its version that answers
    threshold: float

    def __post_init__(self) -> None:
        if not 0.0 <= self.threshold <= 1.0:
            raise RolloutError(f"cascade threshold must be in 0..1, got {self.threshold}")
        if self.version < 1:
            raise RolloutError(f"cascade light version must be >= 1, got {self.version}")

    def describe(self) -> str:
        return f"{self.light} v{self.version} below {self.threshold:g} escalates"


@dataclass(frozen=True, kw_only=True)
class RoutingPolicy:
    model: str  # the classifier the router fronts
    champion: int
    candidate: int | None = None
    previous: int | None = None  # the champion before this one: what rollback returns to
    canary_weight: float = 0.0  # share of traffic answered by the candidate
    shadow: bool = False  # also run the candidate on every request, answer with the champion
    candidate_since: str | None = None  # ISO time the candidate started taking traffic
    # Automatic rollback: withdraw a canary whose error rate on labelled feedback exceeds the
    # champion's by more than `rollback_margin`, once it has `rollback_min_labelled` labels.
    rollback_margin: float = 0.10
    rollback_min_labelled: int = 50
    cascade: Cascade | None = None  # a light model before the arms, None: off

    def __post_init__(self) -> None:
        if isinstance(self.cascade, dict):  # from JSON
            object.__setattr__(self, "cascade", Cascade(**self.cascade))
        if self.cascade is not None and self.cascade.light == self.model:
            raise RolloutError(
                f"the cascade's light model must be another model than {self.model!r}; export "
                "a light one (say `lifeloop export --format int8 --model classifier_int8`)"
            )
        if not 0.0 <= self.canary_weight <= 1.0:
            raise RolloutError(f"canary weight must be in 0..1, got {self.canary_weight}")
        for name in ("champion", "candidate", "previous"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise RolloutError(f"{name} version must be >= 1, got {value}")
        if self.candidate is None and (self.canary_weight > 0 or self.shadow):
            raise RolloutError(
                "canary traffic and shadow need a candidate; publish one with `lifeloop retrain` "
                "or `lifeloop candidate`"
            )
        if self.candidate is not None and self.candidate == self.champion:
            raise RolloutError(f"version {self.champion} cannot be champion and candidate at once")
        if self.rollback_min_labelled < 1 or self.rollback_margin < 0:
            raise RolloutError(
                "automatic rollback needs rollback_min_labelled >= 1 and rollback_margin >= 0"
            )

    @property
    def loaded_versions(self) -> tuple[int, ...]:
        """What the classifier's version policy keeps loaded: rollback then needs no load."""
        kept = {self.previous, self.champion, self.candidate}
        return tuple(sorted(v for v in kept if v is not None))

    @property
    def since(self) -> datetime | None:
        return datetime.fromisoformat(self.candidate_since) if self.candidate_since else None

    def evolve(self, **changes: Any) -> RoutingPolicy:
        return replace(self, **changes)

    def without_candidate(self, **changes: Any) -> RoutingPolicy:
        """No candidate, so no canary share, no shadow and no candidate clock; with
        `changes` (a new champion, say) applied in the same step."""
        return replace(
            self, candidate=None, canary_weight=0.0, shadow=False, candidate_since=None, **changes
        )

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True) + "\n"

    @classmethod
    def from_json(cls, text: str, source: str = "policy") -> RoutingPolicy:
        try:
            data = json.loads(text)
            return cls(**data)
        except (json.JSONDecodeError, TypeError) as exc:
            raise RolloutError(
                f"{source} is not a routing policy ({exc}); rewrite it with `lifeloop router init`"
            ) from exc


def policy_path(router_dir: Path) -> Path:
    return Path(router_dir) / POLICY_NAME


def read_policy(router_dir: Path) -> RoutingPolicy:
    path = policy_path(router_dir)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise RolloutError(
            f"no routing policy at {path}; set the router up with `lifeloop router init`"
        ) from None
    return RoutingPolicy.from_json(text, str(path))


def write_policy(router_dir: Path, policy: RoutingPolicy) -> Path:
    return replace_file(policy_path(router_dir), policy.to_json())


class PolicyWatcher:
    """The current policy, re-read when the file changes (one stat per call). A file that does
    not parse keeps the last good policy in force: traffic never stops on a bad edit."""

    def __init__(self, router_dir: Path) -> None:
        self.path = policy_path(router_dir)
        self._stamp: tuple[int, int, int] | None = None
        self._policy = read_policy(router_dir)
        self.last_error: str | None = None
        self._stamp = self._stat()

    def _stat(self) -> tuple[int, int, int] | None:
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return None
        return (st.st_ino, st.st_mtime_ns, st.st_size)

    def current(self) -> RoutingPolicy:
        stamp = self._stat()
        if stamp is not None and stamp != self._stamp:
            try:
                self._policy = RoutingPolicy.from_json(self.path.read_text(), str(self.path))
                self.last_error = None
            except (RolloutError, OSError) as exc:
                self.last_error = str(exc)
            self._stamp = stamp
        return self._policy


def loaded_in(repository: Path) -> dict[str, set[int]]:
    """Per model, the versions its version policy or any router's policy keeps loaded."""
    loaded: dict[str, set[int]] = {}
    for model_dir in sorted(p for p in Path(repository).iterdir() if p.is_dir()):
        config = read_config(model_dir)
        if config is not None and config.backend != "python":
            loaded.setdefault(model_dir.name, set()).update(
                loaded_by_policy(config.version_policy, model_dir)
            )
        if policy_path(model_dir).is_file():
            policy = read_policy(model_dir)
            loaded.setdefault(policy.model, set()).update(policy.loaded_versions)
            if policy.cascade is not None:
                loaded.setdefault(policy.cascade.light, set()).add(policy.cascade.version)
    return loaded
