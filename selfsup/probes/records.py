"""Result records shared by every evaluation (linear probe, kNN, SVM, low-shot, fine-tuning, detection).

A record is one JSON file that holds everything a table needs, so that `ssl-report` rebuilds tables
from records alone: which checkpoint (and its pretraining), which protocol, which data and splits,
which split selected the model, the metric values per layer, the command, commit, machine and time.

Selection discipline: model selection (epoch, cost, k) uses the val split. Selecting on test is
refused unless the user forces it, and a forced record says so (``forced_test_selection``), which
every table built from it repeats.

Portable paths: a record names files (checkpoint, data, figure, and paths inside commands and notes).
When it is written, every absolute path below the checkout that holds the record (the nearest folder
with a ``.git``) is stored relative to the record's folder, one below the home folder as ``~/...``; any
other path is kept as given (a record outside any checkout, e.g. next to its checkpoint in a run
folder, keeps absolute paths: there is no clone for it to travel with). Readers resolve a relative
path field against the record's folder (:func:`resolve_path`), so a fresh clone rebuilds every table.
"""

from __future__ import annotations

import json
import os
import re
import sys
import time
from pathlib import Path
from typing import Any, Iterable

import torch

from selfsup.checkpoint import atomic_file
from selfsup.provenance import command_line, git_commit, machine_description
from selfsup.errors import ConfigError, DataError

RECORD_VERSION = 1
SELECTION_SPLITS = ("val", "test")
# Kinds of record written by ssl-probe, ssl-finetune and ssl-detect; ssl-pretrain's summary is kind "pretrain".
EVALUATION_KINDS = ("linear_probe", "knn", "finetune", "lowshot_linear", "lowshot_svm", "svm_voc07", "detection")
# Top-level fields (and their types) that every table reads: a file without one is skipped with a
# warning instead of stopping the whole report with a traceback.
REQUIRED_FIELDS: dict[str, dict[str, type | tuple[type, ...]]] = {
    "evaluation": {"method": str, "checkpoint": str, "encoder": dict, "protocol": dict, "layers": dict},
    "pretrain": {"checkpoint": str, "command": str, "epochs": int, "steps": int,
                 "wall_time_s": (int, float), "images_per_s": (int, float)},
    # ssl-diagnose's records: shown beside the probe tables, never mixed into them
    "diagnose": {"task": str, "rows": list, "data": dict},
}


class SelectionError(ConfigError):
    """Raised when a run would select its model on the test split without being forced to."""


def check_selection(selection_split: str, force_test_selection: bool) -> None:
    if selection_split not in SELECTION_SPLITS:
        raise ConfigError(f"--selection-split {selection_split!r} is invalid: allowed values are {', '.join(SELECTION_SPLITS)}")
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


# Fields that hold one path (or a name such as "random" or "demo"); a relative value given on the
# command line is relative to where the command ran, so it is made absolute before the path rule.
PATH_FIELDS = ("checkpoint", "data", "figure")
# An absolute path inside a string: a "/" at the start or after a space, "=", quote or bracket (so
# "https://" and "a/b" are left alone), up to the next space, quote, bracket, comma or semicolon.
_ABSOLUTE_PATH = re.compile(r"""(?<![^\s=("'\[])/[^\s"'()\[\],;]+""")


def checkout_root(folder: Path) -> Path | None:
    """The nearest folder at or above ``folder`` holding ``.git`` (a directory, or a file in a worktree)."""
    return next((candidate for candidate in (folder, *folder.parents) if (candidate / ".git").exists()), None)


def portable_path(path: str, folder: Path, root: Path | None) -> str:
    """The path rule for one absolute path: relative to ``folder`` (the record's) when it lies below
    ``root`` (the record's checkout), ``~/...`` when below the home folder, else unchanged (it is what
    the user gave)."""
    # a sentence may end right after a path: keep the full stop out of it
    stripped = path.rstrip(".:")
    tail = path[len(stripped):]
    target = Path(os.path.normpath(stripped))
    if root is not None and target.is_relative_to(root):
        return Path(os.path.relpath(target, folder)).as_posix() + tail
    home = Path.home()
    if home != Path("/") and target.is_relative_to(home):
        return "~/" + target.relative_to(home).as_posix() + tail
    return path


def portable(value: Any, folder: Path, root: Path | None) -> Any:
    """``value`` (a record or any part of it) with the path rule applied to every absolute path in
    every string; ``folder``: the folder the record is written to, ``root``: its checkout (or None)."""
    if isinstance(value, dict):
        return {key: portable(item, folder, root) for key, item in value.items()}
    if isinstance(value, list):
        return [portable(item, folder, root) for item in value]
    if isinstance(value, str):
        return _ABSOLUTE_PATH.sub(lambda match: portable_path(match.group(0), folder, root), value)
    return value


