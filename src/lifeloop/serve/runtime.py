"""Lay out a runnable tritonserver from the nvidia-pytriton wheel (DESIGN.md's recipe).

The wheel carries the binary, the python backend and one python-backend stub per Python
version. We copy bin/, backends/ and caches/ into a runtime folder, add the stub matching the
running Python, and install lifeloop's own Python-based backends (`onnxruntime`) beside them.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import subprocess
import sys
import sysconfig
from dataclasses import dataclass
from importlib import metadata, resources
from pathlib import Path

from lifeloop.errors import ServerError

PROJECT_BACKENDS = ("onnxruntime",)


@dataclass(frozen=True)
class Runtime:
    root: Path
    lib_dir: Path

    @property
    def tritonserver(self) -> Path:
        return self.root / "bin" / "tritonserver"

    @property
    def backends(self) -> Path:
        return self.root / "backends"

    @property
    def caches(self) -> Path:
        return self.root / "caches"

    def env(self, base: dict[str, str] | None = None, python: Path | None = None) -> dict[str, str]:
        """The server's environment. The stub embeds Python with an isolated config: it ignores
        PYTHONPATH and finds site-packages through the first `python3` on PATH, so the bin/ of
        `python` (default: this venv's) goes first. And it embeds whichever
        libpython<major.minor>.so.1.0 the dynamic loader finds first: the interpreter's own
        goes first, where it has one, so that the runtime matches its standard library (a
        distribution's 3.11.2 under pyenv's 3.11.7 stdlib fails to import `ssl`, and with it
        psycopg)."""
        env = dict(os.environ if base is None else base)
        bin_dir = Path(python or sys.executable).parent
        env["PATH"] = os.pathsep.join([str(bin_dir), env.get("PATH", "")])
        own = libpython_dir(python)
        env["LD_LIBRARY_PATH"] = os.pathsep.join(
            p for p in (str(self.lib_dir), str(own or ""), env.get("LD_LIBRARY_PATH", "")) if p
        )
        return env


def wheel_root() -> tuple[Path, Path]:
    """(pytriton/tritonserver, nvidia_pytriton.libs) inside site-packages."""
    try:
        import pytriton
    except ImportError as exc:
        raise ServerError(
            "nvidia-pytriton is not installed; it carries tritonserver: run `make venv`"
        ) from exc
    package = Path(pytriton.__file__).parent
    server = package / "tritonserver"
    libs = package.parent / "nvidia_pytriton.libs"
    if not (server / "bin" / "tritonserver").is_file():
        raise ServerError(f"{server}/bin/tritonserver is missing; reinstall nvidia-pytriton")
    return server, libs


def default_runtime_dir() -> Path:
    if env := os.environ.get("LIFELOOP_RUNTIME_DIR"):
        return Path(env)
    version = metadata.version("nvidia-pytriton")
    cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
    return (
        cache / "lifeloop" / f"triton-{version}-py{sys.version_info.major}.{sys.version_info.minor}"
    )


def prepare_runtime(root: Path | None = None) -> Runtime:
    """Build (once) and refresh (always, cheaply) the runtime folder; safe across processes."""
    root = Path(root or default_runtime_dir())
    server, libs = wheel_root()
    root.parent.mkdir(parents=True, exist_ok=True)
    with open(root.parent / f".{root.name}.lock", "a+") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (root / ".complete").is_file():
            _build(root, server)
        for name in PROJECT_BACKENDS:
            source = resources.files("lifeloop.serve") / "backends" / name / "model.py"
            target = root / "backends" / name / "model.py"
            target.parent.mkdir(parents=True, exist_ok=True)
            text = source.read_text()
            if not target.is_file() or target.read_text() != text:
                target.write_text(text)
    runtime = Runtime(root, libs)
    check_stub_libraries(runtime)
    return runtime


def _build(root: Path, server: Path) -> None:
    shutil.rmtree(root, ignore_errors=True)
    tmp = root.with_name(root.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for part in ("bin", "backends", "caches"):
        shutil.copytree(server / part, tmp / part)
    py = f"{sys.version_info.major}.{sys.version_info.minor}"
    stub = server / "python_backend_stubs" / py / "triton_python_backend_stub"
    if not stub.is_file():
        have = sorted(p.name for p in (server / "python_backend_stubs").iterdir())
        raise ServerError(
            f"nvidia-pytriton has no python-backend stub for Python {py} "
            f"(it has {', '.join(have)}); build the venv with one of those Pythons"
        )
    shutil.copy2(stub, tmp / "backends" / "python" / "triton_python_backend_stub")
    (tmp / ".complete").write_text("ok\n")
    os.rename(tmp, root)


def libpython_dir(python: Path | None = None) -> Path | None:
    """The folder of `python`'s own shared libpython (default: this interpreter's), or None
    for a statically linked Python."""
    if python is None or Path(python).resolve() == Path(sys.executable).resolve():
        libdir, name = sysconfig.get_config_var("LIBDIR"), sysconfig.get_config_var("LDLIBRARY")
    else:
        try:
            done = subprocess.run(
                [
                    str(python),
                    "-c",
                    "import sysconfig as s; print(s.get_config_var('LIBDIR'));"
                    "print(s.get_config_var('LDLIBRARY'))",
                ],
                capture_output=True,
                text=True,
                timeout=30,
            )
            libdir, name = done.stdout.split()[:2]
        except (OSError, ValueError, subprocess.TimeoutExpired):
            return None
    if not libdir or not name or not str(name).endswith(".so"):
        return None
    return Path(libdir) if (Path(libdir) / f"{name}.1.0").exists() else None


def check_stub_libraries(runtime: Runtime) -> None:
    """The stub links against libpython<major.minor>.so.1.0. When the dynamic loader cannot
    find it, every Python model would sit in UNAVAILABLE; say so now, with the fix."""
    stub = runtime.backends / "python" / "triton_python_backend_stub"
    try:
        out = subprocess.run(
            ["ldd", str(stub)], capture_output=True, text=True, env=runtime.env(), timeout=30
        ).stdout
    except (OSError, subprocess.TimeoutExpired):
        return  # no ldd: let tritonserver report it
    missing = [line.split()[0] for line in out.splitlines() if "not found" in line]
    if missing:
        py = f"{sys.version_info.major}.{sys.version_info.minor}"
        raise ServerError(
            f"the python backend stub cannot find {', '.join(missing)}; install your "
            f"distribution's libpython package (Debian/Ubuntu: apt-get install libpython{py})"
        )


def check_python(python: Path) -> None:
    """`python` can host the stub: it exists and is this Python's major.minor (the stub in the
    runtime folder is built for that one)."""
    ours = f"{sys.version_info.major}.{sys.version_info.minor}"
    try:
        done = subprocess.run(
            [str(python), "-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
            capture_output=True,
            text=True,
            timeout=30,
        )
    except OSError as exc:
        raise ServerError(
            f"cannot run the models' Python {python} ({exc}); point ServerConfig.python at a "
            f"Python {ours} venv's bin/python3"
        ) from exc
    theirs = done.stdout.strip()
    if done.returncode != 0 or theirs != ours:
        raise ServerError(
            f"the models' Python {python} is {theirs or 'not runnable'}, but the python "
            f"backend stub here is built for {ours}; use a Python {ours} venv"
        )
