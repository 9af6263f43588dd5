"""`lifeloop router init`: put the router and the feedback model in front of a classifier.

It writes two Python models into the repository, a routing policy whose champion is the
classifier's newest version (or the one given), and a specific version policy on the
classifier, and it opens the store once so that a bad URL fails here, not under traffic."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from lifeloop import contract
from lifeloop.drift import MIN_WINDOW
from lifeloop.errors import RolloutError
from lifeloop.repository import config as cfg
from lifeloop.repository.publish import (
    ensure_repository,
    model_lock,
    read_config,
    version_numbers,
    write_python_model,
)
from lifeloop.rollout.policy import RoutingPolicy, policy_path, read_policy, write_policy
from lifeloop.rollout.replicas import ServerUrls
from lifeloop.rollout.rollout import sync_version_policy
from lifeloop.serve.router import default_spool_dir
from lifeloop.serve.sampling import KeepRule
from lifeloop.store.blobs import default_blob_dir
from lifeloop.store.database import Event, Store, default_store_url, now
from lifeloop.store.prediction_log import SpoolSettings, WhenFull
from lifeloop.store.retention import parse_size

MODELS_DIR = Path(__file__).parent / "models"


@dataclass(frozen=True)
class Installed:
    router: str
    feedback: str
    policy: RoutingPolicy
    store_url: str
    blob_dir: Path
    spool: SpoolSettings
    keep: KeepRule
    keep_budget: int  # bytes; 0: no limit


def install_router(
    repository: Path,
    classifier: str,
    *,
    router: str = "router",
    feedback: str = "feedback",
    store_url: str | None = None,
    blob_dir: Path | None = None,
    keep: KeepRule | None = None,
    keep_budget: int | str = contract.DEFAULT_KEEP_BUDGET,
    keep_budget_every_s: float = contract.DEFAULT_KEEP_BUDGET_EVERY_S,
    top_k: int = 5,
    drift_window: int = contract.DEFAULT_DRIFT_WINDOW,
    champion: int | None = None,
    server_url: ServerUrls = None,
    spool_dir: Path | None = None,
    store_timeout_ms: int = 250,
    spool_max_bytes: int = 1 << 30,
    spool_when_full: str = WhenFull.REFUSE.value,
) -> Installed:
    repository = ensure_repository(repository).resolve()
    model_dir = repository / classifier
    config = read_config(model_dir)
    versions = version_numbers(model_dir)
    if config is None or not versions:
        raise RolloutError(
            f"model {classifier!r} has no published version in {repository}; export one with "
            "`lifeloop export` or `lifeloop train` first",
            model=classifier,
        )
    budget = parse_size(keep_budget, setting="keep_budget")
    if keep_budget_every_s <= 0:
        raise RolloutError(
            f"keep_budget_every_s must be positive, got {keep_budget_every_s}",
            setting="keep_budget_every_s",
        )
    if top_k < 1:
        raise RolloutError(f"top_k must be >= 1, got {top_k}", setting="top_k")
    if drift_window != 0 and drift_window < MIN_WINDOW:
        raise RolloutError(
            f"drift_window must be 0 (no drift gauge) or >= {MIN_WINDOW}, got {drift_window}",
            setting="drift_window",
        )
    if champion is not None and champion not in versions:
        raise RolloutError(
            f"model {classifier!r} has no version {champion}; pick one of {versions}",
            model=classifier,
            version=champion,
        )
    store_url = store_url or default_store_url(repository)
    blob_dir = Path(blob_dir or default_blob_dir(repository)).resolve()
    spool = SpoolSettings(
        folder=Path(spool_dir or default_spool_dir(repository, router)).resolve(),
        timeout_s=store_timeout_ms / 1000,
        max_bytes=spool_max_bytes,
        when_full=WhenFull.parse(spool_when_full),
    )
    blob_dir.mkdir(parents=True, exist_ok=True)
    spool.folder.mkdir(parents=True, exist_ok=True)
    with Store(store_url) as store:  # fails here on a bad URL
        router_dir = repository / router
        router_dir.mkdir(exist_ok=True)
        with model_lock(router_dir):
            if policy_path(router_dir).is_file():
                policy = read_policy(router_dir)
                if policy.model != classifier:
                    raise RolloutError(
                        f"router {router!r} already fronts {policy.model!r}; pick another "
                        "--router name",
                        model=classifier,
                    )
            else:
                policy = RoutingPolicy(model=classifier, champion=champion or max(versions))
                sync_version_policy(
                    repository, classifier, set(policy.loaded_versions), server_url=server_url
                )
                write_policy(router_dir, policy)
                store.add_event(
                    Event(
                        model=classifier,
                        action="init",
                        champion=policy.champion,
                        candidate=None,
                        previous=None,
                        canary_weight=0.0,
                        shadow=False,
                        reason=f"router {router!r} set up",
                        created_at=now(),
                    )
                )
        write_python_model(
            repository,
            cfg.ModelConfig(
                name=router,
                backend="python",
                max_batch_size=config.max_batch_size,
                inputs=(
                    config.inputs[0],
                    # The image ensemble in front of a router passes the encoded images the
                    # client sent beside the decoded batch, and those are what is kept.
                    cfg.TensorSpec(
                        name=contract.IMAGE_INPUT,
                        data_type=cfg.DataType.STRING,
                        dims=(1,),
                        optional=True,
                    ),
                ),
                outputs=(
                    cfg.TensorSpec(name="logits", data_type=cfg.DataType.FP32, dims=(-1,)),
                    cfg.TensorSpec(name="model_version", data_type=cfg.DataType.INT64, dims=(1,)),
                    cfg.TensorSpec(name="request_id", data_type=cfg.DataType.STRING, dims=(1,)),
                    cfg.TensorSpec(
                        name=contract.ANSWERED_BY_OUTPUT, data_type=cfg.DataType.STRING, dims=(1,)
                    ),
                ),
                dynamic_batching=cfg.DynamicBatching(max_queue_delay_us=500),
                version_policy=cfg.VersionPolicy(latest=1),
                parameters={
                    contract.CLASSIFIER_PARAM: classifier,
                    contract.STORE_PARAM: store_url,
                    contract.BLOB_DIR_PARAM: str(blob_dir),
                    **(keep or KeepRule()).to_parameters(),
                    contract.KEEP_BUDGET_PARAM: str(budget),
                    contract.KEEP_BUDGET_EVERY_PARAM: f"{keep_budget_every_s:g}",
                    contract.TOP_K_PARAM: str(top_k),
                    contract.DRIFT_WINDOW_PARAM: str(drift_window),
                    contract.SPOOL_DIR_PARAM: str(spool.folder),
                    contract.STORE_TIMEOUT_PARAM: str(store_timeout_ms),
                    contract.SPOOL_MAX_BYTES_PARAM: str(spool.max_bytes),
                    contract.SPOOL_WHEN_FULL_PARAM: spool.when_full.value,
                },
            ),
            MODELS_DIR / "router.py",
        )
        write_python_model(
            repository,
            cfg.ModelConfig(
                name=feedback,
                backend="python",
                max_batch_size=256,
                inputs=(
                    cfg.TensorSpec(name="request_id", data_type=cfg.DataType.STRING, dims=(1,)),
                    cfg.TensorSpec(name="label", data_type=cfg.DataType.STRING, dims=(1,)),
                ),
                outputs=(cfg.TensorSpec(name="accepted", data_type=cfg.DataType.BOOL, dims=(1,)),),
                dynamic_batching=cfg.DynamicBatching(max_queue_delay_us=1000),
                version_policy=cfg.VersionPolicy(latest=1),
                parameters={
                    contract.ROUTER_PARAM: router,
                    contract.STORE_PARAM: store_url,
                    contract.SPOOL_DIR_PARAM: str(spool.folder),
                },
            ),
            MODELS_DIR / "feedback.py",
        )
    return Installed(
        router, feedback, policy, store_url, blob_dir, spool, keep or KeepRule(), budget
    )