def resolve_path(record: dict[str, Any], value: str) -> str:
    """A path read from ``record`` as a path on this machine: a relative one is resolved against the
    folder the record was read from (``_path``); names such as "random" or "demo" are returned unchanged."""
    # "<runs>/..." names a folder outside the checkout on the machine that ran it: nothing to resolve
    if not value or value.startswith(("/", "~", "<")) or "_path" not in record:
        return value
    candidate = Path(record["_path"]).parent / value
    if "/" not in value and not candidate.exists():  # a name, not a file next to the record
        return value
    return os.path.normpath(os.path.abspath(candidate))


def write_record(record: dict[str, Any], path: str | Path) -> Path:
    """Atomic write (temporary file + rename), so an interrupted run never leaves half a record. The
    file holds the portable form (the path rule above); ``record`` itself is left as it is."""
    # a bare word ("random", "demo", "cifar10") is a name, never made a path
    given = {key: os.path.abspath(value) for key, value in record.items() if key in PATH_FIELDS
             and isinstance(value, str) and "/" in value and not os.path.isabs(value) and os.path.exists(value)}
    folder = Path(os.path.abspath(path)).parent
    stored = portable({**record, **given}, folder, checkout_root(folder))
    with atomic_file(path, "w") as handle:
        json.dump(stored, handle, indent=2)
        handle.write("\n")
    return Path(path)


def record_problem(obj: Any) -> str | None:
    """Why a parsed JSON file cannot be used as an evaluation record, an ssl-pretrain summary (kind
    "pretrain", which reports join to its checkpoint) or an ssl-diagnose record; None when it can."""
    if not isinstance(obj, dict):
        return f"not a JSON object (a {type(obj).__name__})"
    kind = obj.get("kind")
    if kind not in ("pretrain", "diagnose") and kind not in EVALUATION_KINDS:
        return "not a record (no kind field)" if kind is None else f"not a record (unknown kind {kind!r})"
    required = REQUIRED_FIELDS[kind if kind in ("pretrain", "diagnose") else "evaluation"]
    missing = [name for name in required if name not in obj]
    if missing:
        return f"{kind} record without {', '.join(missing)}"
    wrong = [name for name, types in required.items() if not isinstance(obj[name], types)]
    if wrong:
        return f"{kind} record with {', '.join(wrong)} of the wrong type"
    if kind in EVALUATION_KINDS and not isinstance(obj["encoder"].get("arch"), str):
        return f"{kind} record without encoder.arch"
    return None


def _read_json(file: Path) -> Any:
    """The parsed file; a ValueError whose message says why it could not be read or parsed."""
    try:
        data = file.read_bytes()
    except OSError as exc:
        raise ValueError(f"cannot be read ({exc.strerror or exc})") from None
    try:
        text = data.decode("utf-8-sig")  # a byte-order mark, as some Windows editors write, is harmless
    except UnicodeDecodeError as exc:
        raise ValueError(f"not UTF-8 text (byte 0x{data[exc.start]:02x} at offset {exc.start})") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"not valid JSON (line {exc.lineno}, column {exc.colno}: {exc.msg})") from None
    except (ValueError, RecursionError) as exc:  # e.g. an integer too long to convert, nesting too deep
        raise ValueError(f"not valid JSON ({exc})") from None


def load_records(paths: Iterable[str | Path]) -> tuple[list[dict[str, Any]], list[tuple[str, str]]]:
    """Records and pretraining summaries from files and folders (searched recursively for ``*.json``),
    and the (path, reason) of every file that could not be used.

    One file that cannot be used (unreadable, not UTF-8, not JSON, not a record, missing fields the
    tables need) must not cost the whole report: each is named in a warning line on stderr and
    skipped. Each record gets ``_path`` (where it was read) for error messages and tables.
    Raises :class:`DataError` for a path that does not exist and when no usable file remains.
    """
    paths = [Path(given) for given in paths]
    found: list[dict[str, Any]] = []
    skipped: list[tuple[str, str]] = []
    for given in paths:
        if not given.exists():
            raise DataError(f"no such record file or folder: {given}")
        files = sorted(given.rglob("*.json")) if given.is_dir() else [given]
        for file in files:
            try:
                obj = _read_json(file)
            except ValueError as exc:
                problem = str(exc)
            else:
                problem = record_problem(obj)
            if problem is not None:
                print(f"warning: skipped {file}: {problem}", file=sys.stderr)
                skipped.append((str(file), problem))
                continue
            obj["_path"] = str(file)
            found.append(obj)
    if not found:
        where = ", ".join(str(given) for given in paths)
        if skipped:
            raise DataError(f"no usable records in {where}: {len(skipped)} JSON file{'s' * (len(skipped) > 1)} "
                            "skipped (see the warnings above)")
        raise DataError(f"no records in {where}: no *.json files found")
    return found, skipped
