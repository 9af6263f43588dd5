"""Debian packages a test needs, installed when missing. Outside CI an install that cannot
happen skips the test with the reason; in CI it fails it."""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest


def ensure_tool(binary: str, package: str, *, recommends: bool = True) -> str:
    """The path of `binary`, after `apt-get install package` when it is not on PATH."""
    path = shutil.which(binary)
    if path is None:
        extra = "" if recommends else "--no-install-recommends "
        attempt = subprocess.run(
            "apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q "
            f"{extra}{package}",
            shell=True,
            capture_output=True,
            text=True,
            timeout=900,
        )
        path = shutil.which(binary)
        if path is None:
            reason = f"{binary} could not be installed: {attempt.stderr.strip()[-300:]}"
            if os.environ.get("CI"):
                pytest.fail(reason)
            pytest.skip(reason)
    return path
