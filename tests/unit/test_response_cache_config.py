"""Triton's response cache as lifeloop writes it: the model config's switch, round-tripped,
the server's local cache in its argv, and `lifeloop export --response-cache` on an existing
model. Its behaviour on the real server is tests/integration/test_response_cache.py."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from lifeloop.cli import app
from lifeloop.errors import ServerError
from lifeloop.repository import read_config
from lifeloop.repository.config import classifier_config, parse, render
from lifeloop.serve import ServerConfig
from lifeloop.serve.runtime import Runtime


def test_the_switch_renders_as_tritons_and_parses_back() -> None:
    config = classifier_config(
        "c", input_name="input", input_shape=(3, 8, 8), output_name="o", response_cache=True
    )
    text = render(config)
    assert "response_cache {\n  enable: true\n}" in text
    assert parse(text) == config and parse(text).response_cache
    off = classifier_config("c", input_name="input", input_shape=(3, 8, 8), output_name="o")
    assert "response_cache" not in render(off) and not parse(render(off)).response_cache


def test_the_server_gets_a_local_cache_of_the_size_asked(tmp_path: Path) -> None:
    runtime = Runtime(root=tmp_path, lib_dir=tmp_path)
    argv = ServerConfig(repository=tmp_path, cache_mb=16).argv(runtime)
    assert "--cache-config=local,size=16777216" in argv
    assert not any(
        a.startswith("--cache-config") for a in ServerConfig(repository=tmp_path).argv(runtime)
    )
    with pytest.raises(ServerError, match="cache_mb must be >= 0 MiB"):
        ServerConfig(repository=tmp_path, cache_mb=-1)


def test_export_turns_the_cache_on_and_off_in_an_existing_config(trained, tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    base = ["export", "--checkpoint", str(trained.path), "--repository", str(repo), "-m", "d"]
    runner = CliRunner()
    for flags, expected in (
        ([], False),
        (["--response-cache"], True),
        ([], True),
        (["--no-response-cache"], False),
    ):
        done = runner.invoke(app, [*base, *flags])
        assert done.exit_code == 0, done.output
        config = read_config(repo / "d")
        assert config is not None and config.response_cache is expected, flags
