"""lifeloop checkpoints: weights plus what serving needs (architecture, labels, preprocessing).

Loaded with `torch.load(weights_only=True)`: a checkpoint is data, never code. A bare
state_dict is accepted too; the architecture and classes then come from the caller.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn

from lifeloop.errors import CheckpointError
from lifeloop.export.architectures import build, check_architecture, without_aux_heads
from lifeloop.export.structure import Structure, reshape
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
    # A structurally pruned model's layer sizes (lifeloop.export.structure); empty otherwise.
    structure: Structure = field(default_factory=dict)

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
        if self.structure:
            payload["structure"] = self.structure
        tmp = path.with_name(path.name + ".tmp")
        torch.save(payload, tmp)
        tmp.replace(path)
        return path

    def build_model(self) -> nn.Module:
        """The architecture with these weights loaded, in eval mode. Training-only heads
        (googlenet's aux1/aux2, inception_v3's AuxLogits) are left out, held or not; weights
        that do not fit are named, with the fix."""
        model = build(self.arch, len(self.labels), aux_heads=False)
        if self.structure:
            reshape(model, self.structure)
        state = without_aux_heads(self.arch, self.state_dict)
        misfit = _Misfit.of(model.state_dict(), state)
        if misfit:
            raise CheckpointError(self._misfit_message(state, misfit))
        try:
            model.load_state_dict(state)
        except RuntimeError as exc:  # what the key and shape comparison cannot see
            raise CheckpointError(self._misfit_message(state, misfit, exc)) from exc
        return model.eval()

    def _misfit_message(
        self, state: dict[str, torch.Tensor], misfit: _Misfit, exc: Exception | None = None
    ) -> str:
        classes = len(self.labels)
        head = _head_classes(state)
        held = f" (it holds {head} classes)" if head and head != classes else ""
        if state and all(k.startswith("module.") for k in state):
            fix = "save model.module.state_dict(): its keys carry DataParallel's 'module.' prefix"
        elif misfit.missing or misfit.unexpected:
            fix = (
                "pass the --arch and --num-classes/--labels the checkpoint was trained with, "
                "or rename its keys to that architecture's"
            )
        else:
            fix = "pass the --num-classes/--labels the checkpoint was trained with"
        detail = str(misfit) if misfit else _first_line(exc)
        return (
            f"checkpoint weights do not fit architecture {self.arch!r} with {classes} "
            f"classes{held}: {detail}; {fix}"
        )


@dataclass(frozen=True)
class _Misfit:
    """What keeps a state_dict from loading: keys the model has and it lacks, keys it has and
    the model lacks, and weights of another shape ("fc.weight is [10, 512] where ...")."""

    missing: list[str]
    unexpected: list[str]
    shapes: list[str]

    NAMED: ClassVar[int] = 3  # names shown per kind; the rest are counted

    @classmethod
    def of(cls, expected: dict[str, torch.Tensor], state: dict[str, torch.Tensor]) -> _Misfit:
        return cls(
            missing=[k for k in expected if k not in state],
            unexpected=[k for k in state if k not in expected],
            shapes=[
                f"{k} is {list(state[k].shape)} where the architecture has {list(v.shape)}"
                for k, v in expected.items()
                if k in state and state[k].shape != v.shape
            ],
        )

    def __bool__(self) -> bool:
        return bool(self.missing or self.unexpected or self.shapes)

    def __str__(self) -> str:
        parts = []
        if self.missing:
            parts.append(f"missing {self._first(self.missing)}")
        if self.unexpected:
            parts.append(f"unexpected {self._first(self.unexpected)}")
        if self.shapes:
            parts.append(self._first(self.shapes))
        return "; ".join(parts)

    def _first(self, names: list[str]) -> str:
        more = len(names) - self.NAMED
        return ", ".join(names[: self.NAMED]) + (f" (and {more} more)" if more > 0 else "")


def _first_line(exc: Exception | None) -> str:
    text = str(exc).strip() if exc else ""
    return text.splitlines()[0][:300] if text else type(exc).__name__


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
        structure=payload.get("structure", {}),
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
