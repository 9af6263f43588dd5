"""The router's batch planner, kept free of Triton: which version answers each request, how
one version's logits split back into per-request answers, what a cascade's light model
answers itself and what it escalates, and what the batch logs (records, request ids, kept
inputs). `lifeloop.serve.router` is the Triton glue around it.

Random draws come from an injected source, in a fixed order (one per request when a canary
takes traffic, then one per image when the uniform sample rate is below 1), so a seeded source
gives a reproducible batch. The uniform draw is made before the batch is answered, so that the
router can hash and write those inputs while the classifier runs; the uncertain answers the
keep rule adds (lifeloop.serve.sampling) are known only after."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from lifeloop.rollout.policy import RoutingPolicy
from lifeloop.scoring import softmax_top_k
from lifeloop.serve.sampling import KeepRule
from lifeloop.store.database import Prediction
from lifeloop.store.ids import new_id

__all__ = [
    "LIGHT_ROUTE",
    "Answer",
    "BatchLog",
    "Kept",
    "LightPass",
    "RandomSource",
    "Route",
    "answer_routes",
    "first_pass",
    "group_routes",
    "keep_decisions",
    "kept_rows",
    "label_name",
    "log_batch",
    "plan_routes",
    "sample_rows",
    "shadow_top1",
    "split_answers",
    "stack",
]

Route = tuple[str, int]  # ("champion" | "canary", version)
LIGHT_ROUTE = "light"  # the route logged for an image a cascade's light model answered
Infer = Callable[[int, np.ndarray], np.ndarray]  # (version, batch) -> logits
# (version, one batch per request) -> per request: its logits, or the error of its call
InferEach = Callable[[int, list[np.ndarray]], list[np.ndarray | Exception]]
# Per image: why it is kept (lifeloop.serve.sampling; None: not kept), and the chance an
# image answered as it was had of being kept (None: its request failed)
Decision = tuple[str | None, float | None]


class RandomSource(Protocol):
    def random(self) -> float: ...


@dataclass(frozen=True)
class LightPass:
    """A cascade's light model over the whole batch: its top-k per image, and which images it
    answers itself (top-1 softmax at or above the threshold). `trusted` are the heavy
    versions whose labels the light version's equal: for any other arm the light model's
    answer cannot be trusted (it does not know every class), so every image escalates."""

    model: str
    version: int
    logits: np.ndarray
    top: list[list[int]]
    scores: list[list[float]]
    confident: np.ndarray  # bool per image of the batch
    trusted: frozenset[int]


def first_pass(
    model: str,
    version: int,
    logits: np.ndarray,
    *,
    threshold: float,
    top_k: int,
    trusted: frozenset[int],
) -> LightPass:
    indices, probabilities = softmax_top_k(logits, top_k)
    return LightPass(
        model=model,
        version=version,
        logits=logits,
        top=indices.tolist(),
        scores=probabilities.tolist(),
        confident=probabilities[:, 0] >= threshold,
        trusted=trusted,
    )


@dataclass(frozen=True)
class Answer:
    """One request's answer: its rows of logits and their top-k, from the route's version;
    with a cascade, `by_light` says per image whether `light`'s model answered it instead."""

    logits: np.ndarray
    version: int
    route: str
    top: list[list[int]]  # per image: class indices, best first
    scores: list[list[float]]  # per image: their softmax scores
    light: LightPass | None = None
    by_light: tuple[bool, ...] = ()

    def answered_by(self, image: int) -> tuple[str | None, int, str]:
        """(the light model's name or None for the route's classifier, version, route)."""
        if self.light is not None and self.by_light[image]:
            return self.light.model, self.light.version, LIGHT_ROUTE
        return None, self.version, self.route

    def versions(self) -> np.ndarray:
        """The answering version per image, as a [n, 1] INT64 column."""
        versions = np.full((len(self.logits), 1), self.version, dtype=np.int64)
        if self.light is not None:
            versions[np.asarray(self.by_light, dtype=bool)] = self.light.version
        return versions


@dataclass(frozen=True)
class BatchLog:
    """What a batch logs: `records` in request then image order, and `request_ids` per
    request (None for a request whose version failed)."""

    records: list[Prediction]
    request_ids: list[list[str] | None]


@dataclass(frozen=True)
class Kept:
    """Per image of the batch: its content hash, its row in `blob` (the batch's kept-input
    file, whose rows are `kept_as`: see lifeloop.store.blobs) or None where it is not kept,
    and the keep rule's decision (`keep_decisions`)."""

    hashes: Sequence[str]
    rows: Sequence[int | None]
    blob: str | None
    kept_as: str | None = None
    decisions: Sequence[Decision] | None = None  # None: no rule recorded


def sample_rows(n_images: int, sample_rate: float, rng: RandomSource) -> list[int | None]:
    """Per image: its row among the kept inputs, or None. Every image is kept at a rate of 1
    (no draw); below it, one draw from `rng` per image."""
    return _numbered(sample_rate >= 1.0 or rng.random() < sample_rate for _ in range(n_images))


