"""The I/O-free half of a classifier client: which requests to send and what their results
mean. LifeloopClient and AsyncLifeloopClient each own a Session and only carry its requests
over their transport, so that the two are written once and differ by `await`."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

from lifeloop.client._codec import (
    Classification,
    ImageLike,
    ModelInfo,
    chunks,
    decode,
    routed_answers,
    to_samples,
)
from lifeloop.client._transport import InferRequest, InferResult
from lifeloop.contract import ACCEPTED_OUTPUT, LABEL_INPUT, REQUEST_ID_INPUT
from lifeloop.errors import ClientError
from lifeloop.repository.config import ModelConfig


class Session:
    """Requests and answers for one client, and the ModelInfo of each model it has asked."""

    def __init__(self) -> None:
        self._info: dict[str, ModelInfo] = {}

    def known(self, model: str, *, refresh: bool = False) -> ModelInfo | None:
        """`model`'s info as read before; None when its config is to be read (again)."""
        return None if refresh else self._info.get(model)

    def learn(self, model: str, config: ModelConfig, classifier: ModelConfig | None) -> ModelInfo:
        """Remember `model`'s info from its config and, for a router, the config of the
        classifier it fronts (ModelInfo.routed_classifier names it)."""
        self._info[model] = ModelInfo.from_config(config, classifier)
        return self._info[model]

    def batches(
        self, inputs: Iterable[ImageLike], info: ModelInfo, version: int | None = None
    ) -> list[InferRequest]:
        """classify's requests: the inputs as one batch, as `version` takes them, sent in
        parts of max_batch_size."""
        batch = to_samples(inputs, info, version)
        return [info.request(part) for part in chunks(batch, info.max_batch_size)]

    def outgrown(self, info: ModelInfo, result: InferResult) -> bool:
        """Whether the answer has more classes than `info` has labels: a newer version added
        classes, and its labels are in the refreshed config."""
        return bool(result.outputs[info.output_name].shape[1] > len(info.labels))

    def answers(self, info: ModelInfo, result: InferResult, top_k: int) -> list[Classification]:
        """One classify request's result -> top-k answers, one per image."""
        routed = routed_answers(result.outputs, result.version)
        return decode(
            result.outputs[info.output_name],
            info=info,
            version=routed.versions,
            top_k=top_k,
            request_ids=routed.request_ids,
            models=routed.models,
        )

    def logits(self, result: InferResult, output: str) -> tuple[Any, int]:
        """A raw request's result -> (logits, the version that answered; through a router, the
        version that answered its first image)."""
        versions = routed_answers(result.outputs, result.version).versions
        first = versions[0] if isinstance(versions, list) and versions else result.version
        return result.outputs[output], int(first)

    def feedback(
        self, request_ids: Sequence[str], labels: Sequence[str], model: str
    ) -> InferRequest | None:
        """The request to the feedback model `model` that attaches `labels` to `request_ids`,
        one BYTES row per pair; None for no ids."""
        if len(request_ids) != len(labels):
            raise ClientError(
                f"feedback got {len(request_ids)} request ids and {len(labels)} labels; "
                "pass one label per id"
            )
        if not request_ids:
            return None
        ids = np.array([[str(r).encode()] for r in request_ids], dtype=np.object_)
        names = np.array([[str(v).encode()] for v in labels], dtype=np.object_)
        return InferRequest(
            model=model,
            inputs={REQUEST_ID_INPUT: (ids, "BYTES"), LABEL_INPUT: (names, "BYTES")},
            outputs=(ACCEPTED_OUTPUT,),
        )


def not_ready(url: str, timeout_s: float, model: str | None) -> ClientError:
    what = f"model {model!r} on " if model else ""
    return ClientError(
        f"{what}Triton at {url} was not ready within {timeout_s:g}s; check the server log, or "
        "that --url points at it",
        model=model,
        url=url,
    )
