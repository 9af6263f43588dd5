"""The one writer of the model repository.

A version is written into `<model>/.staging-<id>/` (Triton ignores non-numeric folders), every
file is fsynced, the manifest is written last, and the folder is renamed to the next version
number. Triton therefore never sees a half-written version, in POLL or EXPLICIT mode.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import shutil
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from lifeloop.contract import (
    CLASSIFIER_PARAM,
    INPUT_KIND_PARAM,
    INPUT_KINDS_PARAM,
    LABELS_PARAM,
    PREPROCESSING_PARAM,
)
from lifeloop.errors import ManifestMismatchError, RepositoryError, VersionExistsError
from lifeloop.repository import config as cfg
from lifeloop.repository.manifest import (
    MANIFEST_NAME,
    Manifest,
    VersionDraft,
    describe_files,
    verify,
)

CONFIG_NAME = "config.pbtxt"
STAGING_PREFIX = ".staging-"


@dataclass(frozen=True)
class PublishedVersion:
    model: str
    version: int
    path: Path
    manifest: Manifest
    # What a server must (re)load to serve it: the model, then the models fronting it (they
    # read its label file when they load), and the versions its policy keeps loaded.
    reload: tuple[str, ...]
    serving: frozenset[int]


def ensure_repository(repository: Path) -> Path:
    """The repository folder, created if missing; a path that is a file is an error."""
    repository = Path(repository)
    if repository.exists() and not repository.is_dir():
        raise RepositoryError(
            f"repository path {repository} is a file; pass a folder (it is created if missing)"
        )
    repository.mkdir(parents=True, exist_ok=True)
    return repository


def version_numbers(model_dir: Path) -> list[int]:
    if not model_dir.is_dir():
        return []
    return sorted(int(p.name) for p in model_dir.iterdir() if p.is_dir() and p.name.isdigit())


def read_config(model_dir: Path) -> cfg.ModelConfig | None:
    path = model_dir / CONFIG_NAME
    return cfg.parse(path.read_text(), source=str(path)) if path.is_file() else None


def write_config(repository: Path, config: cfg.ModelConfig) -> Path:
    """Replace a model's config.pbtxt atomically (Triton reloads the model on its next poll)."""
    model_dir = ensure_repository(repository) / config.name
    model_dir.mkdir(exist_ok=True)
    with model_lock(model_dir):
        return _write_config(model_dir, config)


def publish(
    repository: Path,
    config: cfg.ModelConfig,
    files: dict[str, Path],
    draft: VersionDraft,
    *,
    version: int | None = None,
) -> PublishedVersion:
    """Publish one version of `config.name`: `files` maps names inside the version folder to
    source files. The config is written when missing and its labels are extended when this
    version adds classes. This writes the disk only: in POLL mode the rename is enough; in
    EXPLICIT mode, lifeloop.rollout.replicas.load_published asks every server to load it."""
    repository = ensure_repository(repository)
    model_dir = repository / config.name
    model_dir.mkdir(exist_ok=True)
    with model_lock(model_dir):
        _remove_stale_staging(model_dir)
        existing = version_numbers(model_dir)
        if version is not None and version in existing:
            raise VersionExistsError(
                f"version {version} of model {config.name!r} already exists in {repository}; "
                "omit --version to take the next number, or pick an unused one",
                model=config.name,
                version=version,
            )
        if version is not None and version < 1:
            raise RepositoryError(
                f"version must be >= 1, got {version}",
                model=config.name,
                version=version,
                setting="version",
            )
        number = version if version is not None else (max(existing, default=0) + 1)
        needed = sum(Path(source).stat().st_size for source in files.values()) + SLACK_BYTES
        what = f"publishing {config.name} v{number}"
        check_free_space(model_dir, needed, what)
        current = read_config(model_dir)
        updated = _merge_config(current or config, draft, model_dir, number)
        try:  # each replaced whole or not at all
            write_label_files(model_dir, updated)
            if updated != current:
                _write_config(model_dir, updated)
        except OSError as exc:
            _raise_if_no_space(exc, model_dir, needed, what)
            raise
        staging = model_dir / f"{STAGING_PREFIX}{uuid.uuid4().hex[:12]}"
        try:
            staging.mkdir()
            for name, source in files.items():
                target = staging / name
                shutil.copyfile(source, target)
                _fsync_file(target)
            manifest = Manifest(
                model=config.name,
                version=number,
                files=describe_files(staging, list(files)),
                created_at=datetime.now(UTC).isoformat(timespec="seconds"),
                **vars(draft),
            )
            _write_durably(staging / MANIFEST_NAME, manifest.to_json())
            fsync_dir(staging)
            os.rename(staging, model_dir / str(number))
            fsync_dir(model_dir)
        except OSError as exc:
            shutil.rmtree(staging, ignore_errors=True)
            _raise_if_no_space(exc, model_dir, needed, what)
            raise
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
    fronting = refresh_fronting_models(repository, updated)
    return PublishedVersion(
        config.name,
        number,
        model_dir / str(number),
        manifest,
        reload=(config.name, *fronting),
        serving=frozenset(loaded_by_policy(updated.version_policy, model_dir)),
    )


