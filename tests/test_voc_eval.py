"""Box-level VOC AP: hand-computed cases and an independent implementation (pycocotools)."""

from __future__ import annotations

import contextlib
import io

import numpy as np
import pytest

from selfsup.transfer.voc_eval import (
    ImageDetections,
    ImageTruth,
    class_precision_recall,
    format_ap_table,
    iou,
    voc_detection_scores,
)


def truth(boxes, labels=None, difficult=None) -> ImageTruth:
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    labels = np.zeros(len(boxes), dtype=np.int64) if labels is None else np.asarray(labels)
    difficult = np.zeros(len(boxes), dtype=bool) if difficult is None else np.asarray(difficult, dtype=bool)
    return ImageTruth(boxes, labels, difficult)


def found(boxes, scores, labels=None) -> ImageDetections:
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    labels = np.zeros(len(boxes), dtype=np.int64) if labels is None else np.asarray(labels)
    return ImageDetections(boxes, np.asarray(scores, dtype=np.float64), labels)


A, B, C = [0, 0, 10, 10], [20, 20, 30, 30], [40, 0, 50, 10]
MISS = [60, 60, 70, 70]


def test_iou_continuous_boxes():
    assert iou(np.array([0, 0, 10, 10.0]), np.array([[0, 0, 10, 10.0], [5, 0, 15, 10], [10, 10, 20, 20]])) == pytest.approx(
        [1.0, 50 / 150, 0.0])


def test_known_tp_fp_sequence():
    # ranking: TP, FP, TP, FP, TP over 3 boxes -> precision 1, 1/2, 2/3, 1/2, 3/5; recall 1/3, 1/3, 2/3, 2/3, 1
    truths = [truth([A, B]), truth([C])]
    detections = [found([A, MISS, B], [0.9, 0.8, 0.7]), found([MISS, C], [0.6, 0.5])]
    precision, recall, positives = class_precision_recall(detections, truths, 0)
    assert positives == 3
    np.testing.assert_allclose(precision, [1, 1 / 2, 2 / 3, 1 / 2, 3 / 5])
    np.testing.assert_allclose(recall, [1 / 3, 1 / 3, 2 / 3, 2 / 3, 1])
    scores = voc_detection_scores(detections, truths, ["thing"])
    # 11-point: recall >= 0..0.3 -> 1; 0.4..0.6 -> 2/3; 0.7..1 -> 3/5
    assert scores.ap["voc07"][0] == pytest.approx((4 * 1 + 3 * 2 / 3 + 4 * 3 / 5) / 11)
    # area under the envelope: 1/3 x (1 + 2/3 + 3/5)
    assert scores.ap["area"][0] == pytest.approx((1 + 2 / 3 + 3 / 5) / 3)


def test_ranking_is_by_score_across_images():
    truths = [truth([A]), truth([B])]
    # the false positive in image 1 outranks image 0's true positive
    detections = [found([A], [0.5]), found([MISS, B], [0.9, 0.1])]
    precision, recall, _ = class_precision_recall(detections, truths, 0)
    np.testing.assert_allclose(precision, [0, 1 / 2, 2 / 3])
    np.testing.assert_allclose(recall, [0, 1 / 2, 1])


def test_difficult_ground_truth_is_ignored():
    # B is difficult: a detection on it is neither TP nor FP, and B does not count as a positive
    truths = [truth([A, B], difficult=[False, True])]
    detections = [found([B, A], [0.9, 0.8])]
    precision, recall, positives = class_precision_recall(detections, truths, 0)
    assert positives == 1
    np.testing.assert_allclose(precision, [1.0])
    np.testing.assert_allclose(recall, [1.0])
    assert voc_detection_scores(detections, truths, ["thing"]).ap["voc07"][0] == pytest.approx(1.0)
    # a difficult box that is never found costs nothing either
    assert voc_detection_scores([found([A], [0.8])], truths, ["thing"]).ap["voc07"][0] == pytest.approx(1.0)


def test_duplicate_detection_is_a_false_positive():
    truths = [truth([A])]
    detections = [found([A, [0, 0, 10, 9]], [0.9, 0.8])]
    precision, recall, _ = class_precision_recall(detections, truths, 0)
    np.testing.assert_allclose(precision, [1.0, 0.5])
    np.testing.assert_allclose(recall, [1.0, 1.0])


def test_devkit_rule_duplicate_of_best_overlap_does_not_fall_back():
    # two overlapping boxes; the second detection overlaps the already-matched left box most, and the
    # right one with IoU >= 0.5 too: the VOC devkit counts it as a false positive (COCO would match it)
    left, right, second = [0, 0, 10, 10], [2, 0, 12, 10], [0.5, 0, 10.5, 10]
    assert iou(np.array(second), np.array([left, right], dtype=float)) == pytest.approx([95 / 105, 85 / 115])
    detections = [found([left, second], [0.9, 0.8])]
    precision, _, _ = class_precision_recall(detections, [truth([left, right])], 0)
    np.testing.assert_allclose(precision, [1.0, 0.5])