def keep_decisions(
    drawn: Sequence[int | None],
    answers: Sequence[Answer | Exception],
    arrays: Sequence[np.ndarray],
    *,
    rule: KeepRule,
    shadow: np.ndarray | None = None,
) -> list[Decision]:
    """Per image: why `rule` keeps it (None: not kept) and the chance it had, from its uniform
    draw (`drawn`, from `sample_rows`) and its answer. A failed request's images are not
    kept and have no chance: no record points at them. `shadow` is the candidate's top-1 per
    image when shadowing; it is compared only with answers the candidate did not give."""
    decisions: list[Decision] = []
    offset = 0
    for answer, array in zip(answers, arrays, strict=True):
        n = len(array)
        if isinstance(answer, Exception):
            decisions.extend([(None, None)] * n)
            offset += n
            continue
        for j in range(n):
            _, _, route = answer.answered_by(j)
            disagrees = (
                shadow is not None and route != "canary" and shadow[offset + j] != answer.top[j][0]
            )
            decisions.append(
                rule.decide(drawn[offset + j] is not None, answer.scores[j][0], bool(disagrees))
            )
        offset += n
    return decisions


def kept_rows(decisions: Sequence[Decision]) -> list[int | None]:
    """Per image: its row among the kept inputs, or None."""
    return _numbered(reason is not None for reason, _ in decisions)


def _numbered(keep: Iterable[bool]) -> list[int | None]:
    """Per image: its row among those kept (numbered from 0 in order), or None."""
    rows: list[int | None] = []
    kept = 0
    for k in keep:
        rows.append(kept if k else None)
        kept += k
    return rows


def plan_routes(policy: RoutingPolicy, n_requests: int, rng: RandomSource) -> list[Route]:
    """Per request: the candidate with the canary weight's probability, else the champion.
    Draws from `rng` only while a canary takes traffic."""
    candidate = policy.candidate if policy.canary_weight > 0 else None
    routes: list[Route] = []
    for _ in range(n_requests):
        if candidate is not None and rng.random() < policy.canary_weight:
            routes.append(("canary", candidate))
        else:
            routes.append(("champion", policy.champion))
    return routes


def group_routes(routes: Sequence[Route]) -> dict[Route, list[int]]:
    """Request indices per route, in order of first appearance: one classifier call each."""
    groups: dict[Route, list[int]] = defaultdict(list)
    for i, route in enumerate(routes):
        groups[route].append(i)
    return dict(groups)


def split_answers(
    logits: np.ndarray, sizes: Sequence[int], *, version: int, route: str, top_k: int
) -> list[Answer]:
    """One version's logits for its requests' concatenated images -> one Answer per request
    (`sizes` images each), with one top-k over the whole batch."""
    indices, probabilities = softmax_top_k(logits, top_k)
    top, top_scores = indices.tolist(), probabilities.tolist()
    answers = []
    start = 0
    for n in sizes:
        end = start + n
        answers.append(
            Answer(logits[start:end], version, route, top[start:end], top_scores[start:end])
        )
        start = end
    return answers


def answer_routes(
    arrays: Sequence[np.ndarray],
    routes: Sequence[Route],
    infer: Infer,
    top_k: int,
    *,
    infer_each: InferEach | None = None,
    light: LightPass | None = None,
    whole: np.ndarray | None = None,
) -> list[Answer | Exception]:
    """Per request: its Answer, or the error of its version's call (which fails only that
    version's requests). With `infer_each`, each request is its own call, so that a
    classifier's response cache sees one request's images as its key, not a batch's mix.
    `whole`, the arrays already concatenated, is sent as it is where one version takes every
    request (a batch of 224x224 images is 19 MB to copy again).

    With `light`, the light model's confident images (under an arm it is trusted for) are
    answered from it, and only the others go to their arm, one sub-batch per version; a
    request all of whose images the light model answers makes no arm call."""
    if light is None:
        return _answer_arms(arrays, routes, infer, top_k, infer_each, whole)
    offsets = np.cumsum([0, *(len(a) for a in arrays)])
    keeps = []
    for i, (_, version) in enumerate(routes):
        confident = light.confident[offsets[i] : offsets[i + 1]]
        keeps.append(confident if version in light.trusted else np.zeros_like(confident))
    escalated = [i for i, keep in enumerate(keeps) if not keep.all()]
    arm_answers = _answer_arms(
        [arrays[i][~keeps[i]] for i in escalated],
        [routes[i] for i in escalated],
        infer,
        top_k,
        infer_each,
    )
    answers: list[Answer | Exception] = []
    heavy = dict(zip(escalated, arm_answers, strict=True))
    for i, keep in enumerate(keeps):
        route, version = routes[i]
        arm = heavy.get(i)
        if isinstance(arm, Exception):
            answers.append(arm)
            continue
        answers.append(_merge(light, offsets[i], keep, arm, route, version))
    return answers


