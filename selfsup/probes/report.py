"""Paper-style tables and a per-layer chart built from evaluation records alone (`ssl-report`).

Rows are methods (one per checkpoint; random encoders per input and size), the main table's columns
are the linear probe's layers, the best layer, Δ against the matching random row, then one column per
other protocol. Detail tables follow per protocol, then how every number was produced (commands,
commits, machines). Numbers selected on the test split (forced runs) carry a dagger everywhere.
"""

from __future__ import annotations

import json
import math
import re
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

from selfsup.checkpoint import atomic_file
from selfsup.errors import DataError
from selfsup.probes.lowshot import summarize
from selfsup.probes.records import resolve_path

LINEAR = "linear_probe"
DIAGNOSE = "diagnose"
# protocols after the linear layers, in column order: kind -> column title
PROTOCOL_TITLES = {
    "knn": "kNN top-1",
    "finetune": "fine-tune",
    "lowshot_linear": "low-shot linear top-1",
    "svm_voc07": "VOC07 SVM mAP",
    "lowshot_svm": "low-shot SVM mAP",
    "detection": "detection mAP",
}
FORCED_MARK = "†"
# Welch's t-test level for "Δ vs random" when both sides have several seeds
SIGNIFICANCE_LEVEL = 0.05
SIGNIFICANCE_NOTE = (
    f"Δ ± spread: with several seeds on both sides, the difference of the means ± sqrt(s1²/n1 + s2²/n2) over "
    f"seeds, marked * when Welch's t-test (unequal variances, two-sided) gives p < {SIGNIFICANCE_LEVEL} and n.s. "
    "otherwise; a side with one seed contributes the binomial standard error sqrt(p(1-p)/n) of its accuracy on its "
    "n test images (n/a when the record does not give n, or for mAP) and no test is made (marked 1 seed).")

# Published anchors, as the papers report them (most collected in RotNet, Gidaris et al. 2018; DeepCluster, Caron
# et al. 2018): AlexNet trained on ImageNet, linear probes on ImageNet (top-1 %), and
# Fast R-CNN VOC07 detection mAP. Another data set and scale: shown beside, never mixed into, our rows.
PUBLISHED_IMAGENET_ALEXNET = {
    "supervised": (19.3, 36.3, 44.2, 48.3, 50.5, 56.8),
    "random": (11.6, 17.1, 16.9, 16.3, 14.1, 43.4),
    "context": (16.2, 23.3, 30.2, 31.7, 29.6, 51.1),
    "colorization": (12.5, 24.5, 30.4, 31.5, 30.3, 46.9),
    "jigsaw": (18.2, 28.8, 34.0, 33.9, 27.1, 53.2),
    "counting": (18.0, 30.6, 34.3, 32.5, 25.7, 51.4),
    "rotation": (18.8, 31.7, 38.7, 38.2, 36.5, 54.4),
    "deepcluster": (12.9, 29.2, 38.2, 39.8, 36.1, 55.4),
}
PUBLISHED_LAYERS = ("conv1", "conv2", "conv3", "conv4", "conv5")


def input_name(record: dict[str, Any]) -> str:
    channels = record["encoder"].get("in_channels", 3)
    return {1: "L", 2: "Sobel"}.get(channels, "RGB")


def pool_of(record: dict[str, Any]) -> str:
    """The probe's pooling preset (records without one are not pooled probes, or older: ``auto``)."""
    return record.get("pool_preset") or "auto"


# Tasks whose input mapping the channel count already names (RGB as rotation, L, Sobel).
_NAMED_BY_CHANNELS = (None, "rotation", "supervised", "colorization", "deepcluster")


def input_like(record: dict[str, Any]) -> str | None:
    """The task whose input mapping a random encoder was fed (``ssl-probe --input-like``)."""
    return (record.get("pretraining") or {}).get("task", {}).get("input")


def row_key(record: dict[str, Any]) -> tuple:
    """One row per encoder, input mapping and pooling preset: probes of other widths or inputs are other
    rows, never seeds of one."""
    if record["method"] == "random":
        return ("random", record["encoder"]["arch"], input_name(record), record.get("image_size"), pool_of(record),
                input_like(record))
    return (record["method"], run_group(record), pool_of(record))


# Config fields that differ between the seeds of one experiment without changing what it is.
_RUN_IDENTITY = {"train": ("seed", "out", "resume", "accept_config_changes"), "data": ("workers", "data_root")}


