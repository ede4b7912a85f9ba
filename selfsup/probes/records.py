"""Result records shared by every evaluation (linear probe, kNN, SVM, low-shot, fine-tuning, detection).

A record is one JSON file that holds everything a table needs, so that `ssl-report` rebuilds tables
from records alone: which checkpoint (and its pretraining), which protocol, which data and splits,
which split selected the model, the metric values per layer, the command, commit, machine and time.

Selection discipline: model selection (epoch, cost, k) uses the val split. Selecting on test is
refused unless the user forces it, and a forced record says so (``forced_test_selection``), which
every table built from it repeats.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Iterable

import torch

from selfsup.checkpoint import atomic_file
from selfsup.cli.common import command_line, git_commit, machine_description

RECORD_VERSION = 1
SELECTION_SPLITS = ("val", "test")


class SelectionError(ValueError):
    """Raised when a run would select its model on the test split without being forced to."""


def check_selection(selection_split: str, force_test_selection: bool) -> None:
    if selection_split not in SELECTION_SPLITS:
        raise ValueError(f"--selection-split {selection_split!r} is invalid: allowed values are {', '.join(SELECTION_SPLITS)}")
    if selection_split == "test" and not force_test_selection:
        raise SelectionError(
            "--selection-split test is refused: choosing epochs, costs or k on the test split inflates the reported "
            "numbers. Select on val (the default); if you really need it, add --force-test-selection and the "
            "record and every table built from it will be marked as test-selected"
        )


def new_record(kind: str, *, method: str, checkpoint: str, encoder: dict[str, Any], pretraining: dict[str, Any],
               data: str, splits: dict[str, Any], protocol: dict[str, Any], selection_split: str = "val",
               force_test_selection: bool = False, reported_split: str = "test") -> dict[str, Any]:
    """The fields every record has; the caller adds ``layers`` (metrics per probed layer) and extras."""
    return {
        "record_version": RECORD_VERSION,
        "kind": kind,
        "method": method,
        "checkpoint": checkpoint,
        "encoder": encoder,
        "pretraining": pretraining,
        "data": data,
        "splits": splits,
        "protocol": protocol,
        "selection_split": selection_split,
        "forced_test_selection": bool(force_test_selection and selection_split == "test"),
        "reported_split": reported_split,
        "started_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def finish_record(record: dict[str, Any], *, started: float, device: torch.device) -> dict[str, Any]:
    record.update(command=command_line(), git_commit=git_commit(), machine=machine_description(device),
                  wall_time_s=round(time.perf_counter() - started, 1))
    return record


def write_record(record: dict[str, Any], path: str | Path) -> Path:
    """Atomic write (temporary file + rename), so an interrupted run never leaves half a record."""
    with atomic_file(path, "w") as handle:
        json.dump(record, handle, indent=2)
        handle.write("\n")
    return Path(path)


def is_record(obj: Any) -> bool:
    """An evaluation record, or an ssl-pretrain summary (kind "pretrain") that reports join to its checkpoint."""
    if not isinstance(obj, dict) or not isinstance(obj.get("kind"), str):
        return False
    return obj["kind"] == "pretrain" or isinstance(obj.get("layers"), dict)


def load_records(paths: Iterable[str | Path]) -> list[dict[str, Any]]:
    """Records and pretraining summaries from files and folders (searched recursively for ``*.json``);
    other JSON files are skipped.

    Each record gets ``_path`` (where it was read) for error messages and tables.
    """
    found: list[dict[str, Any]] = []
    for given in paths:
        given = Path(given)
        if not given.exists():
            raise FileNotFoundError(f"no such record file or folder: {given}")
        files = sorted(given.rglob("*.json")) if given.is_dir() else [given]
        for file in files:
            try:
                obj = json.loads(file.read_text())
            except (OSError, json.JSONDecodeError):
                continue
            if is_record(obj):
                obj["_path"] = str(file)
                found.append(obj)
    return found
