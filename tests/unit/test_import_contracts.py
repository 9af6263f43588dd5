"""The import contracts of pyproject.toml hold, and they would catch the imports they forbid.

Each broken case copies src/lifeloop to a temporary folder, adds one forbidden import, and runs
lint-imports on the copy: the contract must then fail and name the import."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")


def lint_imports(src: Path, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(LINT_IMPORTS), "--no-cache", "--no-logo", str(ROOT / "pyproject.toml")],
        cwd=cwd,
        env={"PYTHONPATH": str(src), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_the_contracts_hold_on_the_tree() -> None:
    result = lint_imports(ROOT / "src", ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Contracts: 4 kept, 0 broken." in result.stdout


@pytest.mark.parametrize(
    ("module", "line", "contract", "named"),
    [
        # a lower layer reaching up: the data sets reading the repository's manifests
        (
            "datasets.py",
            "import lifeloop.repository.manifest",
            "Layers",
            "lifeloop.datasets -> lifeloop.repository.manifest",
        ),
        # a cycle inside a package: the pipeline already imports the format names
        (
            "export/formats.py",
            "import lifeloop.export.pipeline",
            "No import cycles",
            ".formats -> .pipeline",
        ),
        # the client pulling in torch
        ("client/_codec.py", "import torch", "no torch", "lifeloop.client._codec -> torch"),
        # another package's private module
        (
            "rollout/replicas.py",
            "import lifeloop.client._transport",
            "private",
            "lifeloop.rollout.replicas -> lifeloop.client._transport",
        ),
    ],
)
def test_a_forbidden_import_breaks_its_contract(
    tmp_path: Path, module: str, line: str, contract: str, named: str
) -> None:
    src = tmp_path / "src"
    shutil.copytree(
        ROOT / "src" / "lifeloop", src / "lifeloop", ignore=shutil.ignore_patterns("__pycache__")
    )
    target = src / "lifeloop" / module
    target.write_text(target.read_text() + f"\n{line}  # noqa\n")
    result = lint_imports(src, tmp_path)
    assert result.returncode != 0
    broken = [row for row in result.stdout.splitlines() if row.endswith("BROKEN")]
    assert len(broken) == 1 and contract in broken[0], result.stdout
    assert named in result.stdout


def test_importing_the_server_and_the_client_does_not_import_torch() -> None:
    result = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", "import lifeloop.serve, lifeloop.client"],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    imported = {row.rsplit("|", 1)[-1].strip() for row in result.stderr.splitlines() if "|" in row}
    assert {"lifeloop.serve.launcher", "lifeloop.client._sync"} <= imported  # the probe works
    heavy = sorted(m for m in imported if m.split(".")[0] in {"torch", "torchvision", "onnx"})
    assert heavy == [], heavy
