"""Transport-free client logic: what a served classifier expects (read from its config) and
how images become batches and logits become labelled answers. Sync and async clients share it."""

from __future__ import annotations

import io
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from lifeloop.client._transport import InferRequest
from lifeloop.contract import (
    ANSWERED_BY_OUTPUT,
    CLASSIFIER_PARAM,
    INPUT_KINDS_PARAM,
    LABELS_PARAM,
    PREPROCESSING_PARAM,
    REQUEST_ID_OUTPUT,
    VERSION_OUTPUT,
)
from lifeloop.errors import ClientError, PreprocessingError
from lifeloop.preprocessing import Preprocessing
from lifeloop.repository import config as cfg
from lifeloop.scoring import softmax_top_k

ImageLike = str | Path | bytes | Image.Image | np.ndarray


@dataclass(frozen=True, kw_only=True)
class ModelInfo:
    """What the client needs to talk to one served classifier."""

    name: str
    input_name: str
    input_dims: tuple[int, ...]
    input_dtype: str
    output_name: str
    max_batch_size: int
    labels: tuple[str, ...]
    preprocessing: Preprocessing | None
    # A lifeloop router answers for this classifier, with model_version and request_id
    # outputs per image.
    routes_to: str | None = None
    # What each published version takes ("pixels" or "normalized"), when the config says.
    input_kinds: dict[int, str] = field(default_factory=dict)
    # The router names the model that answered each image (a cascade's light one, say).
    answers_by: bool = False

    def preprocessing_for(self, version: int | None) -> Preprocessing | None:
        """The recipe of what `version` takes (its kind; the newest's recipe otherwise), or
        the newest version's for None, which the server answers with its newest. A router
        takes what the newest version takes, whichever version answers."""
        routed = self.routes_to is not None
        kind = self.input_kinds.get(version) if version is not None and not routed else None
        if self.preprocessing is None or kind is None:
            return self.preprocessing
        return self.preprocessing.with_kind(kind)

    @property
    def outputs(self) -> list[str]:
        extra = [VERSION_OUTPUT, REQUEST_ID_OUTPUT] if self.routes_to else []
        if self.answers_by:
            extra.append(ANSWERED_BY_OUTPUT)
        return [self.output_name, *extra]

    def request(self, batch: np.ndarray, outputs: Sequence[str] | None = None) -> InferRequest:
        """An inference request of `batch` to this model, for `outputs` (default: all)."""
        return InferRequest(
            model=self.name,
            inputs={self.input_name: (batch, self.input_dtype)},
            outputs=tuple(self.outputs if outputs is None else outputs),
        )

    @staticmethod
    def routed_classifier(config: cfg.ModelConfig) -> str | None:
        """The classifier a lifeloop router fronts (a router answers with request ids); None
        for anything else, image ensembles included."""
        if not any(o.name == REQUEST_ID_OUTPUT for o in config.outputs):
            return None
        return config.parameters.get(CLASSIFIER_PARAM) or None

    @property
    def takes_encoded_images(self) -> bool:
        """An image ensemble: it takes JPEG/PNG bytes and preprocesses them itself."""
        return self.input_dtype == "BYTES"

    @classmethod
    def from_config(
        cls, config: cfg.ModelConfig, classifier: cfg.ModelConfig | None = None
    ) -> ModelInfo:
        """The client's view of `config`; for a router, `classifier` is the config of the
        model it fronts, which holds the labels and the preprocessing."""
        # A router's optional IMAGE input is the image ensemble's, not a client's.
        required = [spec for spec in config.inputs if not spec.optional]
        if len(required) != 1 or len(config.outputs) < 1:
            raise ClientError(
                f"model {config.name!r} has {len(required)} required inputs; lifeloop's "
                "classifier client needs exactly one image input"
            )
        (tensor,) = required
        described = classifier or config
        pre = described.json_parameter(PREPROCESSING_PARAM)
        return cls(
            name=config.name,
            input_name=tensor.name,
            input_dims=tensor.dims,
            input_dtype=tensor.data_type.triton_name,
            output_name=config.outputs[0].name,
            max_batch_size=config.max_batch_size,
            labels=tuple(described.json_parameter(LABELS_PARAM, [])),
            preprocessing=Preprocessing.from_dict(pre) if pre else None,
            routes_to=described.name if classifier is not None else None,
            input_kinds={
                int(v): kind for v, kind in described.json_parameter(INPUT_KINDS_PARAM, {}).items()
            },
            answers_by=classifier is not None
            and any(o.name == ANSWERED_BY_OUTPUT for o in config.outputs),
        )


@dataclass(frozen=True, kw_only=True)
class Classification:
    """Top-k answer for one input, and which model version gave it (through a router with a
    cascade, the light model's name and version where it answered)."""

    model: str
    version: int
    labels: tuple[str, ...]
    indices: tuple[int, ...]
    scores: tuple[float, ...]
    # Through a router: the id to attach feedback to.
    request_id: str | None = None

    @property
    def label(self) -> str:
        return self.labels[0]


def config_from_json(data: dict[str, Any]) -> cfg.ModelConfig:
    """A model config as Triton's HTTP API returns it -> ModelConfig."""
    from google.protobuf import json_format
    from tritonclient.grpc import model_config_pb2 as pb

    message = json_format.ParseDict(data, pb.ModelConfig(), ignore_unknown_fields=True)
    return cfg.from_proto(message)


