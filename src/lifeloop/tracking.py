"""Experiment tracking and the model registry, in MLflow.

Every `train`, `retrain`, `prune` and export is an MLflow run in the experiment
`lifeloop/<model>`: its parameters, per-epoch metrics, gate figures and per-class accuracy.
Checkpoints and ONNX files are linked by path and sha256 (tags), not copied: a copy would
double the disk for what the repository and its checkpoint archive already keep.

Each published version is a version of the MLflow registered model of the same name, tagged
with its lifeloop version number, and the rollout keeps the aliases `champion` and
`candidate` on the versions the router serves as such. MLflow keeps no history of which
version served when (mlflow#2169); `lifeloop history` does.

The store defaults to SQLite beside the repository (`<repository>.mlflow.db`, artifacts in
`<repository>.mlartifacts`); `--tracking-uri` or `LIFELOOP_TRACKING_URI` names another
(PostgreSQL by URL), and `off` turns tracking off. MLflow's telemetry is off.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import logging
import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from lifeloop.errors import LifeloopError
from lifeloop.store.database import first_line, safe_url

TRACKING_ENV = "LIFELOOP_TRACKING_URI"
OFF = "off"
CHAMPION, CANDIDATE = "champion", "candidate"
VERSION_TAG = "lifeloop.version"


class TrackingError(LifeloopError):
    """The MLflow store cannot be reached or refused a write."""


class Stopped(Exception):
    """A run cut short on purpose (a pruned search trial): KILLED, not FAILED."""


def default_tracking_uri(repository: Path) -> str:
    repository = Path(repository).resolve()
    return f"sqlite:///{repository.parent / (repository.name + '.mlflow.db')}"


def experiment_name(model: str) -> str:
    return f"lifeloop/{model}"


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


class Run:
    """One MLflow run, open; what the commands log into."""

    def __init__(self, tracker: Tracker, run_id: str, model: str) -> None:
        self.tracker = tracker
        self.client = tracker.client
        self.run_id = run_id
        self.model = model

    def params(self, values: Mapping[str, Any]) -> None:
        from mlflow.entities import Param

        params = [Param(k, str(v)) for k, v in values.items() if v is not None]
        self.client.log_batch(self.run_id, params=params)

    def metrics(self, values: Mapping[str, float], step: int = 0) -> None:
        import time

        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        found = [Metric(k, float(v), now, step) for k, v in values.items()]
        self.client.log_batch(self.run_id, metrics=found)

    def tags(self, values: Mapping[str, Any]) -> None:
        from mlflow.entities import RunTag

        self.client.log_batch(self.run_id, tags=[RunTag(k, str(v)) for k, v in values.items()])

    def per_class(self, prefix: str, accuracy: Mapping[str, float]) -> None:
        """Per-class figures as metrics `<prefix>.<class>` (MLflow keys allow most names)."""
        self.metrics({f"{prefix}.{_key(name)}": value for name, value in accuracy.items()})

    def link(self, role: str, path: Path, sha256: str | None = None) -> None:
        """A file the run made or used, by path and content hash."""
        path = Path(path).resolve()
        self.tags(
            {
                f"lifeloop.{role}.path": str(path),
                f"lifeloop.{role}.sha256": sha256 or sha256_of(path),
            }
        )


class Tracker:
    """Runs and the registry in one MLflow store."""

    def __init__(self, uri: str, *, artifacts: Path | None = None) -> None:
        os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
        os.environ.setdefault("DO_NOT_TRACK", "true")
        # A tracking server that does not answer fails a command in seconds, not after
        # MLflow's default of 7 retries with backoff.
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
        self.uri = uri
        self.artifacts = artifacts
        self._client: Any = None

    @classmethod
    def for_repository(cls, repository: Path, uri: str | None = None) -> Tracker | None:
        """The tracker `--tracking-uri` (or LIFELOOP_TRACKING_URI) names; by default the
        SQLite store beside `repository`, where MLflow is installed; None when it says
        `off`, or when none is named and MLflow is not installed (lifeloop without its
        `track` extra: the client and the rollout commands)."""
        named = uri or os.environ.get(TRACKING_ENV)
        if named is None and importlib.util.find_spec("mlflow") is None:
            return None
        uri = named or default_tracking_uri(repository)
        if uri.strip().lower() == OFF:
            return None
        repository = Path(repository).resolve()
        return cls(uri, artifacts=repository.parent / (repository.name + ".mlartifacts"))

    @property
    def display_uri(self) -> str:
        return safe_url(self.uri)

    @property
    def client(self) -> Any:
        if self._client is None:
            try:
                from mlflow import MlflowClient
            except ModuleNotFoundError as exc:
                raise TrackingError(
                    f"experiment tracking needs MLflow ({exc.name} is missing); install "
                    "lifeloop[track], or pass --tracking-uri off"
                ) from exc
            # MLflow says INFO when it creates its tables; lifeloop's commands say what
            # they did themselves.
            logging.getLogger("mlflow").setLevel(logging.WARNING)
            logging.getLogger("alembic").setLevel(logging.WARNING)
            try:
                client = MlflowClient(tracking_uri=self.uri, registry_uri=self.uri)
                client.search_experiments(max_results=1)  # reach it now, not mid-run
            except Exception as exc:
                raise self._unreachable(exc) from exc
            self._client = client
        return self._client

    def _unreachable(self, exc: BaseException) -> TrackingError:
        detail = first_line(exc)
        if len(detail) > 160:
            detail = detail[:160].rsplit(" ", 1)[0] + " ..."
        return TrackingError(
            f"MLflow tracking store {self.display_uri} failed: {detail}; "
            "fix --tracking-uri (or LIFELOOP_TRACKING_URI), or pass --tracking-uri off"
        )

    def _experiment(self, model: str) -> str:
        name = experiment_name(model)
        found = self.client.get_experiment_by_name(name)
        if found is not None:
            return str(found.experiment_id)
        location = self.artifacts.as_uri() if self.artifacts else None
        try:
            return str(self.client.create_experiment(name, artifact_location=location))
        except Exception:  # another process made it first
            found = self.client.get_experiment_by_name(name)
            if found is None:
                raise
            return str(found.experiment_id)

    @contextmanager
    def run(
        self, model: str, command: str, *, name: str | None = None, parent: Run | None = None
    ) -> Iterator[Run]:
        """An MLflow run for one command (a child of `parent`, as MLflow nests them); FAILED
        if the block raises, KILLED if it was cut short on purpose (a pruned trial)."""
        tags = {"lifeloop.command": command, "lifeloop.model": model}
        if parent is not None:
            tags["mlflow.parentRunId"] = parent.run_id
        try:
            created = self.client.create_run(
                self._experiment(model), run_name=name or command, tags=tags
            )
        except TrackingError:
            raise
        except Exception as exc:
            raise self._unreachable(exc) from exc
        run = Run(self, created.info.run_id, model)
        try:
            yield run
        except Stopped:
            self.client.set_terminated(run.run_id, status="KILLED")
            raise
        except BaseException:
            self.client.set_terminated(run.run_id, status="FAILED")
            raise
        self.client.set_terminated(run.run_id, status="FINISHED")

    def register(self, model: str, version: int, source: Path, *, run_id: str | None = None) -> str:
        """Register lifeloop's `version` of `model` (its folder `source`); returns MLflow's
        version number, which need not be lifeloop's."""
        from mlflow.exceptions import MlflowException

        try:
            self.client.create_registered_model(model, tags={"lifeloop.model": model})
        except MlflowException as exc:
            if "RESOURCE_ALREADY_EXISTS" not in str(exc.error_code):
                raise self._unreachable(exc) from exc
        made = self.client.create_model_version(
            model,
            source=str(Path(source).resolve()),
            run_id=run_id,
            tags={VERSION_TAG: str(version)},
            description=f"lifeloop {model} version {version}",
        )
        return str(made.version)

    def registered(self, model: str, version: int) -> str | None:
        """MLflow's version number of lifeloop's `version`, if it was registered."""
        found = self.client.search_model_versions(
            f"name = '{model}' and tags.`{VERSION_TAG}` = '{version}'"
        )
        return str(max(int(v.version) for v in found)) if found else None

    def set_alias(self, model: str, alias: str, version: int | None) -> None:
        """Point `alias` at lifeloop's `version`, or remove it (None, or a version that was
        never registered)."""
        registered = None if version is None else self.registered(model, version)
        if registered is not None:
            self.client.set_registered_model_alias(model, alias, registered)
            return
        from mlflow.exceptions import MlflowException

        # No such alias, or no such model: nothing to remove.
        with contextlib.suppress(MlflowException):
            self.client.delete_registered_model_alias(model, alias)

    def follow(self, model: str, champion: int | None, candidate: int | None) -> None:
        """The aliases `champion` and `candidate` on these lifeloop versions (None: none)."""
        self.set_alias(model, CHAMPION, champion)
        self.set_alias(model, CANDIDATE, candidate)

    def aliases(self, model: str) -> dict[str, int]:
        """alias -> lifeloop version, as the registry holds them."""
        from mlflow.exceptions import MlflowException

        try:
            found = self.client.get_registered_model(model)
        except MlflowException:
            return {}
        out = {}
        for alias, registered in found.aliases.items():
            version = self.client.get_model_version(model, registered)
            out[alias] = int(version.tags[VERSION_TAG])
        return out


def _key(name: str) -> str:
    """A class name as an MLflow metric key: letters, digits and _-./ space are allowed."""
    return "".join(c if c.isalnum() or c in "_-. /" else "_" for c in name)
