"""The store of the learning loop: served predictions, their feedback, the rollout history and
what each version was trained on. SQLAlchemy Core over SQLite (the default: one file beside the
repository, in WAL mode) or PostgreSQL (by URL, for several servers sharing one store).

A write returns only after its transaction commits. In WAL mode with synchronous=NORMAL a
committed transaction survives a crash of the process that wrote it (not of the machine), which
is the guarantee the router gives for every request id it returns."""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from lifeloop.errors import FeedbackError, StoreError

metadata = sa.MetaData()

predictions = sa.Table(
    "predictions",
    metadata,
    sa.Column("request_id", sa.String(64), primary_key=True),
    sa.Column("model", sa.String(128), nullable=False),
    sa.Column("version", sa.Integer, nullable=False),
    # champion or canary: which arm of the rollout answered; light: a cascade's light model
    sa.Column("route", sa.String(16), nullable=False),
    # the light model that answered (then `version` is its version); None: `model` did
    sa.Column("answered_by", sa.String(128)),
    sa.Column("label", sa.String(256), nullable=False),  # top-1
    sa.Column("labels", sa.Text, nullable=False),  # top-k, JSON
    sa.Column("scores", sa.Text, nullable=False),  # top-k, JSON
    sa.Column("content_hash", sa.String(64), nullable=False),
    sa.Column("blob", sa.String(512)),  # the file holding the input, when sampled
    sa.Column("blob_row", sa.Integer),  # its row in that file (None: the whole file)
    sa.Column("kept_as", sa.String(16)),  # uint8, float16 or float32; None: not kept, or older
    # why the input was kept (uniform, uncertain, disagreed; None: not kept), and the chance
    # an input answered like it had of being kept (lifeloop.serve.sampling); None: older
    sa.Column("kept_by", sa.String(16)),
    sa.Column("keep_rate", sa.Float),
    sa.Column("shadow_version", sa.Integer),
    sa.Column("shadow_label", sa.String(256)),
    sa.Column("shadow_agree", sa.Boolean),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    sa.Index("ix_predictions_model_version", "model", "version"),
    # retention: `store purge` walks predictions by age and asks which files are still used
    sa.Index("ix_predictions_created_at", "created_at"),
    sa.Index("ix_predictions_blob", "blob"),
)

feedback = sa.Table(
    "feedback",
    metadata,
    sa.Column(
        "request_id",
        sa.String(64),
        sa.ForeignKey("predictions.request_id"),
        primary_key=True,
    ),
    sa.Column("label", sa.String(256), nullable=False),
    sa.Column("source", sa.String(64), nullable=False),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
)

events = sa.Table(
    "rollout_events",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("model", sa.String(128), nullable=False),
    sa.Column("action", sa.String(32), nullable=False),
    sa.Column("champion", sa.Integer),
    sa.Column("candidate", sa.Integer),
    sa.Column("previous", sa.Integer),
    sa.Column("canary_weight", sa.Float, nullable=False),
    sa.Column("shadow", sa.Boolean, nullable=False),
    sa.Column("reason", sa.Text, nullable=False),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
)

trainings = sa.Table(
    "trainings",
    metadata,
    sa.Column("model", sa.String(128), primary_key=True),
    sa.Column("version", sa.Integer, primary_key=True),
    sa.Column("request_ids", sa.Text, nullable=False),  # JSON list of feedback request ids
    sa.Column("counts", sa.Text, nullable=False),  # JSON {label: samples}
    sa.Column("metrics", sa.Text, nullable=False),  # JSON
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
)


def _add_missing_columns(connection: sa.Connection, table: sa.Table) -> None:
    """Add the nullable columns a store made by an older lifeloop lacks (SQLite and
    PostgreSQL both add one without rewriting the table). Two processes may race here:
    PostgreSQL is told IF NOT EXISTS; on SQLite the loser's transaction fails once (the
    router spools that batch) and its next one finds the column."""
    have = {c["name"] for c in sa.inspect(connection).get_columns(table.name)}
    preparer = connection.dialect.identifier_preparer
    guard = "IF NOT EXISTS " if connection.dialect.name == "postgresql" else ""
    for column in table.columns:
        if column.name in have or not column.nullable:
            continue
        kind = column.type.compile(dialect=connection.dialect)
        connection.execute(
            sa.text(
                f"ALTER TABLE {preparer.quote(table.name)} "
                f"ADD COLUMN {guard}{preparer.quote(column.name)} {kind}"
            )
        )


