"""The deployment files' tests: what they all read."""

import tomllib
from pathlib import Path

ROOT = Path(__file__).parents[2]
PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
DOCKERFILE = ROOT / "deploy" / "docker" / "Dockerfile"