def to_samples(
    inputs: Iterable[ImageLike], info: ModelInfo, version: int | None = None
) -> np.ndarray:
    """Images, image files or arrays -> one float32 batch of the model's input shape, as
    `version` takes it (pixels or normalized; None: the newest version).

    An array already shaped like the model's input (CHW, or NCHW) is taken as preprocessed;
    any other array is taken as image pixels (HW or HWC, uint8). For a model that takes
    encoded images (an image ensemble), each input becomes its file's bytes instead."""
    if info.takes_encoded_images:
        return to_encoded(inputs)
    samples: list[np.ndarray] = []
    for item in inputs:
        if isinstance(item, np.ndarray) and item.shape[-len(info.input_dims) :] == info.input_dims:
            batch = item.reshape((-1, *info.input_dims))
            samples.extend(batch.astype(np.float32, copy=False))
            continue
        pre = _preprocessing(info, version)
        try:
            if isinstance(item, bytes):
                with Image.open(io.BytesIO(item)) as image:
                    samples.append(pre.to_array(image))
            elif isinstance(item, np.ndarray):
                samples.append(pre.to_array(Image.fromarray(item)))
            elif isinstance(item, Image.Image):
                samples.append(pre.to_array(item))
            else:
                samples.append(pre.load(item))
        except PreprocessingError as exc:
            raise ClientError(str(exc)) from exc
        except OSError as exc:  # bytes Pillow cannot decode
            raise ClientError(f"cannot decode the image bytes ({exc}); pass PNG or JPEG") from exc
        except (TypeError, ValueError) as exc:
            raise ClientError(
                f"cannot use an array of shape {getattr(item, 'shape', '?')} as an image for "
                f"{info.name!r} ({exc}); pass HxW or HxWxC uint8 pixels, or {info.input_dims}"
            ) from exc
    if not samples:
        raise ClientError("classify() got no inputs; pass at least one image or array")
    return np.stack(samples).astype(np.float32, copy=False)


def to_encoded(inputs: Iterable[ImageLike]) -> np.ndarray:
    """Files, bytes, PIL images or uint8 pixel arrays -> a [n, 1] BYTES batch of encoded
    images: files and bytes go as they are, images and pixels as PNG."""
    encoded: list[bytes] = []
    for item in inputs:
        if isinstance(item, bytes):
            encoded.append(item)
        elif isinstance(item, str | Path):
            try:
                encoded.append(Path(item).read_bytes())
            except OSError as exc:
                raise ClientError(f"cannot read image file {item} ({exc.strerror})") from exc
        else:
            try:
                image = item if isinstance(item, Image.Image) else Image.fromarray(item)
            except (TypeError, ValueError) as exc:
                raise ClientError(
                    f"cannot use an array of shape {getattr(item, 'shape', '?')} as an image "
                    f"({exc}); pass HxW or HxWxC uint8 pixels, a file or its bytes"
                ) from exc
            buffer = io.BytesIO()
            image.save(buffer, format="PNG")
            encoded.append(buffer.getvalue())
    if not encoded:
        raise ClientError("classify() got no inputs; pass at least one image or array")
    return np.array(encoded, dtype=np.object_).reshape(-1, 1)


def chunks(batch: np.ndarray, size: int) -> Iterator[np.ndarray]:
    size = max(size, 1)
    for start in range(0, len(batch), size):
        yield batch[start : start + size]


def decode(
    logits: np.ndarray,
    *,
    info: ModelInfo,
    version: int | Sequence[int],
    top_k: int,
    request_ids: Sequence[str] | None = None,
    models: Sequence[str] | None = None,
) -> list[Classification]:
    """Logits [n, classes] -> softmax top-k per row, labelled with the model's labels.
    `version` is one version for all rows, or one per row (a router answers per image), and
    `models` the answering model per row, where the router says."""
    if logits.ndim != 2:
        raise ClientError(f"model {info.name!r} returned logits of shape {logits.shape}")
    order, top_scores = softmax_top_k(logits, top_k)
    versions = [version] * len(logits) if isinstance(version, int) else list(version)
    ids: Sequence[str | None] = request_ids if request_ids is not None else [None] * len(logits)
    by = models if models is not None else [info.routes_to or info.name] * len(logits)
    answers = []
    for row, idx, answered, rid, model in zip(top_scores, order, versions, ids, by, strict=True):
        answers.append(
            Classification(
                model=model,
                version=int(answered),
                labels=tuple(label_of(info.labels, int(i)) for i in idx),
                indices=tuple(int(i) for i in idx),
                scores=tuple(float(v) for v in row),
                request_id=rid,
            )
        )
    return answers


@dataclass(frozen=True)
class Routed:
    """Per image, what a router says about its answer; for a plain classifier, the version
    that answered and nothing else."""

    versions: int | list[int]
    request_ids: list[str] | None = None
    models: list[str] | None = None  # the answering model, where the router names it


def routed_answers(outputs: dict[str, np.ndarray], answered: int) -> Routed:
    if VERSION_OUTPUT not in outputs:
        return Routed(answered)
    versions = [int(v) for v in outputs[VERSION_OUTPUT].reshape(-1)]
    return Routed(
        versions, _texts(outputs.get(REQUEST_ID_OUTPUT)), _texts(outputs.get(ANSWERED_BY_OUTPUT))
    )


def _texts(column: np.ndarray | None) -> list[str] | None:
    if column is None:
        return None
    return [v.decode() if isinstance(v, bytes) else str(v) for v in column.reshape(-1)]


def label_of(labels: Sequence[str], index: int) -> str:
    return labels[index] if index < len(labels) else str(index)


def check_top_k(top_k: int) -> None:
    if top_k < 1:
        raise ClientError(f"top_k must be >= 1, got {top_k}")


def _preprocessing(info: ModelInfo, version: int | None = None) -> Preprocessing:
    pre = info.preprocessing_for(version)
    if pre is None:
        raise ClientError(
            f"model {info.name!r} has no lifeloop preprocessing in its config; pass arrays "
            f"shaped {info.input_dims}, or publish it with `lifeloop export`"
        )
    return pre