def _merge(
    light: LightPass, offset: int, keep: np.ndarray, arm: Answer | None, route: str, version: int
) -> Answer:
    """One request's answer from the light model's kept images and its arm's answer for the
    rest, back in the request's order."""
    n = len(keep)
    rows = range(offset, offset + n)
    if arm is not None and not keep.any():  # every image escalated
        return arm
    if arm is None:  # the light model answered every image
        logits = light.logits[offset : offset + n]
        top = [light.top[r] for r in rows]
        scores = [light.scores[r] for r in rows]
        return Answer(logits, version, route, top, scores, light, (True,) * n)
    logits = np.empty((n, arm.logits.shape[1]), dtype=arm.logits.dtype)
    logits[keep] = light.logits[offset : offset + n][keep]
    logits[~keep] = arm.logits
    escalated = iter(range(len(arm.top)))
    top, scores = [], []
    for j, r in enumerate(rows):
        if keep[j]:
            top.append(light.top[r])
            scores.append(light.scores[r])
        else:
            k = next(escalated)
            top.append(arm.top[k])
            scores.append(arm.scores[k])
    return Answer(logits, version, route, top, scores, light, tuple(bool(k) for k in keep))


def _answer_arms(
    arrays: Sequence[np.ndarray],
    routes: Sequence[Route],
    infer: Infer,
    top_k: int,
    infer_each: InferEach | None,
    whole: np.ndarray | None = None,
) -> list[Answer | Exception]:
    answers: list[Answer | Exception] = [RuntimeError("not routed") for _ in arrays]
    for (route, version), members in group_routes(routes).items():
        if infer_each is not None:
            results = infer_each(version, [arrays[i] for i in members])
            for i, result in zip(members, results, strict=True):
                answers[i] = (
                    result
                    if isinstance(result, Exception)
                    else split_answers(
                        result, [len(arrays[i])], version=version, route=route, top_k=top_k
                    )[0]
                )
            continue
        try:
            every = len(members) == len(arrays)  # then `whole` is theirs, in request order
            batch = whole if every and whole is not None else stack([arrays[i] for i in members])
            logits = infer(version, batch)
        except Exception as exc:  # the classifier's error for this version's requests
            for i in members:
                answers[i] = exc
            continue
        sizes = [len(arrays[i]) for i in members]
        split = split_answers(logits, sizes, version=version, route=route, top_k=top_k)
        for i, answer in zip(members, split, strict=True):
            answers[i] = answer
    return answers


def shadow_top1(
    policy: RoutingPolicy, arrays: Sequence[np.ndarray], infer: Infer
) -> np.ndarray | None:
    """The candidate's top-1 for every image of the batch, or None when not shadowing. A
    failing shadow never fails the answer: it is only not recorded."""
    if not policy.shadow or policy.candidate is None:
        return None
    try:
        logits = infer(policy.candidate, stack(arrays))
    except Exception:
        return None
    return np.argmax(logits, axis=1)


def stack(arrays: Sequence[np.ndarray]) -> np.ndarray:
    """One batch of `arrays`, without a copy when there is only one."""
    return arrays[0] if len(arrays) == 1 else np.concatenate(arrays)


def label_name(labels: Sequence[str], index: int) -> str:
    """The class name, or the index as text for a class the labels do not name (yet)."""
    return labels[index] if index < len(labels) else str(index)


def log_batch(
    answers: Sequence[Answer | Exception],
    arrays: Sequence[np.ndarray],
    *,
    model: str,
    labels: Sequence[str],
    policy: RoutingPolicy,
    shadow: np.ndarray | None,
    kept: Kept,
    new_id: Callable[[], str] = new_id,
) -> BatchLog:
    """One Prediction per answered image, pointing at its kept input (see `Kept`)."""
    records: list[Prediction] = []
    ids: list[list[str] | None] = []
    offset = 0  # the first image of request i in the batch (and in `shadow` and `kept`)
    for i, answer in enumerate(answers):
        n = len(arrays[i])
        if isinstance(answer, Exception):
            ids.append(None)
            offset += n
            continue
        request_ids = []
        for j in range(n):
            answered_by, version, route = answer.answered_by(j)
            # Shadow compares the candidate with whatever answered in its place: the
            # champion, or a cascade's light model, never the candidate itself.
            shadowed = shadow is not None and route != "canary"
            row = kept.rows[offset + j]
            kept_by, keep_rate = (
                (None, None) if kept.decisions is None else kept.decisions[offset + j]
            )
            rid = new_id()
            request_ids.append(rid)
            records.append(
                Prediction(
                    request_id=rid,
                    model=model,
                    version=version,
                    route=route,
                    answered_by=answered_by,
                    labels=[label_name(labels, k) for k in answer.top[j]],
                    scores=answer.scores[j],
                    content_hash=kept.hashes[offset + j],
                    blob=None if row is None else kept.blob,
                    blob_row=row,
                    kept_as=None if row is None else kept.kept_as,
                    kept_by=None if row is None else kept_by,
                    keep_rate=keep_rate,
                    shadow_version=policy.candidate if shadowed else None,
                    shadow_label=label_name(labels, shadow[offset + j])
                    if shadow is not None and shadowed
                    else None,
                )
            )
        ids.append(request_ids)
        offset += n
    return BatchLog(records=records, request_ids=ids)
