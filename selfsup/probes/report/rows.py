"""Evaluation records grouped into the report's rows: one per method and pretraining run (its seeds together),
random encoders one per architecture, input, probe size and pooling; and which random row a method is compared with."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

from selfsup.config import from_dict
from selfsup.pretext import TASKS
from selfsup.pretext.base import LIGHTNESS, RGB, SOBEL
from selfsup.probes.options import ProbeOptions
from selfsup.probes.records import resolve_path

LINEAR = "linear_probe"
DIAGNOSE = "diagnose"
# The mappings that an encoder's channel count names (its rows say "L input", "Sobel input"); three channels: RGB
_KIND_OF_CHANNELS = {1: LIGHTNESS, 2: SOBEL}


def input_name(record: dict[str, Any]) -> str:
    channels = record["encoder"].get("in_channels", 3)
    return {1: "L", 2: "Sobel"}.get(channels, "RGB")


def pool_of(record: dict[str, Any]) -> str:
    """The probe's pooling preset (records without one are not pooled probes, or older: ``auto``)."""
    return record.get("pool_preset") or "auto"


def input_kind(record: dict[str, Any]) -> str:
    """The input mapping the record's encoder was fed, as its task declares it (``PretextTask.input_kind``): the
    checkpoint's task with its recorded options, or for a random encoder the task it was fed like
    (``--input-like``) with that task's defaults. Where no known task declares it (records without a task, a
    task or options this version does not know, a mapping no kind names), the mapping its channel count names."""
    task = (record.get("pretraining") or {}).get("task") or {}
    name, options = (task.get("input"), {}) if record["method"] == "random" else (task.get("name"), task.get("options"))
    if name in TASKS:
        task_cls = TASKS[name]
        try:
            return task_cls.input_kind(from_dict(task_cls.Config, options or {}, prefix="pretext."))
        except (ValueError, TypeError):  # ConfigError included: options of another version, or no kind names it
            pass
    return _KIND_OF_CHANNELS.get(record["encoder"].get("in_channels", 3), RGB)


def input_like(record: dict[str, Any]) -> str | None:
    """The task whose input mapping a random encoder was fed (``ssl-probe --input-like``)."""
    return (record.get("pretraining") or {}).get("task", {}).get("input")


def fed_as(record: dict[str, Any]) -> str | None:
    """The task a random encoder was fed like, where its row must say so: None for the default input
    (ssl-probe's ``--input-like``) and for mappings the input channels already name (L, Sobel)."""
    like = input_like(record)
    if like in (None, ProbeOptions.input_like) or input_kind(record) in _KIND_OF_CHANNELS.values():
        return None
    return like


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


def pool_label(pool: str) -> str:
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

    def any_record(self) -> dict[str, Any]:
        """A record of the row: each has the row's key, so any says what all were fed."""
        return next(iter(self.records.values()))[0]

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
            fed = "" if fed_as(row.any_record()) is None else f" as {like}"
            row.label = f"random init ({channels} input{fed}, {size} px{pool_label(pool)})"
        else:
            method, _, pool = row.key
            checkpoints = sorted({resolve_path(r, r["checkpoint"]) for kind in row.records.values() for r in kind})
            runs = f"{len(checkpoints)} seeds" if len(checkpoints) > 1 else Path(checkpoints[0]).parent.name
            # pretrained behind a lens (lens.enabled): the encoder record carries its spec
            named = f"{method} + lens" if row.any_record().get("encoder", {}).get("lens") else method
            row.label = named if methods[method] == 1 else f"{named} [{runs}{pool_label(pool)}]"
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


def seed_of(record: dict[str, Any]) -> int | None:
    return (record.get("protocol") or {}).get("seed")


def data_name(record: dict[str, Any]) -> str:
    return Path(str(record.get("data"))).name or str(record.get("data"))


def baseline_record(row: Row, rows: Sequence[Row], kind: str, data: str | None = None,
                    seed: int | None = None) -> tuple[Row, dict[str, Any]] | None:
    """The random row (and its ``kind`` record, on ``data`` and with ``seed`` when given) of the same
    architecture, probe size and pooling, fed as the method's task feeds its encoder when one was probed
    (``--input-like TASK``), else fed the same input mapping (:func:`input_kind`), else RGB."""
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
    plain = [c for c in candidates if fed_as(c[1]) is None]
    same_input = [c for c in plain if input_kind(c[1]) == input_kind(record)]
    rgb = [c for c in plain if input_kind(c[1]) == RGB]
    return (fed_alike or same_input or rgb or [None])[0]
