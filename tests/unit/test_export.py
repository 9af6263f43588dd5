from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper

from lifeloop.export import (
    Checkpoint,
    CheckpointError,
    ExportError,
    ParityError,
    build,
    check_parity,
    export_checkpoint,
    export_onnx,
    load,
    publish_onnx,
)
from lifeloop.export.parity import sample_inputs
from lifeloop.preprocessing import Preprocessing


def random_checkpoint(arch: str, classes: int, size: int, tmp_path: Path) -> Checkpoint:
    torch.manual_seed(0)
    model = build(arch, classes)
    # At random init these models answer almost the same for every input (DESIGN.md: vacuous
    # parity). Re-estimating batch-norm statistics on sample inputs and re-initialising the
    # head make their outputs depend on the input, so the comparison means something.
    for module in model.modules():
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
            module.reset_running_stats()
            module.momentum = None
    model.train()
    with torch.no_grad():
        for batch in sample_inputs((3, size, size), (16, 16), seed=1):
            model(torch.from_numpy(batch))
    head = model.fc if arch == "resnet18" else model.classifier[-1]
    torch.nn.init.normal_(head.weight, std=1.0)
    model.eval()
    path = tmp_path / f"{arch}.pt"
    torch.save(model.state_dict(), path)
    return load(path, arch=arch, labels=tuple(f"c{i}" for i in range(classes)), input_size=size)


@pytest.mark.parametrize("arch", ["resnet18", "mobilenet_v3_small"])
def test_torchvision_models_pass_a_non_vacuous_parity_gate(arch: str, tmp_path: Path) -> None:
    checkpoint = random_checkpoint(arch, 10, 64, tmp_path)
    result = export_checkpoint(checkpoint, tmp_path / "repo", arch)
    assert result.parity.passed and not result.parity.vacuous
    assert result.parity.max_abs_diff <= 1e-4 + 1e-3 * 10 and result.parity.top1_agreement == 1.0
    assert result.parity.distinct_top1 >= 2
    manifest = result.published.manifest
    assert manifest.source["architecture"] == arch and manifest.parity["passed"] is True
    assert manifest.input.shape == (3, 64, 64) and len(manifest.labels) == 10


def test_perturbed_export_fails_parity_and_publishes_nothing(tmp_path: Path) -> None:
    checkpoint = random_checkpoint("resnet18", 10, 32, tmp_path)
    model = checkpoint.build_model()
    onnx_path = export_onnx(model, (3, 32, 32), tmp_path / "model.onnx", arch="resnet18")
    graph = onnx.load(str(onnx_path))
    target = max(graph.graph.initializer, key=lambda t: np.prod(t.dims))
    weights = numpy_helper.to_array(target)
    noisy = weights + np.random.default_rng(0).normal(0, 0.05, weights.shape).astype(weights.dtype)
    target.CopyFrom(numpy_helper.from_array(noisy, target.name))
    onnx.save(graph, str(onnx_path))
    repo = tmp_path / "repo"
    with pytest.raises(ParityError, match=r"parity FAILED: max \|diff\| .* nothing was published"):
        publish_onnx(model, onnx_path, checkpoint, repo, "perturbed")
    assert not (repo / "perturbed").exists()


def test_parity_reports_a_constant_model_as_vacuous(tmp_path: Path) -> None:
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 8 * 8, 4))
    torch.nn.init.zeros_(model[1].weight)
    path = export_onnx(model, (3, 8, 8), tmp_path / "m.onnx", arch="constant")
    report = check_parity(model, path, sample_inputs((3, 8, 8), (1, 4)))
    assert report.passed and report.vacuous and "vacuous" in report.summary()


def test_checkpoint_with_wrong_class_count_names_arch_and_count(tmp_path: Path) -> None:
    path = tmp_path / "ten.pt"
    torch.save(build("resnet18", 10).state_dict(), path)
    checkpoint = load(path, arch="resnet18", labels=tuple("abcde"), input_size=32)
    with pytest.raises(
        CheckpointError, match=r"architecture 'resnet18' with 5 classes \(it holds 10 classes\)"
    ):
        checkpoint.build_model()


def test_checkpoint_with_wrong_architecture_names_it(tmp_path: Path) -> None:
    path = tmp_path / "r18.pt"
    torch.save(build("resnet18", 10).state_dict(), path)
    with pytest.raises(CheckpointError, match="architecture 'small_cnn' with 10 classes"):
        load(path, arch="small_cnn", input_size=32).build_model()


def test_lifeloop_checkpoint_disagreeing_with_arch_flag_names_both(tmp_path: Path) -> None:
    checkpoint = Checkpoint(
        arch="small_cnn",
        labels=("a", "b"),
        preprocessing=Preprocessing(size=16),
        state_dict=build("small_cnn", 2).state_dict(),
    )
    path = checkpoint.save(tmp_path / "c.pt")
    with pytest.raises(CheckpointError, match="is a 'small_cnn' model but --arch says 'resnet18'"):
        load(path, arch="resnet18")
    assert load(path).labels == ("a", "b")


def test_missing_and_corrupt_checkpoints_get_one_line_errors(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="does not exist"):
        load(tmp_path / "nope.pt", arch="resnet18")
    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(b"\x00garbage" * 100)
    with pytest.raises(
        CheckpointError, match="cannot be read .* corrupt or not a PyTorch checkpoint"
    ) as info:
        load(corrupt, arch="resnet18")
    assert "\n" not in str(info.value)


def test_checkpoint_holding_code_is_refused_by_weights_only_loading(tmp_path: Path) -> None:
    path = tmp_path / "pickled.pt"
    torch.save(torch.nn.Linear(2, 2), path)  # a whole module: unpickling would run code
    with pytest.raises(CheckpointError, match="cannot be read"):
        load(path, arch="resnet18")


def test_unknown_architecture_suggests_close_names(tmp_path: Path) -> None:
    with pytest.raises(ExportError, match="unknown architecture 'resnet19'.*did you mean resnet18"):
        build("resnet19", 10)