def default_store_url(repository: Path) -> str:
    """SQLite in a file beside the repository: `<parent>/<repository name>.lifeloop.db`."""
    repository = Path(repository).resolve()
    return f"sqlite:///{repository.parent / (repository.name + '.lifeloop.db')}"


def now() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True, kw_only=True)
class Prediction:
    request_id: str
    model: str
    version: int
    route: str
    labels: Sequence[str]
    scores: Sequence[float]
    content_hash: str
    blob: str | None = None
    blob_row: int | None = None
    shadow_version: int | None = None
    shadow_label: str | None = None
    answered_by: str | None = None  # a cascade's light model, when it answered
    kept_as: str | None = None  # the dtype the kept input is in (blobs.kept_as)
    kept_by: str | None = None  # why it was kept (lifeloop.serve.sampling); None: not kept
    keep_rate: float | None = None  # the chance it had of being kept: weigh by 1 / keep_rate
    created_at: datetime = field(default_factory=now)

    def to_json(self) -> dict[str, Any]:
        """The fields as JSON values: what the spool journal keeps."""
        data = dict(self.__dict__)
        data["labels"], data["scores"] = list(self.labels), [float(x) for x in self.scores]
        data["created_at"] = self.created_at.isoformat()
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Prediction:
        return cls(**{**data, "created_at": datetime.fromisoformat(data["created_at"])})

    def row(self) -> dict[str, Any]:
        return {
            "request_id": self.request_id,
            "model": self.model,
            "version": self.version,
            "route": self.route,
            "answered_by": self.answered_by,
            "label": self.labels[0],
            "labels": json.dumps(list(self.labels)),
            "scores": json.dumps([round(float(s), 6) for s in self.scores]),
            "content_hash": self.content_hash,
            "blob": self.blob,
            "blob_row": self.blob_row,
            "kept_as": self.kept_as,
            "kept_by": self.kept_by,
            "keep_rate": self.keep_rate,
            "shadow_version": self.shadow_version,
            "shadow_label": self.shadow_label,
            "shadow_agree": None
            if self.shadow_label is None
            else self.shadow_label == self.labels[0],
            "created_at": self.created_at,
        }


@dataclass(frozen=True, kw_only=True)
class Event:
    model: str
    action: str
    champion: int | None
    candidate: int | None
    previous: int | None
    canary_weight: float
    shadow: bool
    reason: str
    created_at: datetime


@dataclass(frozen=True, kw_only=True)
class Labelled:
    """A served prediction with its true label."""

    request_id: str
    version: int
    route: str
    predicted: str
    label: str
    blob: str | None
    blob_row: int | None
    created_at: datetime
    kept_by: str | None = None  # see Prediction
    keep_rate: float | None = None


@dataclass(frozen=True, kw_only=True)
class ArmScore:
    """Live quality of one rollout arm on labelled feedback."""

    labelled: int
    wrong: int

    @property
    def error_rate(self) -> float:
        return self.wrong / self.labelled if self.labelled else 0.0


