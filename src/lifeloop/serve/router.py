"""The router: a Python (BLS) model in Triton in front of a classifier.

Per batch it reads the routing policy (one stat; re-read on change), sends each request to the
champion or, with the canary weight's probability, to the candidate, one BLS call per version
for the whole batch, and in shadow mode also runs the candidate on every input and records
whether it agrees. With a cascade in the policy, a light model answers first and only the
images it is not confident about go on to those versions. Every image gets a request id.
Its prediction (version, top-k labels and scores, content hash, and the input itself when the
keep rule of lifeloop.serve.sampling keeps it) is committed to the store, one transaction per
batch, or when the store does not answer within a short bound, to a local fsynced journal
that is drained into the store later (lifeloop.store.prediction_log), before the batch's
responses leave: an id a caller holds is never lost, even if tritonserver is killed right
after. A store outage never fails or stalls inference. Past its disk budget, the router
deletes its oldest unlabelled kept inputs (lifeloop.store.retention).

Outputs per image: `logits` (the answering version's), `model_version`, `request_id`, and
`answered_by` (the answering model) where the router's config declares it.
This module is the Triton glue; which request goes where and what is logged is planned by
`lifeloop.serve.routing`, which runs without Triton."""

from __future__ import annotations

import json
import random
import threading
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor, wait
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from lifeloop.contract import (
    ANSWERED_BY_OUTPUT,
    BLOB_DIR_PARAM,
    CLASSIFIER_PARAM,
    DEFAULT_DRIFT_WINDOW,
    DEFAULT_KEEP_BUDGET_EVERY_S,
    DRIFT_WINDOW_PARAM,
    IMAGE_INPUT,
    KEEP_BUDGET_EVERY_PARAM,
    KEEP_BUDGET_PARAM,
    LABELS_PARAM,
    PREPROCESSING_PARAM,
    REQUEST_ID_OUTPUT,
    SPOOL_DIR_PARAM,
    SPOOL_MAX_BYTES_PARAM,
    SPOOL_WHEN_FULL_PARAM,
    STORE_PARAM,
    STORE_TIMEOUT_PARAM,
    TOP_K_PARAM,
    VERSION_OUTPUT,
    parameters,
)
from lifeloop.drift import DriftResult
from lifeloop.errors import LifeloopError, LogUnavailable, RequestError
from lifeloop.preprocessing import Preprocessing
from lifeloop.repository.manifest import Manifest
from lifeloop.repository.publish import CONFIG_NAME, read_config
from lifeloop.rollout.policy import Cascade, PolicyWatcher
from lifeloop.serve.drift_watch import DriftWatch
from lifeloop.serve.responses import error_for, log, unavailable
from lifeloop.serve.routing import (
    LIGHT_ROUTE,
    Kept,
    LightPass,
    Route,
    answer_routes,
    first_pass,
    keep_decisions,
    kept_rows,
    log_batch,
    plan_routes,
    sample_rows,
    shadow_top1,
    stack,
)
from lifeloop.serve.sampling import KeepRule
from lifeloop.store.blobs import (
    ENCODED,
    as_pixels,
    cipher,
    content_hash,
    encoded_hash,
    kept_as,
    new_path,
    write_batch,
    write_encoded,
)
from lifeloop.store.database import Prediction, Store
from lifeloop.store.prediction_log import Counters, PredictionLog, SpoolSettings, WhenFull
from lifeloop.store.retention import BudgetKeeper, Eviction

__all__ = ["CLASSIFIER_PARAM", "Router", "RouterSettings"]


def default_spool_dir(repository: Path, router: str) -> Path:
    """`<parent>/<repository name>.spool/<router>`: beside the repository, like the kept
    inputs, so it lives on the same (shared, persistent) volume."""
    repository = Path(repository).resolve()
    return repository.parent / f"{repository.name}.spool" / router


