"""Starting and stopping tritonserver: poll-mode reload, and the start-up failures users hit."""

from __future__ import annotations

import socket
import time
from pathlib import Path

import pytest

from lifeloop.client import LifeloopClient
from lifeloop.serve import ControlMode, ServerError, TritonServer
from tests.conftest import publish_trained
from tests.integration.conftest import server_config


def test_poll_mode_picks_up_a_new_version_without_a_load_call(
    tmp_path: Path, trained, served_held_out
) -> None:
    repo = tmp_path / "repo"
    publish_trained(trained.checkpoint, repo)
    config = server_config(repo, control_mode=ControlMode.POLL, poll_secs=1)
    with TritonServer(config) as server, LifeloopClient(server.grpc_url) as client:
        assert client.classify([served_held_out[0][0]])[0].version == 1
        publish_trained(trained.checkpoint, repo)  # the rename is all poll mode needs
        deadline = time.monotonic() + 30
        version = 1
        while version != 2 and time.monotonic() < deadline:
            version = client.classify([served_held_out[0][0]])[0].version
            time.sleep(0.2)
        assert version == 2


def test_busy_port_is_named_before_starting(tmp_path: Path) -> None:
    (tmp_path / "repo").mkdir()
    config = server_config(tmp_path / "repo")
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", config.grpc_port))
        holder.listen()
        with pytest.raises(
            ServerError,
            match=f"grpc port {config.grpc_port} is in use; pick another with --grpc-port",
        ):
            TritonServer(config).start()


def test_missing_repository_is_named(tmp_path: Path) -> None:
    with pytest.raises(
        ServerError, match="model repository .*missing is not a folder .*does not exist"
    ):
        TritonServer(server_config(tmp_path / "missing")).start()


def test_server_that_exits_during_start_up_shows_the_log_lines_that_say_why(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    (repo / "broken").mkdir(parents=True)
    (repo / "broken" / "config.pbtxt").write_text("name: 'broken'\nmax_batch_size: lots\n")
    server = TritonServer(server_config(repo))
    with pytest.raises(
        ServerError, match=r"exited during start-up with code 1(.|\n)*failed to read text proto"
    ):
        server.start()
    assert not server.is_running()


OWNER = """
import sys, time
from pathlib import Path
from lifeloop.serve import ServerConfig, TritonServer
server = TritonServer(ServerConfig.on_free_ports(Path(sys.argv[1]), log_file=Path(sys.argv[2])))
server.start()
print(server.process.pid, flush=True)
time.sleep(600)
"""


def test_server_stops_when_its_owner_is_killed(repository: Path, tmp_path: Path) -> None:
    import os
    import signal
    import subprocess
    import sys

    owner = subprocess.Popen(
        [sys.executable, "-c", OWNER, str(repository), str(tmp_path / "owner.log")],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        pid = int(owner.stdout.readline())
        os.kill(owner.pid, signal.SIGKILL)  # no __exit__, no stop(): only the kernel can tell
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and _alive(pid):
            time.sleep(0.2)
        assert not _alive(pid)
    finally:
        owner.kill()
        owner.wait()


def _alive(pid: int) -> bool:
    """Running, as opposed to gone or a zombie waiting for init to reap it."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False