def publish_folder(
    repository: Path,
    source: Path,
    model: str | None = None,
    *,
    version: int | None = None,
) -> PublishedVersion:
    """Publish a version folder made elsewhere (by `lifeloop export` on another machine, a
    plan built on a GPU host) as the next version of `model` (default: the manifest's). Its
    files are checked against its manifest before anything is written, and it is published
    like any export: atomically. A model new to
    the repository takes the config beside the source folder."""
    source = Path(source)
    if not (source / MANIFEST_NAME).is_file():
        raise RepositoryError(
            f"{source} has no {MANIFEST_NAME}: publish a version folder that `lifeloop export` "
            "wrote (such as model_repository/classifier/3)"
        )
    try:
        manifest = verify(source)
    except ManifestMismatchError as exc:
        raise ManifestMismatchError(f"nothing published: {exc}") from exc
    name = model or manifest.model
    config = read_config(Path(repository) / name)
    brought = read_config(source.parent)
    if config is None and brought is None:
        raise RepositoryError(
            f"{Path(repository) / name} has no {CONFIG_NAME}, and neither has {source.parent}: "
            "copy the version with its model folder's config, or export it here once"
        )
    if config is not None and brought is not None and brought.backend != config.backend:
        raise RepositoryError(
            f"{source} is a {brought.backend!r} version but {name!r} is served by "
            f"{config.backend!r}; publish it under the model of its format"
        )
    if config is None:
        assert brought is not None
        config = replace(brought, name=name)
    draft = manifest.draft()
    files = {entry.path: source / entry.path for entry in manifest.files}
    return publish(repository, config, files, draft, version=version)


def loaded_by_policy(policy: cfg.VersionPolicy, model_dir: Path) -> set[int]:
    """The versions on disk that `policy` has Triton load."""
    numbers = version_numbers(model_dir)
    if policy.all:
        return set(numbers)
    if policy.specific:
        return set(policy.specific) & set(numbers)
    return set(numbers[-(policy.latest or 1) :])


def fronting_models(repository: Path, classifier: str) -> list[str]:
    """The models that front `classifier` with a label file of its labels (image ensembles):
    Triton reads a label file when it loads a model, so they reload when it does."""
    found = []
    for model_dir in sorted(p for p in Path(repository).iterdir() if p.is_dir()):
        if model_dir.name == classifier or not (model_dir / CONFIG_NAME).is_file():
            continue
        try:
            config = read_config(model_dir)
        except RepositoryError:  # another model's broken config is not this caller's concern
            continue
        if (
            config is not None
            and config.parameters.get(CLASSIFIER_PARAM) == classifier
            and any(o.label_filename for o in config.outputs)
        ):
            found.append(model_dir.name)
    return found


def refresh_fronting_models(repository: Path, classifier: cfg.ModelConfig) -> list[str]:
    """Give the models that front `classifier` with a label file its current labels; returns
    the names of those that changed."""
    labels = classifier.parameters.get(LABELS_PARAM)
    changed: list[str] = []
    if labels is None:
        return changed
    for name in fronting_models(repository, classifier.name):
        model_dir = Path(repository) / name
        with model_lock(model_dir):
            config = read_config(model_dir)
            if config is None or config.parameters.get(LABELS_PARAM) == labels:
                continue
            config = config.with_parameters(**{LABELS_PARAM: labels})
            write_label_files(model_dir, config)
            _write_config(model_dir, config)
        changed.append(name)
    return changed


def _merge_config(
    config: cfg.ModelConfig, draft: VersionDraft, model_dir: Path, version: int
) -> cfg.ModelConfig:
    """Check the version fits the model's config and carry its labels and preprocessing into
    the config's parameters, where any remote client can read them. Class indices are stable
    across versions: a new version may only append classes."""
    declared = next((t for t in config.inputs if t.name == draft.input.name), None)
    if declared is None or declared.dims != tuple(draft.input.shape):
        have = [(t.name, list(t.dims)) for t in config.inputs]
        raise RepositoryError(
            f"version input {draft.input.name} {list(draft.input.shape)} does not match "
            f"{model_dir / CONFIG_NAME} inputs {have}; export at the model's input size or "
            "publish under a new model name"
        )
    labels = tuple(config.json_parameter(LABELS_PARAM, []))
    new = tuple(draft.labels)
    if new[: len(labels)] != labels[: len(new)]:
        raise RepositoryError(
            f"labels of the new version {list(new)[:6]}… reorder the model's labels "
            f"{list(labels)[:6]}…; keep class indices and append new classes at the end"
        )
    merged = new if len(new) > len(labels) else labels
    # An output of fixed width (a TensorRT plan's logits) is as wide as this version's classes.
    config = replace(
        config,
        inputs=tuple(_with_format(t, draft) for t in config.inputs),
        outputs=tuple(
            replace(o, dims=(len(new),)) if len(o.dims) == 1 and o.dims[0] > 0 else o
            for o in config.outputs
        ),
    )
    # normalized for a recipe written before the two kinds existed
    kind = draft.preprocessing.get("input_kind", "normalized")
    kinds = {**config.json_parameter(INPUT_KINDS_PARAM, {}), str(version): kind}
    return config.with_parameters(
        **{
            LABELS_PARAM: _json(list(merged)),
            PREPROCESSING_PARAM: _json(draft.preprocessing),
            INPUT_KIND_PARAM: kind,
            INPUT_KINDS_PARAM: _json(dict(sorted(kinds.items(), key=lambda kv: int(kv[0])))),
        }
    )