@dataclass(frozen=True, kw_only=True)
class RouterSettings:
    classifier: str
    store_url: str
    blob_dir: Path
    keep: KeepRule
    top_k: int
    input_name: str
    output_name: str
    spool: SpoolSettings
    keep_budget: int = 0  # bytes the kept inputs may take (0: no limit)
    keep_budget_every_s: float = DEFAULT_KEEP_BUDGET_EVERY_S
    answers_by: bool = False  # the config declares the answered_by output (routers since 0.x)
    drift_window: int = DEFAULT_DRIFT_WINDOW  # answers per version the drift gauge tests

    @classmethod
    def from_config(cls, config: dict[str, Any], repository: Path) -> RouterSettings:
        params = parameters(config)
        spool_dir = params.get(SPOOL_DIR_PARAM) or default_spool_dir(repository, config["name"])
        return cls(
            classifier=params[CLASSIFIER_PARAM],
            store_url=params[STORE_PARAM],
            blob_dir=Path(params[BLOB_DIR_PARAM]),
            keep=KeepRule.from_parameters(params),
            keep_budget=int(params.get(KEEP_BUDGET_PARAM) or 0),
            keep_budget_every_s=float(
                params.get(KEEP_BUDGET_EVERY_PARAM) or DEFAULT_KEEP_BUDGET_EVERY_S
            ),
            top_k=int(params.get(TOP_K_PARAM, "5")),
            drift_window=int(params.get(DRIFT_WINDOW_PARAM) or DEFAULT_DRIFT_WINDOW),
            input_name=config["input"][0]["name"],
            output_name="logits",
            answers_by=any(o["name"] == ANSWERED_BY_OUTPUT for o in config.get("output", [])),
            spool=SpoolSettings(
                folder=Path(spool_dir),
                timeout_s=float(params.get(STORE_TIMEOUT_PARAM, "250")) / 1000,
                max_bytes=int(params.get(SPOOL_MAX_BYTES_PARAM, str(1 << 30))),
                when_full=WhenFull.parse(params.get(SPOOL_WHEN_FULL_PARAM, WhenFull.REFUSE.value)),
            ),
        )


class Labels:
    """The classifier's labels from its config.pbtxt, re-read when the file changes (a
    version with new classes appends to them); with them, whether it has Triton's response
    cache, and the recipe clients send by (the newest version's, which they read there too;
    None for a model published by other tools, whose batches go on as they came)."""

    def __init__(self, model_dir: Path) -> None:
        self.path = model_dir / CONFIG_NAME
        self._stamp = 0
        self._labels: tuple[str, ...] = ()
        self._cached = False
        self._sent: Preprocessing | None = None
        self.input_name: str | None = None

    def current(self) -> tuple[str, ...]:
        stamp = self.path.stat().st_mtime_ns
        if stamp != self._stamp:
            config = read_config(self.path.parent)
            if config is not None:
                self._labels = tuple(config.json_parameter(LABELS_PARAM, []))
                self._cached = config.response_cache
                self._sent = _recipe(config.parameters.get(PREPROCESSING_PARAM))
                self.input_name = config.inputs[0].name if config.inputs else None
            self._stamp = stamp
        return self._labels

    @property
    def cached(self) -> bool:
        """As of the last `current()`."""
        return self._cached

    @property
    def sent(self) -> Preprocessing | None:
        """As of the last `current()`."""
        return self._sent


def _recipe(text: str | None) -> Preprocessing | None:
    """A config's preprocessing parameter; None when absent or unreadable (the batch then goes
    on as it came, as before lifeloop had two kinds of input)."""
    try:
        return Preprocessing.from_dict(json.loads(text)) if text else None
    except (LifeloopError, ValueError, TypeError):
        return None


class Versions:
    """What each version of a model takes and knows, from its manifest, read once: a version
    never changes. None for a version without a readable manifest (published by other
    tools): it gets the batch as it came, and a cascade does not trust its labels."""

    def __init__(self, model_dir: Path) -> None:
        self.model_dir = model_dir
        self._known: dict[int, tuple[Preprocessing | None, tuple[str, ...] | None]] = {}

    def _read(self, version: int) -> tuple[Preprocessing | None, tuple[str, ...] | None]:
        if version not in self._known:
            try:
                manifest = Manifest.read(self.model_dir / str(version))
            except LifeloopError:
                self._known[version] = (None, None)
                return self._known[version]
            try:
                takes: Preprocessing | None = Preprocessing.from_dict(manifest.preprocessing)
            except LifeloopError:
                takes = None
            self._known[version] = (takes, tuple(manifest.labels))
        return self._known[version]

    def takes(self, version: int) -> Preprocessing | None:
        return self._read(version)[0]

    def as_taken(self, version: int, batch: np.ndarray, sent: Preprocessing | None) -> np.ndarray:
        """`batch`, sent by the recipe `sent`, as `version` takes it; as it came when either
        recipe is unknown."""
        takes = self.takes(version) if sent is not None else None
        return batch if sent is None or takes is None else sent.convert(batch, takes)

    def labels(self, version: int) -> tuple[str, ...] | None:
        return self._read(version)[1]


