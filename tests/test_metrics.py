"""Average precision (selfsup.probes.metrics) against hand-computed rankings and sklearn."""

from __future__ import annotations

import math

import numpy as np
import pytest
from sklearn.metrics import average_precision_score, precision_recall_curve

from selfsup.probes.metrics import ap_from_precision_recall, average_precision, mean_average_precision


def _ranked(labels: list[int]) -> tuple[np.ndarray, np.ndarray]:
    """Scores that rank ``labels`` in the given order (first = highest score)."""
    return -np.arange(len(labels), dtype=float), np.array(labels)


@pytest.mark.parametrize("method", ["voc07", "area"])
def test_perfect_ranking_scores_one(method):
    scores, targets = _ranked([1, 1, 1, -1, -1])
    assert average_precision(scores, targets, method) == pytest.approx(1.0)


def test_known_ranking_matches_hand_computed_values():
    # Ranked: -, +, +, -, +. Precision at the hits: 1/2 (recall 1/3), 2/3 (2/3), 3/5 (1).
    scores, targets = _ranked([-1, 1, 1, -1, 1])
    # Envelope: 2/3 up to recall 2/3, then 3/5.
    assert average_precision(scores, targets, "area") == pytest.approx((2 / 3 + 2 / 3 + 3 / 5) / 3)
    # 11-point: t = 0 .. 0.6 reach precision 2/3, t = 0.7 .. 1 only 3/5.
    assert average_precision(scores, targets, "voc07") == pytest.approx((7 * 2 / 3 + 4 * 3 / 5) / 11)


def test_eleven_point_counts_a_recall_of_exactly_three_tenths():
    # 3 hits (recall 0.3, precision 1), 7 misses, 7 hits: only the first 3 reach precision 1, so
    # t = 0.3 must see recall 0.3; np.arange(0, 1.1, 0.1)[3] = 0.30000000000000004 would not.
    scores, targets = _ranked([1] * 3 + [-1] * 7 + [1] * 7)
    assert average_precision(scores, targets, "voc07") == pytest.approx((4 * 1 + 7 * 10 / 17) / 11)


@pytest.mark.parametrize("method", ["voc07", "area"])
def test_tied_scores_do_not_depend_on_input_order(method):
    scores = np.array([0.9, 0.5, 0.5, 0.5, 0.5, 0.1])
    targets = np.array([1, 1, -1, -1, 1, -1])
    results = set()
    for seed in range(10):
        order = np.random.default_rng(seed).permutation(len(scores))
        results.add(average_precision(scores[order], targets[order], method))
    assert len(results) == 1
    # The tie enters as one threshold: recall 1/3 at precision 1, then recall 1 at precision 3/5.
    expected = {"area": 1 / 3 * 1 + 2 / 3 * 3 / 5, "voc07": (4 * 1 + 7 * 3 / 5) / 11}[method]
    assert results.pop() == pytest.approx(expected)


@pytest.mark.parametrize("method", ["voc07", "area"])
def test_ignored_items_do_not_change_ap(method):
    scores, targets = _ranked([-1, 1, 1, -1, 1])
    base = average_precision(scores, targets, method)
    with_ignored = np.concatenate([targets, [0, 0, 0]])
    extra_scores = np.concatenate([scores, [10.0, 0.5, -10.0]])  # top, middle and bottom of the ranking
    assert average_precision(extra_scores, with_ignored, method) == pytest.approx(base)


def test_no_positives_or_nan_scores_give_nan():
    assert math.isnan(average_precision(np.array([0.3, 0.2]), np.array([-1, 0])))
    assert math.isnan(average_precision(np.array([np.nan, np.nan]), np.array([1, -1])))


def test_mean_excludes_nan_classes():
    scores = np.array([[0.9, 0.1, 0.5], [0.2, 0.8, 0.4], [0.1, 0.7, 0.3]])
    labels = np.array([[1, -1, -1], [-1, 1, -1], [-1, -1, 0]])  # class 2 has no positive
    aps, mean = mean_average_precision(scores, labels, "area")
    assert aps[:2] == [pytest.approx(1.0), pytest.approx(1.0)] and math.isnan(aps[2])
    assert mean == pytest.approx(1.0)
    _, all_nan = mean_average_precision(scores, np.full_like(labels, -1))
    assert math.isnan(all_nan)


def test_area_matches_sklearn_when_precision_never_rises():
    # Hits at ranks 1, 2, 4, 7: precision 1, 1, 3/4, 4/7 never rises, so the envelope is the curve
    # itself and the area equals sklearn's (uninterpolated) average precision.
    scores, targets = _ranked([1, 1, -1, 1, -1, -1, 1])
    assert average_precision(scores, targets, "area") == pytest.approx(average_precision_score(targets == 1, scores))


def test_area_is_sklearn_curve_under_its_envelope_with_ties():
    # In general area >= sklearn's AP (interpolation only raises precision), with equality as above;
    # on sklearn's own precision/recall points (ties grouped the same way) the areas agree exactly.
    rng = np.random.default_rng(0)
    for _ in range(20):
        scores = rng.integers(0, 8, size=40).astype(float)  # many ties
        targets = np.where(rng.random(40) < 0.3, 1, -1)
        targets[0] = 1
        precision, recall, _ = precision_recall_curve(targets == 1, scores)
        ours = average_precision(scores, targets, "area")
        assert ours == pytest.approx(ap_from_precision_recall(precision[::-1], recall[::-1], "area"))
        assert ours >= average_precision_score(targets == 1, scores) - 1e-12


def test_ap_from_precision_recall_empty_curve_and_unknown_method():
    assert ap_from_precision_recall(np.array([]), np.array([]), "voc07") == 0.0
    assert ap_from_precision_recall(np.array([]), np.array([]), "area") == 0.0
    with pytest.raises(ValueError, match="unknown AP method"):
        ap_from_precision_recall(np.array([1.0]), np.array([1.0]), "voc12")
