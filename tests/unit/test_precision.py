"""`--precision`: what each choice means on which machine, and training in it for real (bf16
autocast on this CPU where it has the instructions; fp16 with a gradient scaler on CUDA)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from lifeloop.cli import app
from lifeloop.datasets import ImageFolder, load_arrays
from lifeloop.errors import DataError
from lifeloop.export.architectures import SMALL_CNN, build
from lifeloop.retrain.precision import FP32, Precision, choose, cpu_bf16_flags
from lifeloop.retrain.training import evaluate, fit, pick_precision

HAS_BF16 = bool(cpu_bf16_flags())


def test_the_cpu_flags_are_read_from_cpuinfo(tmp_path: Path) -> None:
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nflags\t\t: fpu avx2 avx512f avx512_bf16 amx_tile\n")
    assert cpu_bf16_flags(info) == {"avx512_bf16"}
    info.write_text("flags\t\t: fpu avx2\n")
    assert cpu_bf16_flags(info) == set()
    assert cpu_bf16_flags(tmp_path / "missing") == set()


def test_explicit_choices_are_checked_against_the_machine() -> None:
    assert choose("fp32") is FP32
    with pytest.raises(DataError, match="fp16 trains on a CUDA GPU and this machine has none"):
        choose("fp16", cuda=False)
    assert choose("fp16", cuda=True).device == "cuda"
    with pytest.raises(DataError, match="needs a CPU with avx512_bf16 or AMX"):
        choose("bf16", bf16_flags=set(), cuda=False)
    assert choose("bf16", bf16_flags={"amx_bf16"}, cuda=False).name == "bf16"
    with pytest.raises(DataError, match="'fp8' is not one of auto, fp32, bf16, fp16"):
        choose("fp8")


def test_auto_keeps_bf16_only_when_it_is_measured_faster() -> None:
    def step_costing(fp32_s: float, bf16_s: float):
        def step(precision: Precision) -> None:
            time.sleep(bf16_s if precision.name == "bf16" else fp32_s)

        return step

    flags = {"avx512_bf16"}
    fast = choose("auto", step_costing(0.02, 0.01), bf16_flags=flags, cuda=False)
    assert fast.name == "bf16" and "bf16 runs at" in fast.why
    slow = choose("auto", step_costing(0.01, 0.012), bf16_flags=flags, cuda=False)
    assert slow.name == "fp32" and "so fp32" in slow.why
    none = choose("auto", step_costing(0.02, 0.01), bf16_flags=set(), cuda=False)
    assert none.name == "fp32" and "no bfloat16 instructions" in none.why
    assert choose("auto", None, bf16_flags=flags, cuda=True).name == "fp16"


def digits_arrays(digits: ImageFolder, trained):
    pre = trained.checkpoint.preprocessing
    train_set, held = digits.split()
    return (*load_arrays(train_set, pre), *load_arrays(held, pre))


@pytest.mark.parametrize(
    "name",
    [
        pytest.param(
            "bf16",
            marks=pytest.mark.skipif(
                not HAS_BF16, reason="this CPU has neither avx512_bf16 nor AMX"
            ),
        ),
        pytest.param("fp16", marks=pytest.mark.gpu),  # on CUDA, with a gradient scaler
    ],
)
def test_reduced_precision_training_learns_and_leaves_fp32_weights_on_the_cpu(
    digits, trained, name: str
) -> None:
    x, y, x_held, y_held = digits_arrays(digits, trained)
    torch.manual_seed(0)
    model = fit(
        build(SMALL_CNN, 10, aux_heads=False),
        x,
        y,
        epochs=3,
        progress=False,
        precision=choose(name),
    )
    assert {p.dtype for p in model.parameters()} == {torch.float32}
    assert next(model.parameters()).device.type == "cpu"  # back for export and the gate
    assert all(torch.isfinite(p).all() for p in model.parameters())
    accuracy, _ = evaluate(model, x_held, y_held, digits.labels)
    assert accuracy > 0.9


def test_pick_precision_measures_a_copy_and_leaves_the_model_alone(digits, trained) -> None:
    x, y, _, _ = digits_arrays(digits, trained)
    model = build(SMALL_CNN, 10, aux_heads=False)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    chosen = pick_precision("auto", model, x, y)
    assert chosen.name in ("fp32", "bf16") and chosen.why.startswith("auto: ")
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert all(p.grad is None for p in model.parameters())


def test_train_through_the_cli_says_which_precision_and_why(tmp_path, digits) -> None:
    result = CliRunner().invoke(
        app,
        [
            *("train", "--data", str(digits.root), "--out", str(tmp_path / "c.pt")),
            *("--epochs", "1", "--precision", "auto", "--tracking-uri", "off"),
        ],
    )
    assert result.exit_code == 0, result.output
    assert "precision fp32 (auto: " in result.output or "precision bf16 (auto: " in result.output
