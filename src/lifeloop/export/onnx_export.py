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

from lifeloop.errors import ExportError
from lifeloop.preprocessing import Preprocessing

INPUT_NAME = "input"
OUTPUT_NAME = "logits"
OPSET = 18
MAX_BATCH = 1024


class PixelInput(nn.Module):
    """`model` behind its own normalisation: takes pixel values 0..255 and computes
    `(x/255 - mean)/std` as the graph's first op, the same arithmetic training applied."""

    def __init__(self, model: nn.Module, pre: Preprocessing) -> None:
        super().__init__()
        self.model = model
        shape = (1, pre.channels, 1, 1)
        self.register_buffer("mean", torch.tensor(pre.mean, dtype=torch.float32).view(shape))
        self.register_buffer("std", torch.tensor(pre.std, dtype=torch.float32).view(shape))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mean, std = self.get_buffer("mean"), self.get_buffer("std")
        return self.model((x / 255.0 - mean) / std)


def served_model(model: nn.Module, pre: Preprocessing) -> nn.Module:
    """The module a version of kind `pre.input_kind` serves: `model` itself for normalized
    inputs, `model` behind PixelInput for pixels."""
    return PixelInput(model, pre).eval() if pre.takes_pixels else model


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
        op, reason = describe_failure(str(exc), type(exc).__name__)
        where = f" at operator {op}" if op else ""
        raise ExportError(
            f"{arch!r} could not be exported to ONNX opset {OPSET}{where}: {reason}. Replace "
            "the operator in the model, give torch.onnx.export a custom_translation_table "
            "entry for it, or pick another architecture"
        ) from exc
    return path


_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_NO_FUNCTION = re.compile(
    r"No ONNX function found for <OpOverload\(op='([\w.]+)', overload='(\w+)'\)>"
)
_ATEN = re.compile(r"(aten::[\w.]+|aten\.[\w.]+|prims\.[\w.]+)")


def describe_failure(text: str, kind: str) -> tuple[str, str]:
    """(the operator, one line of why) from the exporter's multi-line report."""
    text = _ANSI.sub("", text)
    missing = _NO_FUNCTION.search(text)
    named = _ATEN.search(text)
    op = f"{missing.group(1)}.{missing.group(2)}" if missing else (named.group(1) if named else "")
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    summary = next(
        (lines[i + 1] for i, line in enumerate(lines[:-1]) if line == "## Exception summary"),
        lines[0] if lines else kind,
    )
    reason = re.sub(r"^<class '[\w.]+'>: ", "", summary)
    return op, reason[:300].rstrip(". ")


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
