"""Retention for what the loop keeps: one mechanism, two triggers.

- **Age** (`purge`, `lifeloop store purge --older-than`): predictions older than a window go,
  with their feedback and the kept-input files no remaining prediction points at, and so do
  archived checkpoints of versions that nothing serves.
- **Size** (`evict_to_budget`, `lifeloop store purge --max-kept-bytes`, and every router
  with `--keep-budget`): while the kept-input files take more than the budget, the oldest
  files that hold no labelled input go; their predictions stay, without an input (`blob`
  empty, `kept_by` still saying why it had been kept).

Both work in short transactions of `batch_size` rows, so the router's writes never wait long
behind them.

Protected from the age trigger: the inputs a published version was trained on (its training
record keeps their request ids), unless `include_trained`; labelled predictions when
`keep_labelled`; and the checkpoint of any version a routing policy or the version policy
keeps loaded. Protected from the size trigger: every labelled input (which includes every
input a version was trained on: retraining takes labelled ones only)."""

from __future__ import annotations

import json
import os
import re
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path

import sqlalchemy as sa

from lifeloop.errors import StoreError
from lifeloop.store import blobs
from lifeloop.store.database import Store, feedback, now, predictions, trainings

BLOB_SUFFIXES = blobs.SUFFIXES
# A kept-input file younger than this is never evicted: its batch may not be committed yet.
EVICT_MIN_AGE_S = 60.0
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]i?b?|b)?\s*$", re.IGNORECASE)
_UNITS = {"": 1, "b": 1, "k": 10**3, "m": 10**6, "g": 10**9, "t": 10**12}


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


def parse_size(text: str | int, *, setting: str = "max_kept_bytes") -> int:
    """'10GB', '500MB', '1.5GiB', '2048' or 2048 (bytes) -> bytes; GB is 10**9, GiB 2**30;
    0 is allowed (callers read it as no limit)."""
    if isinstance(text, int) and text >= 0:
        return text
    match = _SIZE.match(str(text))
    if match is None:
        raise StoreError(
            f"{setting} takes a size like 10GB, 500MB, 1.5GiB or a number of bytes; got {text!r}",
            setting=setting,
        )
    amount, unit = float(match.group(1)), (match.group(2) or "").lower()
    factor = 2 ** (10 * " kmgt".index(unit[0])) if unit.endswith(("ib", "i")) else _UNITS[unit[:1]]
    return int(amount * factor)


@dataclass
class Eviction:
    """What one pass of the size trigger did over some kept-input folders."""

    budget: int
    kept_bytes: int = 0  # in the folders, after the pass
    evicted_files: int = 0
    evicted_bytes: int = 0
    evicted_inputs: int = 0  # predictions whose input went
    protected_bytes: int = 0  # in files that hold a labelled input
    young_bytes: int = 0  # in files too young to evict (EVICT_MIN_AGE_S)

    @property
    def over(self) -> bool:
        """Still over the budget: what is left is labelled, or too young to go."""
        return self.kept_bytes > self.budget


@dataclass(frozen=True, order=True)
class _File:
    mtime: float
    path: str
    size: int