def test_iou_threshold_is_inclusive():
    truths = [truth([[0, 0, 10, 10]])]
    half = found([[0, 0, 10, 5]], [0.9])  # IoU exactly 0.5
    assert voc_detection_scores([half], truths, ["thing"]).ap["voc07"][0] == pytest.approx(1.0)
    below = found([[0, 0, 10, 4.9]], [0.9])
    assert voc_detection_scores([below], truths, ["thing"]).ap["voc07"][0] == 0.0


def test_wrong_class_is_a_false_positive_and_classes_without_boxes_leave_the_mean():
    classes = ["a", "b", "c", "d"]
    truths = [truth([A, B, C], labels=[0, 1, 3], difficult=[False, False, True])]
    detections = [found([A, B, MISS], [0.9, 0.8, 0.7], labels=[0, 0, 2])]
    scores = voc_detection_scores(detections, truths, classes)
    assert scores.num_positives == [1, 1, 0, 0]
    assert scores.ap["voc07"][0] == pytest.approx(1.0)  # A found first; the B-as-a detection comes after
    assert scores.ap["voc07"][1] == 0.0  # b has a box but no detection of class b: AP 0, in the mean
    assert scores.ap["voc07"][2] is None and scores.ap["voc07"][3] is None  # no box / difficult only
    assert scores.mean["voc07"] == pytest.approx(0.5)
    table = format_ap_table(scores, classes)
    assert "n/a" in table and "50.00" in table


def test_no_detections_at_all():
    scores = voc_detection_scores([found([], [])], [truth([A])], ["thing"])
    assert scores.ap["voc07"] == [0.0] and scores.ap["area"] == [0.0]


def _random_scene(rng: np.random.Generator, num_images: int, num_classes: int):
    """Images with non-overlapping ground truth (so VOC's and COCO's matching rules agree) and noisy
    detections around it plus clutter, all scores distinct."""
    truths, detections = [], []
    for _ in range(num_images):
        boxes, labels = [], []
        for cell in rng.permutation(16)[: rng.integers(1, 6)]:
            x, y = (cell % 4) * 50.0, (cell // 4) * 50.0
            w, h = rng.uniform(15, 40, size=2)
            boxes.append([x + 2, y + 2, x + 2 + w, y + 2 + h])
            labels.append(int(rng.integers(num_classes)))
        truths.append(truth(boxes, labels))
        det_boxes, det_labels = [], []
        for box, label in zip(boxes, labels):
            for _ in range(rng.integers(0, 3)):
                jitter = rng.normal(0, 4, size=4)
                det_boxes.append(np.array(box) + jitter)
                det_labels.append(label if rng.random() < 0.8 else int(rng.integers(num_classes)))
        for _ in range(rng.integers(0, 4)):
            x, y = rng.uniform(0, 170, size=2)
            det_boxes.append([x, y, x + rng.uniform(10, 30), y + rng.uniform(10, 30)])
            det_labels.append(int(rng.integers(num_classes)))
        detections.append(found(det_boxes, rng.random(len(det_boxes)), det_labels))
    return truths, detections


def _coco_ap50_11pt(truths, detections, num_classes):
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    images, annotations, results = [], [], []
    for image, (t, d) in enumerate(zip(truths, detections)):
        images.append({"id": image, "width": 300, "height": 300})
        for box, label in zip(t.boxes, t.labels):
            x0, y0, x1, y1 = map(float, box)
            annotations.append({"id": len(annotations) + 1, "image_id": image, "category_id": int(label),
                                "bbox": [x0, y0, x1 - x0, y1 - y0], "area": (x1 - x0) * (y1 - y0), "iscrowd": 0})
        for box, score, label in zip(d.boxes, d.scores, d.labels):
            x0, y0, x1, y1 = map(float, box)
            results.append({"image_id": image, "category_id": int(label), "bbox": [x0, y0, x1 - x0, y1 - y0],
                            "score": float(score)})
    with contextlib.redirect_stdout(io.StringIO()):
        ground = COCO()
        ground.dataset = {"images": images, "annotations": annotations,
                          "categories": [{"id": c, "name": str(c)} for c in range(num_classes)]}
        ground.createIndex()
        evaluation = COCOeval(ground, ground.loadRes(results), "bbox")
        evaluation.params.iouThrs = np.array([0.5])
        # the 11 VOC07 recall thresholds: COCO's interpolation (envelope at the first recall >= t) is VOC07's
        evaluation.params.recThrs = np.linspace(0, 1, 11)
        evaluation.params.maxDets = [100, 100, 100]
        evaluation.evaluate()
        evaluation.accumulate()
    precision = evaluation.eval["precision"][0, :, :, 0, -1]  # recall thresholds x classes, area "all"
    return [None if (precision[:, k] < 0).all() else float(precision[:, k].mean()) for k in range(num_classes)]


def test_matches_pycocotools_at_iou_05_with_voc07_recall_points():
    pytest.importorskip("pycocotools")
    rng = np.random.default_rng(7)
    num_classes = 4
    truths, detections = _random_scene(rng, 40, num_classes)
    ours = voc_detection_scores(detections, truths, [str(c) for c in range(num_classes)]).ap["voc07"]
    theirs = _coco_ap50_11pt(truths, detections, num_classes)
    assert all(value is not None for value in ours)
    np.testing.assert_allclose(ours, theirs, atol=1e-9)
    assert 0.2 < np.mean(ours) < 0.95  # a non-trivial case
