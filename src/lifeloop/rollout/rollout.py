"""Rollout: start a candidate, shift canary weight, shadow, promote, roll back, withdraw.

Every change runs under the router's lock and follows one order:
1. the classifier's version policy grows to hold every version the new policy routes to (and
   the server loads it, when a URL is given), so the router never names an unloaded version;
2. the routing policy file is replaced: the router acts on it at its next batch;
3. the change is recorded in the store's history;
4. the version policy shrinks to previous + champion + candidate."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

from lifeloop.errors import RolloutError
from lifeloop.repository import config as cfg
from lifeloop.repository.publish import (
    fronting_models,
    loaded_by_policy,
    model_lock,
    read_config,
    version_numbers,
    write_config,
)
from lifeloop.rollout.cascade import check_light
from lifeloop.rollout.policy import Cascade, RoutingPolicy, read_policy, write_policy
from lifeloop.rollout.replicas import ReplicaResult, ServerUrls, load_everywhere
from lifeloop.store.database import Event, Store, first_line, now
from lifeloop.tracking import Tracker


class Rollout:
    def __init__(
        self,
        repository: Path,
        store: Store,
        *,
        router: str = "router",
        server_url: ServerUrls = None,
        tracker: Tracker | None = None,
    ) -> None:
        self.repository = Path(repository)
        self.router_dir = self.repository / router
        self.store = store
        self.server_url = server_url
        # Each server's result of the last change that made servers load something.
        self.replicas: list[ReplicaResult] = []
        # The MLflow registry's aliases follow champion and candidate; a registry that fails
        # leaves the rollout done and says so here.
        self.tracker = tracker
        self.registry_warning: str | None = None

    @property
    def policy(self) -> RoutingPolicy:
        return read_policy(self.router_dir)

    # --- the commands -------------------------------------------------------------------

    def start_candidate(
        self, version: int, *, canary_weight: float = 0.0, shadow: bool = False, reason: str
    ) -> RoutingPolicy:
        def change(p: RoutingPolicy) -> RoutingPolicy:
            if version not in version_numbers(self.repository / p.model):
                raise RolloutError(
                    f"model {p.model!r} has no version {version}; publish it first",
                    model=p.model,
                    version=version,
                )
            return p.evolve(
                candidate=version,
                canary_weight=canary_weight,
                shadow=shadow,
                candidate_since=now().isoformat(),
            )

        return self._change("candidate", reason, change)

    def canary(self, weight: float, *, reason: str) -> RoutingPolicy:
        return self._change("canary", reason, lambda p: p.evolve(canary_weight=weight))

    def shadow(self, on: bool, *, reason: str) -> RoutingPolicy:
        return self._change("shadow", reason, lambda p: p.evolve(shadow=on))

    def promote(self, *, reason: str) -> RoutingPolicy:
        def change(p: RoutingPolicy) -> RoutingPolicy:
            if p.candidate is None:
                raise RolloutError(
                    f"{p.model!r} has no candidate to promote; start one with `lifeloop retrain`",
                    model=p.model,
                )
            return p.without_candidate(previous=p.champion, champion=p.candidate)

        return self._change("promote", reason, change)

    def rollback(self, *, reason: str) -> RoutingPolicy:
        """The previous champion answers again at once (it is still loaded); the champion
        that replaced it is dropped, and so is any candidate."""

        def change(p: RoutingPolicy) -> RoutingPolicy:
            if p.previous is None:
                raise RolloutError(
                    f"{p.model!r} has no previous champion to roll back to; `lifeloop history` "
                    "shows what served before",
                    model=p.model,
                )
            return p.without_candidate(champion=p.previous, previous=None)

        return self._change("rollback", reason, change)

    def withdraw(self, *, reason: str, action: str = "withdraw") -> RoutingPolicy:
        """The candidate stops taking traffic; the champion keeps serving."""

        def change(p: RoutingPolicy) -> RoutingPolicy:
            if p.candidate is None:
                raise RolloutError(f"{p.model!r} has no candidate to withdraw", model=p.model)
            return p.without_candidate()

        return self._change(action, reason, change)

    def prepare_light(self, light: str, version: int | None = None) -> int:
        """Check that `light` can stand before the classifier and have its version (default:
        the newest) in its version policy and loaded on the servers; returns the version."""
        version = check_light(self.repository, self.policy.model, light, version)
        config = read_config(self.repository / light)
        kept = (
            set()
            if config is None
            else loaded_by_policy(config.version_policy, self.repository / light)
        )
        if version not in kept:  # grow its version policy, and have the servers load it
            self._keep_loaded(light, {*kept, version})
        elif self.server_url:  # in EXPLICIT mode it may be on disk but not loaded
            self.replicas = load_everywhere(
                self.server_url, [light], ready={light: {version}}, what=f"load {light}"
            )
        return version

    def cascade(
        self, light: str, threshold: float, *, version: int | None = None, reason: str = ""
    ) -> RoutingPolicy:
        """Put `light` (its newest version, or `version`) before the arms: images it answers
        with a top-1 softmax below `threshold` escalate. Its version is loaded first."""
        version = self.prepare_light(light, version)
        cascade = Cascade(light=light, version=version, threshold=threshold)
        return self._change(
            "cascade", reason or cascade.describe(), lambda p: p.evolve(cascade=cascade)
        )

    def cascade_off(self, *, reason: str = "") -> RoutingPolicy:
        """Every image goes to its arm again, from the next batch."""
        return self._change(
            "cascade-off", reason or "cascade off", lambda p: p.evolve(cascade=None)
        )

    # --- the one path every change takes ------------------------------------------------

    def _change(
        self, action: str, reason: str, fn: Callable[[RoutingPolicy], RoutingPolicy]
    ) -> RoutingPolicy:
        with model_lock(self.router_dir):
            old = read_policy(self.router_dir)
            new = fn(old)
            if new == old:
                return old
            self._keep_loaded(new.model, set(old.loaded_versions) | set(new.loaded_versions))
            write_policy(self.router_dir, new)
            self.store.add_event(
                Event(
                    model=new.model,
                    action=action,
                    champion=new.champion,
                    candidate=new.candidate,
                    previous=new.previous,
                    canary_weight=new.canary_weight,
                    shadow=new.shadow,
                    reason=reason or action,
                    created_at=now(),
                )
            )
            self._keep_loaded(new.model, set(new.loaded_versions))
        if (new.champion, new.candidate) != (old.champion, old.candidate):
            self.sync_aliases()
        return new

    def sync_aliases(self) -> None:
        """Point the aliases where the policy on disk says, outside the lock: read afresh, so
        that of two changes racing here the later state wins."""
        if self.tracker is None:
            return
        policy = self.policy
        try:
            self.tracker.follow(policy.model, policy.champion, policy.candidate)
            self.registry_warning = None
        except Exception as exc:  # the registry mirrors the rollout; it never blocks it
            self.registry_warning = (
                f"the rollout is done, but MLflow's aliases of {policy.model!r} were not "
                f"updated ({first_line(exc)}); the next rollout change updates them"
            )

    def _keep_loaded(self, model: str, versions: set[int]) -> None:
        results = sync_version_policy(self.repository, model, versions, server_url=self.server_url)
        self.replicas = results or self.replicas


def sync_version_policy(
    repository: Path, model: str, versions: set[int], *, server_url: ServerUrls = None
) -> list[ReplicaResult]:
    """Make `model`'s version policy exactly `versions`; with URLs, have every server load
    the change (EXPLICIT mode) and wait until each version is ready there. Returns each
    server's result (none when the policy was already so, or no URL was given)."""
    config = read_config(Path(repository) / model)
    if config is None:
        raise RolloutError(f"model {model!r} has no config.pbtxt in {repository}", model=model)
    wanted = cfg.VersionPolicy(latest=None, specific=tuple(sorted(versions)))
    if config.version_policy == wanted:
        return []
    write_config(repository, replace(config, version_policy=wanted))
    # Every server loads the change and is waited on until the versions are READY; models
    # fronting the classifier reload too, to re-read its labels.
    return load_everywhere(
        server_url,
        [model, *fronting_models(repository, model)],
        ready={model: versions},
        what=f"load versions {sorted(versions)} of {model}",
    )
