"""Debian packages a test needs. `.ci/run` installs them; a test only looks for them. Where
one is missing a test skips with the reason, except in CI, where that is a failure."""

from __future__ import annotations

import os
import shutil
from typing import NoReturn

import pytest


def missing(reason: str) -> NoReturn:
    """Skip with `reason`; in CI (CI set), fail instead, so that no skip hides a test."""
    if os.environ.get("CI"):
        pytest.fail(f"{reason} (CI: .ci/run should have installed it)")
    pytest.skip(reason)


def require_tool(binary: str, package: str) -> str:
    """The path of `binary`, which Debian's `package` provides."""
    path = shutil.which(binary)
    if path is None:
        missing(f"{binary} is not on PATH: install Debian's {package} (.ci/run does)")
    return path
