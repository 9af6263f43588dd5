"""Logits -> the classes a caller sees: shared by the client and the router, so that a logged
prediction and a returned one are the same numbers."""

from __future__ import annotations

import numpy as np


def softmax(logits: np.ndarray) -> np.ndarray:
    """Softmax per row of logits [n, classes]."""
    shifted = logits - logits.max(axis=1, keepdims=True)
    probs = np.exp(shifted)
    return np.asarray(probs / probs.sum(axis=1, keepdims=True))


def softmax_top_k(logits: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Softmax top-k per row of logits [n, classes]: (indices [n, k], scores [n, k])."""
    probs = softmax(logits)
    k = max(1, min(k, probs.shape[1]))
    order = np.argsort(-probs, axis=1, kind="stable")[:, :k]
    return order, np.take_along_axis(probs, order, axis=1)
