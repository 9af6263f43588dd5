"""Drift on served traffic, per version: each version's newest logged answers against the
reference its publish stored (lifeloop.drift). What `lifeloop drift` prints and what
`lifeloop retrain --when drift` asks."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from lifeloop.drift import ALPHA, MIN_WINDOW, REFERENCE_NAME, DriftResult, Reference, window_drift
from lifeloop.store.database import Store

DEFAULT_WINDOW = 300


@dataclass(frozen=True)
class VersionDrift:
    """One version's window and its test; `result` is None when there is nothing to test,
    and `reason` says why."""

    version: int
    answers: int
    since: datetime | None
    result: DriftResult | None
    reason: str = ""

    @property
    def drifted(self) -> bool:
        return self.result is not None and self.result.drifted

    @property
    def verdict(self) -> str:
        return self.result.verdict if self.result is not None else self.reason


def served_drift(
    repository: Path,
    store: Store,
    model: str,
    *,
    window: int = DEFAULT_WINDOW,
    alpha: float = ALPHA,
    versions: list[int] | None = None,
) -> list[VersionDrift]:
    """Each version of `model` that answered traffic (or each of `versions`), tested on its
    newest `window` answers. Answers a cascade's light model gave are not the version's own
    and are left out."""
    found = []
    for version in versions if versions is not None else store.answering_versions(model):
        answers, since = store.recent_answers(model, version, window)
        path = Path(repository) / model / str(version) / REFERENCE_NAME
        if not path.is_file():
            reason = (
                "no reference: its publish had no held-out images; re-export with --eval-dir"
                if path.parent.is_dir()
                else "no reference: the version is no longer in the repository"
            )
            found.append(VersionDrift(version, len(answers), since, None, reason))
            continue
        if len(answers) < MIN_WINDOW:
            reason = f"too few answers ({len(answers)} of the {MIN_WINDOW} a test needs)"
            found.append(VersionDrift(version, len(answers), since, None, reason))
            continue
        result = window_drift(Reference.read(path), answers, alpha=alpha)
        found.append(VersionDrift(version, len(answers), since, result))
    return found
