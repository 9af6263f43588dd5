"""CliRunner tests of the commands that need no server; the rest are in integration/test_cli.py."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
import typer
from typer.core import TyperGroup
from typer.testing import CliRunner

from lifeloop.cli import app
from lifeloop.export import build

runner = CliRunner()


def invoke(*args: str):
    return runner.invoke(app, [str(a) for a in args])


def one_line_error(result) -> str:
    assert result.exit_code == 1, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.output
    return lines[0]


# Every command, written out rather than read from the app, so that a command added without a
# line here fails test_help_lists_every_command.
COMMANDS = {
    "": {
        "bench",
        "bench-drift",
        "bench-learning",
        "canary",
        "candidate",
        "cascade",
        "classify",
        "demo",
        "digits",
        "drift",
        "export",
        "feedback",
        "history",
        "image",
        "loadtest",
        "promote",
        "prune",
        "publish",
        "quickstart",
        "retrain",
        "rollback",
        "router",
        "serve",
        "shadow",
        "soak",
        "store",
        "train",
        "tune",
        "versions",
    },
    "cascade": {"calibrate", "off", "on"},
    "image": {"init"},
    "router": {"init"},
    "store": {"new-key", "purge"},
}


def help_commands(*group: str) -> set[str]:
    """The names in the Commands panel of `lifeloop [GROUP] --help`."""
    result = invoke(*group, "--help")
    assert result.exit_code == 0, result.output
    panel = result.output.partition("─ Commands ")[2]
    assert panel, result.output
    # A name starts a row at the panel's edge; a wrapped description is indented further.
    return set(re.findall(r"^│ (\S+)", panel, re.MULTILINE))


def test_help_lists_every_command() -> None:
    for group, names in COMMANDS.items():
        assert help_commands(*group.split()) == names, " ".join(["lifeloop", *group.split()])
    # --help leaves out hidden commands: the app itself must hold none that the list lacks.
    root = typer.main.get_command(app)
    assert isinstance(root, TyperGroup)
    registered = {"": set(root.commands)} | {
        name: set(command.commands)
        for name, command in root.commands.items()
        if isinstance(command, TyperGroup)
    }
    assert registered == COMMANDS


def test_export_publishes_and_versions_lists_it(trained, tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    result = invoke(
        "export", "--checkpoint", trained.path, "--repository", repo, "--model", "digits"
    )
    assert result.exit_code == 0, result.output
    assert "parity passed" in result.output and "published digits version 1" in result.output
    listed = invoke("versions", "--repository", repo, "--model", "digits")
    assert listed.exit_code == 0
    assert "│ 1 " in listed.output and "100.0%" in listed.output
    manifest = json.loads((repo / "digits" / "1" / "manifest.json").read_text())
    assert manifest["evaluation"]["holdout_accuracy"] == trained.holdout_accuracy


def test_export_to_an_existing_version_number_fails_and_writes_nothing(
    trained, tmp_path: Path
) -> None:
    repo = tmp_path / "repo"
    assert (
        invoke(
            "export", "--checkpoint", trained.path, "--repository", repo, "--version", 4
        ).exit_code
        == 0
    )
    line = one_line_error(
        invoke("export", "--checkpoint", trained.path, "--repository", repo, "--version", 4)
    )
    assert "version 4 of model 'classifier' already exists" in line
    assert sorted(p.name for p in (repo / "classifier").iterdir() if p.is_dir()) == ["4"]


@pytest.mark.parametrize(
    ("setup", "expected"),
    [
        ("missing", "does not exist; pass the file"),
        ("corrupt", "cannot be read"),
        ("unknown_arch", "unknown architecture 'resnet1000'"),
        (
            "wrong_classes",
            "do not fit architecture 'resnet18' with 3 classes (it holds 10 classes)",
        ),
        ("repo_is_file", "is a file; pass a folder"),
    ],
)
def test_export_failures_are_one_line_and_leave_the_repository_untouched(
    setup: str, expected: str, tmp_path: Path
) -> None:
    checkpoint = tmp_path / "model.pt"
    repo = tmp_path / "repo"
    args = ["--arch", "resnet18", "--num-classes", "10"]
    if setup == "corrupt":
        checkpoint.write_bytes(b"PK\x03\x04 truncated")
    elif setup != "missing":
        torch.save(build("resnet18", 10).state_dict(), checkpoint)
    if setup == "unknown_arch":
        args = ["--arch", "resnet1000", "--num-classes", "10"]
    if setup == "wrong_classes":
        args = ["--arch", "resnet18", "--num-classes", "3"]
    if setup == "repo_is_file":
        repo.write_text("a file")
    line = one_line_error(
        invoke(
            "export", "--checkpoint", checkpoint, "--repository", repo, *args, "--input-size", 32
        )
    )
    assert expected in line
    assert (
        repo.is_file() if setup == "repo_is_file" else not repo.exists() or not any(repo.iterdir())
    )


def test_train_and_digits_commands(tmp_path: Path) -> None:
    data = tmp_path / "digits"
    result = invoke("digits", "--out", data)
    assert result.exit_code == 0 and "1797 images in 10 classes" in result.output
    result = invoke("train", "--data", data, "--out", tmp_path / "m.pt", "--epochs", 2)
    assert result.exit_code == 0, result.output
    accuracy = float(result.output.split("held-out accuracy ")[1].split(";")[0])
    assert accuracy > 0.5 and (tmp_path / "m.pt").is_file()


def test_train_names_a_non_image_file(digits, tmp_path: Path) -> None:
    for label in ("0", "1"):
        (tmp_path / label).mkdir()
        (tmp_path / label / "a.png").write_bytes(digits.samples[0].path.read_bytes())
    (tmp_path / "1" / "readme.md").write_text("#")
    line = one_line_error(invoke("train", "--data", tmp_path, "--out", tmp_path / "m.pt"))
    assert "readme.md" in line and "move them out" in line
    assert not (tmp_path / "m.pt").exists()


def test_serve_names_a_missing_repository(tmp_path: Path) -> None:
    line = one_line_error(invoke("serve", "--repository", tmp_path / "nope"))
    assert "is not a folder (it does not exist)" in line


def test_classify_against_no_server_fails_in_one_line(digits) -> None:
    line = one_line_error(invoke("classify", "--url", "127.0.0.1:1", digits.samples[0].path))
    assert "cannot reach Triton at 127.0.0.1:1" in line


def test_store_new_key_prints_a_fernet_key_that_encrypts_kept_inputs(tmp_path: Path) -> None:
    import numpy as np

    from lifeloop.store import blobs

    result = invoke("store", "new-key")
    assert result.exit_code == 0, result.output
    key = result.output.strip()
    fernet = blobs.cipher(key)
    path = blobs.write_batch(
        blobs.new_path(tmp_path, encrypted=True), np.ones((2, 3)), fernet=fernet
    )
    assert path.name.endswith(".npy.fernet")
    assert blobs.load(str(path), 1, fernet=fernet).tolist() == [1.0, 1.0, 1.0]
    assert invoke("store", "new-key").output.strip() != key  # a new one each time


def test_store_purge_refuses_a_window_without_a_unit(tmp_path: Path) -> None:
    line = one_line_error(invoke("store", "purge", "--older-than", "30", "--repository", tmp_path))
    assert "--older-than takes a number and a unit" in line
