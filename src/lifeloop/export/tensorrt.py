"""TensorRT plans: built only where a CUDA GPU and the tensorrt package are present."""

from __future__ import annotations

import importlib.util

from lifeloop.export.errors import ExportError


def require_tensorrt() -> None:
    """Fail in one line, before any work, where TensorRT plans cannot be built."""
    if importlib.util.find_spec("tensorrt") is None:
        raise ExportError(
            "tensorrt-* formats need the tensorrt package and a CUDA GPU: install "
            "lifeloop[gpu] on a GPU machine, or export onnx, onnx-int8 or onnx-fp16 here"
        )
    import torch

    if not torch.cuda.is_available():
        raise ExportError(
            "tensorrt-* formats need a CUDA GPU and none is visible; build the plan on the GPU "
            "that will serve it (a plan only runs on the GPU model it was built for)"
        )
