"""VOC07 linear-SVM protocol of Goyal et al. 2019 ("Scaling and benchmarking self-supervised visual
representation learning"), as in their fair_self_supervision_benchmark / VISSL code.

Per class, on L2-normalised features: a linear SVM (liblinear via sklearn's `LinearSVC`: squared
hinge, L2 penalty, dual solver, tol 1e-4, max_iter 2000, intercept_scaling 1, class_weight
{1: 2, -1: 1}) for every cost in `DEFAULT_COSTS`, scored by k-fold cross-validated AP on the
training (trainval) features; the cost with the best mean AP is retrained on all training images.

Where this module differs from the benchmark code, and why:

* Difficult images (label 0) are left out of training, as VOC leaves them out of AP: they are
  neither clear positives nor negatives. The benchmark's k-fold script trains on them as negatives
  (its low-shot script leaves them out, and both leave them out of testing).
* Folds are stratified per class and shuffled with ``seed``: the benchmark's are unshuffled, which
  on id lists sorted by class (many VOC-format exports) gives folds of different content.
* CV scores folds with this toolkit's AP (``ap_method``, by default the area under the precision
  envelope that the benchmark reports on test) rather than sklearn's uninterpolated AP.
* A class with too few positives or negatives for ``folds``-fold CV (as in low-shot training) uses
  fewer folds, down to 2; below that it takes the cost that is best on average over the classes
  that could be cross-validated, or, if none could, the middle of the sorted cost list. (The
  benchmark's low-shot evaluation picks the cost by test AP, which this toolkit never does.)
* A class without positives or without negatives gets no SVM: its scores are NaN, hence so is its
  AP, which `mean_average_precision` leaves out of the mean.
* When there are fewer images than feature dimensions, features are first projected onto an
  orthonormal basis of the span of the training images. The dual solver only sees inner products
  between training images, which the projection keeps, and the weight vector lies in that span,
  so the solution is the same; each fit just costs (images / dims) as much.
* SVMs are fit one after another in the calling thread. liblinear shuffles with one process-wide
  generator that each fit seeds: fits in concurrent threads (here or in a caller) interleave their
  draws, and the result then depends on timing.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from sklearn.exceptions import ConvergenceWarning
from sklearn.model_selection import StratifiedKFold
from sklearn.svm import LinearSVC

from selfsup.probes.metrics import AP_METHODS, average_precision

# The benchmark's VOC07 cost list: ten powers of ten, and 0.5**4 .. 0.5**19 that its
# svm_helper.parse_cost_list always appends. On equal CV AP the earlier cost wins, as there.
DEFAULT_COSTS: tuple[float, ...] = (1e-7, 1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 0.1, 1.0, 10.0, 100.0) + tuple(
    0.5**power for power in range(4, 20)
)


def l2_normalize(features: np.ndarray) -> np.ndarray:
    """Rows scaled to unit L2 norm, as float64 (liblinear's precision); all-zero rows stay zero.

    (The benchmark divides by norm + 1e-5 instead, which shrinks rows of small norm.)"""
    features = np.asarray(features, dtype=np.float64)
    norms = np.linalg.norm(features, axis=1, keepdims=True)
    return features / np.maximum(norms, np.finfo(np.float64).tiny)


@dataclass
class VocSvms:
    """One linear SVM per class, in the space of the L2-normalised input features."""

    costs: list[float]  # the candidate costs, in the order tried
    cv_ap: np.ndarray  # C x len(costs) mean cross-validated AP; NaN rows: class not cross-validated
    chosen_costs: list[float | None]  # per class; None: no SVM (no positives or no negatives)
    weights: np.ndarray  # C x D; NaN rows for classes without an SVM
    intercepts: np.ndarray  # C

    def decision_function(self, features: np.ndarray) -> np.ndarray:
        """N x C SVM scores of ``features`` (normalised here, like the training features)."""
        features = np.asarray(features)
        dims = self.weights.shape[1]
        if features.ndim != 2 or features.shape[1] != dims:
            raise ValueError(f"features of shape {features.shape}: the SVMs take N x {dims}")
        return l2_normalize(features) @ self.weights.T + self.intercepts


def _svm(cost: float, seed: int) -> LinearSVC:
    return LinearSVC(
        C=cost,
        class_weight={1: 2, -1: 1},
        intercept_scaling=1.0,
        penalty="l2",
        loss="squared_hinge",
        tol=1e-4,
        dual=True,
        max_iter=2000,
        random_state=seed,  # liblinear shuffles its coordinates; None would draw a fresh seed
    )


def _kept(features: np.ndarray, targets: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    kept = targets != 0
    return features[kept], targets[kept].astype(np.int64)


def _trainable(targets: np.ndarray) -> bool:
    return bool((targets == 1).any() and (targets == -1).any())


def _cross_validate(
    features: np.ndarray, targets: np.ndarray, costs: Sequence[float], folds: int, seed: int, ap_method: str
) -> np.ndarray:
    """Mean held-out AP per cost; all NaN when the class has fewer than 2 positives or negatives."""
    features, targets = _kept(features, targets)
    folds = min(folds, int((targets == 1).sum()), int((targets == -1).sum()))
    if folds < 2:
        return np.full(len(costs), np.nan)
    splitter = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    aps = np.zeros((folds, len(costs)))
    for fold, (train, held_out) in enumerate(splitter.split(features, targets)):
        # one copy of the fold for all costs (on VOC07-sized features, 100+ MB each)
        train_x, train_y = features[train], targets[train]
        held_out_x, held_out_y = features[held_out], targets[held_out]
        for column, cost in enumerate(costs):
            scores = _svm(cost, seed).fit(train_x, train_y).decision_function(held_out_x)
            aps[fold, column] = average_precision(scores, held_out_y, ap_method)
    return aps.mean(axis=0)


def _choose_costs(cv_ap: np.ndarray, costs: Sequence[float], trainable: Sequence[bool]) -> list[float | None]:
    validated = ~np.isnan(cv_ap).all(axis=1)
    if validated.any():
        fallback = costs[int(np.argmax(cv_ap[validated].mean(axis=0)))]
    else:
        fallback = sorted(costs)[(len(costs) - 1) // 2]
    return [
        (costs[int(np.argmax(row))] if valid else fallback) if can_train else None
        for row, valid, can_train in zip(cv_ap, validated, trainable)
    ]


def _fit(features: np.ndarray, targets: np.ndarray, cost: float, seed: int) -> tuple[np.ndarray, float]:
    model = _svm(cost, seed).fit(*_kept(features, targets))
    return model.coef_[0], float(model.intercept_[0])


def train_voc_svms(
    features: np.ndarray,
    labels: np.ndarray,
    costs: Sequence[float] = DEFAULT_COSTS,
    folds: int = 3,
    seed: int = 0,
    *,
    ap_method: str = "area",
) -> VocSvms:
    """Per-class SVMs on N x D ``features`` with N x C ``labels`` (1 positive, 0 difficult =
    ignored, -1 negative), costs chosen by ``folds``-fold cross-validated AP (``ap_method``, see
    `selfsup.probes.metrics`). Deterministic for a seed. See the module docstring for the rules."""
    features = np.asarray(features)
    labels = np.asarray(labels)
    costs = [float(cost) for cost in costs]
    if features.ndim != 2 or labels.ndim != 2 or len(features) != len(labels):
        raise ValueError(f"features {features.shape} and labels {labels.shape} must be N x D and N x C")
    if not np.isin(labels, (-1, 0, 1)).all():
        raise ValueError("labels must be 1 (positive), 0 (difficult, ignored) or -1 (negative)")
    if not costs or min(costs) <= 0:
        raise ValueError("costs must be a non-empty list of positive numbers")
    if folds < 2:
        raise ValueError(f"folds = {folds}: cross-validation needs at least 2")
    if ap_method not in AP_METHODS:
        raise ValueError(f"unknown AP method {ap_method!r}: expected one of {', '.join(AP_METHODS)}")

    features = l2_normalize(features)
    dims = features.shape[1]
    basis = None
    if dims > len(features):
        # Q spans the training images and X = R^T Q^T, so R^T holds their coordinates in it.
        basis, upper = np.linalg.qr(features.T)
        features = upper.T
    classes = labels.shape[1]
    trained = [c for c in range(classes) if _trainable(labels[:, c])]
    # Sequential, not in threads: see the module docstring. Processes would keep fits apart too, but on
    # a shared 2-core machine two loky workers were no faster than one loop on VOC07-sized features and
    # slower on low-shot samples (worker start-up), while holding a copy of the training features each.
    # max_iter is part of the protocol: the benchmark's numbers come from the same capped solver,
    # so its non-convergence warnings (large costs) are expected, not a fault to report.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        rows = [_cross_validate(features, labels[:, c], costs, folds, seed, ap_method) for c in trained]
        cv_ap = np.full((classes, len(costs)), np.nan)
        for c, row in zip(trained, rows):
            cv_ap[c] = row
        chosen = _choose_costs(cv_ap, costs, [c in trained for c in range(classes)])
        fitted = [_fit(features, labels[:, c], chosen[c], seed) for c in trained]

    weights = np.full((classes, dims), np.nan)
    intercepts = np.full(classes, np.nan)
    for c, (coef, intercept) in zip(trained, fitted):
        weights[c] = coef if basis is None else basis @ coef
        intercepts[c] = intercept
    return VocSvms(costs=costs, cv_ap=cv_ap, chosen_costs=chosen, weights=weights, intercepts=intercepts)


def low_shot_indices(labels: np.ndarray, shots: int, seed: int) -> np.ndarray:
    """Sorted indices of a low-shot training sample of the images with N x C ``labels``.

    Rule: for each class in order, ``shots`` of its positive images (label 1) are drawn without
    replacement from one generator seeded with ``seed``, and the sample is the union of the draws.
    Every class thus has at least ``shots`` positives in the sample (more where objects co-occur);
    a class with fewer positives in all contributes all of them. The negatives of a class are the
    sampled images labelled -1 for it; its difficult images (0) stay ignored.

    (The benchmark instead masks the label matrix per class, keeping ``shots`` positives and
    (C - 1) x ``shots`` negatives of each class and ignoring the rest; a sample of images lets
    features be extracted once per sample.)
    """
    labels = np.asarray(labels)
    if shots < 1:
        raise ValueError(f"shots = {shots}: need at least 1")
    rng = np.random.default_rng(seed)
    draws = []
    for c in range(labels.shape[1]):
        positives = np.flatnonzero(labels[:, c] == 1)
        draws.append(rng.choice(positives, size=min(shots, len(positives)), replace=False))
    return np.unique(np.concatenate(draws)).astype(np.int64)
