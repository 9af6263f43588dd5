"""`lifeloop store purge`: retention for what the loop keeps. Predictions older than a window
go, with their feedback and the kept-input files no remaining prediction points at, and so do
archived checkpoints of versions that nothing serves. In short transactions of `batch_size`
rows, so the router's writes never wait long behind it.

Protected: the inputs a published version was trained on (its training record keeps their
request ids), unless `include_trained`; labelled predictions when `keep_labelled`; and the
checkpoint of any version a routing policy or the version policy keeps loaded."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path

import sqlalchemy as sa

from lifeloop.errors import StoreError
from lifeloop.store import blobs
from lifeloop.store.database import Store, feedback, now, predictions, trainings

BLOB_SUFFIXES = (".npy", ".npy.fernet")


@dataclass
class PurgeResult:
    before: datetime
    predictions: int = 0
    feedback: int = 0
    kept_inputs: int = 0  # files
    kept_input_bytes: int = 0
    checkpoints: list[Path] = field(default_factory=list)
    protected_trained: int = 0  # old predictions kept because a version was trained on them
    protected_labelled: int = 0


def parse_age(text: str) -> timedelta:
    """'30d', '12h', '90m', '3600s' -> a timedelta."""
    units = {"d": "days", "h": "hours", "m": "minutes", "s": "seconds"}
    text = text.strip().lower()
    try:
        amount = float(text[:-1])
        unit = units[text[-1]]
    except (ValueError, KeyError, IndexError):
        raise StoreError(
            f"older_than takes a number and a unit (d, h, m or s), like 30d; got {text!r}",
            setting="older_than",
        ) from None
    if amount <= 0:
        raise StoreError(f"older_than must be positive, got {text!r}", setting="older_than")
    return timedelta(**{unit: amount})


def purge(
    store: Store,
    *,
    older_than: timedelta,
    blob_dirs: list[Path],
    checkpoint_dir: Path | None = None,
    loaded: dict[str, set[int]] | None = None,
    keep_labelled: bool = False,
    include_trained: bool = False,
    batch_size: int = 500,
) -> PurgeResult:
    """Delete what is older than `older_than` (see the module docstring). `loaded` maps each
    model to the versions kept loaded, whose checkpoints stay whatever their age."""
    before = now() - older_than
    result = PurgeResult(before=before)
    trained = set() if include_trained else _trained_ids(store)
    last = ""
    while True:
        query = (
            sa.select(predictions.c.request_id, feedback.c.request_id.label("labelled"))
            .outerjoin(feedback, feedback.c.request_id == predictions.c.request_id)
            .where(predictions.c.created_at < before, predictions.c.request_id > last)
            .order_by(predictions.c.request_id)
            .limit(batch_size)
        )
        with store.engine.connect() as c:
            rows = c.execute(query).all()
        if not rows:
            break
        last = rows[-1][0]
        doomed = []
        for rid, labelled in rows:
            if rid in trained:
                result.protected_trained += 1
            elif keep_labelled and labelled is not None:
                result.protected_labelled += 1
            else:
                doomed.append(rid)
        if doomed:
            with store.engine.begin() as c:  # one short transaction per batch
                result.feedback += c.execute(
                    feedback.delete().where(feedback.c.request_id.in_(doomed))
                ).rowcount
                result.predictions += c.execute(
                    predictions.delete().where(predictions.c.request_id.in_(doomed))
                ).rowcount
    for blob_dir in blob_dirs:
        _purge_blobs(store, Path(blob_dir), before, result, batch_size)
    if checkpoint_dir is not None:
        _purge_checkpoints(Path(checkpoint_dir), before, loaded or {}, result)
    return result


def blob_dirs(repository: Path) -> list[Path]:
    """Every folder a router of `repository` keeps inputs in, and the default one."""
    from lifeloop.contract import BLOB_DIR_PARAM
    from lifeloop.repository.publish import read_config

    found = [blobs.default_blob_dir(repository)]
    for model_dir in sorted(p for p in Path(repository).iterdir() if p.is_dir()):
        config = read_config(model_dir)
        if config is not None and config.parameters.get(BLOB_DIR_PARAM):
            found.append(Path(config.parameters[BLOB_DIR_PARAM]))
    return list(dict.fromkeys(p.resolve() for p in found))


def _trained_ids(store: Store) -> set[str]:
    with store.engine.connect() as c:
        rows = c.execute(sa.select(trainings.c.request_ids))
        return {rid for (ids,) in rows for rid in json.loads(ids)}


def _purge_blobs(
    store: Store, blob_dir: Path, before: datetime, result: PurgeResult, batch_size: int
) -> None:
    """Kept-input files older than `before` that no prediction points at any more."""
    cutoff = before.timestamp()
    old = [p for p in _blob_files(blob_dir) if p.stat().st_mtime < cutoff]
    for start in range(0, len(old), batch_size):
        chunk = old[start : start + batch_size]
        names = [str(p) for p in chunk]
        with store.engine.connect() as c:
            used = {
                r[0]
                for r in c.execute(
                    sa.select(predictions.c.blob).where(predictions.c.blob.in_(names)).distinct()
                )
            }
        for path in chunk:
            if str(path) not in used:
                size = path.stat().st_size
                path.unlink(missing_ok=True)
                result.kept_inputs += 1
                result.kept_input_bytes += size


def _blob_files(blob_dir: Path) -> Iterator[Path]:
    if not blob_dir.is_dir():
        return
    for folder, _, files in os.walk(blob_dir):
        for name in files:
            if name.endswith(BLOB_SUFFIXES) and not name.startswith("."):
                yield Path(folder) / name


def _purge_checkpoints(
    checkpoint_dir: Path, before: datetime, loaded: dict[str, set[int]], result: PurgeResult
) -> None:
    """`<checkpoints>/<model>/<version>.pt` older than `before`, of versions nothing loads."""
    if not checkpoint_dir.is_dir():
        return
    cutoff = before.timestamp()
    for path in sorted(checkpoint_dir.glob("*/*.pt")):
        model, stem = path.parent.name, path.stem
        if not stem.isdigit() or int(stem) in loaded.get(model, set()):
            continue
        if path.stat().st_mtime < cutoff:
            path.unlink()
            result.checkpoints.append(path)
