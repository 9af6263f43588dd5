"""The Triton model repository: typed configs, manifests, the atomic publisher, listings."""

from lifeloop.errors import ManifestMismatchError, RepositoryError, VersionExistsError
from lifeloop.repository.config import ModelConfig, classifier_config, parse, render
from lifeloop.repository.manifest import Manifest, TensorInfo, VersionDraft, verify
from lifeloop.repository.publish import (
    PublishedVersion,
    ensure_repository,
    publish,
    publish_folder,
    read_config,
    version_numbers,
    write_config,
)
from lifeloop.repository.versions import VersionRow, list_versions

__all__ = [
    "Manifest",
    "ManifestMismatchError",
    "ModelConfig",
    "PublishedVersion",
    "RepositoryError",
    "TensorInfo",
    "VersionDraft",
    "VersionExistsError",
    "VersionRow",
    "classifier_config",
    "ensure_repository",
    "list_versions",
    "parse",
    "publish",
    "publish_folder",
    "read_config",
    "render",
    "verify",
    "version_numbers",
    "write_config",
]
