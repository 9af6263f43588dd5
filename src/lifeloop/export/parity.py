"""The parity gate: the exported model must answer like the PyTorch model, or nothing ships.

It compares outputs at several batch sizes: every element within atol + rtol * |reference|,
and 100% top-1 agreement. It also checks that the reference outputs vary across inputs, since
a model that answers the same for every input (many random-init torchvision models do) makes
any comparison pass: such a check is reported as vacuous.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from lifeloop.errors import ExportError, ParityError

SPREAD_FLOOR = 1e-4


@dataclass(frozen=True)
class Tolerance:
    atol: float = 1e-4
    rtol: float = 1e-3

    def __post_init__(self) -> None:
        if self.atol < 0 or self.rtol < 0:
            raise ExportError(f"tolerances must be >= 0, got atol={self.atol} rtol={self.rtol}")


DEFAULT_TOLERANCE = Tolerance()


@dataclass(frozen=True, kw_only=True)
class ParityReport:
    passed: bool
    max_abs_diff: float
    worst_excess: float  # max(|diff| - (atol + rtol*|ref|)); <= 0 when within tolerance
    top1_agreement: float
    batch_sizes: tuple[int, ...]
    samples: int
    reference_spread: float
    distinct_top1: int
    vacuous: bool
    atol: float
    rtol: float

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["batch_sizes"] = list(self.batch_sizes)
        return data

    def summary(self) -> str:
        verdict = "passed" if self.passed else "FAILED"
        note = " (vacuous: reference outputs barely vary across inputs)" if self.vacuous else ""
        return (
            f"parity {verdict}: max |diff| {self.max_abs_diff:.3g} (atol {self.atol:g}, "
            f"rtol {self.rtol:g}), top-1 agreement {self.top1_agreement:.1%} over "
            f"{self.samples} inputs at batch sizes {list(self.batch_sizes)}{note}"
        )


def sample_inputs(
    input_shape: tuple[int, ...], batch_sizes: tuple[int, ...], seed: int = 0
) -> list[np.ndarray]:
    """Seeded inputs that differ in more than fine noise: per-sample contrast and per-channel
    offset, plus coarse spatial structure, so that models answer differently across them."""
    generator = np.random.default_rng(seed)
    batches = []
    for size in batch_sizes:
        noise = generator.standard_normal((size, *input_shape)).astype(np.float32)
        if len(input_shape) == 3:
            channels, height, width = input_shape
            contrast = generator.uniform(0.1, 1.5, (size, 1, 1, 1))
            offset = generator.uniform(-2, 2, (size, channels, 1, 1))
            coarse = torch.from_numpy(
                generator.standard_normal((size, channels, 4, 4)).astype(np.float32)
            )
            structure = torch.nn.functional.interpolate(
                coarse, size=(height, width), mode="bilinear"
            ).numpy()
            noise = noise * contrast + offset + 2 * structure
        batches.append(noise.astype(np.float32))
    return batches


def check_parity(
    model: nn.Module,
    onnx_path: Path,
    inputs: list[np.ndarray],
    tolerance: Tolerance = DEFAULT_TOLERANCE,
) -> ParityReport:
    """Measure parity; never raises on a mismatch (see `gate`)."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    model = model.eval()
    refs, outs = [], []
    with torch.no_grad():
        for batch in inputs:
            refs.append(model(torch.from_numpy(batch)).numpy())
            outs.append(session.run(None, {name: batch})[0])
    ref, out = np.concatenate(refs), np.concatenate(outs)
    if ref.shape != out.shape:
        raise ParityError(f"ONNX output shape {out.shape} differs from PyTorch {ref.shape}")
    diff = np.abs(ref - out)
    excess = float(np.max(diff - (tolerance.atol + tolerance.rtol * np.abs(ref))))
    agreement = float(np.mean(ref.argmax(1) == out.argmax(1)))
    spread = float(np.max(np.std(ref, axis=0))) if len(ref) > 1 else 0.0
    distinct = len(set(ref.argmax(1).tolist()))
    vacuous = spread < SPREAD_FLOOR or (ref.shape[1] > 1 and distinct < 2)
    return ParityReport(
        passed=excess <= 0 and agreement == 1.0,
        max_abs_diff=float(diff.max()),
        worst_excess=excess,
        top1_agreement=agreement,
        batch_sizes=tuple(len(b) for b in inputs),
        samples=len(ref),
        reference_spread=spread,
        distinct_top1=distinct,
        vacuous=vacuous,
        atol=tolerance.atol,
        rtol=tolerance.rtol,
    )


def gate(report: ParityReport, *, what: str) -> ParityReport:
    """Raise ParityError with the measured figures unless the report passed."""
    if not report.passed:
        raise ParityError(f"{what}: {report.summary()}; nothing was published")
    return report
