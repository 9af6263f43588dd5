"""What versions a model has on disk, and what state the server reports for each."""

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
    repository: Path, model: str, *, server_url: str | None = None
) -> list[VersionRow]:
    model_dir = Path(repository) / model
    if not model_dir.is_dir():
        raise RepositoryError(
            f"model {model!r} is not in repository {repository}; publish it with `lifeloop export`"
        )
    states = _server_states(server_url, model) if server_url else {}
    rows = []
    for number in version_numbers(model_dir):
        state = states.get(number, "NOT LOADED" if server_url and states else "-")
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


def _server_states(server_url: str, model: str) -> dict[int, str]:
    from lifeloop.client import ClientError, ServerControl

    try:
        with ServerControl(server_url) as server:
            states = server.version_states(model)
    except ClientError:
        return {}
    return states
