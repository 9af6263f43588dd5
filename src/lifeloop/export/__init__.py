"""PyTorch checkpoints -> parity-gated ONNX versions in a Triton model repository."""

from lifeloop.errors import CheckpointError, ExportError, ParityError
from lifeloop.export.architectures import SMALL_CNN, SmallCNN, build, known_architectures
from lifeloop.export.checkpoint import Checkpoint, load
from lifeloop.export.onnx_export import export_onnx
from lifeloop.export.parity import ParityReport, Tolerance, check_parity
from lifeloop.export.pipeline import ExportResult, export_checkpoint, publish_onnx

__all__ = [
    "SMALL_CNN",
    "Checkpoint",
    "CheckpointError",
    "ExportError",
    "ExportResult",
    "ParityError",
    "ParityReport",
    "SmallCNN",
    "Tolerance",
    "build",
    "check_parity",
    "export_checkpoint",
    "export_onnx",
    "known_architectures",
    "load",
    "publish_onnx",
]
