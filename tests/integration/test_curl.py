"""The curl command docs/serving.md shows, run as written with the real curl (/usr/bin/curl)
against the image ensemble's test server: a base64 PNG over Triton's JSON API comes back with
its digit's class."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

from lifeloop.client import LifeloopClient
from lifeloop.retrain import ImageFolder
from lifeloop.serve import TritonServer
from tests.integration import test_image_ensemble as image_tests
from tests.integration.debian import missing

ROOT = Path(__file__).resolve().parents[2]
PAGE = ROOT / "docs" / "serving.md"
CURL = "/usr/bin/curl"
PATH = "/usr/bin:/bin"  # so that the command's `curl` is the real one, and `base64` coreutils'

image_repo = image_tests.image_repo
image_server = image_tests.image_server


def documented_command() -> str:
    """The one bash block of the page that runs curl."""
    blocks = re.findall(r"^```bash\n(.*?)^```$", PAGE.read_text(), re.S | re.M)
    [command] = [b for b in blocks if re.search(r"\bcurl\b", b)]
    return command


def test_the_documented_curl_command_classifies_a_png(
    image_server: TritonServer, digits: ImageFolder, tmp_path: Path
) -> None:
    if shutil.which("curl", path=PATH) != CURL:
        missing(f"needs the real curl at {CURL}: install Debian's curl (.ci/run does)")
    command = documented_command()
    # The server's address and the ensemble's name here; the image path and all else as shown.
    assert "http://localhost:8000/" in command and "/classifier_image/" in command
    command = command.replace("http://localhost:8000/", f"http://{image_server.http_url}/")
    command = command.replace("/classifier_image/", "/digits_image/")
    (tmp_path / "runs" / "demo").mkdir(parents=True)
    (tmp_path / "runs" / "demo" / "data").symlink_to(digits.root)
    image = tmp_path / re.findall(r"runs/demo/data/\S+\.png", command)[0]

    done = subprocess.run(
        ["/bin/bash", "-euo", "pipefail", "-c", command],
        cwd=tmp_path,
        env={"PATH": PATH},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, f"exit {done.returncode}: {done.stdout}{done.stderr}"
    answer = json.loads(done.stdout)
    assert answer["model_name"] == "digits_image"
    [logits] = answer["outputs"]
    assert logits["name"] == "logits" and logits["shape"] == [1, 3]
    top = [entry.split(":", 2) for entry in logits["data"]]
    scores = [float(score) for score, _, _ in top]
    assert scores == sorted(scores, reverse=True)
    # The folder names the digit; the same file sent as raw bytes gets the same answer.
    assert top[0][2] == image.parent.name
    with LifeloopClient(image_server.grpc_url, model="digits_image") as client:
        [raw] = client.classify([image], top_k=3)
    assert [label for _, _, label in top] == list(raw.labels)
