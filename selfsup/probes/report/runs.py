"""How every number was produced: the pretraining runs behind the rows, the protocols, and each record's
command, commit and machine with the total wall time."""

from __future__ import annotations

from typing import Any, Sequence

from selfsup.probes.report.rows import LINEAR, Row, data_name, pool_label
from selfsup.provenance import machine_text

def pretrain_table(rows: Sequence[Row]) -> list[str]:
    shown: set[int] = set()  # a run probed with several poolings heads one row per pooling: list it once
    summaries = [(row.label.replace(pool_label(row.key[2]), ""), row.pretrain) for row in rows
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


def record_machine(record: dict[str, Any]) -> str:
    return machine_text(record.get("machine") or {})


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
    for machine in sorted({record_machine(r) for r in [*evaluations, *pretrains]}):
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