class Light:
    """A cascade's light model as the router sees it: its config (input name, labels) and
    its versions, and the last error of a call to it."""

    def __init__(self, model_dir: Path) -> None:
        self.config = Labels(model_dir)
        self.versions = Versions(model_dir)
        self.last_error: str | None = None


@dataclass(frozen=True)
class _Keeping:
    """A batch's kept-input work: the batch in the form it is kept, every image's content
    hash, the form of the rows written, and the write's failure, if it failed."""

    images: np.ndarray | list[bytes]  # list: encoded images, as the client sent them
    hashes: list[str]
    form: str | None  # what the file holds (blobs.kept_as); None: no file
    failure: OSError | None


class Router:
    """What the router's model.py delegates to; `pb` is triton_python_backend_utils."""

    def __init__(self, pb: Any, router_dir: Path, settings: RouterSettings) -> None:
        self.pb = pb
        self.settings = settings
        self.policies = PolicyWatcher(router_dir)
        classifier_dir = router_dir.parent / settings.classifier
        # Clients send what the newest version takes (its recipe is in the config they
        # read, which Labels watches); a version of the other kind gets the batch converted.
        self.labels = Labels(classifier_dir)
        self.versions = Versions(classifier_dir)
        self.repository = router_dir.parent
        self.lights: dict[str, Light] = {}  # by model name: the cascade's light models
        self.random = random.Random()
        # BLS calls in flight together, one per request of a batch at most: to a cached
        # classifier each request is its own call (see `execute`).
        self.calls = ThreadPoolExecutor(max_workers=32, thread_name_prefix="lifeloop-bls")
        # Hashes and writes a batch's kept inputs while the classifier answers it.
        self.keeper = ThreadPoolExecutor(max_workers=1, thread_name_prefix="lifeloop-keep")
        self.fernet = cipher()  # kept inputs encrypted at rest when the key is set
        # On Triton's /metrics beside its own, where the python backend supports it.
        self.metrics = (
            RouterMetrics(pb, router_dir.name, settings.classifier, settings.keep_budget)
            if hasattr(pb, "MetricFamily")
            else None
        )
        # Each version's newest answers against its held-out softmax, on a gauge.
        self.drift = (
            DriftWatch(
                classifier_dir,
                settings.drift_window,
                self.metrics.drift,
                log=lambda line: log(pb, "warn", line),
            )
            if self.metrics is not None and settings.drift_window > 0
            else None
        )
        # The size trigger of retention: the oldest unlabelled kept inputs go past the budget.
        self.budget = (
            BudgetKeeper(
                Store(settings.store_url, connect=False),
                settings.blob_dir,
                settings.keep_budget,
                every_s=settings.keep_budget_every_s,
                on_pass=None if self.metrics is None else self.metrics.budget_pass,
                log=lambda line: log(pb, "warn", line),
            )
            if settings.keep_budget > 0
            else None
        )
        # A bad URL fails the router's load; a store that is down does not: the router
        # loads, spools, and drains once the store answers.
        self.log = PredictionLog(
            Store(settings.store_url, connect=False),
            settings.spool,
            log=lambda line: log(pb, "warn", line),
            on_change=None if self.metrics is None else self.metrics.log_counters,
        )

    @classmethod
    def from_args(cls, args: dict[str, str], pb: Any) -> Router:
        config = json.loads(args["model_config"])
        router_dir = Path(args["model_repository"])
        return cls(pb, router_dir, RouterSettings.from_config(config, router_dir.parent))

    def close(self) -> None:
        self.calls.shutdown(wait=True)
        self.keeper.shutdown(wait=True)
        if self.budget is not None:
            self.budget.close()
        if self.drift is not None:
            self.drift.close()
        self.log.close()

    def execute(self, requests: list[Any]) -> list[Any]:
        pb, settings = self.pb, self.settings
        policy = self.policies.current()
        arrays = [pb.get_input_tensor_by_name(r, settings.input_name).as_numpy() for r in requests]
        labels = self.labels.current()
        sent = self.labels.sent

        def infer(version: int, batch: np.ndarray) -> np.ndarray:
            batch = self.versions.as_taken(version, batch, sent)
            return self._infer(settings.classifier, version, batch, settings.input_name)

        def infer_each(version: int, batches: list[np.ndarray]) -> list[np.ndarray | Exception]:
            return list(self.calls.map(lambda batch: _or_error(infer, version, batch), batches))

        routes = plan_routes(policy, len(arrays), self.random)
        images = stack(arrays)
        rows = sample_rows(len(images), settings.keep.uniform, self.random)
        encoded = _encoded(pb, requests, len(images))
        blob_path = new_path(
            settings.blob_dir,
            encrypted=self.fernet is not None,
            input_kind=sent.input_kind if sent is not None else None,
            encoded=encoded is not None,
        )
        # None of the kept-input work depends on the answers: it runs while they are made.
        keeping = (
            self.keeper.submit(self._keep_encoded, encoded, rows, blob_path)
            if encoded is not None
            else self.keeper.submit(
                self._keep, images, rows, blob_path, pixels=sent is not None and sent.takes_pixels
            )
        )
        try:
            light = (
                None
                if policy.cascade is None
                else self._first_pass(policy.cascade, routes, images, sent)
            )
            answers = answer_routes(
                arrays,
                routes,
                infer,
                settings.top_k,
                # A cached classifier is asked once per request, the calls in flight together
                # so that its batcher still batches the misses.
                infer_each=infer_each if self.labels.cached and len(arrays) > 1 else None,
                light=light,
                whole=images,
            )
            shadow = shadow_top1(policy, [images], infer)
        finally:
            # The thread reads the requests' tensors, which live only until execute returns.
            wait([keeping])
        kept = keeping.result()
        decisions = keep_decisions(rows, answers, arrays, rule=settings.keep, shadow=shadow)
        final_rows, kept_form, unkept = kept_rows(decisions), kept.form, kept.failure
        if unkept is None and final_rows != rows:
            # Failed requests' inputs out, uncertain answers' in: the file is rewritten.
            kept_form, unkept = self._keep_only(kept.images, final_rows, blob_path)
        if unkept is not None:
            # Kept inputs serve retraining only: a full or failing disk costs this batch's
            # inputs, never its answers.
            if self.metrics is not None:
                self.metrics.kept_input_failed(sum(row is not None for row in final_rows))
            log(pb, "warn", f"lifeloop: kept inputs not written to {blob_path}: {unkept}")
            final_rows = [None] * len(final_rows)
        batch = log_batch(
            answers,
            arrays,
            model=settings.classifier,
            labels=labels,
            policy=policy,
            shadow=shadow,
            kept=Kept(
                hashes=kept.hashes,
                rows=final_rows,
                blob=str(blob_path),
                kept_as=kept_form,
                decisions=decisions,
            ),
        )
        records = batch.records
        try:
            self.log.record(records)
        except LogUnavailable as exc:
            # Not acknowledged: no caller may hold an id that is neither stored nor spooled.
            error = unavailable(pb, str(exc))
            return [pb.InferenceResponse(error=error) for _ in requests]
        if self.metrics is not None:
            self.metrics.record(records, None if light is None else light.model)
        if self.drift is not None:
            self.drift.add(records)

        responses = []
        for request, answer, answer_ids in zip(requests, answers, batch.request_ids, strict=True):
            if isinstance(answer, Exception) or answer_ids is None:
                # The classifier's INVALID_ARG stays the caller's; anything else is INTERNAL.
                failure = answer if isinstance(answer, Exception) else RuntimeError("no ids")
                responses.append(pb.InferenceResponse(error=error_for(pb, failure)))
                continue
            # Only what the caller asked for (Triton counts every output as asked for when a
            # request names none): a tensor nobody reads still costs the stub its making.
            wanted = _wanted(request)
            tensors = []
            if wanted is None or settings.output_name in wanted:
                logits = np.ascontiguousarray(answer.logits, dtype=np.float32)
                tensors.append(pb.Tensor(settings.output_name, logits))
            if wanted is None or VERSION_OUTPUT in wanted:
                tensors.append(pb.Tensor(VERSION_OUTPUT, answer.versions()))
            if wanted is None or REQUEST_ID_OUTPUT in wanted:
                ids = np.array([[r.encode()] for r in answer_ids], dtype=np.object_)
                tensors.append(pb.Tensor(REQUEST_ID_OUTPUT, ids))
            if settings.answers_by and (wanted is None or ANSWERED_BY_OUTPUT in wanted):
                by = [
                    [(answer.answered_by(j)[0] or settings.classifier).encode()]
                    for j in range(len(answer_ids))
                ]
                tensors.append(pb.Tensor(ANSWERED_BY_OUTPUT, np.array(by, dtype=np.object_)))
            responses.append(pb.InferenceResponse(output_tensors=tensors))
        return responses

    def _keep(
        self, images: np.ndarray, rows: list[int | None], path: Path, *, pixels: bool
    ) -> _Keeping:
        """Every image's content hash; the images `rows` keeps, written to `path`. A batch
        of `pixels` is kept (and hashed) as uint8 where that loses nothing."""
        as_uint8 = as_pixels(images) if pixels else None
        kept = images if as_uint8 is None else as_uint8
        hashes = [content_hash(image) for image in kept]
        return _Keeping(kept, hashes, *self._keep_only(kept, rows, path))

    def _keep_encoded(self, images: list[bytes], rows: list[int | None], path: Path) -> _Keeping:
        """The encoded images as the client sent them, hashed and kept as they are."""
        hashes = [encoded_hash(image) for image in images]
        return _Keeping(images, hashes, *self._keep_only(images, rows, path))

    def _keep_only(
        self, kept: np.ndarray | list[bytes], rows: list[int | None], path: Path
    ) -> tuple[str | None, OSError | None]:
        """Write (or replace) `path` with the images `rows` keeps, and say in what form
        (`kept_as`); none kept: no file."""
        chosen = [i for i, row in enumerate(rows) if row is not None]
        try:
            if not chosen:
                path.unlink(missing_ok=True)
                return None, None
            if isinstance(kept, list):
                write_encoded(path, [kept[i] for i in chosen], fernet=self.fernet)
                return ENCODED, None
            some = kept if len(chosen) == len(kept) else kept[chosen]
            write_batch(path, some, fernet=self.fernet)
        except OSError as exc:
            return None, exc
        return kept_as(some), None

    def _first_pass(
        self,
        cascade: Cascade,
        routes: list[Route],
        batch: np.ndarray,
        sent: Preprocessing | None,
    ) -> LightPass | None:
        """The light model over the whole batch; None (every image goes to its arm) when it
        cannot answer: a failing light model costs speed, never answers."""
        light = self.lights.get(cascade.light)
        if light is None:
            light = self.lights[cascade.light] = Light(self.repository / cascade.light)
        try:
            light.config.current()
            batch = light.versions.as_taken(cascade.version, batch, sent)
            input_name = light.config.input_name or self.settings.input_name
            logits = self._infer(cascade.light, cascade.version, batch, input_name)
        except Exception as exc:  # the light model's failure is not the caller's
            if self.metrics is not None:
                self.metrics.light_failed(cascade.light, len(batch))
            if str(exc) != light.last_error:  # once per distinct error, not per batch
                log(self.pb, "warn", f"lifeloop: cascade light model failed, escalating: {exc}")
            light.last_error = str(exc)
            return None
        light.last_error = None
        labels = light.versions.labels(cascade.version)
        trusted = frozenset(
            version
            for version in {version for _, version in routes}
            if labels is not None and self.versions.labels(version) == labels
        )
        return first_pass(
            cascade.light,
            cascade.version,
            logits,
            threshold=cascade.threshold,
            top_k=self.settings.top_k,
            trusted=trusted,
        )

    def _infer(self, model: str, version: int, batch: np.ndarray, input_name: str) -> np.ndarray:
        pb, settings = self.pb, self.settings
        request = pb.InferenceRequest(
            model_name=model,
            model_version=int(version),
            requested_output_names=[settings.output_name],
            inputs=[pb.Tensor(input_name, batch)],
        )
        response = request.exec()
        if response.has_error():
            error = response.error()
            message = f"{model} v{version}: {error.message()}"
            code = getattr(error, "code", None)  # python backends before 23.04 know no codes
            if code is not None and code() == getattr(pb.TritonError, "INVALID_ARG", None):
                raise RequestError(message)  # the caller's tensor, refused by the classifier
            raise RuntimeError(message)
        return pb.get_output_tensor_by_name(response, settings.output_name).as_numpy()


