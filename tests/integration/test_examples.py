"""Every code example in the README and docs/ is a file under examples/, shown verbatim and run
here against a real tritonserver; every `lifeloop` command the docs show exists, with the
options they give it.

A page shows an example as `<!-- example: examples/NAME.py -->` right before a ```python block
holding the whole file. The servers come from the fixtures the other integration tests use:
the image ensemble's (test_image_ensemble.py) and the learning loop's router (test_loop.py)."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import typer

from lifeloop.cli import app
from lifeloop.client import LifeloopClient
from lifeloop.retrain import ImageFolder, TrainResult
from lifeloop.serve import TritonServer
from lifeloop.store import Store
from tests.conftest import publish_trained
from tests.integration import test_image_ensemble as image_tests
from tests.integration import test_loop as loop_tests

ROOT = Path(__file__).resolve().parents[2]
PAGES = [ROOT / "README.md", ROOT / "CONTRIBUTING.md", *sorted((ROOT / "docs").glob("*.md"))]
EXAMPLES = sorted((ROOT / "examples").glob("*.py"))

# The servers, shared with the modules that define them (each module gets its own instance).
image_repo = image_tests.image_repo
image_server = image_tests.image_server
loop_repo = loop_tests.loop_repo
loop_server = loop_tests.loop_server

FENCE = re.compile(r"^```(\w*)\n(.*?)^```$", re.S | re.M)
MARK = re.compile(r"<!-- example: (\S+) -->\n\Z")
# A block that shows markdown itself (````markdown ... ````) holds no example of its own.
QUOTED = re.compile(r"^````.*?^````$", re.S | re.M)
# `lifeloop` as a command: at a line's start, after an env assignment, a `$(`, a pipe or `;`,
# or as what `docker compose run --rm`, `kubectl exec ... --` or `python -m` runs.
INVOCATION = re.compile(
    r"(?:^|[;&|()]|\s--rm|\s--|\s-m|^(?:[A-Z_]+=\S+\s+)+)\s*lifeloop\s+([^;&|()#\n]*)", re.M
)
INLINE = re.compile(r"`lifeloop ([a-z][\w-]*)(?: ([a-z][\w-]*))?")


def blocks(page: Path) -> list[tuple[str, str, str]]:
    """(language, code, the text before it) for each fenced block of a page."""
    text = QUOTED.sub("", page.read_text())
    return [(m[1], m[2], text[: m.start()]) for m in FENCE.finditer(text)]


def shown(example: Path) -> list[tuple[Path, str]]:
    name = example.relative_to(ROOT).as_posix()
    found = []
    for page in PAGES:
        for lang, code, before in blocks(page):
            mark = MARK.search(before)
            if lang == "python" and mark and mark[1] == name:
                found.append((page, code))
    return found


@pytest.mark.parametrize("example", EXAMPLES, ids=lambda p: p.name)
def test_example_is_shown_verbatim_in_the_docs(example: Path) -> None:
    places = shown(example)
    assert places, f"no page shows {example.name}: add <!-- example: examples/{example.name} -->"
    for page, code in places:
        assert code == example.read_text(), f"{page.name} shows an outdated {example.name}"


def test_every_python_block_in_the_docs_is_a_tested_example() -> None:
    for page in PAGES:
        for lang, _, before in blocks(page):
            if lang != "python":
                continue
            mark = MARK.search(before)
            where = f"{page.relative_to(ROOT)} after {before.strip().splitlines()[-1]!r}"
            assert mark, f"a python block in {where} is not an example under examples/"
            assert (ROOT / mark[1]).is_file(), f"{where} names a missing {mark[1]}"


def is_group(command: Any) -> bool:
    return hasattr(command, "commands")  # Typer's own click: no isinstance(click.Group)


def resolve(words: list[str]) -> tuple[Any, list[str]]:
    """The lifeloop command `words` start with, and the words after its name."""
    command: Any = typer.main.get_command(app)
    while words and is_group(command) and words[0] in command.commands:
        command, words = command.commands[words[0]], words[1:]
    return command, words


def shell_commands() -> list[tuple[str, str]]:
    found = []
    for page in PAGES:
        for lang, code, _ in blocks(page):
            if lang in ("bash", "sh", "shell"):
                joined = code.replace("\\\n", " ")
                found += [(page.name, m[1]) for m in INVOCATION.finditer(joined)]
    return found


def test_shell_blocks_run_real_lifeloop_commands_with_real_options() -> None:
    commands = shell_commands()
    assert len(commands) > 30  # the parser still finds them
    for page, line in commands:
        command, rest = resolve(shlex.split(line, comments=True))
        assert not is_group(command), f"{page}: `lifeloop {line}` has no command"
        known = {"--help"} | {o for p in command.params for o in (*p.opts, *p.secondary_opts)}
        for word in rest:
            assert not word.startswith("["), f"{page}: `lifeloop {line}` does not run as written"
            if word.startswith("-"):
                option = word.split("=", 1)[0]
                assert option in known, f"{page}: `lifeloop {line}`: no option {option}"


def test_commands_named_in_prose_exist() -> None:
    for page in PAGES:
        for first, second in INLINE.findall(page.read_text()):
            words = [first, second] if second else [first]
            command, _ = resolve(words)
            named = f"lifeloop {first}"
            assert command.name != "lifeloop", f"{page.name}: `{named}` is no command"
            if is_group(command):
                assert second in command.commands, f"{page.name}: `{named} {second}` is no command"


LINK = re.compile(r"\]\(([^)\s]+)\)")


def anchors(page: Path) -> set[str]:
    """GitHub's anchors for a page's headings."""
    text = QUOTED.sub("", page.read_text())
    text = FENCE.sub("", text)
    headings = re.findall(r"^#+ (.+)$", text, re.M)
    return {re.sub(r"[^\w\- ]", "", h.strip().lower()).replace(" ", "-") for h in headings}


def test_links_between_pages_resolve() -> None:
    for page in PAGES:
        for target in LINK.findall(page.read_text()):
            if re.match(r"[a-z]+://", target):
                continue
            path, _, anchor = target.partition("#")
            linked = (page.parent / path).resolve() if path else page
            assert linked.exists(), f"{page.name} links to a missing {target}"
            if anchor:
                assert anchor in anchors(linked), f"{page.name} links to a missing {target}"


def run_example(name: str, *args: str, cwd: Path | None = None, **env: str) -> str:
    """Run examples/NAME with this project's interpreter; its stdout."""
    environment = {
        k: v for k, v in os.environ.items() if k not in ("LIFELOOP_URL", "LIFELOOP_MODEL")
    }
    done = subprocess.run(
        [sys.executable, str(ROOT / "examples" / name), *args],
        cwd=cwd or ROOT,
        env=environment | env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, f"{name} exited {done.returncode}:\n{done.stderr[-3000:]}"
    return done.stdout


def sample_paths(digits: ImageFolder, labels: tuple[str, ...]) -> list[str]:
    """The first image of each label, as the demo's folder holds them."""
    return [
        str(next(s.path for s in digits.samples if digits.labels[s.label] == x)) for x in labels
    ]


@pytest.fixture
def demo_folder(tmp_path: Path, digits: ImageFolder) -> Path:
    """A working folder where the examples' default images exist: runs/demo/data."""
    (tmp_path / "runs" / "demo").mkdir(parents=True)
    (tmp_path / "runs" / "demo" / "data").symlink_to(digits.root)
    return tmp_path


def top1(server: TritonServer, model: str, images: list[str]) -> list[tuple[str, int]]:
    with LifeloopClient(server.grpc_url, model=model) as client:
        return [(a.label, a.version) for a in client.classify(images, top_k=1)]


def test_classify_prints_each_images_top_3_and_version(image_server, digits) -> None:
    images = sample_paths(digits, ("0", "4", "9"))
    out = run_example(
        "classify.py", f"grpc://{image_server.grpc_url}", *images, LIFELOOP_MODEL="digits"
    )
    lines = out.splitlines()
    assert len(lines) == len(images)
    for line, image, (label, version) in zip(
        lines, images, top1(image_server, "digits", images), strict=True
    ):
        assert line.startswith(f"{image}: {label} (top 3: {label} ")
        assert line.endswith(f") from version {version}")


def test_classify_async_reads_the_url_from_the_environment(image_server, demo_folder) -> None:
    out = run_example(
        "classify_async.py",
        cwd=demo_folder,
        LIFELOOP_URL=f"http://{image_server.http_url}",
        LIFELOOP_MODEL="digits",
    )
    defaults = ["runs/demo/data/3/0003.png", "runs/demo/data/7/0007.png"]
    expected = top1(image_server, "digits", [str(demo_folder / p) for p in defaults])
    assert out.splitlines() == [
        f"{image}: {label} from version {version}"
        for image, (label, version) in zip(defaults, expected, strict=True)
    ]


def test_tritonclient_image_sends_encoded_images_to_the_ensemble(image_server, digits) -> None:
    images = sample_paths(digits, ("2", "5"))
    out = run_example(
        "tritonclient_image.py", image_server.grpc_url, *images, LIFELOOP_MODEL="digits"
    )
    lines = out.splitlines()
    assert len(lines) == len(images)
    for line, image, (label, _) in zip(
        lines, images, top1(image_server, "digits_image", images), strict=True
    ):
        assert re.fullmatch(
            rf"{re.escape(image)}: {label} \(top 3: {label} [\d.]+, \S+ [\d.]+, \S+ [\d.]+\)", line
        )


def test_feedback_labels_what_the_router_answered(loop_server, loop_repo, digits) -> None:
    images = sample_paths(digits, ("8", "9"))
    out = run_example("feedback.py", f"grpc://{loop_server.grpc_url}", *images)
    ids = re.findall(r"from version 1, id (\S+)$", out, re.M)
    assert len(ids) == 2 and out.splitlines()[-1] == "2 labels stored: 8, 9"
    with Store.for_repository(loop_repo) as store:
        labelled = {row.request_id: row.label for row in store.labelled("digits")}
    assert [labelled.get(i) for i in ids] == ["8", "9"]


def test_serve_in_process_starts_classifies_and_stops(
    tmp_path: Path, trained: TrainResult, digits, image_server
) -> None:
    repository = tmp_path / "model_repository"
    publish_trained(trained.checkpoint, repository, "classifier")
    images = sample_paths(digits, ("1", "6"))
    out = run_example("serve_in_process.py", str(repository), *images)
    lines = out.splitlines()
    assert re.fullmatch(
        r"tritonserver ready: http 127\.0\.0\.1:\d+, grpc 127\.0\.0\.1:\d+", lines[0]
    )
    # The same checkpoint serves as `digits` on the image server.
    expected = [
        f"{image}: {label} from version 1"
        for image, (label, _) in zip(images, top1(image_server, "digits", images), strict=True)
    ]
    assert lines[1:-1] == expected
    assert lines[-1].startswith("tritonserver stopped; its log: ")
    assert Path(lines[-1].split(": ", 1)[1]).is_file()
