"""The backend's logic, run on a real onnxruntime session without Triton (the integration
tests run the same code inside tritonserver)."""

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from lifeloop.errors import RequestError
from lifeloop.export import export_onnx
from lifeloop.repository import (
    ManifestMismatchError,
    TensorInfo,
    VersionDraft,
    classifier_config,
    publish,
)
from lifeloop.repository.config import to_proto
from lifeloop.serve.ort_runner import BatchRunner, session_options


@pytest.fixture(scope="module")
def version_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("ort")
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Conv2d(3, 4, 3), torch.nn.Flatten(), torch.nn.Linear(4 * 6 * 6, 5)
    )
    onnx_path = export_onnx(model, (3, 8, 8), tmp / "model.onnx", arch="tiny")
    draft = VersionDraft(
        format="onnx",
        labels=tuple("abcde"),
        input=TensorInfo(name="input", shape=(3, 8, 8)),
        output_name="logits",
        preprocessing={},
    )
    return publish(tmp / "repo", config(), {"model.onnx": onnx_path}, draft).path


def config(**params: str):
    return classifier_config(
        "tiny",
        input_name="input",
        input_shape=(3, 8, 8),
        output_name="logits",
        max_batch_size=8,
        parameters=params,
    )


def triton_json(**params: str) -> str:
    from google.protobuf import json_format

    return json.dumps(
        json_format.MessageToDict(to_proto(config(**params)), preserving_proto_field_name=True)
    )


def batch(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, 3, 8, 8)).astype(np.float32)


def test_one_session_run_per_batch_and_outputs_split_back(version_dir: Path) -> None:
    runner = BatchRunner(version_dir, triton_json())
    requests = [{"input": batch(n, seed)} for seed, n in enumerate((1, 3, 2))]
    alone = [runner.session.run(None, r)[0] for r in requests]
    calls = []
    real_run = runner.session.run
    runner.session = type(
        "Counting", (), {"run": lambda self, *a: calls.append(a) or real_run(*a)}
    )()
    results = runner.run(requests)
    assert len(calls) == 1
    for result, expected in zip(results, alone, strict=True):
        np.testing.assert_allclose(result["logits"], expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        (
            {"input": np.zeros((1, 3, 9, 8), np.float32)},
            r"shape \[1, 3, 9, 8\], expected \['batch', 3, 8, 8\]",
        ),
        ({"input": np.zeros((1, 3, 8, 8), np.float64)}, "dtype float64, expected float32"),
        ({"pixels": np.zeros((1, 3, 8, 8), np.float32)}, "input 'input' is missing"),
        ({"input": np.zeros((9, 3, 8, 8), np.float32)}, r"batch size 9, expected 1..8"),
    ],
)
def test_a_malformed_request_fails_alone(version_dir: Path, bad: dict, message: str) -> None:
    runner = BatchRunner(version_dir, triton_json())
    good = {"input": batch(2, 7)}
    results = runner.run([good, bad, good])
    assert isinstance(results[1], RequestError)
    assert re.search(message, str(results[1]))
    for index in (0, 2):
        np.testing.assert_allclose(
            results[index]["logits"], runner.session.run(None, good)[0], rtol=1e-5, atol=1e-6
        )


def test_thread_and_mode_parameters_use_the_native_backend_names() -> None:
    options = session_options(
        {"intra_op_thread_count": "1", "inter_op_thread_count": "2", "execution_mode": "1"}
    )
    assert (options.intra_op_num_threads, options.inter_op_num_threads) == (1, 2)
    assert str(options.execution_mode).endswith("ORT_PARALLEL")


def test_version_whose_model_changed_after_publishing_refuses_to_load(
    version_dir: Path, tmp_path: Path
) -> None:
    import shutil

    copy = tmp_path / "1"
    shutil.copytree(version_dir, copy)
    with open(copy / "model.onnx", "ab") as handle:
        handle.write(b"\0")
    with pytest.raises(ManifestMismatchError, match="model.onnx does not match its manifest"):
        BatchRunner(copy, triton_json())
