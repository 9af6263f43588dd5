"""A throwaway PostgreSQL server for the store tests: Debian's postgresql package (.ci/run
installs it), a fresh cluster in a temporary folder, trust authentication on 127.0.0.1 and a
free port, stopped at the end."""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from lifeloop.serve.launcher import free_port


class PostgresUnavailable(RuntimeError):
    pass


def _bin_dir() -> Path | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    return Path(found[-1]).parent if found else None


def _as_postgres(args: list[str]) -> list[str]:
    """initdb and postgres refuse to run as root; run them as the package's postgres user."""
    return ["runuser", "-u", "postgres", "--", *args] if os.geteuid() == 0 else args


class PostgresServer:
    """A running cluster that a test may stop and start again on the same port, as a
    restart or failover would."""

    def __init__(self, bin_dir: Path, data: Path, root: Path, options: str, port: int) -> None:
        self.bin_dir, self.data, self.root, self.options = bin_dir, data, root, options
        self.url = f"postgresql://postgres@127.0.0.1:{port}/postgres"

    def start(self) -> None:
        _run(
            _as_postgres(
                [
                    str(self.bin_dir / "pg_ctl"),
                    "-D",
                    str(self.data),
                    "-o",
                    self.options,
                    "-w",
                    "-l",
                    str(self.root / "log"),
                    "start",
                ]
            )
        )

    def stop(self) -> None:
        _run(
            _as_postgres([str(self.bin_dir / "pg_ctl"), "-D", str(self.data), "-m", "fast", "stop"])
        )


@contextmanager
def postgres_cluster() -> Iterator[PostgresServer]:
    """Yields a running, empty PostgreSQL server."""
    bin_dir = _bin_dir()
    if bin_dir is None:
        raise PostgresUnavailable(
            "no initdb under /usr/lib/postgresql: install Debian's postgresql (.ci/run does)"
        )
    root = Path(tempfile.mkdtemp(prefix="lifeloop-pg-"))
    data, sockets = root / "data", root / "sockets"
    sockets.mkdir()
    if os.geteuid() == 0:
        shutil.chown(root, "postgres")
        shutil.chown(sockets, "postgres")
    port = free_port()
    try:
        _run(
            _as_postgres(
                [str(bin_dir / "initdb"), "-D", str(data), "-A", "trust", "-U", "postgres"]
            )
        )
        options = f"-p {port} -k {sockets} -c listen_addresses=127.0.0.1 -c fsync=on"
        server = PostgresServer(bin_dir, data, root, options, port)
        server.start()
        try:
            yield server
        finally:
            with contextlib.suppress(PostgresUnavailable):  # a test may leave it stopped
                server.stop()
    finally:
        shutil.rmtree(root, ignore_errors=True)


@contextmanager
def postgres_server() -> Iterator[str]:
    """Yields a SQLAlchemy URL of a running, empty PostgreSQL server."""
    with postgres_cluster() as server:
        yield server.url


@contextmanager
def cluster_or_skip() -> Iterator[PostgresServer]:
    """postgres_cluster() for a fixture: where the server cannot start, the test skips with
    the reason, except in CI, where that is a failure."""
    import pytest

    try:
        with postgres_cluster() as server:
            yield server
    except PostgresUnavailable as exc:
        if os.environ.get("CI"):
            raise
        pytest.skip(f"PostgreSQL cannot be started here: {exc}")


def _run(command: list[str]) -> None:
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        tail = (result.stderr or result.stdout).strip().splitlines()[-3:]
        raise PostgresUnavailable(f"`{Path(command[-1]).name}` failed: {tail}")
