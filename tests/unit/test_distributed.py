"""Data-parallel training on CPU: two gloo processes under torchrun take the step one process
takes. (The whole retrain under torchrun is compared in tests/integration/test_retrain.py.)"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import torch

STEP = Path(__file__).with_name("ddp_step.py")


def run_step(out: Path, processes: int) -> dict[str, torch.Tensor]:
    launcher = ["-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={processes}"]
    command = [sys.executable, *(launcher if processes > 1 else []), str(STEP), str(out)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr[-3000:]
    return torch.load(out)


def test_two_gloo_processes_compute_the_gradient_and_statistics_of_one(tmp_path: Path) -> None:
    one = run_step(tmp_path / "one.pt", 1)
    two = run_step(tmp_path / "two.pt", 2)
    assert one.keys() == two.keys() and any(k.startswith("grad:") for k in one)
    for name, expected in one.items():
        error = ((two[name] - expected).norm() / expected.norm()).item()
        # Floating-point order only: summing shards, then over ranks, instead of one batch.
        assert error < 1e-4, f"{name}: relative difference {error:.2e}"


def test_the_synchronised_batch_norm_is_plain_batch_norm_outside_training() -> None:
    from lifeloop.export.architectures import build
    from lifeloop.retrain.distributed import SyncBatchNormCPU, synchronise_batch_norm

    model = build("small_cnn", 4).eval()
    synced = synchronise_batch_norm(model).eval()
    assert any(isinstance(m, SyncBatchNormCPU) for m in synced.modules())
    assert synced.state_dict().keys() == model.state_dict().keys()
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(model(x), synced(x))


def test_a_failing_rank_leaves_at_once_instead_of_waiting_in_a_barrier(tmp_path: Path) -> None:
    """Rank 0 raises while rank 1 waits in a collective: rank 0 must not wait for rank 1 in
    shutdown's barrier (gloo would hold it there for its 30-minute timeout)."""
    launcher = ["-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2"]
    command = [sys.executable, *launcher, str(STEP), str(tmp_path / "x.pt"), "--rank0-fails"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert done.returncode != 0
    assert "rank 0 failed on purpose" in done.stderr
