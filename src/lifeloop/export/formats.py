"""Every format lifeloop exports, and the Triton model each is served as.

Each format is its own Triton model, so that clients pick one by name and each has its own
version policy: classifier, classifier_int8, classifier_fp16, classifier_trt_fp16, ...
"""

from __future__ import annotations

from lifeloop.errors import ExportError

ONNX = "onnx"
INT8, FP16 = "onnx-int8", "onnx-fp16"  # reduced precision, gated on accuracy
TRT_FP16, TRT_INT8 = "tensorrt-fp16", "tensorrt-int8"  # plans, built on a CUDA GPU
TENSORRT = (TRT_FP16, TRT_INT8)
REDUCED = (INT8, FP16)
FORMATS = (ONNX, INT8, FP16, *TENSORRT)
SUFFIXES = {
    ONNX: "",
    INT8: "_int8",
    FP16: "_fp16",
    TRT_FP16: "_trt_fp16",
    TRT_INT8: "_trt_int8",
}


def parse_formats(text: str) -> tuple[str, ...]:
    """`onnx,onnx-int8` -> ("onnx", "onnx-int8"), in FORMATS order, each once."""
    asked = [part.strip() for part in text.split(",") if part.strip()]
    unknown = [name for name in asked if name not in FORMATS]
    if unknown or not asked:
        raise ExportError(
            f"unknown format {', '.join(unknown) or repr(text)}; use any of {', '.join(FORMATS)}"
        )
    return tuple(name for name in FORMATS if name in asked)


def format_model(model_name: str, fmt: str) -> str:
    """The Triton model that serves `model_name` in `fmt`."""
    return model_name + SUFFIXES[fmt]


def base_model(model_name: str, fmt: str) -> str:
    """The inverse of format_model: the model name the export was asked for."""
    return model_name.removesuffix(SUFFIXES.get(fmt, ""))