class Store:
    """One SQLAlchemy engine over the loop's tables. Opening checks that the database answers
    and creates missing tables, so a bad URL fails at start-up, never under traffic.

    With `connect=False` (the models inside Triton, which must load while the database is
    down) only the URL is checked; the tables are made by the first write that reaches it."""

    def __init__(self, url: str, *, create: bool = True, connect: bool = True) -> None:
        self.url = url
        self._create = create
        try:
            self.engine: Engine = _engine(url)
            if connect:
                self._ensure_tables()
        except (sa.exc.SQLAlchemyError, OSError, ValueError) as exc:
            raise StoreError(
                f"cannot open the store at {safe_url(url)} ({first_line(exc)}); fix --store, "
                "or start the database"
            ) from exc

    def _ensure_tables(self) -> None:
        if self._create:
            with self.engine.begin() as connection:
                metadata.create_all(connection)
                _add_missing_columns(connection, predictions)  # stores made before
                for index in predictions.indexes:  # stores made before an index was added
                    index.create(connection, checkfirst=True)
            self._create = False

    @classmethod
    def for_repository(cls, repository: Path, url: str | None = None) -> Store:
        return cls(url or default_store_url(repository))

    def close(self) -> None:
        self.engine.dispose()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    # --- predictions --------------------------------------------------------------------

    def record_predictions(self, batch: Sequence[Prediction], *, replay: bool = False) -> None:
        """All of `batch` in one transaction; returns once it is committed. With `replay`,
        ids already stored are skipped: a spooled batch may have reached the store already
        (a write that outlived its wait), or be drained twice after a crash."""
        if not batch:
            return
        insert = _insert_ignoring_duplicates(self.engine) if replay else predictions.insert()
        self._write(lambda c: c.execute(insert, [p.row() for p in batch]))

    def prediction(self, request_id: str) -> dict[str, Any] | None:
        with self.engine.connect() as c:
            row = c.execute(
                sa.select(predictions).where(predictions.c.request_id == request_id)
            ).first()
        return None if row is None else dict(row._mapping)

    def count_predictions(self, model: str | None = None) -> int:
        query = sa.select(sa.func.count()).select_from(predictions)
        if model:
            query = query.where(predictions.c.model == model)
        with self.engine.connect() as c:
            return int(c.execute(query).scalar_one())

    def request_ids(self, model: str) -> set[str]:
        with self.engine.connect() as c:
            rows = c.execute(
                sa.select(predictions.c.request_id).where(predictions.c.model == model)
            )
            return {r[0] for r in rows}

    def answering_versions(self, model: str) -> list[int]:
        """The versions of `model` that answered something themselves (not a cascade's
        light model), oldest first."""
        query = (
            sa.select(predictions.c.version)
            .where(predictions.c.model == model, predictions.c.answered_by.is_(None))
            .distinct()
            .order_by(predictions.c.version)
        )
        with self.engine.connect() as c:
            return [int(v) for (v,) in c.execute(query)]

    def recent_answers(
        self, model: str, version: int, limit: int
    ) -> tuple[list[tuple[list[str], list[float]]], datetime | None]:
        """The newest `limit` answers `model` version `version` gave itself, as logged (top-k
        labels and scores), and when the oldest of them was given."""
        query = (
            sa.select(predictions.c.labels, predictions.c.scores, predictions.c.created_at)
            .where(
                predictions.c.model == model,
                predictions.c.version == version,
                predictions.c.answered_by.is_(None),
            )
            .order_by(predictions.c.created_at.desc())
            .limit(limit)
        )
        with self.engine.connect() as c:
            rows = c.execute(query).all()
        answers = [(json.loads(labels), json.loads(scores)) for labels, scores, _ in rows]
        return answers, (rows[-1][2] if rows else None)

    def shadow_agreement(self, model: str, candidate: int) -> tuple[int, int]:
        """(predictions shadowed by `candidate`, of which the two agreed on top-1)."""
        query = sa.select(
            sa.func.count(),
            sa.func.sum(sa.case((predictions.c.shadow_agree.is_(True), 1), else_=0)),
        ).where(predictions.c.model == model, predictions.c.shadow_version == candidate)
        with self.engine.connect() as c:
            total, agreed = c.execute(query).one()
        return int(total or 0), int(agreed or 0)

    # --- feedback -----------------------------------------------------------------------

    def add_feedback(self, items: Iterable[tuple[str, str]], *, source: str = "api") -> int:
        """Attach true labels to served request ids, all or none: an unknown id or an empty
        label raises FeedbackError and leaves the store unchanged. A second label for the same
        id replaces the first. Returns how many labels were written."""
        pairs = [(str(rid).strip(), str(label).strip()) for rid, label in items]
        for rid, label in pairs:
            if not rid:
                raise FeedbackError(
                    "feedback has an empty request id; pass the id the router returned"
                )
            if not label:
                raise FeedbackError(
                    f"feedback for request {rid!r} has an empty label; pass the true class"
                )
        if not pairs:
            return 0
        ids = sorted({rid for rid, _ in pairs})

        def write(c: sa.Connection) -> None:
            known: set[str] = set()
            for part in _chunks(ids, 500):
                found = c.execute(
                    sa.select(predictions.c.request_id).where(predictions.c.request_id.in_(part))
                )
                known.update(r[0] for r in found)
            unknown = [rid for rid in ids if rid not in known]
            if unknown:
                more = f" and {len(unknown) - 1} more" if len(unknown) > 1 else ""
                raise FeedbackError(
                    f"feedback names unknown request id {unknown[0]!r}{more}; use ids returned "
                    "by the router's request_id output"
                )
            at = now()
            latest = dict(pairs)  # the last label given for an id in this call wins
            c.execute(feedback.delete().where(feedback.c.request_id.in_(list(latest))))
            c.execute(
                feedback.insert(),
                [
                    {"request_id": r, "label": lab, "source": source, "created_at": at}
                    for r, lab in latest.items()
                ],
            )

        self._write(write)
        return len(dict(pairs))

    def labelled(self, model: str) -> list[Labelled]:
        query = (
            sa.select(
                predictions.c.request_id,
                predictions.c.version,
                predictions.c.route,
                predictions.c.label.label("predicted"),
                feedback.c.label,
                predictions.c.blob,
                predictions.c.blob_row,
                feedback.c.created_at,
                predictions.c.kept_by,
                predictions.c.keep_rate,
            )
            .join(feedback, feedback.c.request_id == predictions.c.request_id)
            .where(predictions.c.model == model)
            .order_by(feedback.c.created_at, predictions.c.request_id)
        )
        with self.engine.connect() as c:
            return [Labelled(**dict(r._mapping)) for r in c.execute(query)]

    def count_feedback(self) -> int:
        with self.engine.connect() as c:
            return int(c.execute(sa.select(sa.func.count()).select_from(feedback)).scalar_one())

    def arm_scores(self, model: str, since: datetime) -> dict[tuple[str, int], ArmScore]:
        """Labelled and wrong counts per (route, version) for predictions since `since`."""
        wrong = sa.func.sum(sa.case((predictions.c.label != feedback.c.label, 1), else_=0))
        query = (
            sa.select(predictions.c.route, predictions.c.version, sa.func.count(), wrong)
            .join(feedback, feedback.c.request_id == predictions.c.request_id)
            .where(predictions.c.model == model, predictions.c.created_at >= since)
            .group_by(predictions.c.route, predictions.c.version)
        )
        with self.engine.connect() as c:
            return {
                (route, int(version)): ArmScore(labelled=int(n), wrong=int(w or 0))
                for route, version, n, w in c.execute(query)
            }

    # --- rollout history ----------------------------------------------------------------

    def add_event(self, event: Event) -> None:
        self._write(lambda c: c.execute(events.insert(), [event.__dict__]))

    def history(self, model: str | None = None) -> list[Event]:
        query = sa.select(events).order_by(events.c.id)
        if model:
            query = query.where(events.c.model == model)
        with self.engine.connect() as c:
            rows = [dict(r._mapping) for r in c.execute(query)]
        for row in rows:
            row.pop("id")
        return [Event(**row) for row in rows]

    # --- training records ---------------------------------------------------------------

    def record_training(
        self,
        model: str,
        version: int,
        request_ids: Sequence[str],
        counts: dict[str, int],
        metrics: dict[str, Any],
    ) -> None:
        row = {
            "model": model,
            "version": version,
            "request_ids": json.dumps(sorted(request_ids)),
            "counts": json.dumps(counts, sort_keys=True),
            "metrics": json.dumps(metrics, sort_keys=True),
            "created_at": now(),
        }
        self._write(lambda c: c.execute(trainings.insert(), [row]))

    def training(self, model: str, version: int) -> dict[str, Any] | None:
        with self.engine.connect() as c:
            row = c.execute(
                sa.select(trainings).where(
                    trainings.c.model == model, trainings.c.version == version
                )
            ).first()
        if row is None:
            return None
        data = dict(row._mapping)
        for key in ("request_ids", "counts", "metrics"):
            data[key] = json.loads(data[key])
        return data

    def trained_request_ids(self, model: str) -> set[str]:
        """Every feedback request id some version of `model` was already trained on."""
        with self.engine.connect() as c:
            rows = c.execute(sa.select(trainings.c.request_ids).where(trainings.c.model == model))
            return {rid for (ids,) in rows for rid in json.loads(ids)}

    # --- plumbing -----------------------------------------------------------------------

    def _write(self, fn: Any) -> None:
        try:
            self._ensure_tables()
            with self.engine.begin() as connection:
                fn(connection)
        except FeedbackError:
            raise
        except sa.exc.SQLAlchemyError as exc:
            raise StoreError(
                f"write to the store at {safe_url(self.url)} failed: {first_line(exc)}"
            ) from exc


