"""The report's chart: test top-1 per layer, one line per row and protocol."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

from selfsup.checkpoint import atomic_file
from selfsup.probes.report.numbers import forced_mark
from selfsup.probes.report.rows import LINEAR, build_rows, linear_layers, split_records


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
        name = f"{label} ({'kNN' if kind == 'knn' else 'linear'})" + forced_mark(record)
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
