"""`--precision auto|fp32|bf16|fp16`: the arithmetic training runs in.

- **bf16** is autocast on the CPU (matmuls and convolutions in bfloat16, the weights, the
  optimizer and the loss in fp32). It pays only on CPUs with bfloat16 instructions
  (avx512_bf16, or AMX); elsewhere PyTorch emulates it and it is slower than fp32, so lifeloop
  refuses it there.
- **fp16** is autocast on a CUDA GPU with a gradient scaler, so that small gradients do not
  underflow to zero.
- **auto** measures: on a CUDA GPU it takes fp16; on a CPU with bfloat16 instructions it
  times a few training steps of the real model on a real batch in both fp32 and bf16 and
  keeps bf16 only when it is at least `MIN_GAIN` faster; otherwise fp32.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from lifeloop.errors import DataError

PRECISIONS = ("auto", "fp32", "bf16", "fp16")
MIN_GAIN = 1.1  # auto takes bf16 only when it is this much faster than fp32
TIMED_STEPS = 3


@dataclass(frozen=True)
class Precision:
    """What a training runs in, on which device, and why."""

    name: str  # fp32, bf16 or fp16
    device: str  # cpu or cuda
    why: str

    def autocast(self) -> Any:
        if self.name == "bf16":
            return torch.autocast("cpu", dtype=torch.bfloat16)
        if self.name == "fp16":
            return torch.autocast("cuda", dtype=torch.float16)
        return nullcontext()

    def scaler(self) -> torch.amp.GradScaler | None:
        return torch.amp.GradScaler("cuda") if self.name == "fp16" else None


FP32 = Precision("fp32", "cpu", "fp32 asked for")


def cpu_bf16_flags(cpuinfo: Path = Path("/proc/cpuinfo")) -> set[str]:
    """This CPU's bfloat16 instruction sets (avx512_bf16, amx_bf16); empty where it has none
    or does not say."""
    try:
        text = cpuinfo.read_text()
    except OSError:
        return set()
    flags: set[str] = set()
    for line in text.splitlines():
        if line.startswith("flags"):
            flags |= set(line.split(":", 1)[1].split())
    return flags & {"avx512_bf16", "amx_bf16"}


def choose(
    requested: str,
    step: Callable[[Precision], None] | None = None,
    *,
    bf16_flags: set[str] | None = None,
    cuda: bool | None = None,
) -> Precision:
    """The precision `requested` means here. `step(precision)` runs one training step of the
    real model in it: `auto` times it on a CPU with bfloat16 instructions."""
    if requested not in PRECISIONS:
        raise DataError(f"--precision {requested!r} is not one of {', '.join(PRECISIONS)}")
    cuda = torch.cuda.is_available() if cuda is None else cuda
    flags = cpu_bf16_flags() if bf16_flags is None else bf16_flags
    if requested == "fp32":
        return FP32
    if requested == "fp16":
        if not cuda:
            raise DataError(
                "--precision fp16 trains on a CUDA GPU and this machine has none; use bf16 "
                "(CPUs with avx512_bf16 or AMX), fp32 or auto"
            )
        return Precision("fp16", "cuda", "fp16 asked for, with a gradient scaler")
    if requested == "bf16":
        if not flags:
            raise DataError(
                "--precision bf16 needs a CPU with avx512_bf16 or AMX, and this one has "
                "neither: PyTorch would emulate it, slower than fp32; use fp32 or auto"
            )
        return Precision("bf16", "cpu", f"bf16 asked for ({', '.join(sorted(flags))})")
    if cuda:
        return Precision("fp16", "cuda", "auto: a CUDA GPU, so fp16 with a gradient scaler")
    if not flags:
        return Precision(
            "fp32", "cpu", "auto: this CPU has no bfloat16 instructions, so fp32 is faster"
        )
    if step is None:
        return Precision("bf16", "cpu", f"auto: the CPU has {', '.join(sorted(flags))}")
    bf16 = Precision("bf16", "cpu", "")
    fp32_s, bf16_s = _timed(step, FP32), _timed(step, bf16)
    gain = fp32_s / bf16_s if bf16_s else 0.0
    measured = f"{gain:.2f}x fp32's speed over {TIMED_STEPS} steps"
    if gain >= MIN_GAIN:
        return Precision("bf16", "cpu", f"auto: bf16 runs at {measured}")
    return Precision("fp32", "cpu", f"auto: bf16 runs at only {measured}, so fp32")


def _timed(step: Callable[[Precision], None], precision: Precision) -> float:
    step(precision)  # warm-up: kernels chosen, memory allocated
    began = time.perf_counter()
    for _ in range(TIMED_STEPS):
        step(precision)
    return (time.perf_counter() - began) / TIMED_STEPS


@contextmanager
def on_device(model: nn.Module, precision: Precision) -> Iterator[nn.Module]:
    """The model on the precision's device for the block, back on the CPU after: export,
    the gate and the checkpoint read its weights there."""
    if precision.device == "cpu":
        yield model
        return
    model.to(precision.device)
    try:
        yield model
    finally:
        model.to("cpu")
