"""Errors of the model repository package."""

from __future__ import annotations

from lifeloop.errors import LifeloopError


class RepositoryError(LifeloopError):
    """A repository path, config or manifest that cannot be used."""


class VersionExistsError(RepositoryError):
    """A publish asked for a version number that is already taken."""


class ManifestMismatchError(RepositoryError):
    """A version's files differ from what its manifest recorded."""