def _with_format(tensor: cfg.TensorSpec, draft: VersionDraft) -> cfg.TensorSpec:
    """The version's image input declares its layout, also in a config written before lifeloop
    declared it, so that clients reading only the config can lay out pixels."""
    if tensor.name != draft.input.name or tensor.format is not cfg.TensorFormat.NONE:
        return tensor
    if len(tensor.dims) != 3:
        return tensor
    return replace(tensor, format=cfg.TensorFormat.of_layout(draft.input.layout))


def write_label_files(model_dir: Path, config: cfg.ModelConfig) -> None:
    """The label file each output names, from the labels in the config's parameters; written
    before the config that names it, since Triton refuses a config whose label file is
    missing. Labels only ever grow at the end, so one file serves every loaded version."""
    labels = config.json_parameter(LABELS_PARAM, [])
    for output in config.outputs:
        if not output.label_filename:
            continue
        path = model_dir / output.label_filename
        text = "".join(f"{label}\n" for label in labels)
        if not path.is_file() or path.read_text() != text:
            replace_file(path, text)


def _json(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), sort_keys=True)


def write_python_model(repository: Path, config: cfg.ModelConfig, source: Path) -> None:
    """A Python-backend model of lifeloop's: `source` as its one version's model.py, then
    its config, each replaced atomically."""
    version_dir = ensure_repository(repository) / config.name / "1"
    version_dir.mkdir(parents=True, exist_ok=True)
    replace_file(version_dir / "model.py", Path(source).read_bytes())
    write_config(repository, config)


def _write_config(model_dir: Path, config: cfg.ModelConfig) -> Path:
    return replace_file(model_dir / CONFIG_NAME, cfg.render(config))


def replace_file(path: Path, content: str | bytes) -> Path:
    """Write `content` to `path` so that a reader sees the old file or the new one, never a
    part: a fsynced temporary file beside it, renamed over it."""
    tmp = path.parent / f".{path.name}.{uuid.uuid4().hex[:8]}.tmp"
    try:
        _write_durably(tmp, content)
        os.rename(tmp, path)
        fsync_dir(path.parent)
    finally:
        tmp.unlink(missing_ok=True)
    return path


# Room for the manifest, the config and the label files beside the version's own files.
SLACK_BYTES = 1 << 20


def check_free_space(folder: Path, needed: int, what: str) -> None:
    """Refuse before writing anything when `folder`'s filesystem has less than `needed`."""
    if shutil.disk_usage(folder).free < needed:
        raise _no_space(folder, needed, what)


def _raise_if_no_space(exc: OSError, folder: Path, needed: int, what: str) -> None:
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        raise _no_space(folder, needed, what) from exc


def _no_space(folder: Path, needed: int, what: str) -> RepositoryError:
    free = shutil.disk_usage(folder).free
    return RepositoryError(
        f"{what} needs {_mib(needed)} in {folder}, and its filesystem has {_mib(free)} free; "
        "nothing was written: free space there, or publish to another repository"
    )


def _mib(n: int) -> str:
    return f"{n / 2**20:.1f} MiB"


def _remove_stale_staging(model_dir: Path) -> None:
    # We hold the model's lock, so no other publisher is writing into these.
    for stale in model_dir.glob(f"{STAGING_PREFIX}*"):
        shutil.rmtree(stale, ignore_errors=True)


@contextmanager
def model_lock(model_dir: Path) -> Iterator[None]:
    with open(model_dir / ".lifeloop.lock", "a+") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _write_durably(path: Path, content: str | bytes) -> None:
    with open(path, "wb" if isinstance(content, bytes) else "w") as handle:
        handle.write(content)
        handle.flush()
        os.fsync(handle.fileno())


def _fsync_file(path: Path) -> None:
    with open(path, "rb") as handle:
        os.fsync(handle.fileno())


def fsync_dir(path: Path) -> None:
    """Make a rename or a new file in `path` durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