def _insert_ignoring_duplicates(engine: Engine) -> Any:
    if engine.dialect.name == "postgresql":
        from sqlalchemy.dialects import postgresql

        return postgresql.insert(predictions).on_conflict_do_nothing(index_elements=["request_id"])
    if engine.dialect.name == "sqlite":
        from sqlalchemy.dialects import sqlite

        return sqlite.insert(predictions).on_conflict_do_nothing(index_elements=["request_id"])
    raise StoreError(f"the store has no idempotent insert for {engine.dialect.name}")


def _engine(url: str) -> Engine:
    parsed = sa.engine.make_url(url)
    if parsed.get_backend_name() == "sqlite":
        database = parsed.database or ""
        if database and database != ":memory:":
            folder = Path(database).parent
            if not folder.is_dir():
                raise StoreError(
                    f"the folder of the SQLite store {database} does not exist; create it or "
                    "fix --store"
                )
        engine = sa.create_engine(url, connect_args={"timeout": 30})

        @sa.event.listens_for(engine, "connect")
        def _pragmas(dbapi_connection: Any, _record: Any) -> None:
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            # NORMAL in WAL mode: a commit survives a crash of this process without an fsync
            # per transaction; only a power cut can lose the last ones.
            cursor.execute("PRAGMA synchronous=NORMAL")
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.execute("PRAGMA busy_timeout=30000")
            cursor.close()

        return engine
    if parsed.get_backend_name() == "postgresql" and parsed.drivername == "postgresql":
        parsed = parsed.set(drivername="postgresql+psycopg")
    return sa.create_engine(parsed, pool_pre_ping=True, connect_args=_connect_timeout(parsed))


def _connect_timeout(url: sa.engine.URL) -> dict[str, Any]:
    """libpq's bounds: a connect gives up after 5 s, and a connection whose server stops
    answering (a failover, a cut network) errors within about 10 s instead of hanging."""
    if url.get_backend_name() != "postgresql":
        return {}
    return {
        "connect_timeout": 5,
        "keepalives": 1,
        "keepalives_idle": 5,
        "keepalives_interval": 2,
        "keepalives_count": 3,
        "tcp_user_timeout": 10_000,
    }


def safe_url(url: str) -> str:
    try:
        return sa.engine.make_url(url).render_as_string(hide_password=True)
    except sa.exc.ArgumentError:
        return url


def first_line(exc: BaseException) -> str:
    text = str(getattr(exc, "orig", None) or exc)
    return " ".join(text.strip().splitlines()[0].split()) if text.strip() else type(exc).__name__


def _chunks(items: Sequence[str], size: int) -> Iterator[Sequence[str]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]