def _encoded(pb: Any, requests: list[Any], n_images: int) -> list[bytes] | None:
    """The encoded images the image ensemble passed beside the decoded batch, one per image
    in batch order; None when a request came without them (called directly), or they do
    not match the batch: then the batch is kept as decoded."""
    found: list[bytes] = []
    for request in requests:
        tensor = pb.get_input_tensor_by_name(request, IMAGE_INPUT)
        if tensor is None:
            return None
        found.extend(bytes(item) for item in tensor.as_numpy().reshape(-1))
    return found if len(found) == n_images else None


def _wanted(request: Any) -> set[str] | None:
    """The outputs a request asked for; None (all) where the python backend cannot say."""
    names = getattr(request, "requested_output_names", None)
    return None if names is None else set(names())


def _or_error(
    infer: Callable[[int, np.ndarray], np.ndarray], version: int, batch: np.ndarray
) -> np.ndarray | Exception:
    try:
        return infer(version, batch)
    except Exception as exc:  # this request's call only
        return exc


class RouterMetrics:
    """Counters on Triton's metrics endpoint, through the python backend's custom metrics:
    images answered per version and route, and shadow comparisons and agreements per
    candidate. Counted after the prediction log commits, so they count acknowledged work."""

    flush_s = 0.5

    def __init__(self, pb: Any, router: str, model: str, keep_budget: int = 0) -> None:
        def family(name: str, description: str, kind: Any = pb.MetricFamily.COUNTER) -> Any:
            return pb.MetricFamily(name=name, description=description, kind=kind)

        self.labels = {"router": router, "model": model}
        self.routed = family(
            "lifeloop_routed_images_total",
            "Images a lifeloop router answered, by answering version and route",
        )
        self.compared = family(
            "lifeloop_shadow_compared_total",
            "Champion answers a shadowing candidate also answered",
        )
        self.agreed = family(
            "lifeloop_shadow_agreed_total",
            "Shadow comparisons where the candidate's top-1 matched the champion's",
        )
        self.logged = family(
            "lifeloop_log_records_total",
            "Predictions the router logged, by outcome: stored, spooled (to the local journal "
            "while the store was slow or down), dropped or refused (journal full)",
        )
        self.drained = family(
            "lifeloop_spool_drained_records_total", "Spooled predictions drained into the store"
        )
        self.spooled_now = family(
            "lifeloop_spooled_records",
            "Predictions waiting in the router's spool for the store",
            pb.MetricFamily.GAUGE,
        )
        self.kept_failed = family(
            "lifeloop_kept_input_failures_total",
            "Inputs the router could not keep for retraining (disk full or failing)",
        )
        self.cascade = family(
            "lifeloop_cascade_images_total",
            "Images under a cascade, by outcome: answered by the light model, escalated to the "
            "heavy arm, or escalated because the light model failed",
        )
        self.drift_p = family(
            "lifeloop_drift_p_value",
            "Drift test of a version's newest answers against its softmax on held-out images "
            "(per-class KS, Bonferroni): below 0.05, its traffic has drifted",
            pb.MetricFamily.GAUGE,
        )
        self.drift_statistic = family(
            "lifeloop_drift_statistic",
            "The largest per-class KS distance of the last drift test",
            pb.MetricFamily.GAUGE,
        )
        self.drift_answers = family(
            "lifeloop_drift_window_answers",
            "Answers in the window the last drift test used",
            pb.MetricFamily.GAUGE,
        )
        self._metrics: dict[tuple[int, tuple[tuple[str, str], ...]], Any] = {}
        self._published = Counters()
        self._published_at = 0.0
        self._lock = threading.Lock()  # the log's worker thread publishes too
        # Every series from the start, at 0: an alert on "spooled > 0" or a rate of drops
        # needs the series to exist before the first outage.
        for outcome in ("stored", "spooled", "dropped", "refused"):
            self._metric(self.logged, outcome=outcome)
        self._metric(self.drained)
        self._metric(self.spooled_now).set(0)
        self._metric(self.kept_failed)
        if keep_budget > 0:  # the budget's series, only where a budget is kept
            self.kept_bytes = family(
                "lifeloop_kept_input_bytes",
                "Bytes the router's kept inputs take on disk, as of its last budget pass",
                pb.MetricFamily.GAUGE,
            )
            self.budget_bytes = family(
                "lifeloop_kept_input_budget_bytes",
                "The bytes the router's kept inputs may take before the oldest unlabelled go",
                pb.MetricFamily.GAUGE,
            )
            self.evicted = family(
                "lifeloop_kept_inputs_evicted_total",
                "Kept inputs the router's budget evicted (oldest unlabelled first)",
            )
            self.evicted_bytes = family(
                "lifeloop_kept_input_evicted_bytes_total",
                "Bytes of kept-input files the router's budget evicted",
            )
            self._metric(self.budget_bytes).set(keep_budget)
            self._metric(self.kept_bytes).set(0)
            self._metric(self.evicted)
            self._metric(self.evicted_bytes)

    def log_counters(self, counters: Counters) -> None:
        """Publish what the prediction log counted since the last call. Each metric call is
        a round trip to tritonserver, so in steady state (only `stored` grew) the counter
        is flushed at most every `flush_s`; anything else is published at once."""
        with self._lock:
            # One snapshot for the deltas and for what is remembered as published: the other
            # thread may count more meanwhile, and that must go out next time, not be lost.
            now, last = replace(counters), self._published
            steady = all(
                getattr(now, f) == getattr(last, f)
                for f in ("spooled", "dropped", "refused", "drained", "pending")
            )
            at = time.monotonic()
            if steady and at - self._published_at < self.flush_s:
                return
            for outcome in ("stored", "spooled", "dropped", "refused"):
                grew = getattr(now, outcome) - getattr(last, outcome)
                if grew:
                    self._metric(self.logged, outcome=outcome).increment(grew)
            if now.drained - last.drained:
                self._metric(self.drained).increment(now.drained - last.drained)
            if now.pending != last.pending:
                self._metric(self.spooled_now).set(now.pending)
            self._published, self._published_at = now, at

    def budget_pass(self, result: Eviction) -> None:
        """A pass of the budget (from its own thread)."""
        with self._lock:
            self._metric(self.kept_bytes).set(result.kept_bytes)
            if result.evicted_inputs:
                self._metric(self.evicted).increment(result.evicted_inputs)
            if result.evicted_bytes:
                self._metric(self.evicted_bytes).increment(result.evicted_bytes)

    def drift(self, version: int, result: DriftResult) -> None:
        """A version's drift test (from the drift watch's thread)."""
        with self._lock:
            self._metric(self.drift_p, version=str(version)).set(result.p_value)
            self._metric(self.drift_statistic, version=str(version)).set(result.statistic)
            self._metric(self.drift_answers, version=str(version)).set(result.window)

    def kept_input_failed(self, n: int) -> None:
        self._metric(self.kept_failed).increment(n)

    def light_failed(self, light: str, n: int) -> None:
        self._metric(self.cascade, light=light, outcome="light_failed").increment(n)

    def record(self, records: list[Prediction], light: str | None = None) -> None:
        """Count acknowledged records; `light` is the cascade's light model, if one ran."""
        routed = Counter((r.version, r.route) for r in records)
        for (version, route), n in routed.items():
            self._metric(self.routed, version=str(version), route=route).increment(n)
        if light is not None:
            by_light = sum(n for (_, route), n in routed.items() if route == LIGHT_ROUTE)
            for outcome, n in (("light", by_light), ("escalated", len(records) - by_light)):
                if n:
                    self._metric(self.cascade, light=light, outcome=outcome).increment(n)
        shadowed = [r for r in records if r.shadow_version is not None]
        for candidate in {r.shadow_version for r in shadowed}:
            mine = [r for r in shadowed if r.shadow_version == candidate]
            agreed = sum(r.shadow_label == r.labels[0] for r in mine)
            self._metric(self.compared, candidate=str(candidate)).increment(len(mine))
            self._metric(self.agreed, candidate=str(candidate)).increment(agreed)

    def _metric(self, family: Any, **labels: str) -> Any:
        key = (id(family), tuple(sorted(labels.items())))
        if key not in self._metrics:
            self._metrics[key] = family.Metric(labels={**self.labels, **labels})
        return self._metrics[key]
