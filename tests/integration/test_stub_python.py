"""The python backend's stub embeds the venv's own Python: a model inside tritonserver runs
the same release as the standard library it imports, so multiprocessing works there.

With the distribution's libpython (3.11.2) under pyenv's 3.11.7 standard library, starting
multiprocessing's resource tracker failed with `AttributeError: '_thread.RLock' object has
no attribute '_recursion_count'`, and `ssl` (with it psycopg) would not import."""

from __future__ import annotations

import json
import sys
import sysconfig
from pathlib import Path

import numpy as np
import tritonclient.grpc as grpcclient

from lifeloop.repository import config as cfg
from lifeloop.repository.publish import write_python_model
from lifeloop.serve import TritonServer
from lifeloop.serve.runtime import libpython_dir
from tests.integration.conftest import server_config

PROBE = "python_probe"
MODEL_PY = """
import json
import sys
import sysconfig

import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        from multiprocessing import resource_tracker

        resource_tracker.ensure_running()
        with open("/proc/self/maps") as maps:
            libpython = sorted({line.split()[-1] for line in maps if "/libpython" in line})
        self.answer = json.dumps(
            {
                "version": sys.version,
                "stdlib": sysconfig.get_paths()["stdlib"],
                "libpython": libpython,
            }
        )

    def execute(self, requests):
        answer = np.array([self.answer.encode()], dtype=np.object_)
        return [pb_utils.InferenceResponse([pb_utils.Tensor("ANSWER", answer)]) for _ in requests]
"""


def probe_repository(root: Path) -> Path:
    repository = root / "model_repository"
    source = root / "model.py"
    source.write_text(MODEL_PY)
    config = cfg.ModelConfig(
        name=PROBE,
        backend="python",
        max_batch_size=0,
        dynamic_batching=None,
        inputs=(cfg.TensorSpec(name="QUERY", data_type=cfg.DataType.INT32, dims=(1,)),),
        outputs=(cfg.TensorSpec(name="ANSWER", data_type=cfg.DataType.STRING, dims=(1,)),),
        version_policy=cfg.VersionPolicy(latest=1),
    )
    write_python_model(repository, config, source)
    return repository


def test_a_python_model_runs_the_venvs_python_and_starts_the_resource_tracker(
    tmp_path: Path,
) -> None:
    # The server is ready only once every model loaded (strict readiness): a model whose
    # initialize() raised fails the start, with the log's last lines in the error.
    with (
        TritonServer(server_config(probe_repository(tmp_path))) as server,
        grpcclient.InferenceServerClient(server.grpc_url) as client,
    ):
        query = grpcclient.InferInput("QUERY", [1], "INT32")
        query.set_data_from_numpy(np.zeros(1, dtype=np.int32))
        answer = json.loads(client.infer(PROBE, [query]).as_numpy("ANSWER")[0])
    assert answer["version"] == sys.version
    assert answer["stdlib"] == sysconfig.get_paths()["stdlib"]
    own = libpython_dir()
    if own is not None:  # a statically linked Python has no libpython to put first
        assert answer["libpython"], answer
        assert {Path(p).resolve().parent for p in answer["libpython"]} == {own.resolve()}
