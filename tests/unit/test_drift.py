"""The drift test's logic: the top-k map both samples go through, the Bonferroni correction,
the reference file, and the false-alarm rate it promises. The real path (publish, router,
store, `lifeloop drift`) is tests/integration/test_drift.py."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import ks_2samp

from lifeloop.drift import (
    Reference,
    ks_test,
    logged_k,
    logged_scores,
    top_k_softmax,
    window_drift,
)

LABELS = ("a", "b", "c", "d")


def draws(rng: np.random.Generator, n: int, concentration=(4.0, 2.0, 1.0, 0.5)) -> np.ndarray:
    """Softmax-like rows: Dirichlet draws, a fixed class order of confidence."""
    return rng.dirichlet(concentration, size=n).astype(np.float32)


def test_top_k_softmax_keeps_the_k_largest_where_they_are() -> None:
    probs = np.array([[0.1, 0.6, 0.2, 0.1], [0.4, 0.05, 0.05, 0.5]])
    np.testing.assert_allclose(top_k_softmax(probs, 2), [[0, 0.6, 0.2, 0], [0.4, 0, 0, 0.5]])
    assert top_k_softmax(probs, 4) is probs


def test_logged_answers_become_a_matrix_over_the_version_labels() -> None:
    rows = [(["b", "c"], [0.6, 0.2]), (["d", "zz"], [0.5, 0.3])]  # zz: not this version's
    np.testing.assert_allclose(logged_scores(rows, LABELS), [[0, 0.6, 0.2, 0], [0, 0, 0, 0.5]])
    assert logged_k(rows) == 2


def test_the_p_value_is_the_smallest_class_p_value_times_the_classes() -> None:
    rng = np.random.default_rng(0)
    reference, window = draws(rng, 500), draws(rng, 200, (2.0, 2.0, 1.0, 0.5))
    found = ks_test(reference, window, LABELS)
    per_class = [ks_2samp(reference[:, j], window[:, j]).pvalue for j in range(4)]
    assert found.p_value == pytest.approx(min(1.0, 4 * min(per_class)))
    assert found.worst_class == LABELS[int(np.argmin(per_class))]
    assert (found.reference, found.window) == (500, 200)


def test_a_class_no_answer_ever_ranks_is_left_out_of_the_correction() -> None:
    rng = np.random.default_rng(1)
    reference, window = draws(rng, 300), draws(rng, 100, (2.0, 2.0, 1.0, 0.5))
    reference[:, 3] = window[:, 3] = 0  # never in anyone's top k
    per_class = [ks_2samp(reference[:, j], window[:, j]).pvalue for j in range(3)]
    assert ks_test(reference, window, LABELS).p_value == pytest.approx(min(1.0, 3 * min(per_class)))


def test_false_alarms_stay_under_alpha_and_a_prior_shift_is_seen() -> None:
    """200 windows from the reference's own distribution alarm at most alpha of the time
    (Bonferroni is conservative); 200 windows where one class is twice as common all do."""
    rng = np.random.default_rng(2)
    reference = Reference(LABELS, draws(rng, 1000))
    expected = reference.top_k(3)

    def alarms(make) -> float:
        return float(
            np.mean(
                [ks_test(expected, top_k_softmax(make(), 3), LABELS).drifted for _ in range(200)]
            )
        )

    assert alarms(lambda: draws(rng, 300)) <= 0.05
    assert alarms(lambda: draws(rng, 300, (4.0, 4.0, 1.0, 0.5))) >= 0.9


def test_a_window_of_logged_answers_is_mapped_to_the_k_it_was_logged_with() -> None:
    """The router logged top 2: the reference is cut to top 2 too, so identical answers
    are identical samples."""
    rng = np.random.default_rng(3)
    probs = draws(rng, 200)
    reference = Reference(LABELS, probs)
    order = np.argsort(-probs, axis=1)[:, :2]
    rows = [
        ([LABELS[j] for j in row], [float(probs[i, j]) for j in row]) for i, row in enumerate(order)
    ]
    found = window_drift(reference, rows)
    assert found.statistic == pytest.approx(0, abs=1e-6) and not found.drifted


def test_the_reference_file_round_trips(tmp_path) -> None:
    rng = np.random.default_rng(4)
    reference = Reference.of_logits(rng.normal(size=(50, 4)).astype(np.float32), LABELS)
    path = tmp_path / "ref.npz"
    path.write_bytes(reference.to_bytes())
    back = Reference.read(path)
    assert back.labels == LABELS
    np.testing.assert_array_equal(back.scores, reference.scores)
    np.testing.assert_allclose(back.scores.sum(axis=1), 1, atol=1e-6)


def test_samples_over_different_classes_are_refused() -> None:
    with pytest.raises(ValueError, match="both need 4"):
        ks_test(np.zeros((3, 4)), np.zeros((3, 3)), LABELS)
