"""INT8 and FP16 exports of the trained small CNN: they pass the accuracy gate against fp32
and publish as their own models beside it, and a calibration that breaks accuracy is refused
with nothing published. Real onnxruntime quantization and real sessions throughout."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import onnx
import pytest
from typer.testing import CliRunner

from lifeloop.cli import app
from lifeloop.errors import QualityGateError
from lifeloop.export import ExportError, export_checkpoint
from lifeloop.export.calibration import precision_data
from lifeloop.export.formats import parse_formats
from lifeloop.export.quantize import QualityGate
from lifeloop.repository import verify
from lifeloop.repository.publish import version_numbers
from lifeloop.retrain import TrainResult

runner = CliRunner()


def op_types(path: Path) -> set[str]:
    return {node.op_type for node in onnx.load(str(path)).graph.node}


def test_int8_and_fp16_pass_the_gate_and_publish_beside_fp32(tmp_path, trained: TrainResult):
    repo = tmp_path / "model_repository"
    result = export_checkpoint(
        trained.checkpoint,
        repo,
        "digits",
        formats=("onnx", "onnx-int8", "onnx-fp16"),
        precision=precision_data(trained.checkpoint),
    )
    assert {f: p.model for f, p in result.by_format.items()} == {
        "onnx": "digits",
        "onnx-int8": "digits_int8",
        "onnx-fp16": "digits_fp16",
    }
    assert {p.version for p in result.by_format.values()} == {1}
    for fmt in ("onnx-int8", "onnx-fp16"):
        report = result.quality[fmt]
        assert report.passed and report.held_out >= 300
        assert report.accuracy_drop <= 0.01 and report.agreement >= 0.98
        manifest = verify(result.by_format[fmt].path)
        assert manifest.format == fmt
        assert manifest.evaluation["quality_gate"]["agreement"] == report.agreement
    int8 = result.by_format["onnx-int8"].path / "model.onnx"
    assert {"QuantizeLinear", "DequantizeLinear"} <= op_types(int8)
    fp16 = onnx.load(str(result.by_format["onnx-fp16"].path / "model.onnx"))
    assert fp16.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert fp16.graph.output[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert any(t.data_type == onnx.TensorProto.FLOAT16 for t in fp16.graph.initializer)


def test_int8_calibrated_on_noise_is_refused_and_nothing_is_published(tmp_path, trained):
    data = precision_data(trained.checkpoint)
    # Calibration ranges from near-silent noise: real images then saturate every activation.
    noise = np.random.default_rng(0).normal(0, 0.01, data.calibration.shape).astype(np.float32)
    repo = tmp_path / "model_repository"
    with pytest.raises(QualityGateError, match="onnx-int8 refused, nothing published") as err:
        export_checkpoint(
            trained.checkpoint,
            repo,
            "digits",
            formats=("onnx", "onnx-int8"),
            precision=replace(data, calibration=noise),
        )
    assert err.value.report.accuracy_drop > 0.01 or err.value.report.agreement < 0.98
    assert "held-out images" in str(err.value)
    assert version_numbers(repo / "digits") == [] and version_numbers(repo / "digits_int8") == []


def test_export_cli_publishes_int8_and_prints_the_gate(tmp_path, trained):
    repo = tmp_path / "model_repository"
    result = runner.invoke(
        app,
        [
            *("export", "--checkpoint", str(trained.path), "--repository", str(repo)),
            *("--model", "digits", "--format", "onnx-int8"),
        ],
    )
    assert result.exit_code == 0, result.output
    assert (
        "onnx-int8: top-1" in result.output and "published digits_int8 version 1" in result.output
    )
    assert version_numbers(repo / "digits_int8") == [1] and not (repo / "digits").exists()


def test_bad_formats_and_gates_get_one_line_errors() -> None:
    assert parse_formats("onnx-fp16, onnx") == ("onnx", "onnx-fp16")
    with pytest.raises(ExportError, match="unknown format onnx-int4; use any of onnx"):
        parse_formats("onnx,onnx-int4")
    with pytest.raises(ExportError, match="min_agreement must be in 0..1"):
        QualityGate(min_agreement=1.5)
