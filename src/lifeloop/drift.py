"""Has served traffic drifted from what a version was published on?

Black-box shift detection on the classifier's own softmax (Rabanser et al., "Failing
Loudly", NeurIPS 2019): a two-sample test between a reference sample (the version's softmax
on held-out images, stored with the version when it is published) and a window of recent
answers. Per class, a Kolmogorov-Smirnov test compares the distributions of that class's
score; the smallest p-value times the number of classes tested (Bonferroni) is the
window's p-value, so the test keeps its false-alarm rate at `alpha` however many classes
there are. A class neither sample ever ranks in its top k is not tested.

The prediction log keeps each answer's top-k scores, not the whole softmax. Both samples are
therefore put through the same map before the test: a class's score where it is among the
top k, and 0 where it is not (`top_k_softmax`). With k at least the number of classes this is
the softmax itself; with fewer it is a fixed function of it, and a shift that moves the
softmax moves it too. The test is exact either way, because both samples are mapped alike.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from lifeloop.scoring import softmax

# A version's reference: its softmax on (at most this many) held-out images.
REFERENCE_NAME = "drift_reference.npz"
REFERENCE_IMAGES = 1000
ALPHA = 0.05
# Fewer recent answers than this and the test says nothing either way.
MIN_WINDOW = 30


@dataclass(frozen=True)
class Reference:
    """A version's softmax on held-out images, by class name."""

    labels: tuple[str, ...]
    scores: np.ndarray  # [n, len(labels)], float32, rows sum to 1

    def top_k(self, k: int) -> np.ndarray:
        """The reference as the prediction log sees it: top-k scores, 0 elsewhere."""
        return top_k_softmax(self.scores, k)

    def to_bytes(self) -> bytes:
        buffer = io.BytesIO()
        np.savez_compressed(
            buffer, scores=self.scores.astype(np.float32), labels=np.array(self.labels)
        )
        return buffer.getvalue()

    @classmethod
    def read(cls, path: Path) -> Reference:
        with np.load(path, allow_pickle=False) as data:
            return cls(tuple(str(x) for x in data["labels"]), data["scores"].astype(np.float32))

    @classmethod
    def of_logits(cls, logits: np.ndarray, labels: Sequence[str]) -> Reference:
        return cls(tuple(labels), softmax(logits).astype(np.float32))


@dataclass(frozen=True)
class DriftResult:
    """One window tested against one reference."""

    statistic: float  # the largest per-class KS distance
    p_value: float  # Bonferroni: the smallest per-class p-value times the classes tested
    worst_class: str  # the class whose scores moved most (smallest p-value)
    reference: int  # images in the reference
    window: int  # answers in the window
    alpha: float

    @property
    def drifted(self) -> bool:
        return self.p_value < self.alpha

    @property
    def verdict(self) -> str:
        return "drift" if self.drifted else "no drift"

    def to_dict(self) -> dict[str, object]:
        return {
            "statistic": self.statistic,
            "p_value": self.p_value,
            "worst_class": self.worst_class,
            "reference": self.reference,
            "window": self.window,
            "alpha": self.alpha,
            "drifted": self.drifted,
        }


def top_k_softmax(probs: np.ndarray, k: int) -> np.ndarray:
    """Each row's k largest scores where they are, 0 elsewhere."""
    if k >= probs.shape[1]:
        return probs
    order = np.argsort(-probs, axis=1, kind="stable")[:, :k]
    kept = np.zeros_like(probs)
    np.put_along_axis(kept, order, np.take_along_axis(probs, order, axis=1), axis=1)
    return kept


def logged_scores(
    rows: Sequence[tuple[Sequence[str], Sequence[float]]], labels: Sequence[str]
) -> np.ndarray:
    """Logged answers (top-k labels and scores) as a [n, classes] matrix over `labels`, 0
    where a class is not in an answer's top k. Labels the version does not know are left
    out (an answer logged under another label set has none here)."""
    column = {name: i for i, name in enumerate(labels)}
    matrix = np.zeros((len(rows), len(labels)), dtype=np.float32)
    for i, (names, scores) in enumerate(rows):
        for name, score in zip(names, scores, strict=True):
            j = column.get(name)
            if j is not None:
                matrix[i, j] = score
    return matrix


def logged_k(rows: Sequence[tuple[Sequence[str], Sequence[float]]]) -> int:
    """The k the answers were logged with (the router's top_k, or fewer classes)."""
    return max((len(names) for names, _ in rows), default=0)


def ks_test(
    reference: np.ndarray, window: np.ndarray, labels: Sequence[str], *, alpha: float = ALPHA
) -> DriftResult:
    """Per-class two-sample KS between `reference` and `window` ([n, classes] each, mapped
    alike), Bonferroni-corrected over the classes."""
    from scipy.stats import ks_2samp

    if reference.shape[1] != window.shape[1] or reference.shape[1] != len(labels):
        raise ValueError(
            f"reference has {reference.shape[1]} classes and the window {window.shape[1]}; "
            f"both need {len(labels)}"
        )
    statistics = np.zeros(len(labels))
    p_values = np.ones(len(labels))
    tested = 0
    for j in range(len(labels)):
        a, b = reference[:, j], window[:, j]
        if not a.any() and not b.any():
            continue  # never in anyone's top k: nothing to compare, and not counted
        found = ks_2samp(a, b)
        statistics[j], p_values[j] = float(found.statistic), float(found.pvalue)
        tested += 1
    worst = int(np.argmin(p_values))
    return DriftResult(
        statistic=float(statistics.max()),
        p_value=min(1.0, float(p_values[worst]) * max(tested, 1)),
        worst_class=str(labels[worst]),
        reference=len(reference),
        window=len(window),
        alpha=alpha,
    )


def window_drift(
    reference: Reference,
    rows: Sequence[tuple[Sequence[str], Sequence[float]]],
    *,
    alpha: float = ALPHA,
) -> DriftResult:
    """Logged answers of one version against its reference, mapped to the same top k."""
    k = logged_k(rows) or len(reference.labels)
    return ks_test(
        reference.top_k(k), logged_scores(rows, reference.labels), reference.labels, alpha=alpha
    )
