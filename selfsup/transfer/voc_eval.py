"""Box-level PASCAL VOC detection AP, as the VOC2007 devkit (``VOCevaldet.m``) computes it.

Per class, over a whole split:

1. every detection of the class, from every image, is ranked by score (highest first; equal scores
   keep image order, like MATLAB's stable ``sort``);
2. each detection, in that order, takes the ground-truth box of its class *in its image* that it
   overlaps most (IoU, all boxes of the class, matched or not). With IoU >= 0.5 (the devkit's
   ``ovmax >= minoverlap``): a difficult box makes the detection *ignored* (neither true nor false
   positive); an unmatched box is matched, a true positive; an already-matched box makes it a false
   positive (a duplicate). Below 0.5, or with no box of the class in the image, it is a false positive.
   This is the devkit's rule, not COCO's: COCO would let a duplicate fall back on another unmatched box
   with IoU >= 0.5; the devkit does not;
3. precision and recall along the ranking (ignored detections dropped; recall over the non-difficult
   boxes) give AP by `selfsup.probes.metrics.ap_from_precision_recall`: ``voc07`` (11-point, the
   VOC2007 number and what the detection papers report) and ``area`` (VOC2010+).

Classes without a non-difficult box in the split have no AP (None) and are left out of the mean.

Coordinates: boxes are (xmin, ymin, xmax, ymax) pixel *edges*, 0-based and continuous, as torchvision
detectors output them and `selfsup.data.voc` reads annotations (VOC's 1-based inclusive pixel indices
with 1 subtracted from xmin and ymin). IoU is the plain continuous one, with no ``+1``: on annotation
boxes converted that way it equals the devkit's ``+1`` IoU on the raw XML numbers exactly.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from selfsup.probes.metrics import ap_from_precision_recall

IOU_THRESHOLD = 0.5
AP_NAMES = {"voc07": "mAP", "area": "mAP_area"}


@dataclass
class ImageDetections:
    """A detector's output for one image: K boxes (K x 4), their scores and 0-based class indices."""

    boxes: np.ndarray
    scores: np.ndarray
    labels: np.ndarray


@dataclass
class ImageTruth:
    """The annotated objects of one image: M boxes (M x 4), 0-based class indices, difficult flags."""

    boxes: np.ndarray
    labels: np.ndarray
    difficult: np.ndarray


@dataclass
class DetectionScores:
    """APs as fractions in [0, 1]; None for a class without a non-difficult box."""

    ap: dict[str, list[float | None]]  # method -> per-class AP
    mean: dict[str, float | None]  # method -> mean over the classes whose AP is defined
    num_positives: list[int]  # non-difficult boxes per class


def iou(box: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """IoU of one box (4,) with each of ``boxes`` (M x 4), continuous coordinates."""
    width = np.clip(np.minimum(box[2], boxes[:, 2]) - np.maximum(box[0], boxes[:, 0]), 0.0, None)
    height = np.clip(np.minimum(box[3], boxes[:, 3]) - np.maximum(box[1], boxes[:, 1]), 0.0, None)
    intersection = width * height
    area = (box[2] - box[0]) * (box[3] - box[1])
    areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    union = area + areas - intersection
    return np.where(union > 0, intersection / np.where(union > 0, union, 1.0), 0.0)


def class_precision_recall(detections: Sequence[ImageDetections], truths: Sequence[ImageTruth], label: int,
                           iou_threshold: float = IOU_THRESHOLD) -> tuple[np.ndarray, np.ndarray, int]:
    """Precision and recall after each kept detection of class ``label`` in ranking order, and the
    number of non-difficult boxes of the class (see the module docstring for the rules)."""
    if len(detections) != len(truths):
        raise ValueError(f"{len(detections)} images of detections but {len(truths)} of ground truth")
    gt_boxes, gt_difficult, matched = [], [], []
    num_positives = 0
    for truth in truths:
        mine = np.asarray(truth.labels) == label
        gt_boxes.append(np.asarray(truth.boxes, dtype=np.float64).reshape(-1, 4)[mine])
        difficult = np.asarray(truth.difficult, dtype=bool)[mine]
        gt_difficult.append(difficult)
        matched.append(np.zeros(len(difficult), dtype=bool))
        num_positives += int((~difficult).sum())
    image_ids, scores, boxes = [], [], []
    for image, found in enumerate(detections):
        mine = np.asarray(found.labels) == label
        kept = int(mine.sum())
        image_ids.append(np.full(kept, image))
        scores.append(np.asarray(found.scores, dtype=np.float64)[mine])
        boxes.append(np.asarray(found.boxes, dtype=np.float64).reshape(-1, 4)[mine])
    image_ids, scores, boxes = np.concatenate(image_ids), np.concatenate(scores), np.concatenate(boxes)
    order = np.argsort(-scores, kind="stable")
    outcome = np.zeros(len(order), dtype=np.int8)  # 1 true positive, -1 false positive, 0 ignored
    for rank, d in enumerate(order):
        image = image_ids[d]
        candidates = gt_boxes[image]
        if len(candidates) == 0:
            outcome[rank] = -1
            continue
        overlaps = iou(boxes[d], candidates)
        best = int(np.argmax(overlaps))
        if overlaps[best] < iou_threshold:
            outcome[rank] = -1
        elif gt_difficult[image][best]:
            outcome[rank] = 0
        elif not matched[image][best]:
            matched[image][best] = True
            outcome[rank] = 1
        else:
            outcome[rank] = -1
    outcome = outcome[outcome != 0]
    true_positives = np.cumsum(outcome == 1)
    precision = true_positives / np.arange(1, len(outcome) + 1)
    recall = true_positives / max(num_positives, 1)
    return precision, recall, num_positives


def voc_detection_scores(detections: Sequence[ImageDetections], truths: Sequence[ImageTruth], classes: Sequence[str],
                         iou_threshold: float = IOU_THRESHOLD) -> DetectionScores:
    """Per-class AP (11-point ``voc07`` and ``area``) and their means over the classes that have a
    non-difficult box."""
    ap: dict[str, list[float | None]] = {method: [] for method in AP_NAMES}
    counts = []
    for label in range(len(classes)):
        precision, recall, num_positives = class_precision_recall(detections, truths, label, iou_threshold)
        counts.append(num_positives)
        for method in AP_NAMES:
            ap[method].append(ap_from_precision_recall(precision, recall, method) if num_positives else None)
    mean = {}
    for method, values in ap.items():
        defined = [value for value in values if value is not None]
        mean[method] = float(np.mean(defined)) if defined else None
    return DetectionScores(ap, mean, counts)


def format_ap_table(scores: DetectionScores, classes: Sequence[str]) -> str:
    """Per-class AP in percent (11-point and area) with the positives count, then the means."""
    width = max([len(name) for name in classes] + [5])
    lines = [f"{'class':<{width}}  {'boxes':>5}  {'AP':>6}  {'AP_area':>7}"]

    def shown(value: float | None) -> str:
        return "n/a" if value is None else f"{100 * value:.2f}"

    for c, name in enumerate(classes):
        lines.append(f"{name:<{width}}  {scores.num_positives[c]:>5}  {shown(scores.ap['voc07'][c]):>6}  "
                     f"{shown(scores.ap['area'][c]):>7}")
    lines.append(f"{'mean':<{width}}  {sum(scores.num_positives):>5}  {shown(scores.mean['voc07']):>6}  "
                 f"{shown(scores.mean['area']):>7}")
    return "\n".join(lines)
