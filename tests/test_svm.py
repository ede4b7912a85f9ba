"""VOC07 linear-SVM protocol (selfsup.probes.svm) on small synthetic features."""

from __future__ import annotations

import math
import threading
import warnings

import numpy as np
import pytest
from sklearn.svm import LinearSVC

from selfsup.probes.metrics import mean_average_precision
from selfsup.probes.svm import DEFAULT_COSTS, _svm, l2_normalize, low_shot_indices, train_voc_svms

CLASSES = 3


def _data(n: int, seed: int, dims: int = 300, spread: float = 0.3) -> tuple[np.ndarray, np.ndarray]:
    """Multi-label images: each class adds its own direction to the features of its images."""
    rng = np.random.default_rng(seed)
    labels = np.where(rng.random((n, CLASSES)) < 0.35, 1, -1).astype(np.int8)
    directions = np.random.default_rng(1000).normal(size=(CLASSES, dims))
    features = np.maximum(labels, 0) @ directions + spread * rng.normal(size=(n, dims))
    return features, labels


def test_l2_normalize_gives_unit_rows_and_keeps_zero_rows() -> None:
    normalized = l2_normalize(np.array([[3.0, 4.0], [0.0, 0.0]], dtype=np.float32))
    assert normalized.dtype == np.float64
    np.testing.assert_allclose(normalized, [[0.6, 0.8], [0.0, 0.0]])


def test_separable_features_give_ap_one_with_costs_from_the_list() -> None:
    train_x, train_y = _data(60, seed=0)
    test_x, test_y = _data(40, seed=1)
    svms = train_voc_svms(train_x, train_y)
    assert svms.costs == list(DEFAULT_COSTS) and svms.cv_ap.shape == (CLASSES, len(DEFAULT_COSTS))
    assert all(cost in DEFAULT_COSTS for cost in svms.chosen_costs)
    scores = svms.decision_function(test_x)
    assert scores.shape == (40, CLASSES)
    aps, mean = mean_average_precision(scores, test_y, "area")
    assert min(aps) > 0.99 and mean > 0.99
    assert np.nanmax(svms.cv_ap, axis=1) == pytest.approx([1.0] * CLASSES, abs=0.01)


def test_same_model_as_plain_linear_svc_on_the_raw_features() -> None:
    # More dimensions than images: training runs in the span of the images; the result must be the
    # SVM that LinearSVC finds on the full normalised features.
    train_x, train_y = _data(50, seed=2, dims=400, spread=2.0)
    test_x, _ = _data(20, seed=3, dims=400)
    train_y[:5, 0] = 0
    svms = train_voc_svms(train_x, train_y, costs=[1.0])
    for c in range(CLASSES):
        kept = train_y[:, c] != 0
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            reference = _svm(1.0, 0).fit(l2_normalize(train_x)[kept], train_y[kept, c])
        np.testing.assert_allclose(svms.weights[c], reference.coef_[0], atol=1e-10)
        expected = reference.decision_function(l2_normalize(test_x))
        np.testing.assert_allclose(svms.decision_function(test_x)[:, c], expected, atol=1e-10)


def test_difficult_rows_are_left_out_of_training() -> None:
    train_x, train_y = _data(45, seed=4)
    svms = train_voc_svms(train_x, train_y, costs=[0.01, 1.0])
    # Extra images marked difficult for class 0 with features of class 0's opposite: if they were
    # used (as positives or negatives) they would move class 0's SVM.
    rng = np.random.default_rng(5)
    extra_x = -train_x[:10] + rng.normal(size=(10, train_x.shape[1]))
    extra_y = train_y[:10].copy()
    extra_y[:, 0] = 0
    extra_y[:, 1:] = 0
    with_difficult = train_voc_svms(np.vstack([train_x, extra_x]), np.vstack([train_y, extra_y]), costs=[0.01, 1.0])
    assert with_difficult.chosen_costs == svms.chosen_costs
    np.testing.assert_allclose(with_difficult.cv_ap, svms.cv_ap)
    # Equal up to where liblinear stops (tol 1e-4): the extra images change the rounding, not the problem.
    scale = np.abs(svms.weights).max()
    np.testing.assert_allclose(with_difficult.weights, svms.weights, rtol=0, atol=1e-3 * scale)
    np.testing.assert_allclose(with_difficult.intercepts, svms.intercepts, rtol=0, atol=1e-3 * scale)


