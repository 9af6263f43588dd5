"""PyTorch -> ONNX with a dynamic batch axis, through torch's export-based exporter."""

from __future__ import annotations

import contextlib
import io
import logging
import re
import warnings
from pathlib import Path

import torch
from torch import nn

from lifeloop.export.errors import ExportError

INPUT_NAME = "input"
OUTPUT_NAME = "logits"
OPSET = 18
MAX_BATCH = 1024


def export_onnx(model: nn.Module, input_shape: tuple[int, ...], path: Path, *, arch: str) -> Path:
    """Write `model` (eval mode) to `path`; input [batch, *input_shape] -> logits [batch, C]."""
    model = model.eval()
    sample = torch.randn(2, *input_shape)
    batch = torch.export.Dim("batch", min=1, max=MAX_BATCH)
    quiet = io.StringIO()
    try:
        with (
            warnings.catch_warnings(),
            contextlib.redirect_stdout(quiet),
            _quiet_loggers(),
            torch.no_grad(),
        ):
            warnings.simplefilter("ignore")
            program = torch.onnx.export(
                model,
                (sample,),
                input_names=[INPUT_NAME],
                output_names=[OUTPUT_NAME],
                dynamic_shapes=({0: batch},),
                opset_version=OPSET,
                dynamo=True,
                optimize=True,
                verbose=False,
            )
        if program is None:
            raise ExportError(f"torch.onnx.export returned nothing for {arch!r}")
        program.save(str(path))
    except ExportError:
        raise
    except Exception as exc:
        text = str(exc)
        op = re.search(r"(aten::[\w.]+|aten\.[\w.]+)", text)
        where = f" at operator {op.group(1)}" if op else ""
        first = text.strip().splitlines()[0][:300] if text.strip() else type(exc).__name__
        raise ExportError(
            f"{arch!r} could not be exported to ONNX opset {OPSET}{where}: {first}. Try another "
            "architecture, or report the operator to the PyTorch ONNX exporter"
        ) from exc
    return path


@contextlib.contextmanager
def _quiet_loggers():  # type: ignore[no-untyped-def]
    names = ("torch.onnx", "torch.export", "torch._dynamo", "onnxscript")
    saved = {n: logging.getLogger(n).level for n in names}
    for n in names:
        logging.getLogger(n).setLevel(logging.ERROR)
    try:
        yield
    finally:
        for n, level in saved.items():
            logging.getLogger(n).setLevel(level)
