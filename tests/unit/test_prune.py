"""Structural pruning: Torch-Pruning's cut, the layer sizes a checkpoint records so that the
architecture is reshaped to fit, and the gate that refuses a cut over the accuracy budget.
Serving a pruned version through tritonserver is tests/integration/test_prune.py."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch
from torch import nn

from lifeloop.errors import DataError, QualityGateError
from lifeloop.export.architectures import build
from lifeloop.export.checkpoint import load
from lifeloop.export.structure import reshape, structure_of
from lifeloop.retrain.prune import PruneSettings, prune

# Every architecture the export supports but vit_b_16 (refused, with the reason).
SIZES = {
    "resnet18": 64,
    "mobilenet_v3_small": 64,
    "efficientnet_b0": 64,
    "convnext_tiny": 64,
    "regnet_y_400mf": 64,
    "squeezenet1_1": 64,
    "densenet121": 64,
    "googlenet": 64,
    "inception_v3": 80,
    "small_cnn": 32,
}


@pytest.mark.parametrize(("arch", "size"), SIZES.items())
def test_a_pruned_model_loads_into_its_architecture_by_the_recorded_sizes(
    arch: str, size: int
) -> None:
    import torch_pruning as tp

    torch.manual_seed(0)
    model = build(arch, 10, aux_heads=False).eval()
    example = torch.randn(2, 3, size, size)
    head = [m for m in model.modules() if isinstance(m, nn.Linear | nn.Conv2d)][-1]
    macs_before, _ = tp.utils.count_ops_and_params(model, example[:1])
    tp.pruner.MagnitudePruner(
        model,
        example[:1],
        importance=tp.importance.GroupMagnitudeImportance(p=2),
        pruning_ratio=0.5,
        ignored_layers=[head],
    ).step()
    macs_after, _ = tp.utils.count_ops_and_params(model, example[:1])
    assert macs_after < 0.5 * macs_before  # channels are gone, not masked
    fresh = reshape(build(arch, 10, aux_heads=False), structure_of(model))
    fresh.load_state_dict(model.state_dict())
    with torch.no_grad():
        assert torch.allclose(fresh.eval()(example), model(example), atol=1e-5)


def test_pruning_keeps_the_gate_and_records_what_it_cut(trained, digits, tmp_path: Path) -> None:
    out = tmp_path / "pruned.pt"
    result = prune(
        trained.checkpoint, digits.root, out, PruneSettings(ratio=0.5, epochs=4), progress=False
    )
    assert result.report.passed and result.report.accuracy_drop <= 0.01
    assert result.after["params"] < 0.5 * result.before["params"]
    assert result.after["macs"] < 0.5 * result.before["macs"]
    reloaded = load(out)
    assert reloaded.structure and reloaded.training["pruning"]["ratio"] == 0.5
    model = reloaded.build_model()
    assert sum(p.numel() for p in model.parameters()) == result.after["params"]


def test_a_cut_over_the_budget_is_refused_and_writes_nothing(
    trained, digits, tmp_path: Path
) -> None:
    out = tmp_path / "pruned.pt"
    with pytest.raises(QualityGateError, match="pruned refused, nothing published: top-1") as err:
        prune(
            trained.checkpoint, digits.root, out, PruneSettings(ratio=0.9, epochs=0), progress=False
        )
    assert "against the dense model's" in str(err.value)
    assert not out.exists()


def test_vit_is_refused_with_the_reason(trained, digits, tmp_path: Path) -> None:
    vit = dataclasses.replace(trained.checkpoint, arch="vit_b_16")
    with pytest.raises(DataError, match="vit_b_16 cannot be pruned here: its embedding width"):
        prune(vit, digits.root, tmp_path / "p.pt")
