"""ssl-probe --method svm: Goyal et al.'s VOC07 linear-SVM protocol on a VOC-layout dataset (costs by 3-fold
cross-validation on trainval, mAP on test), and its low-shot variant."""

from __future__ import annotations

import sys
from typing import Any

import numpy as np

from selfsup.data.sources import DataError
from selfsup.data.voc import open_voc, resolve_voc_root
from selfsup.probes.context import ProbeContext, save_features
from selfsup.probes.lowshot import summarize
from selfsup.probes.metrics import mean_average_precision
from selfsup.probes.options import record_kind
from selfsup.seeds import mix_seed


def run_svm(context: ProbeContext) -> dict[str, Any]:
    """Goyal et al.'s VOC07 protocol: SVMs on trainval (costs by 3-fold CV), mAP on test, difficult ignored."""
    # imported here: sklearn (behind probes.svm) would slow every other probe's start
    from selfsup.probes.svm import DEFAULT_COSTS, low_shot_indices, train_voc_svms

    options = context.options
    data = "demo-voc" if options.data is None else options.data
    root = resolve_voc_root("demo" if data in ("demo", "demo-voc") else data, options.data_root)
    trainval, test = open_voc(root, "trainval"), open_voc(root, "test")
    context.set_bn_stats(trainval, None, "svm: no val split to choose on")
    classes = list(trainval.classes)
    costs = list(DEFAULT_COSTS) if options.svm_costs is None else options.svm_costs
    print(f"ssl-probe: {record_kind(options)} of {context.frozen.name} on {root} ({len(trainval)} trainval / "
          f"{len(test)} test images, {len(classes)} classes), layers {', '.join(context.pools)}", file=sys.stderr)
    sets = {"trainval": context.features(trainval, "trainval"), "test": context.features(test, "test")}
    labels = {"trainval": trainval.image_labels()[sets["trainval"].indices.numpy()],
              "test": test.image_labels()[sets["test"].indices.numpy()]}
    if options.save_features is not None:
        for name, features in sets.items():
            save_features(options.save_features, name, features, labels[name])
    kind = record_kind(options)
    protocol = {"name": "voc07_svm", "costs": costs, "folds": 3, "features": "L2-normalised",
                "mAP": "test_mAP: VOC07 11-point; test_mAP_area: area under the precision envelope (Goyal et al.'s benchmark)",
                **({"shots": options.shots, "draws": options.draws} if options.shots else {})}
    record = context.new_record(kind, data, {"trainval": trainval.describe(), "test": test.describe(),
                                             "root": str(root), "classes": classes}, protocol, "trainval-cv")

    def fit_and_score(layer: str, rows: np.ndarray | None):
        train_x = sets["trainval"].features[layer].float().numpy()
        train_y = labels["trainval"]
        if rows is not None:
            train_x, train_y = train_x[rows], train_y[rows]
        svms = train_voc_svms(train_x, train_y, costs=costs, seed=options.seed)
        scores = svms.decision_function(sets["test"].features[layer].float().numpy())
        # test_mAP is the VOC07 11-point AP, like ssl-finetune's and ssl-detect's; Goyal et al.'s benchmark
        # reports the area under the precision envelope, kept beside it as test_mAP_area
        per_class, mean_ap = mean_average_precision(scores, labels["test"], method="voc07")
        _, mean_ap_area = mean_average_precision(scores, labels["test"], method="area")
        return svms, per_class, mean_ap, mean_ap_area

    results: dict[str, dict[str, Any]] = {}
    for layer in context.pools:
        if not options.shots:
            svms, per_class, mean_ap, mean_ap_area = fit_and_score(layer, None)
            chosen_cv = [float(np.nanmax(row)) for row, cost in zip(svms.cv_ap, svms.chosen_costs)
                         if cost is not None and not np.all(np.isnan(row))]
            results[layer] = {"test_mAP": percent(mean_ap), "test_mAP_area": percent(mean_ap_area),
                              "cv_mAP": percent(float(np.mean(chosen_cv))) if chosen_cv else None,
                              "test_AP": {cls: percent(ap) for cls, ap in zip(classes, per_class)},
                              "cost": {cls: cost for cls, cost in zip(classes, svms.chosen_costs)}}
            print(f"svm {layer}: mAP {results[layer]['test_mAP']}", file=sys.stderr)
            continue
        results[layer] = {}
        for k in options.shots:
            runs = [fit_and_score(layer, low_shot_indices(labels["trainval"], k,
                                                          seed=mix_seed("low-shot draw", options.seed, k, draw)))[2]
                    for draw in range(options.draws)]
            scored = [percent(v) for v in runs if v == v]
            if not scored:
                raise DataError(f"{root}: no class has both positive and negative images, so no SVM can be scored")
            results[layer][str(k)] = {"test_mAP": summarize(scored)}
            print(f"low-shot svm {layer} k={k}: mAP {results[layer][str(k)]['test_mAP']['mean']}", file=sys.stderr)
    record["layers"] = results
    return record


def percent(value: float) -> float | None:
    """A fraction as a percentage with 2 decimals; NaN (a class without positives) as None (null in JSON)."""
    return None if value != value else round(100.0 * value, 2)  # NaN (no positives) -> null in JSON
