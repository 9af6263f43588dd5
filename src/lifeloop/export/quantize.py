"""Reduced-precision ONNX: static INT8 (QDQ, per-channel weights) calibrated on training
images, and FP16 with fp32 inputs and outputs. Either is published only if it passes a
quality gate against the fp32 export on held-out labelled images: top-1 accuracy within
`max_accuracy_drop` of fp32's, and top-1 agreement with fp32 of at least `min_agreement`."""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from lifeloop.errors import ExportError
from lifeloop.export.onnx_export import INPUT_NAME


@dataclass(frozen=True, kw_only=True)
class QualityGate:
    max_accuracy_drop: float = 0.01  # top-1, as a fraction: 0.01 = 1 point
    min_agreement: float = 0.98  # share of held-out images whose top-1 matches fp32's

    def __post_init__(self) -> None:
        if not 0.0 <= self.max_accuracy_drop <= 1.0:
            raise ExportError(
                f"max_accuracy_drop must be in 0..1, got {self.max_accuracy_drop}",
                setting="max_accuracy_drop",
            )
        if not 0.0 <= self.min_agreement <= 1.0:
            raise ExportError(
                f"min_agreement must be in 0..1, got {self.min_agreement}", setting="min_agreement"
            )


@dataclass(frozen=True, kw_only=True)
class QualityReport:
    format: str
    held_out: int
    fp32_accuracy: float
    accuracy: float
    agreement: float
    gate: QualityGate
    # what `fp32_accuracy` and the agreement are measured against, in the failures' words
    reference: str = "fp32"

    @property
    def accuracy_drop(self) -> float:
        return self.fp32_accuracy - self.accuracy

    @property
    def failures(self) -> list[str]:
        found = []
        if self.accuracy_drop > self.gate.max_accuracy_drop + 1e-12:
            found.append(
                f"top-1 {self.accuracy:.4f} against {self.reference}'s "
                f"{self.fp32_accuracy:.4f} on {self.held_out} held-out images: "
                f"{self.accuracy_drop * 100:.2f} points lost, "
                f"more than {self.gate.max_accuracy_drop * 100:g}"
            )
        if self.agreement < self.gate.min_agreement:
            found.append(
                f"top-1 agrees with {self.reference} on {self.agreement:.2%} of held-out "
                f"images, below {self.gate.min_agreement:.0%}"
            )
        return found

    @property
    def passed(self) -> bool:
        return not self.failures

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": self.format,
            "reference": "fp32 ONNX export of the same checkpoint"
            if self.reference == "fp32"
            else self.reference,
            "held_out": self.held_out,
            "fp32_accuracy": self.fp32_accuracy,
            "accuracy": self.accuracy,
            "accuracy_drop": self.accuracy_drop,
            "agreement": self.agreement,
            "gate": asdict(self.gate),
            "passed": self.passed,
        }


def quantize_int8(
    fp32: Path,
    out: Path,
    calibration: np.ndarray,
    *,
    per_channel: bool = True,
    for_tensorrt: bool = False,
) -> Path:
    """Static QDQ quantization: uint8 activations with ranges from `calibration` (preprocessed
    training images), int8 weights, per output channel where `per_channel`.

    Weights keep 7 bits (`reduce_range`). x86 CPUs without VNNI multiply uint8 by int8 with
    VPMADDUBSW, whose 16-bit sums saturate with full-range weights; per-channel scaling puts
    every channel at full range. Measured on the digits CNN on an AVX2 machine: 8-bit
    per-channel weights lost 14 points of top-1, 7-bit ones lost none.

    `for_tensorrt` makes what TensorRT's explicit quantization takes instead: int8
    activations and weights, symmetric (zero point 0), all 8 bits (a GPU does not saturate)."""
    from onnxruntime.quantization import (
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    if len(calibration) == 0:
        raise ExportError("INT8 calibration needs images; none were given")
    with tempfile.TemporaryDirectory(prefix="lifeloop-int8-") as tmp:
        # Shape inference and graph fusions first, as onnxruntime recommends, so that
        # Conv+BatchNorm are one node and get one pair of quantization parameters.
        prepared = Path(tmp) / "prepared.onnx"
        quant_pre_process(str(fp32), str(prepared), skip_symbolic_shape=True)
        quantize_static(
            str(prepared),
            str(out),
            _Calibration(calibration),
            quant_format=QuantFormat.QDQ,
            per_channel=per_channel,
            activation_type=QuantType.QInt8 if for_tensorrt else QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            reduce_range=not for_tensorrt,
            calibrate_method=CalibrationMethod.MinMax,
            extra_options=(
                {"ActivationSymmetric": True, "WeightSymmetric": True} if for_tensorrt else {}
            ),
        )
    return out


def convert_fp16(fp32: Path, out: Path) -> Path:
    """Weights and arithmetic in fp16; the input and the logits stay fp32, so clients and the
    served config are the same as for fp32."""
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    model = convert_float_to_float16(onnx.load(str(fp32)), keep_io_types=True)
    onnx.save(model, str(out))
    return out


def check_quality(
    fp32: Path,
    candidate: Path,
    x_held: np.ndarray,
    y_held: np.ndarray,
    *,
    format: str,
    gate: QualityGate,
    predict: Callable[[Path, np.ndarray], np.ndarray] | None = None,
) -> QualityReport:
    """Top-1 of both files on the same held-out images; `predict` runs the candidate (an
    ONNX file unless told otherwise)."""
    if len(x_held) == 0:
        raise ExportError(f"the {format} gate needs held-out labelled images; none were given")
    reference = predict_onnx(fp32, x_held)
    answers = (predict or predict_onnx)(candidate, x_held)
    return QualityReport(
        format=format,
        held_out=len(x_held),
        fp32_accuracy=float(np.mean(reference == y_held)),
        accuracy=float(np.mean(answers == y_held)),
        agreement=float(np.mean(answers == reference)),
        gate=gate,
    )


def predict_onnx(
    path: Path, x: np.ndarray, batch: int = 64, *, simulate_quantization: bool = False
) -> np.ndarray:
    """Top-1 of an ONNX file on `x`. `simulate_quantization` runs Q/DQ nodes as written,
    dequantizing to fp32 arithmetic instead of fusing them into the CPU's int8 kernels: what
    a GPU computes from the same graph, without the CPU's saturation (see quantize_int8)."""
    return onnx_logits(path, x, batch, simulate_quantization=simulate_quantization).argmax(1)


def onnx_logits(
    path: Path, x: np.ndarray, batch: int = 64, *, simulate_quantization: bool = False
) -> np.ndarray:
    """The logits of an ONNX file on `x`, as onnxruntime on this CPU computes them."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    if simulate_quantization:
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(
        str(path), sess_options=options, providers=["CPUExecutionProvider"]
    )
    parts = [
        session.run(None, {INPUT_NAME: np.ascontiguousarray(x[i : i + batch], np.float32)})[0]
        for i in range(0, len(x), batch)
    ]
    return np.concatenate(parts)


class _Calibration:
    """onnxruntime's CalibrationDataReader protocol over an array, in batches."""

    def __init__(self, images: np.ndarray, batch: int = 16) -> None:
        self._batches: Iterator[np.ndarray] = (
            np.ascontiguousarray(images[i : i + batch], np.float32)
            for i in range(0, len(images), batch)
        )

    def get_next(self) -> dict[str, np.ndarray] | None:
        batch = next(self._batches, None)
        return None if batch is None else {INPUT_NAME: batch}

    def rewind(self) -> None:  # read once; onnxruntime's MinMax calibration does not rewind
        pass