def test_training_is_deterministic_for_a_seed() -> None:
    train_x, train_y = _data(45, seed=6, spread=3.0)
    first = train_voc_svms(train_x, train_y, costs=[0.01, 1.0, 100.0], seed=3)
    second = train_voc_svms(train_x, train_y, costs=[0.01, 1.0, 100.0], seed=3)
    np.testing.assert_array_equal(first.cv_ap, second.cv_ap)
    np.testing.assert_array_equal(first.weights, second.weights)


def test_svms_are_fit_in_the_calling_thread(monkeypatch: pytest.MonkeyPatch) -> None:
    # liblinear's shuffling generator is process-wide and seeded by each fit, so fits in concurrent
    # threads make the result depend on timing. A race cannot be provoked reliably; that no fit runs
    # outside the calling thread can be checked (this failed with the former 2-thread pool).
    threads = set()
    fit = LinearSVC.fit

    def recorded_fit(self: LinearSVC, *args: object, **kwargs: object) -> LinearSVC:
        threads.add(threading.get_ident())
        return fit(self, *args, **kwargs)

    monkeypatch.setattr(LinearSVC, "fit", recorded_fit)
    train_x, train_y = _data(45, seed=6)
    train_voc_svms(train_x, train_y, costs=[0.01, 1.0])
    assert threads == {threading.get_ident()}


def test_class_without_positives_gets_nan_scores_and_ap() -> None:
    train_x, train_y = _data(40, seed=7)
    train_y[:, 1] = -1
    train_y[:3, 1] = 0  # difficult only: still no positive to train on
    test_x, test_y = _data(30, seed=8)
    svms = train_voc_svms(train_x, train_y, costs=[0.1, 1.0])
    assert svms.chosen_costs[1] is None and np.isnan(svms.cv_ap[1]).all()
    scores = svms.decision_function(test_x)
    assert np.isnan(scores[:, 1]).all() and np.isfinite(scores[:, [0, 2]]).all()
    aps, mean = mean_average_precision(scores, test_y, "voc07")
    assert math.isnan(aps[1]) and mean == pytest.approx(np.mean([aps[0], aps[2]]))


def test_class_too_small_to_cross_validate_takes_the_pooled_cost() -> None:
    train_x, train_y = _data(40, seed=9)
    train_y[:, 2] = -1
    train_y[0, 2] = 1  # one positive: no fold split can hold it out and train without it
    costs = [1e-6, 0.1, 10.0]
    svms = train_voc_svms(train_x, train_y, costs=costs)
    assert np.isnan(svms.cv_ap[2]).all()
    pooled = costs[int(np.argmax(svms.cv_ap[:2].mean(axis=0)))]
    assert svms.chosen_costs[2] == pooled and np.isfinite(svms.weights[2]).all()


def test_low_shot_indices_cover_every_class_and_repeat_for_a_seed() -> None:
    _, labels = _data(200, seed=10)
    labels[:5, 0] = 0  # difficult images do not count as positives
    for shots in (1, 4):
        sample = low_shot_indices(labels, shots, seed=0)
        assert ((labels[sample] == 1).sum(axis=0) >= shots).all()
        assert np.array_equal(sample, np.unique(sample))
        np.testing.assert_array_equal(sample, low_shot_indices(labels, shots, seed=0))
    assert not np.array_equal(low_shot_indices(labels, 4, seed=0), low_shot_indices(labels, 4, seed=1))


def test_low_shot_uses_all_positives_of_a_rare_class() -> None:
    labels = -np.ones((30, 2), dtype=np.int8)
    labels[:20, 0] = 1
    labels[[25, 27], 1] = 1
    sample = low_shot_indices(labels, 5, seed=0)
    assert {25, 27} <= set(sample.tolist())
    assert (labels[sample, 0] == 1).sum() >= 5