def run_group(record: dict[str, Any]) -> str:
    """What makes checkpoints seeds of one row: the pretraining config less seed and output folder, when the
    record carries it; else the checkpoint itself (records in different folders name it by different
    relative paths: resolved)."""
    config = (record.get("pretraining") or {}).get("config")
    if not isinstance(config, dict):
        return resolve_path(record, record["checkpoint"])
    kept = {section: ({k: v for k, v in values.items() if k not in _RUN_IDENTITY.get(section, ())}
                      if isinstance(values, dict) else values) for section, values in config.items()}
    return "config " + json.dumps(kept, sort_keys=True, default=str)


def _pool_label(pool: str) -> str:
    return "" if pool == "auto" else f", {pool} pool"


@dataclass
class Row:
    key: tuple
    label: str = ""
    records: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    pretrain: dict[str, Any] | None = None

    @property
    def is_random(self) -> bool:
        return self.key[0] == "random"

    def first(self, kind: str) -> dict[str, Any] | None:
        found = self.records.get(kind)
        return found[0] if found else None


def split_records(records: Iterable[dict[str, Any]]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(evaluation records, ssl-pretrain summaries); ssl-diagnose records are in neither (:func:`diagnose_table`)."""
    evaluations, pretrains = [], []
    for record in records:
        if record.get("kind") != DIAGNOSE:
            (pretrains if record.get("kind") == "pretrain" else evaluations).append(record)
    return evaluations, pretrains


def _diagnosed(value: float | None, metric: str) -> str:
    """A diagnosis value as the table shows it: accuracies in percent, NMI as a fraction."""
    if value is None:
        return "n/a"
    return f"{value:.3f}" if metric == "nmi" else f"{100 * value:.1f}%"


def diagnose_table(records: Sequence[dict[str, Any]]) -> list[str]:
    """One line per ssl-diagnose record: the network's pretext measure, the best trivial solver beside its
    chance, and the network before and after each cue ablation (empty without diagnose records)."""
    diagnoses = [r for r in records if r.get("kind") == DIAGNOSE]
    if not diagnoses:
        return []
    lines = ["| task | checkpoint | images | pretext (network) | best trivial solver | chance | network after "
             "ablation (before → after) |", "|---" * 7 + "|"]
    for record in diagnoses:
        rows = record["rows"]
        network = next((row for row in rows if row.get("network") is not None), None)
        pretext = "n/a (no checkpoint)" if network is None else (
            f"{network['metric']} {_diagnosed(network['network'], network['metric'])}")
        best = max(rows, key=lambda row: row["value"])
        solver = f"{best['cue']}: {best['metric']} {_diagnosed(best['value'], best['metric'])}"
        ablations = []
        for ablation in record.get("ablations") or []:
            if ablation.get("network_before") is None:
                ablations.append(f"{ablation['name']}: not applicable")
            else:
                ablations.append(f"{ablation['name']}: {_diagnosed(ablation['network_before'], ablation['metric'])} → "
                                 f"{_diagnosed(ablation['network_after'], ablation['metric'])}")
        checkpoint = record.get("checkpoint") or "none (demo preset)"
        lines.append(f"| {record['task']} | {checkpoint} | {record.get('images', '?')} | {pretext} | {solver} | "
                     f"{_diagnosed(best['chance'], best['metric'])} | {'; '.join(ablations) or 'none'} |")
    return lines


def build_rows(records: Sequence[dict[str, Any]], pretrains: Sequence[dict[str, Any]] = (),
               order: Sequence[str] = ()) -> list[Row]:
    """One row per method/checkpoint, random rows first, then methods in ``order`` (others after, as
    found); a pretraining summary joins the row of the checkpoint it wrote."""
    rows: dict[tuple, Row] = {}
    for record in records:
        row = rows.setdefault(row_key(record), Row(row_key(record)))
        row.records.setdefault(record["kind"], []).append(record)
    by_checkpoint = {resolve_path(summary, str(summary.get("checkpoint"))): summary for summary in pretrains}
    methods: dict[str, int] = {}
    for row in rows.values():
        methods[row.key[0]] = methods.get(row.key[0], 0) + 1
    for row in rows.values():
        if row.is_random:
            _, arch, channels, size, pool, like = row.key
            fed = "" if like in _NAMED_BY_CHANNELS else f" as {like}"
            row.label = f"random init ({channels} input{fed}, {size} px{_pool_label(pool)})"
        else:
            method, _, pool = row.key
            checkpoints = sorted({resolve_path(r, r["checkpoint"]) for kind in row.records.values() for r in kind})
            runs = f"{len(checkpoints)} seeds" if len(checkpoints) > 1 else Path(checkpoints[0]).parent.name
            row.label = method if methods[method] == 1 else f"{method} [{runs}{_pool_label(pool)}]"
            # the first seed's pretraining stands for the row (its command, budget and throughput)
            row.pretrain = next((by_checkpoint[c] for c in checkpoints if c in by_checkpoint), None)
    rank = {method: i for i, method in enumerate(order)}
    return sorted(rows.values(), key=lambda r: (not r.is_random, r.key[1:] if r.is_random else (rank.get(r.key[0], len(rank)),)))


def linear_layers(rows: Sequence[Row]) -> list[str]:
    layers: list[str] = []
    for row in rows:
        for record in row.records.get(LINEAR, []):
            layers += [layer for layer in record["layers"] if layer not in layers]
    return layers


def _forced(record: dict[str, Any]) -> str:
    return FORCED_MARK if record.get("forced_test_selection") else ""


def _number(value: float | None) -> str:
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


def seed_of(record: dict[str, Any]) -> int | None:
    return (record.get("protocol") or {}).get("seed")


def baseline_record(row: Row, rows: Sequence[Row], kind: str, data: str | None = None,
                    seed: int | None = None) -> tuple[Row, dict[str, Any]] | None:
    """The random row (and its ``kind`` record, on ``data`` and with ``seed`` when given) of the same
    architecture, probe size and pooling, fed as the method's task feeds its encoder when one was probed
    (``--input-like TASK``), else with the same channels (L for colorization, Sobel for DeepCluster), else RGB."""
    def wanted(r: dict[str, Any]) -> bool:
        return (data is None or data_name(r) == data) and (seed is None or seed_of(r) == seed)

    record = next((r for r in row.records.get(kind, []) if wanted(r)), None)
    if record is None or row.is_random:
        return None
    candidates = []
    for other in rows:
        if (other.is_random and other.key[1] == record["encoder"]["arch"] and other.key[3] == record.get("image_size")
                and other.key[4] == pool_of(record)):
            match = next((r for r in other.records.get(kind, []) if wanted(r)), None)
            if match is not None:
                candidates.append((other, match))
    fed_alike = [c for c in candidates if c[0].key[5] == record["method"]]
    same_input = [c for c in candidates if c[0].key[2] == input_name(record) and c[0].key[5] in _NAMED_BY_CHANNELS]
    rgb = [c for c in candidates if c[0].key[2] == "RGB" and c[0].key[5] in _NAMED_BY_CHANNELS]
    return (fed_alike or same_input or rgb or [None])[0]


def protocol_cell(kind: str, records: list[dict[str, Any]]) -> str:
    """One summary value per protocol: the layer chosen on the selection split (kNN: val top-1),
    the only layer when one was probed; low-shot: the largest k."""
    record = records[0]
    layers = record["layers"]
    if not layers:
        return ""
    mark = _forced(record)
    if kind == "knn" and len(records) > 1:  # seeds: the layer of the best mean val top-1
        layer = max(layers, key=lambda name: statistics.fmean(r["layers"][name]["val_top1"] for r in records))
        return f"{mean_std(layer_values(records, layer), mark)} ({layer})"
    if kind == "knn":
        layer = max(layers, key=lambda name: layers[name]["val_top1"])
        return f"{layers[layer]['test_top1']:.2f}{mark} ({layer})"
    if kind == "finetune":
        return " / ".join(f"{_number(entry.get('test_top1', entry.get('test_mAP')))}{_forced(r)} ({name})"
                          for r in records for name, entry in r["layers"].items())
    if kind == "detection" and len(records) > 1:  # one record per seed
        layer = next(iter(layers))
        values = [r["layers"][layer]["test_mAP"] or 0.0 for r in records]
        summary = summarize(values)
        mark = FORCED_MARK if any(r.get("forced_test_selection") for r in records) else ""
        return f"{summary['mean']:.2f} ± {summary['std']:.2f}{mark} ({layer}, {len(values)} seeds)"
    if kind in ("svm_voc07", "detection"):
        layer = max(layers, key=lambda name: layers[name].get("cv_mAP") or layers[name].get("test_mAP") or 0.0)
        return f"{_number(layers[layer]['test_mAP'])}{mark} ({layer})"
    if kind in ("lowshot_linear", "lowshot_svm"):
        metric = "test_top1" if kind == "lowshot_linear" else "test_mAP"
        layer = list(layers)[-1]
        shots = sorted((k for k in layers[layer] if k.isdigit()), key=int)
        return "; ".join(f"k={k}: {layers[layer][k][metric]['mean']:.1f}±{layers[layer][k][metric]['std']:.1f}"
                         for k in shots) + f"{mark} ({layer})"
    return ""


def data_name(record: dict[str, Any]) -> str:
    return Path(str(record.get("data"))).name or str(record.get("data"))


# What the built-in data names (and folders named like them) are, for the tables' Data line
DATA_TITLES = {"cifar10": "CIFAR-10", "cifar100": "CIFAR-100", "stl10": "STL-10", "demo": "demo set",
               "demo-voc": "demo VOC set"}


def data_title(record: dict[str, Any]) -> str:
    """The data set a table reports on, by what it is rather than where it lay: "CIFAR-10 test, 10,000 images"."""
    name = DATA_TITLES.get(data_name(record), data_name(record))
    images = test_images(record)
    split = record.get("reported_split", "test")
    return f"{name} {split}" + (f", {images:,} images" if images else "")


def protocol_columns(rows: Sequence[Row]) -> list[tuple[str, str | None]]:
    """(kind, data set or None) per protocol column: one column per data set when a protocol ran on several."""
    columns: list[tuple[str, str | None]] = []
    for kind in PROTOCOL_TITLES:
        names = sorted({data_name(r) for row in rows for r in row.records.get(kind, [])})
        columns += [(kind, None)] if len(names) == 1 else [(kind, name) for name in names]
    return columns


def main_table(rows: Sequence[Row], published: bool = False) -> list[str]:
    layers = linear_layers(rows)
    columns = protocol_columns(rows)
    with_pretrain = any(row.pretrain for row in rows)
    header = ["method", *layers]
    if layers:
        header += ["best", "Δ vs random"]
    header += [PROTOCOL_TITLES[kind] + (f" ({name})" if name else "") for kind, name in columns]
    if with_pretrain:
        header.append("pretrain min")
    lines = ["| " + " | ".join(header) + " |", "|---" * len(header) + "|"]
    for row in rows:
        cells = [row.label]
        if layers:
            cells += seed_cells(row, rows, LINEAR, layers)
        for kind, name in columns:
            found = [r for r in row.records.get(kind, []) if name is None or data_name(r) == name]
            cells.append(protocol_cell(kind, found) if found else "")
        if with_pretrain:
            cells.append(f"{row.pretrain['wall_time_s'] / 60:.1f}" if row.pretrain else "")
        lines.append("| " + " | ".join(cells) + " |")
    if published and layers:
        for method, values in PUBLISHED_IMAGENET_ALEXNET.items():
            cells = [f"*published: {method} (AlexNet, ImageNet)*"]
            cells += [f"*{values[PUBLISHED_LAYERS.index(layer)]:.1f}*" if layer in PUBLISHED_LAYERS else ""
                      for layer in layers]
            cells += [f"*{max(values[:5]):.1f}*", ""]
            cells += [f"*{values[5]:.1f} (VOC07 det)*" if kind == "detection" else "" for kind, _ in columns]
            if with_pretrain:
                cells.append("")
            lines.append("| " + " | ".join(cells) + " |")
    return lines


def seed_cells(row: Row, rows: Sequence[Row], kind: str, layers: Sequence[str]) -> list[str]:
    """Test top-1 per layer and at the best layer (mean ± std over the row's seeds), and Δ against the
    matched random row's best layer with its spread and significance."""
    seeds = row.records.get(kind, [])  # one record per seed
    if not seeds:
        return [""] * (len(layers) + 2)
    mark = FORCED_MARK if any(r.get("forced_test_selection") for r in seeds) else ""
    cells = [mean_std(layer_values(seeds, layer), mark) if layer_values(seeds, layer) else "" for layer in layers]
    _, best = best_layer_values(seeds)
    cells.append(mean_std(best, mark))
    base = baseline_record(row, rows, kind)
    if base is None:
        return [*cells, ""]
    base_seeds = base[0].records[kind]
    compared = delta_text(best, best_layer_values(base_seeds)[1], test_images(seeds[0]), test_images(base_seeds[0]))
    return [*cells, f"{compared}; vs {base[0].label})"]


def per_layer_table(rows: Sequence[Row], kind: str, metric: str) -> list[str]:
    layers: list[str] = []
    for row in rows:
        for record in row.records.get(kind, []):
            layers += [layer for layer in record["layers"] if layer not in layers]
    if kind == "knn" and any(len(row.records.get(kind, [])) > 1 for row in rows):  # seeds: as the main table
        lines = ["| method | " + " | ".join(layers) + " | best | Δ vs random |", "|---" * (len(layers) + 3) + "|"]
        return lines + [f"| {row.label} | " + " | ".join(seed_cells(row, rows, kind, layers)) + " |"
                        for row in rows if row.records.get(kind)]
    lines = ["| method | " + " | ".join(layers) + " |", "|---" * (len(layers) + 1) + "|"]
    for row in rows:
        for record in row.records.get(kind, []):
            mark = _forced(record)
            cells = []
            for layer in layers:
                entry = record["layers"].get(layer)
                if entry is None:
                    cells.append("")
                elif kind == "knn":
                    cells.append(f"{entry[metric]:.2f}{mark} (k={entry['k']})")
                else:
                    cells.append(f"{_number(entry.get(metric))}{mark}")
            lines.append(f"| {row.label} | " + " | ".join(cells) + " |")
    return lines


def class_tables(rows: Sequence[Row], kind: str) -> list[tuple[str, list[str]]]:
    """(data set, table of test AP per class) for every data set a VOC protocol (SVM, detection) ran on,
    with each mAP's difference from the matching random row's mAP on the same data (seed by seed), and,
    for several seeds, a row of means whose difference is tested as SIGNIFICANCE_NOTE states."""
    tables: dict[str, list[str]] = {}
    for row in rows:
        for record in row.records.get(kind, []):
            group = [r for r in row.records[kind] if data_name(r) == data_name(record)]
            seed = seed_of(record) if len(group) > 1 else None
            base = baseline_record(row, rows, kind, data_name(record), seed)
            for layer, entry in record["layers"].items():
                classes = list(entry["test_AP"])
                lines = tables.setdefault(data_name(record), [
                    "| method | layer | " + " | ".join(classes) + " | mAP (VOC07 11-point) | mAP (area) "
                    "| Δ mAP vs random |", "|---" * (len(classes) + 5) + "|"])
                delta = ""
                base_entry = base[1]["layers"].get(layer) if base else None
                if base_entry and entry["test_mAP"] is not None and base_entry["test_mAP"] is not None:
                    delta = f"{delta_text([entry['test_mAP']], [base_entry['test_mAP']])}; vs {base[0].label})"
                shown = layer if seed is None else f"{layer}, seed {seed}"
                lines.append(f"| {row.label} | {shown} | " + " | ".join(_number(entry["test_AP"].get(c)) for c in classes)
                             + f" | {_number(entry['test_mAP'])}{_forced(record)} | {_number(entry.get('test_mAP_area'))} "
                             f"| {delta} |")
                if len(group) > 1 and record is group[-1]:
                    lines.append(seed_mean_row(row, rows, kind, group, layer, classes))
    return list(tables.items())


def seed_mean_row(row: Row, rows: Sequence[Row], kind: str, group: Sequence[dict[str, Any]], layer: str,
                  classes: Sequence[str]) -> str:
    """A class-table row of means over a method's seeds on one data set, with Δ mAP against every seed
    of the matching random row on that data."""
    def values(records: Iterable[dict[str, Any]], key: str, name: str | None = None) -> list[float]:
        entries = [r["layers"].get(layer) or {} for r in records]
        found = [(e.get(key) or {}).get(name) if name else e.get(key) for e in entries]
        return [v for v in found if v is not None]

    def mean(found: list[float]) -> str:
        return f"{statistics.fmean(found):.2f}" if found else "n/a"

    maps = values(group, "test_mAP")
    delta = ""
    base = baseline_record(row, rows, kind, data_name(group[0]))
    if base and maps:
        base_maps = values((r for r in base[0].records[kind] if data_name(r) == data_name(group[0])), "test_mAP")
        if base_maps:
            delta = f"{delta_text(maps, base_maps)}; vs {base[0].label})"
    mark = FORCED_MARK if any(r.get("forced_test_selection") for r in group) else ""
    return (f"| {row.label} | {layer}, mean of {len(group)} seeds | "
            + " | ".join(mean(values(group, "test_AP", c)) for c in classes)
            + f" | {mean_std(maps, mark) if maps else 'n/a'} | {mean(values(group, 'test_mAP_area'))} | {delta} |")


def lowshot_table(rows: Sequence[Row], kind: str) -> list[str]:
    metric = "test_top1" if kind == "lowshot_linear" else "test_mAP"
    lines: list[str] = []
    for row in rows:
        for record in row.records.get(kind, []):
            for layer, by_k in record["layers"].items():
                shots = sorted((k for k in by_k if k.isdigit()), key=int)
                if not lines:
                    lines = ["| method | layer | " + " | ".join(f"k={k}" for k in shots) + " |",
                             "|---" * (len(shots) + 2) + "|"]
                lines.append(f"| {row.label} | {layer} | " + " | ".join(
                    f"{by_k[k][metric]['mean']:.2f} ± {by_k[k][metric]['std']:.2f} ({len(by_k[k][metric]['draws'])} draws)"
                    for k in shots) + " |")
    return lines


def pretrain_table(rows: Sequence[Row]) -> list[str]:
    shown: set[int] = set()  # a run probed with several poolings heads one row per pooling: list it once
    summaries = [(row.label.replace(_pool_label(row.key[2]), ""), row.pretrain) for row in rows
                 if row.pretrain and not (id(row.pretrain) in shown or shown.add(id(row.pretrain)))]
    if not summaries:
        return []
    lines = ["| method | epochs | steps | min | images/s | pretext metric (epoch averages over training batches) |",
             "|---|---|---|---|---|---|"]
    for label, summary in summaries:
        lines.append(f"| {label} | {epochs_text(summary)} | {summary['steps']} | {summary['wall_time_s'] / 60:.1f} | "
                     f"{summary['images_per_s']} | {pretext_progress(summary)} |")
    return lines


def epochs_text(summary: dict[str, Any]) -> str:
    """The epochs run: the configured count, or, for a run a step or time budget ended, the full epochs and
    the steps of the partial one, and which budget ended it."""
    final = summary.get("final") or {}
    if summary.get("ended_by") in (None, "epochs") or not final:
        return str(summary["epochs"])
    full = final["epoch"] - 1 if final.get("partial") else final["epoch"]
    partial = f" + {final['steps_in_epoch']} steps" if final.get("partial") else ""
    return f"{full}{partial} (ended by {summary['ended_by']})"


def pretext_progress(summary: dict[str, Any]) -> str:
    history = summary.get("history") or []
    final = summary.get("final") or {}
    if final.get("partial"):  # the steps of an epoch a budget cut short count as its last point
        history = [*history, {**final, "epoch": final["epoch"]}]
    if not history:
        return ""
    metric = next((m for m in ("count_acc", "acc") if m in history[-1]), None)
    shown = ""
    first = "epoch 1" if len(history) > 1 or not final.get("partial") else "its only, partial epoch"
    if metric:
        shown = (f"{metric} {100 * history[0][metric]:.1f}% ({first})" if len(history) == 1 else
                 f"{metric} {100 * history[0][metric]:.1f}% (epoch 1) → {100 * history[-1][metric]:.1f}%")
    else:
        shown = (f"loss {history[0]['loss']:.3f} ({first})" if len(history) == 1 else
                 f"loss {history[0]['loss']:.3f} (epoch 1) → {history[-1]['loss']:.3f}")
    clustered = [e for e in history if "nmi_labels" in e]
    if clustered:
        seconds = sum(e["cluster_s"] + e["extract_s"] for e in clustered) / len(clustered)
        shown += (f"; NMI with the labels {clustered[0]['nmi_labels']:.3f} → {clustered[-1]['nmi_labels']:.3f} "
                  f"over {len(clustered)} clusterings; feature pass + k-means {seconds:.1f} s each")
    if "knn_top1" in history[-1]:
        shown += f"; kNN monitor top-1 {history[-1]['knn_top1']:.1f}%"
    return shown


def machine_text(record: dict[str, Any]) -> str:
    machine = record.get("machine") or {}
    text = (f"{machine.get('platform', '?')}, {machine.get('cpu_count', '?')} CPU cores, "
            f"{machine.get('torch_threads', '?')} torch threads, torch {machine.get('torch', '?')}, "
            f"device {machine.get('device', '?')}")
    return text + (f" ({machine['gpu']})" if machine.get("gpu") else "")


def provenance(rows: Sequence[Row]) -> list[str]:
    lines = []
    pretrains: list[dict[str, Any]] = []  # each once, though a run probed with two poolings heads two rows
    for row in rows:
        if row.pretrain and not any(row.pretrain is seen for seen in pretrains):
            pretrains.append(row.pretrain)
            lines.append(f"- pretrain {row.label}: `{row.pretrain['command']}` — commit `{row.pretrain.get('git_commit')}`")
        for kind, records in row.records.items():
            for record in records:
                lines.append(f"- {kind} {row.label}: `{record.get('command', '?')}` — "
                             f"{record.get('wall_time_s', 0) / 60:.1f} min, commit `{record.get('git_commit')}`, "
                             f"selection on {record.get('selection_split', 'val')}"
                             + (" (FORCED)" if record.get("forced_test_selection") else ""))
    evaluations = [r for row in rows for records in row.records.values() for r in records]
    for machine in sorted({machine_text(r) for r in [*evaluations, *pretrains]}):
        lines.append(f"- machine: {machine}")
    # a record written by another run's --also shares that run's wall time: counted once
    runs = [r for r in evaluations if not (r.get("protocol") or {}).get("shared_pass")]
    pretrain_min = sum(p.get("wall_time_s", 0) for p in pretrains) / 60
    evaluation_min = sum(r.get("wall_time_s", 0) for r in runs) / 60
    def counted(n: int, what: str) -> str:
        return f"{n} {what} run{'s' if n != 1 else ''}"

    lines.append(f"- total wall time: {pretrain_min + evaluation_min:.0f} min ({counted(len(pretrains), 'pretraining')} "
                 f"{pretrain_min:.0f} min, {counted(len(runs), 'evaluation')} {evaluation_min:.0f} min)")
    return lines


def protocol_notes(rows: Sequence[Row]) -> list[str]:
    notes = []
    linear = [r for row in rows for r in row.records.get(LINEAR, [])]
    if linear:
        p = linear[0]["protocol"]
        notes.append(
            f"- linear probe protocol `{p['name']}`: {p['epochs']} epochs, batch {p['batch_size']}, lr {p['lr']} "
            f"x{p['gamma']} at epochs {list(p['milestones'])}, SGD momentum {p['momentum']}, wd {p['weight_decay']}; "
            f"features {linear[0].get('features', '?')}, augmentation {'on' if linear[0].get('augment') else 'off'}; "
            + (f"head BatchNorm: {p['batchnorm']}; " if "batchnorm" in p else "")
            + f"probe sizes {sorted({r.get('image_size') for r in linear})} px")
    for record in (r for row in rows for r in row.records.get("detection", [])):
        p = record["protocol"]
        notes.append(
            f"- detection {data_name(record)}, {record['method']}: {p['detector']} {p.get('backbone', '')}, "
            f"{p['epochs']} epochs x batch {p['batch_size']}, lr {p['optimizer']['lr']}, short side {record.get('image_size')} px, "
            f"freeze {p['freeze']}, BatchNorm {p['batchnorm']}, rescale {'on' if p.get('rescale') else 'off'}, "
            f"{p['frontend']}, best epoch {next(iter(record['layers'].values())).get('best_epoch')} on {record['selection_split']}")
    return notes


DIAGNOSE_HEADING = "Shortcut diagnostics (ssl-diagnose: pretext accuracy, trivial solvers, cue ablations)"


def diagnose_provenance(records: Sequence[dict[str, Any]]) -> list[str]:
    return [f"- diagnose {record['task']}: `{record.get('command', '?')}` — {record.get('wall_time_s', 0) / 60:.1f} min, "
            f"commit `{record.get('git_commit')}`" for record in records if record.get("kind") == DIAGNOSE]


def diagnose_report(records: Sequence[dict[str, Any]], *, title: str, command: str, notes: str | None = None,
                    description: str | None = None) -> str:
    """The report of ssl-diagnose records alone: their table and how each was produced."""
    diagnoses = [r for r in records if r.get("kind") == DIAGNOSE]
    lines = [f"# {title}", "", f"Generated by `{command}` from {len(diagnoses)} ssl-diagnose records; do not edit "
             "by hand.", *([description] if description else []), "", f"## {DIAGNOSE_HEADING}", "",
             *diagnose_table(records), "", "## How it was produced", "", *diagnose_provenance(records)]
    machines = sorted({machine_text(r) for r in diagnoses})
    lines += [f"- machine: {machine}" for machine in machines]
    if notes:
        lines += ["", notes.strip()]
    return "\n".join(lines) + "\n"


def build_report(records: Sequence[dict[str, Any]], *, title: str, command: str, published: bool = False,
                 notes: str | None = None, description: str | None = None, order: Sequence[str] = ()) -> str:
    evaluations, pretrains = split_records(records)
    diagnosis = diagnose_table(records)
    if not evaluations and not diagnosis:
        raise DataError("no evaluation records found (files written by ssl-probe, ssl-finetune, ssl-detect or "
                        "ssl-diagnose)")
    if not evaluations:
        return diagnose_report(records, title=title, command=command, notes=notes, description=description)
    rows = build_rows(evaluations, pretrains, order)
    splits = sorted({f"{r.get('reported_split', 'test')}" for r in evaluations})
    datasets = sorted({data_title(r) for r in evaluations})
    lines = [f"# {title}", "",
             f"Generated by `{command}` from {len(evaluations)} evaluation records"
             + (f" and {len(pretrains)} pretraining summaries" if pretrains else "") + "; do not edit by hand.",
             *([description] if description else []),
             f"Data: {'; '.join(datasets)}. Values are percent on the **{'/'.join(splits)}** split; epochs, k and "
             "costs were chosen on val (SVM: cross-validation on trainval). Δ = best layer minus the best layer of "
             "the random encoder of the same architecture and probe size, fed the same input (RGB when none matches).",
             SIGNIFICANCE_NOTE]
    if any(r.get("forced_test_selection") for r in evaluations):
        lines.append(f"{FORCED_MARK} selected on the **test** split (forced by the user): not a fair comparison.")
    lines += ["", *main_table(rows, published)]
    if published:
        lines += ["", "*Italic rows: published AlexNet numbers on ImageNet (the papers' own), another data set and scale; "
                  "shown for orientation only.*"]
    sections = [
        ("kNN top-1 per layer", per_layer_table(rows, "knn", "test_top1") if any("knn" in r.records for r in rows) else []),
        *((f"VOC07 linear SVMs on {name}: AP per class (test)", table) for name, table in class_tables(rows, "svm_voc07")),
        *((f"Detection on {name}: AP per class (test, IoU 0.5)", table) for name, table in class_tables(rows, "detection")),
        ("Low-shot linear probes (test top-1, mean ± std over draws)", lowshot_table(rows, "lowshot_linear")),
        ("Low-shot SVMs (test mAP, mean ± std over draws)", lowshot_table(rows, "lowshot_svm")),
        ("Pretraining runs", pretrain_table(rows)),
        (DIAGNOSE_HEADING, diagnosis),
    ]
    for heading, table in sections:
        if table:
            lines += ["", f"## {heading}", "", *table]
    lines += ["", "## How it was produced", "", *protocol_notes(rows), *provenance(rows),
              *diagnose_provenance(records)]
    if notes:
        lines += ["", notes.strip()]
    return "\n".join(lines) + "\n"


def draw_chart(records: Sequence[dict[str, Any]], path: str | Path, title: str, order: Sequence[str] = ()) -> Path | None:
    """Per-layer test top-1 per method: linear probes solid (random encoders dotted), kNN dashed. None when nothing is per-layer."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    evaluations, _ = split_records(records)
    rows = build_rows(evaluations, order=order)
    series = [(row.label, kind, record) for row in rows for kind in (LINEAR, "knn")
              for record in row.records.get(kind, [])]
    if not series:
        return None
    layers = linear_layers(rows) or list(series[0][2]["layers"])
    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=110)
    for label, kind, record in series:
        xs = [i for i, layer in enumerate(layers) if layer in record["layers"]]
        ys = [record["layers"][layers[i]]["test_top1"] for i in xs]
        style = "--" if kind == "knn" else (":" if label.startswith("random") else "-")
        name = f"{label} ({'kNN' if kind == 'knn' else 'linear'})" + _forced(record)
        ax.plot(xs, ys, style, marker="o", linewidth=1.6, markersize=4, label=name)
    ax.set_xticks(range(len(layers)), layers)
    ax.set_ylabel("test top-1 (%)")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    path = Path(path)
    with atomic_file(path) as handle:
        fig.savefig(handle, format="png")
    plt.close(fig)
    return path
