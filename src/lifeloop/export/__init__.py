"""PyTorch checkpoints -> parity-gated ONNX versions in a Triton model repository.

Nothing is imported eagerly: `lifeloop.export.formats` and `lifeloop.export.tensorrt` are read
by the server launcher, which must not pay for importing torch."""

from __future__ import annotations

from lifeloop.lazy import lazy_exports

_EXPORTS = {
    "SMALL_CNN": "lifeloop.export.architectures",
    "SmallCNN": "lifeloop.export.architectures",
    "build": "lifeloop.export.architectures",
    "known_architectures": "lifeloop.export.architectures",
    "Checkpoint": "lifeloop.export.checkpoint",
    "load": "lifeloop.export.checkpoint",
    "CheckpointError": "lifeloop.errors",
    "ExportError": "lifeloop.errors",
    "ParityError": "lifeloop.errors",
    "export_onnx": "lifeloop.export.onnx_export",
    "ParityReport": "lifeloop.export.parity",
    "Tolerance": "lifeloop.export.parity",
    "check_parity": "lifeloop.export.parity",
    "ExportResult": "lifeloop.export.pipeline",
    "export_checkpoint": "lifeloop.export.pipeline",
    "publish_onnx": "lifeloop.export.pipeline",
}
__all__ = sorted(_EXPORTS)

__getattr__ = lazy_exports(__name__, _EXPORTS)
