"""lifeloop checkpoints: weights plus what serving needs (architecture, labels, preprocessing).

Loaded with `torch.load(weights_only=True)`: a checkpoint is data, never code. A bare
state_dict is accepted too; the architecture and classes then come from the caller.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from lifeloop.errors import CheckpointError
from lifeloop.export.architectures import build, check_architecture
from lifeloop.preprocessing import Preprocessing

FORMAT = "lifeloop-checkpoint/1"


@dataclass(kw_only=True)
class Checkpoint:
    arch: str
    labels: tuple[str, ...]
    preprocessing: Preprocessing
    state_dict: dict[str, torch.Tensor]
    training: dict[str, Any] = field(default_factory=dict)
    sha256: str = ""

    def save(self, path: Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        payload = {
            "format": FORMAT,
            "arch": self.arch,
            "labels": list(self.labels),
            "preprocessing": self.preprocessing.to_dict(),
            "training": self.training,
            "state_dict": self.state_dict,
        }
        tmp = path.with_name(path.name + ".tmp")
        torch.save(payload, tmp)
        tmp.replace(path)
        return path

    def build_model(self) -> nn.Module:
        """The architecture with these weights loaded, in eval mode; a mismatch names both."""
        model = build(self.arch, len(self.labels))
        try:
            model.load_state_dict(self.state_dict)
        except RuntimeError as exc:
            head = _head_classes(self.state_dict)
            detail = f"it holds {head} classes" if head else str(exc).splitlines()[0]
            raise CheckpointError(
                f"checkpoint weights do not fit architecture {self.arch!r} with "
                f"{len(self.labels)} classes ({detail}); pass the --arch and --num-classes/"
                "--labels the checkpoint was trained with"
            ) from exc
        return model.eval()


def load(
    path: Path,
    *,
    arch: str | None = None,
    labels: tuple[str, ...] | None = None,
    input_size: int | None = None,
) -> Checkpoint:
    """Read a lifeloop checkpoint or a bare state_dict. Explicit arguments must agree with
    what a lifeloop checkpoint records."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(
            f"checkpoint {path} does not exist; pass the file `lifeloop train` wrote"
        )
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(
            f"checkpoint {path} cannot be read ({first[:200]}); it is corrupt or not a PyTorch "
            "checkpoint: re-save it with torch.save(model.state_dict(), path)"
        ) from exc
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    if isinstance(payload, dict) and payload.get("format") == FORMAT:
        return _from_lifeloop(payload, path, digest, arch, labels, input_size)
    if isinstance(payload, dict) and all(isinstance(v, torch.Tensor) for v in payload.values()):
        return _from_state_dict(payload, path, digest, arch, labels, input_size)
    raise CheckpointError(
        f"checkpoint {path} holds a {type(payload).__name__}, not a state_dict or a lifeloop "
        "checkpoint; save model.state_dict()"
    )


def _from_lifeloop(
    payload: dict[str, Any],
    path: Path,
    digest: str,
    arch: str | None,
    labels: tuple[str, ...] | None,
    input_size: int | None,
) -> Checkpoint:
    recorded = tuple(payload["labels"])
    if arch and arch != payload["arch"]:
        raise CheckpointError(
            f"checkpoint {path} is a {payload['arch']!r} model but --arch says {arch!r}; "
            "drop --arch or pass the matching one"
        )
    if labels and len(labels) != len(recorded):
        raise CheckpointError(
            f"checkpoint {path} has {len(recorded)} classes but {len(labels)} labels were "
            "given; drop --labels/--num-classes or pass matching ones"
        )
    pre = Preprocessing.from_dict(payload["preprocessing"])
    if input_size and input_size != pre.size:
        pre = Preprocessing.from_dict({**pre.to_dict(), "size": input_size})
    return Checkpoint(
        arch=payload["arch"],
        labels=tuple(labels or recorded),
        preprocessing=pre,
        state_dict=payload["state_dict"],
        training=payload.get("training", {}),
        sha256=digest,
    )


def _from_state_dict(
    state: dict[str, torch.Tensor],
    path: Path,
    digest: str,
    arch: str | None,
    labels: tuple[str, ...] | None,
    input_size: int | None,
) -> Checkpoint:
    if not arch:
        raise CheckpointError(
            f"checkpoint {path} is a bare state_dict; pass --arch (and --num-classes or --labels)"
        )
    check_architecture(arch)
    if not labels:
        classes = _head_classes(state)
        if not classes:
            raise CheckpointError(
                f"cannot tell the class count of {path}; pass --num-classes or --labels"
            )
        labels = tuple(str(i) for i in range(classes))
    return Checkpoint(
        arch=arch,
        labels=labels,
        preprocessing=Preprocessing(size=input_size or 224),
        state_dict=state,
        sha256=digest,
    )


def _head_classes(state: dict[str, torch.Tensor]) -> int | None:
    """The class count of the last 2-D weight (the classifier head), if there is one."""
    for name in reversed(list(state)):
        if name.endswith("weight") and state[name].ndim == 2:
            return int(state[name].shape[0])
    return None
