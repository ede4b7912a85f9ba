"""The report's tables of results: the main table (linear probe layers, Δ against random, one column per other
protocol), and per protocol kNN per layer, AP per class on VOC data, and low-shot draws."""

from __future__ import annotations

import statistics
from typing import Any, Iterable, Sequence

from selfsup.models import ALEXNET_LAYERS
from selfsup.probes.lowshot import summarize
from selfsup.probes.report.numbers import (FORCED_MARK, best_layer_values, delta_text, forced_mark, layer_values,
                                           mean_std, number_text, test_images)
from selfsup.probes.report.rows import LINEAR, Row, baseline_record, data_name, linear_layers, seed_of

# protocols after the linear layers, in column order: kind -> column title
PROTOCOL_TITLES = {
    "knn": "kNN top-1",
    "finetune": "fine-tune",
    "lowshot_linear": "low-shot linear top-1",
    "svm_voc07": "VOC07 SVM mAP",
    "lowshot_svm": "low-shot SVM mAP",
    "detection": "detection mAP",
}

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


def protocol_cell(kind: str, records: list[dict[str, Any]]) -> str:
    """One summary value per protocol: the layer chosen on the selection split (kNN: val top-1),
    the only layer when one was probed; low-shot: the largest k."""
    record = records[0]
    layers = record["layers"]
    if not layers:
        return ""
    mark = forced_mark(record)
    if kind == "knn" and len(records) > 1:  # seeds: the layer of the best mean val top-1
        layer = max(layers, key=lambda name: statistics.fmean(r["layers"][name]["val_top1"] for r in records))
        return f"{mean_std(layer_values(records, layer), mark)} ({layer})"
    if kind == "knn":
        layer = max(layers, key=lambda name: layers[name]["val_top1"])
        return f"{layers[layer]['test_top1']:.2f}{mark} ({layer})"
    if kind == "finetune":
        return " / ".join(f"{number_text(entry.get('test_top1', entry.get('test_mAP')))}{forced_mark(r)} ({name})"
                          for r in records for name, entry in r["layers"].items())
    if kind == "detection" and len(records) > 1:  # one record per seed
        layer = next(iter(layers))
        values = [r["layers"][layer]["test_mAP"] or 0.0 for r in records]
        summary = summarize(values)
        mark = FORCED_MARK if any(r.get("forced_test_selection") for r in records) else ""
        return f"{summary['mean']:.2f} ± {summary['std']:.2f}{mark} ({layer}, {len(values)} seeds)"
    if kind in ("svm_voc07", "detection"):
        layer = max(layers, key=lambda name: layers[name].get("cv_mAP") or layers[name].get("test_mAP") or 0.0)
        return f"{number_text(layers[layer]['test_mAP'])}{mark} ({layer})"
    if kind in ("lowshot_linear", "lowshot_svm"):
        metric = "test_top1" if kind == "lowshot_linear" else "test_mAP"
        layer = list(layers)[-1]
        shots = sorted((k for k in layers[layer] if k.isdigit()), key=int)
        return "; ".join(f"k={k}: {layers[layer][k][metric]['mean']:.1f}±{layers[layer][k][metric]['std']:.1f}"
                         for k in shots) + f"{mark} ({layer})"
    return ""


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
            cells += [f"*{values[ALEXNET_LAYERS.index(layer)]:.1f}*" if layer in ALEXNET_LAYERS else ""
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
            mark = forced_mark(record)
            cells = []
            for layer in layers:
                entry = record["layers"].get(layer)
                if entry is None:
                    cells.append("")
                elif kind == "knn":
                    cells.append(f"{entry[metric]:.2f}{mark} (k={entry['k']})")
                else:
                    cells.append(f"{number_text(entry.get(metric))}{mark}")
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
                lines.append(f"| {row.label} | {shown} | " + " | ".join(number_text(entry["test_AP"].get(c)) for c in classes)
                             + f" | {number_text(entry['test_mAP'])}{forced_mark(record)} | {number_text(entry.get('test_mAP_area'))} "
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