def evict_to_budget(
    store: Store,
    blob_dirs: list[Path],
    max_bytes: int,
    *,
    min_age_s: float = EVICT_MIN_AGE_S,
    batch_size: int = 500,
) -> Eviction:
    """While the kept-input files in `blob_dirs` take more than `max_bytes`, delete the oldest
    that hold no labelled input, and point their predictions at nothing. Inputs a published
    version was trained on are labelled ones, so they stay too. A file one of whose inputs
    gets a label during the pass is checked again inside the transaction that evicts it."""
    files = sorted(f for d in blob_dirs for f in _sized(Path(d)))
    total = sum(f.size for f in files)
    result = Eviction(budget=max_bytes, kept_bytes=total)
    if total <= max_bytes:
        return result
    protected = _labelled_blobs(store)
    result.protected_bytes = sum(f.size for f in files if f.path in protected)
    cutoff = time.time() - min_age_s
    result.young_bytes = sum(f.size for f in files if f.path not in protected and f.mtime >= cutoff)
    candidates = iter([f for f in files if f.path not in protected and f.mtime < cutoff])
    while total > max_bytes:
        chunk: list[_File] = []
        need = total - max_bytes
        for f in candidates:
            chunk.append(f)
            need -= f.size
            if need <= 0 or len(chunk) >= batch_size:
                break
        if not chunk:
            break
        names = [f.path for f in chunk]
        with store.engine.begin() as c:  # one short transaction per chunk
            labelled_now = _labelled_blobs(store, c, names)
            doomed = [f for f in chunk if f.path not in labelled_now]
            if doomed:
                result.evicted_inputs += c.execute(
                    predictions.update()
                    .where(predictions.c.blob.in_([f.path for f in doomed]))
                    .values(blob=None, blob_row=None, kept_as=None)
                ).rowcount
        for f in doomed:  # after the commit: no prediction points at them any more
            Path(f.path).unlink(missing_ok=True)
            total -= f.size
            result.evicted_files += 1
            result.evicted_bytes += f.size
        result.protected_bytes += sum(f.size for f in chunk if f.path in labelled_now)
    result.kept_bytes = total
    return result


def _sized(blob_dir: Path) -> Iterator[_File]:
    for path in _blob_files(blob_dir):
        try:
            stat = path.stat()
        except FileNotFoundError:  # evicted or purged meanwhile
            continue
        yield _File(stat.st_mtime, str(path), stat.st_size)


def _labelled_blobs(
    store: Store, connection: sa.Connection | None = None, among: list[str] | None = None
) -> set[str]:
    """The kept-input files that hold a labelled input (of `among`, when given)."""
    query = (
        sa.select(predictions.c.blob)
        .join(feedback, feedback.c.request_id == predictions.c.request_id)
        .where(predictions.c.blob.is_not(None))
        .distinct()
    )
    if among is not None:
        query = query.where(predictions.c.blob.in_(among))
    if connection is not None:
        return {r[0] for r in connection.execute(query)}
    with store.engine.connect() as c:
        return {r[0] for r in c.execute(query)}


class BudgetKeeper:
    """A router's size trigger: every `every_s` seconds, in its own thread, `evict_to_budget`
    over the router's kept-input folder. A store that is down skips the pass (logged once per
    distinct error); inference never waits on it."""

    def __init__(
        self,
        store: Store,
        blob_dir: Path,
        max_bytes: int,
        *,
        every_s: float,
        on_pass: Callable[[Eviction], None] | None = None,
        log: Callable[[str], None] = lambda line: None,
        min_age_s: float = EVICT_MIN_AGE_S,
    ) -> None:
        self.store = store
        self.blob_dir = blob_dir
        self.max_bytes = max_bytes
        self.every_s = every_s
        self.on_pass = on_pass
        self.log = log
        self.min_age_s = min_age_s
        self._stop = threading.Event()
        self._last_error: str | None = None
        self._stuck = False
        self._thread = threading.Thread(target=self._run, name="lifeloop-budget", daemon=True)
        self._thread.start()

    def run_once(self) -> Eviction | None:
        try:
            result = evict_to_budget(
                self.store, [self.blob_dir], self.max_bytes, min_age_s=self.min_age_s
            )
        except Exception as exc:  # the store or the disk: the next pass tries again
            if str(exc) != self._last_error:
                self.log(f"lifeloop: kept-input budget pass failed, retrying: {exc}")
            self._last_error = str(exc)
            return None
        self._last_error = None
        stuck = result.over and result.evicted_files == 0
        if stuck and not self._stuck:  # once, until it gets under again
            self.log(
                f"lifeloop: kept inputs take {result.kept_bytes} bytes, over the budget of "
                f"{result.budget}: {result.protected_bytes} are labelled and "
                f"{result.young_bytes} under {self.min_age_s:g} s old; raise --keep-budget, or "
                "purge by age"
            )
        self._stuck = stuck
        if self.on_pass is not None:
            self.on_pass(result)
        return result

    def _run(self) -> None:
        while not self._stop.wait(self.every_s):
            self.run_once()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=self.every_s + 30)
        self.store.close()


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
