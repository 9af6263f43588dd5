"""Two kinds of model input: pixels (the graph normalises) and normalized. The recipe's
arithmetic, the config's declared format, what export publishes, what the router and
retraining make of each kind, and the one-line hint for a missing extra."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from lifeloop.cli import app
from lifeloop.cli._common import missing_extra
from lifeloop.client._codec import ModelInfo, to_samples
from lifeloop.contract import INPUT_KIND_PARAM, INPUT_KINDS_PARAM, PREPROCESSING_PARAM
from lifeloop.errors import PreprocessingError, RepositoryError
from lifeloop.export import export_checkpoint
from lifeloop.preprocessing import NORMALIZED, PIXELS, Preprocessing
from lifeloop.repository import TensorInfo, VersionDraft, publish, read_config
from lifeloop.repository.config import (
    DataType,
    TensorFormat,
    TensorSpec,
    classifier_config,
    parse,
    render,
)
from lifeloop.repository.publish import write_config
from lifeloop.retrain.cycle import _kept_input
from lifeloop.store import blobs

PRE = Preprocessing(size=4, mean=(0.1, 0.5, 0.9), std=(0.2, 0.3, 0.4))


def image(seed: int = 0) -> Image.Image:
    pixels = np.random.default_rng(seed).integers(0, 256, (6, 6, 3), dtype=np.uint8)
    return Image.fromarray(pixels)


def test_a_pixel_recipe_leaves_normalisation_to_the_graph() -> None:
    pixels = PRE.with_kind(PIXELS).to_array(image())
    normalized = PRE.to_array(image())
    assert pixels.dtype == np.float32 and pixels.shape == (3, 4, 4)
    assert pixels.min() >= 0 and pixels.max() <= 255 and np.all(pixels == np.round(pixels))
    # the graph's first op, (x/255 - mean)/std, gives what training was fed, bit for bit
    assert np.array_equal(PRE.normalize(pixels[None])[0], normalized)


def test_convert_between_kinds_and_between_recipes() -> None:
    pixels = np.stack([PRE.with_kind(PIXELS).to_array(image(s)) for s in range(3)])
    normalized = PRE.normalize(pixels)
    assert np.allclose(PRE.convert(normalized, PRE.with_kind(PIXELS)), pixels, atol=1e-3)
    assert PRE.with_kind(PIXELS).convert(pixels, PRE.with_kind(PIXELS)) is pixels
    other = Preprocessing(size=4, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
    assert np.allclose(PRE.convert(normalized, other), other.normalize(pixels), atol=1e-5)
    assert PRE.convert(normalized, PRE) is normalized


def test_a_recipe_without_a_kind_is_normalized_and_a_bad_kind_is_named() -> None:
    old = {k: v for k, v in PRE.to_dict().items() if k != "input_kind"}
    assert Preprocessing.from_dict(old).input_kind == NORMALIZED
    with pytest.raises(PreprocessingError, match="input_kind 'raw' is not one of pixels"):
        Preprocessing(size=4, input_kind="raw")


def test_the_classifier_config_declares_its_input_format_and_parses_back() -> None:
    config = classifier_config("c", input_name="input", input_shape=(3, 8, 8), output_name="o")
    assert config.inputs[0].format is TensorFormat.NCHW
    text = render(config)
    assert "format: FORMAT_NCHW" in text
    assert parse(text) == config
    flat = classifier_config("c", input_name="input", input_shape=(64,), output_name="o")
    assert flat.inputs[0].format is TensorFormat.NONE
    with pytest.raises(RepositoryError, match="format FORMAT_NCHW only on 3 dims"):
        TensorSpec(name="x", data_type=DataType.FP32, dims=(8, 8), format=TensorFormat.NCHW)


def test_publishing_into_a_config_without_format_declares_it(tmp_path: Path) -> None:
    made = classifier_config("clf", input_name="input", input_shape=(3, 8, 8), output_name="o")
    # as lifeloop wrote it before inputs declared their format
    old = replace(made, inputs=(replace(made.inputs[0], format=TensorFormat.NONE),))
    write_config(tmp_path, old)
    assert read_config(tmp_path / "clf").inputs[0].format is TensorFormat.NONE  # type: ignore[union-attr]
    artifact = tmp_path / "model.onnx"
    artifact.write_bytes(b"x" * 64)
    draft = VersionDraft(
        format="onnx",
        labels=("a", "b"),
        input=TensorInfo(name="input", shape=(3, 8, 8)),
        output_name="o",
        preprocessing=Preprocessing(size=8, input_kind=PIXELS).to_dict(),
    )
    publish(tmp_path, old, {"model.onnx": artifact}, draft)
    config = read_config(tmp_path / "clf")
    assert config is not None and config.inputs[0].format is TensorFormat.NCHW
    assert config.parameters[INPUT_KIND_PARAM] == PIXELS
    assert json.loads(config.parameters[INPUT_KINDS_PARAM]) == {"1": PIXELS}
    normalized = replace(draft, preprocessing=Preprocessing(size=8).to_dict())
    publish(tmp_path, old, {"model.onnx": artifact}, normalized)
    config = read_config(tmp_path / "clf")
    assert config is not None and config.parameters[INPUT_KIND_PARAM] == NORMALIZED
    assert json.loads(config.parameters[INPUT_KINDS_PARAM]) == {"1": PIXELS, "2": NORMALIZED}


def test_the_client_prepares_images_as_the_version_asked_for_takes_them() -> None:
    config = classifier_config(
        "clf",
        input_name="input",
        input_shape=(3, 4, 4),
        output_name="o",
        parameters={
            PREPROCESSING_PARAM: json.dumps(PRE.with_kind(PIXELS).to_dict()),
            INPUT_KINDS_PARAM: json.dumps({"1": NORMALIZED, "2": PIXELS}),
        },
    )
    info = ModelInfo.from_config(config)
    pixels = PRE.with_kind(PIXELS).to_array(image())
    assert np.array_equal(to_samples([image()], info)[0], pixels)  # the newest
    assert np.array_equal(to_samples([image()], info, 2)[0], pixels)
    assert np.array_equal(to_samples([image()], info, 1)[0], PRE.to_array(image()))


def test_export_serves_pixels_by_default_and_matches_pytorch_on_them(
    trained, held_out, tmp_path: Path
) -> None:
    result = export_checkpoint(trained.checkpoint, tmp_path / "repo", "digits")
    version = result.published
    assert version.manifest.preprocessing["input_kind"] == PIXELS
    config = read_config(tmp_path / "repo" / "digits")
    assert config is not None and config.parameters[INPUT_KIND_PARAM] == PIXELS
    graph = onnx.load(str(version.path / "model.onnx")).graph
    assert [n.op_type for n in graph.node[:3]] == ["Div", "Sub", "Div"]
    # The same pixels: ONNX on them against the trained PyTorch model on their normalisation.
    pre = trained.checkpoint.preprocessing
    pixels = pre.to_pixels(held_out[0][:32])
    session = ort.InferenceSession(str(version.path / "model.onnx"))
    served = session.run(None, {"input": pixels})[0]
    with torch.no_grad():
        reference = trained.checkpoint.build_model()(torch.from_numpy(pre.normalize(pixels)))
    assert np.allclose(served, reference.numpy(), atol=1e-4, rtol=1e-3)
    assert result.parity.passed and not result.parity.vacuous


def test_export_with_normalisation_off_takes_normalized_inputs(trained, tmp_path: Path) -> None:
    result = invoke_export(trained, tmp_path, "--no-normalize-in-graph")
    manifest = json.loads((result / "digits" / "1" / "manifest.json").read_text())
    assert manifest["preprocessing"]["input_kind"] == NORMALIZED
    graph = onnx.load(str(result / "digits" / "1" / "model.onnx")).graph
    assert graph.node[0].op_type != "Div"
    config = read_config(result / "digits")
    assert config is not None and config.parameters[INPUT_KIND_PARAM] == NORMALIZED


def invoke_export(trained, tmp_path: Path, *flags: str) -> Path:
    repo = tmp_path / "repo"
    args = ["export", "--checkpoint", str(trained.path), "--repository", str(repo), "-m", "digits"]
    done = CliRunner().invoke(app, [*args, *flags])
    assert done.exit_code == 0, done.output
    return repo


def test_kept_inputs_of_either_kind_train_the_same(tmp_path: Path) -> None:
    pixels = np.stack([PRE.with_kind(PIXELS).to_array(image(s)) for s in range(4)])
    as_pixels = blobs.write_batch(blobs.new_path(tmp_path, input_kind=PIXELS), pixels)
    as_normalized = blobs.write_batch(blobs.new_path(tmp_path), PRE.normalize(pixels))
    assert blobs.holds_pixels(str(as_pixels)) and not blobs.holds_pixels(str(as_normalized))
    for row in range(4):
        from_pixels = _kept_input(str(as_pixels), row, PRE)
        from_normalized = _kept_input(str(as_normalized), row, PRE)
        assert np.array_equal(from_pixels, from_normalized)


def test_a_missing_extra_is_named_with_the_install_line() -> None:
    assert missing_extra("export", "torch") == (
        "lifeloop export needs torch, which this install lacks: pip install 'lifeloop[export]'"
    )
    assert missing_extra("bench", "onnxruntime.capi") is not None
    assert "lifeloop[all]" in (missing_extra("bench", "onnxruntime.capi") or "")
    assert "lifeloop[postgres]" in (missing_extra("promote", "psycopg") or "")
    assert missing_extra("export", "no_such_module") is None
