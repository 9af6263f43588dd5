"""The TensorRT exporter. What needs no GPU is tested everywhere: the optimization profile,
the plan's Triton config, the manifest's record of the GPU and TensorRT version, and the
check that refuses a plan built elsewhere. Building and running a plan is marked `gpu`."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

from lifeloop.errors import ServerError
from lifeloop.export import ExportError, export_checkpoint
from lifeloop.export.calibration import precision_data
from lifeloop.export.tensorrt import (
    PLAN_FILE,
    PlanTarget,
    batch_profile,
    check_plan,
    plan_config,
    predict_plan,
)
from lifeloop.repository import TensorInfo, VersionDraft, classifier_config, parse, publish, render
from lifeloop.repository import config as cfg
from lifeloop.repository.manifest import Manifest
from lifeloop.repository.publish import read_config, write_label_files
from lifeloop.serve import ServerConfig, TritonServer

H100 = PlanTarget(gpu="NVIDIA H100 80GB HBM3", compute_capability="9.0", tensorrt="10.7.0")


def have_gpu_and_tensorrt() -> bool:
    import torch

    return importlib.util.find_spec("tensorrt") is not None and torch.cuda.is_available()


def digits_plan_config(num_classes: int = 10) -> cfg.ModelConfig:
    base = classifier_config(
        "digits_trt_fp16", input_name="input", input_shape=(1, 32, 32), output_name="logits"
    )
    return plan_config(
        "digits_trt_fp16",
        input_name="input",
        input_shape=(1, 32, 32),
        output_name="logits",
        num_classes=num_classes,
        max_batch_size=64,
        base=base,
    )


def test_profile_spans_the_dynamic_batch_range() -> None:
    profile = batch_profile("input", (3, 224, 224), 32)
    assert profile.shapes() == ((1, 3, 224, 224), (32, 3, 224, 224), (32, 3, 224, 224))
    tuned = batch_profile("input", (3, 224, 224), 32, opt_batch=8)
    assert tuned.shapes()[1] == (8, 3, 224, 224)
    with pytest.raises(ExportError, match="1 <= min <= opt <= max, got 1, 64, 32"):
        batch_profile("input", (3, 8, 8), 32, opt_batch=64)
    with pytest.raises(ExportError, match="needs max_batch_size >= 1, got 0"):
        batch_profile("input", (3, 8, 8), 0)
    with pytest.raises(ExportError, match="needs a fixed sample shape"):
        batch_profile("input", (3, -1, 8), 4)


def test_plan_config_renders_for_the_tensorrt_backend_on_gpu() -> None:
    config = digits_plan_config()
    text = render(config)
    assert 'backend: "tensorrt"' in text and "kind: KIND_GPU" in text
    assert parse(text) == config
    assert config.outputs[0].dims == (10,) and config.outputs[0].label_filename == "labels.txt"
    assert config.version_policy == cfg.VersionPolicy(latest=1)
    assert [w.batch_size for w in config.warmup] == [1, 64]
    assert not any("thread" in key for key in config.parameters)


def test_plan_manifest_records_its_target_and_a_wider_version_widens_the_config(
    tmp_path: Path,
) -> None:
    repo = tmp_path / "repo"
    plan = tmp_path / "model.plan"
    plan.write_bytes(b"serialized engine bytes")
    for labels in (tuple("0123456789"), (*"0123456789", "ten")):
        draft = VersionDraft(
            format="tensorrt-fp16",
            labels=labels,
            input=TensorInfo(name="input", shape=(1, 32, 32)),
            output_name="logits",
            preprocessing={"size": 32},
            tools={"onnx_opset": "18", **H100.to_tools()},
        )
        published = publish(repo, digits_plan_config(len(labels)), {PLAN_FILE: plan}, draft)
    stored = json.loads((published.path / "manifest.json").read_text())
    assert stored["format"] == "tensorrt-fp16"
    assert stored["tools"]["gpu"] == H100.gpu
    assert stored["tools"]["compute_capability"] == "9.0"
    assert stored["tools"]["tensorrt"] == "10.7.0"
    assert [f["path"] for f in stored["files"]] == ["model.plan"]
    config = read_config(repo / "digits_trt_fp16")
    assert config is not None and config.outputs[0].dims == (11,)
    assert (repo / "digits_trt_fp16" / "labels.txt").read_text().splitlines()[-1] == "ten"
    write_label_files(repo / "digits_trt_fp16", config)  # idempotent

    manifest = Manifest.read(published.path)
    check_plan(manifest, H100)  # where it was built: accepted
    a100 = PlanTarget(gpu="NVIDIA A100-SXM4-40GB", compute_capability="8.0", tensorrt="10.7.0")
    with pytest.raises(ExportError) as refused:
        check_plan(manifest, a100)
    message = str(refused.value)
    assert "digits_trt_fp16 v2 was built for GPU NVIDIA H100 80GB HBM3" in message
    assert "compute capability 9.0 (here: 8.0)" in message and "TensorRT 10" not in message
    assert "--model digits --format tensorrt-fp16 --version 2" in message
    assert "\n" not in message
    newer = PlanTarget(gpu=H100.gpu, compute_capability="9.0", tensorrt="10.8.0")
    with pytest.raises(ExportError, match=r"TensorRT 10.7.0 \(here: 10.8.0\)"):
        check_plan(manifest, newer)


def test_the_launcher_refuses_a_plan_this_machine_cannot_run(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    plan = tmp_path / "model.plan"
    plan.write_bytes(b"serialized engine bytes")
    draft = VersionDraft(
        format="tensorrt-fp16",
        labels=tuple("0123456789"),
        input=TensorInfo(name="input", shape=(1, 32, 32)),
        output_name="logits",
        preprocessing={"size": 32},
        tools=PlanTarget(gpu="no such GPU", compute_capability="0.0", tensorrt="0").to_tools(),
    )
    publish(repo, digits_plan_config(), {PLAN_FILE: plan}, draft)
    with pytest.raises(ServerError) as refused:
        TritonServer(ServerConfig.on_free_ports(repo)).start()
    message = str(refused.value)
    if have_gpu_and_tensorrt():
        assert "digits_trt_fp16 v1 was built for GPU no such GPU" in message
    else:
        assert "digits_trt_fp16 v1 in" in message and "is a TensorRT plan" in message
        assert "tensorrt-* formats need" in message


def test_a_plan_without_its_target_is_refused() -> None:
    manifest = Manifest(
        model="m_trt_fp16",
        version=1,
        format="tensorrt-fp16",
        files=(),
        labels=("a", "b"),
        input=TensorInfo(name="input", shape=(3, 8, 8)),
        output_name="logits",
        preprocessing={},
    )
    with pytest.raises(ExportError, match="does not record its GPU and TensorRT version"):
        check_plan(manifest, H100)


@pytest.mark.skipif(
    have_gpu_and_tensorrt(), reason="this machine has a CUDA GPU and tensorrt: the gpu tests run"
)
def test_tensorrt_without_a_gpu_says_what_is_missing(tmp_path, trained) -> None:
    with pytest.raises(ExportError, match=r"tensorrt-\* formats need"):
        export_checkpoint(
            trained.checkpoint, tmp_path / "repo", "digits", formats=("tensorrt-fp16",)
        )
    assert not (tmp_path / "repo" / "digits_trt_fp16").exists()


@pytest.mark.gpu
@pytest.mark.parametrize("fmt", ["tensorrt-fp16", "tensorrt-int8"])
def test_plan_builds_passes_the_gate_and_records_this_gpu(tmp_path, trained, fmt: str) -> None:
    if not have_gpu_and_tensorrt():
        pytest.skip("needs the tensorrt package (pip install 'lifeloop[gpu]') beside the GPU")
    data = precision_data(trained.checkpoint)
    result = export_checkpoint(
        trained.checkpoint, tmp_path / "repo", "digits", formats=("onnx", fmt), precision=data
    )
    published = result.by_format[fmt]
    report = result.quality[fmt]
    assert report.passed and report.agreement >= 0.98
    manifest = Manifest.read(published.path)
    from lifeloop.export.tensorrt import this_target

    check_plan(manifest, this_target())
    answers = predict_plan(
        published.path / PLAN_FILE, data.x_held[:100], input_name="input", output_name="logits"
    )
    assert np.mean(answers == data.y_held[:100]) >= 0.85


def test_int8_graph_for_tensorrt_is_symmetric_and_keeps_accuracy(tmp_path, trained) -> None:
    """TensorRT's explicit quantization takes int8 Q/DQ with zero points of 0: the graph it
    gets is calibrated on the training images and checked here on the CPU."""
    import onnx
    from onnx import numpy_helper

    from lifeloop.export.onnx_export import export_onnx
    from lifeloop.export.quantize import check_quality, predict_onnx, quantize_int8

    data = precision_data(trained.checkpoint)
    fp32 = export_onnx(
        trained.checkpoint.build_model(),
        trained.checkpoint.preprocessing.input_shape,
        tmp_path / "fp32.onnx",
        arch=trained.checkpoint.arch,
    )
    typed = quantize_int8(fp32, tmp_path / "int8.onnx", data.calibration, for_tensorrt=True)
    graph = onnx.load(str(typed)).graph
    initializers = {t.name: t for t in graph.initializer}
    zero_points = [
        numpy_helper.to_array(initializers[node.input[2]])
        for node in graph.node
        if node.op_type == "QuantizeLinear" and len(node.input) > 2
    ]
    assert zero_points and all(z.dtype == np.int8 and not z.any() for z in zero_points)
    report = check_quality(
        fp32,
        typed,
        data.x_held,
        data.y_held,
        format="tensorrt-int8",
        gate=data.gate,
        predict=lambda path, x: predict_onnx(path, x, simulate_quantization=True),
    )
    assert report.passed, report.failures
