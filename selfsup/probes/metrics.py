"""Average precision for ranked retrieval: VOC multi-label classification and detection.

Two ways to turn a precision/recall curve into one number, both from the PASCAL VOC devkit:

* ``"voc07"``: the VOC2007 11-point interpolated AP, the mean over recall thresholds
  t = 0, 0.1, ..., 1 of the highest precision reached at recall >= t (0 if none).
* ``"area"``: the VOC2010+ AP, the area under the monotone (interpolated) precision envelope. This is
  also what the Goyal et al. 2019 VOC07 SVM benchmark reports.

Results are fractions in [0, 1]; callers print percentages.
"""

from __future__ import annotations

import numpy as np

AP_METHODS = ("voc07", "area")

# Thresholds k/10 rather than np.arange(0, 1.1, 0.1): the latter holds 0.30000000000000004, which a
# recall of exactly 3/10 fails to reach.
_ELEVEN_POINTS = np.arange(11) / 10.0


def ap_from_precision_recall(precision: np.ndarray, recall: np.ndarray, method: str) -> float:
    """AP of a precision/recall curve given point by point in ranking order (recall non-decreasing).

    Empty curves (nothing retrieved) have AP 0.
    """
    precision = np.asarray(precision, dtype=np.float64).ravel()
    recall = np.asarray(recall, dtype=np.float64).ravel()
    if precision.shape != recall.shape:
        raise ValueError(f"precision has {precision.size} points but recall has {recall.size}")
    if method == "voc07":
        total = 0.0
        for threshold in _ELEVEN_POINTS:
            reached = recall >= threshold
            total += float(precision[reached].max()) if reached.any() else 0.0
        return total / len(_ELEVEN_POINTS)
    if method == "area":
        # Sentinels: the curve starts at recall 0 and ends at recall 1 with precision 0, so recall
        # never reached contributes nothing.
        recall = np.concatenate(([0.0], recall, [1.0]))
        envelope = np.concatenate(([0.0], precision, [0.0]))
        envelope = np.maximum.accumulate(envelope[::-1])[::-1]
        steps = np.flatnonzero(recall[1:] != recall[:-1]) + 1
        return float(np.sum((recall[steps] - recall[steps - 1]) * envelope[steps]))
    raise ValueError(f"unknown AP method {method!r}: expected one of {', '.join(AP_METHODS)}")


def average_precision(scores: np.ndarray, targets: np.ndarray, method: str = "voc07") -> float:
    """AP of one class from per-image ``scores`` (higher = more confident) and ``targets``:
    1 positive, -1 negative, 0 ignored ("difficult": removed before ranking, so it counts neither
    as a hit nor as a false alarm).

    Ties: images with equal scores enter the ranking together, as one threshold (as in
    sklearn's precision_recall_curve), so the result does not depend on their order. (The VOC
    devkit instead ranks ties in whatever order its sort leaves them.)

    NaN when there is no positive (AP undefined) or when a kept score is NaN (no model scored the
    class, see `selfsup.probes.svm`).
    """
    scores = np.asarray(scores, dtype=np.float64).ravel()
    targets = np.asarray(targets).ravel()
    if scores.shape != targets.shape:
        raise ValueError(f"{scores.size} scores but {targets.size} targets")
    if not np.isin(targets, (-1, 0, 1)).all():
        raise ValueError("targets must be 1 (positive), 0 (ignored) or -1 (negative)")
    kept = targets != 0
    scores, positive = scores[kept], targets[kept] == 1
    num_positives = int(positive.sum())
    if num_positives == 0 or np.isnan(scores).any():
        return float("nan")
    order = np.argsort(-scores, kind="stable")
    scores, positive = scores[order], positive[order]
    hits = np.cumsum(positive)
    # Evaluate only after the last image of each group of equal scores.
    ends = np.append(np.flatnonzero(scores[1:] != scores[:-1]), len(scores) - 1)
    hits = hits[ends]
    precision = hits / (ends + 1)
    recall = hits / num_positives
    return ap_from_precision_recall(precision, recall, method)


def mean_average_precision(scores: np.ndarray, labels: np.ndarray, method: str = "voc07") -> tuple[list[float], float]:
    """Per-class APs of N x C ``scores`` against N x C ``labels`` (1 / 0 / -1 as in
    `average_precision`) and their mean.

    The mean is over the classes whose AP is defined: classes with no positive, or with NaN scores,
    have AP NaN and are left out of it (the mean is NaN only when every class is).
    """
    scores = np.asarray(scores, dtype=np.float64)
    labels = np.asarray(labels)
    if scores.ndim != 2 or scores.shape != labels.shape:
        raise ValueError(f"scores {scores.shape} and labels {labels.shape} must be the same N x C shape")
    aps = [average_precision(scores[:, c], labels[:, c], method) for c in range(scores.shape[1])]
    defined = [ap for ap in aps if not np.isnan(ap)]
    mean = float(np.mean(defined)) if defined else float("nan")
    return aps, mean
