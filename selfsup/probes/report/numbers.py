"""How the tables show numbers: a seed's value or the mean ± std over seeds, a forced selection's mark, and
the difference from the matching random row with its spread and significance."""

from __future__ import annotations

import math
import re
import statistics
from typing import Any, Sequence

FORCED_MARK = "†"


# Welch's t-test level for "Δ vs random" when both sides have several seeds
SIGNIFICANCE_LEVEL = 0.05


SIGNIFICANCE_NOTE = (
    f"Δ ± spread: with several seeds on both sides, the difference of the means ± sqrt(s1²/n1 + s2²/n2) over "
    f"seeds, marked * when Welch's t-test (unequal variances, two-sided) gives p < {SIGNIFICANCE_LEVEL} and n.s. "
    "otherwise; a side with one seed contributes the binomial standard error sqrt(p(1-p)/n) of its accuracy on its "
    "n test images (n/a when the record does not give n, or for mAP) and no test is made (marked 1 seed).")


def forced_mark(record: dict[str, Any]) -> str:
    return FORCED_MARK if record.get("forced_test_selection") else ""


def number_text(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}"


def layer_values(records: Sequence[dict[str, Any]], layer: str) -> list[float]:
    """Test top-1 of ``layer`` in every seed's record that probed it."""
    return [r["layers"][layer]["test_top1"] for r in records if layer in r["layers"]]


def best_layer_values(records: Sequence[dict[str, Any]]) -> tuple[str, list[float]]:
    """The layer with the best mean test top-1 over seeds and its value per seed."""
    layers = {layer for r in records for layer in r["layers"]}
    layer = max(sorted(layers), key=lambda name: statistics.fmean(layer_values(records, name)))
    return layer, layer_values(records, layer)


def mean_std(values: Sequence[float], mark: str = "") -> str:
    """One seed: the value; several: mean ± std (sample std) over seeds."""
    if len(values) == 1:
        return f"{values[0]:.2f}{mark}"
    return f"{statistics.fmean(values):.2f} ± {statistics.stdev(values):.2f}{mark}"


def test_images(record: dict[str, Any]) -> int | None:
    """The number of test images, from the test split's description ("... (10,000 images, ...)")."""
    found = re.search(r"\(([\d,]+) images", str((record.get("splits") or {}).get("test", "")))
    return int(found.group(1).replace(",", "")) if found else None


def delta_text(values: Sequence[float], base: Sequence[float], images: int | None = None,
               base_images: int | None = None) -> str:
    """Difference of the mean accuracies (percent) of a method's seeds and its random baseline's, with
    its spread and significance as SIGNIFICANCE_NOTE states; ``images``: each side's test-set size,
    used for the binomial standard error of a side with one seed (None: unknown, or not an accuracy)."""
    def variance(side: Sequence[float], n: int | None) -> float | None:
        if len(side) > 1:
            return statistics.variance(side) / len(side)
        if n:
            p = side[0] / 100
            return 100 ** 2 * p * (1 - p) / n
        return None

    delta = statistics.fmean(values) - statistics.fmean(base)
    variances = [variance(values, images), variance(base, base_images)]
    spread = "n/a" if None in variances else f"{math.sqrt(sum(variances)):.2f}"
    if len(values) > 1 and len(base) > 1:
        from scipy.stats import ttest_ind  # scipy comes with scikit-learn; imported here as only this needs it

        p = float(ttest_ind(values, base, equal_var=False).pvalue)
        # identical seeds on both sides give no p (nan): nothing to call significant
        mark = "*" if p < SIGNIFICANCE_LEVEL else "n.s."
        shown = "n/a" if math.isnan(p) else f"{p:.3f}"
        return f"{delta:+.2f} ± {spread} {mark} (Welch p = {shown}, {len(values)} vs {len(base)} seeds"
    seeds = "1 seed" if len(values) == len(base) == 1 else f"{len(values)} vs {len(base)} seeds, 1 seed: no test"
    return f"{delta:+.2f} ± {spread} ({seeds}"
