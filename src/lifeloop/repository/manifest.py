"""manifest.json: what one published version is, and the proof that its files are intact.

Every version carries its labels, input contract, preprocessing, source checkpoint and measured
results here; the gate, the client and the backend read them instead of guessing.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from lifeloop.errors import ManifestMismatchError, RepositoryError

SCHEMA_VERSION = 1
MANIFEST_NAME = "manifest.json"


@dataclass(frozen=True, kw_only=True)
class FileEntry:
    path: str
    sha256: str
    size: int


@dataclass(frozen=True, kw_only=True)
class TensorInfo:
    name: str
    shape: tuple[int, ...]
    dtype: str = "FP32"
    layout: str = "NCHW"


@dataclass(frozen=True, kw_only=True)
class VersionDraft:
    """Everything a manifest records except what publishing decides (version, files, time)."""

    format: str
    labels: tuple[str, ...]
    input: TensorInfo
    output_name: str
    preprocessing: dict[str, Any]
    source: dict[str, Any] = field(default_factory=dict)
    parity: dict[str, Any] = field(default_factory=dict)
    evaluation: dict[str, Any] = field(default_factory=dict)
    tools: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True, kw_only=True)
class Manifest(VersionDraft):
    """A published version: its draft, and what publishing decided."""

    model: str
    version: int
    files: tuple[FileEntry, ...]
    created_at: str = ""
    schema_version: int = SCHEMA_VERSION

    def draft(self) -> VersionDraft:
        """What to publish this version again as, elsewhere or under another number."""
        return VersionDraft(**{f: getattr(self, f) for f in VersionDraft.__dataclass_fields__})

    def __post_init__(self) -> None:
        if self.version < 1:
            raise RepositoryError(f"manifest of {self.model!r}: version must be >= 1")
        if len(set(self.labels)) != len(self.labels):
            raise RepositoryError(f"manifest of {self.model!r}: labels must be unique")

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True) + "\n"

    @classmethod
    def from_json(cls, text: str, *, source: str = MANIFEST_NAME) -> Manifest:
        try:
            data = json.loads(text)
            if data.get("schema_version") != SCHEMA_VERSION:
                raise RepositoryError(
                    f"{source} has schema_version {data.get('schema_version')!r}; this lifeloop "
                    f"reads {SCHEMA_VERSION}: republish the version with this lifeloop"
                )
            data["files"] = tuple(FileEntry(**f) for f in data["files"])
            data["labels"] = tuple(data["labels"])
            data["input"] = TensorInfo(**{**data["input"], "shape": tuple(data["input"]["shape"])})
            return cls(**data)
        except (ValueError, KeyError, TypeError) as exc:
            raise RepositoryError(
                f"{source} is not a lifeloop manifest ({exc}); republish"
            ) from exc

    @classmethod
    def read(cls, version_dir: Path) -> Manifest:
        path = version_dir / MANIFEST_NAME
        if not path.is_file():
            raise RepositoryError(f"{path} is missing; publish versions with `lifeloop export`")
        return cls.from_json(path.read_text(), source=str(path))


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def describe_files(version_dir: Path, names: list[str]) -> tuple[FileEntry, ...]:
    return tuple(
        FileEntry(
            path=n, sha256=sha256_file(version_dir / n), size=os.path.getsize(version_dir / n)
        )
        for n in sorted(names)
    )


def verify(version_dir: Path) -> Manifest:
    """Check every file of a version against its manifest; raise naming the first difference."""
    manifest = Manifest.read(version_dir)
    for entry in manifest.files:
        path = version_dir / entry.path
        if not path.is_file():
            raise ManifestMismatchError(
                f"{path} is listed in the manifest but missing; republish this version",
                model=manifest.model,
                version=manifest.version,
            )
        size = path.stat().st_size
        digest = sha256_file(path)
        if size != entry.size or digest != entry.sha256:
            raise ManifestMismatchError(
                f"{path} does not match its manifest (sha256 {digest[:12]}…, {size} bytes; "
                f"manifest says {entry.sha256[:12]}…, {entry.size} bytes): the file was changed "
                "after publishing; republish it with `lifeloop export`",
                model=manifest.model,
                version=manifest.version,
            )
    return manifest
