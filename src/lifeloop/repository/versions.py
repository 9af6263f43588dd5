"""What versions a model has on disk. What a server reports for each joins in the CLI
(`lifeloop versions --url`), through lifeloop.rollout.replicas.version_states."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from lifeloop.errors import RepositoryError
from lifeloop.repository.manifest import Manifest
from lifeloop.repository.publish import version_numbers


@dataclass(frozen=True, kw_only=True)
class VersionRow:
    version: int
    state: str
    labels: int
    format: str
    parity_max_abs_diff: float | None
    parity_top1_agreement: float | None
    created_at: str
    problem: str = ""


def list_versions(
    repository: Path, model: str, *, states: dict[int, str] | None = None
) -> list[VersionRow]:
    """One row per version folder. `states` (version -> state, from a server) fills the state
    column: a version the server does not list is NOT LOADED; without it the column is "-"."""
    model_dir = Path(repository) / model
    if not model_dir.is_dir():
        raise RepositoryError(
            f"model {model!r} is not in repository {repository}; publish it with `lifeloop export`"
        )
    rows = []
    for number in version_numbers(model_dir):
        state = states.get(number, "NOT LOADED") if states else "-"
        try:
            manifest = Manifest.read(model_dir / str(number))
        except RepositoryError as exc:
            rows.append(
                VersionRow(
                    version=number,
                    state=state,
                    labels=0,
                    format="?",
                    parity_max_abs_diff=None,
                    parity_top1_agreement=None,
                    created_at="",
                    problem=str(exc),
                )
            )
            continue
        rows.append(
            VersionRow(
                version=number,
                state=state,
                labels=len(manifest.labels),
                format=manifest.format,
                parity_max_abs_diff=manifest.parity.get("max_abs_diff"),
                parity_top1_agreement=manifest.parity.get("top1_agreement"),
                created_at=manifest.created_at,
            )
        )
    return rows
