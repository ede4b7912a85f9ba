"""Where images come from: folders and torchvision data sets, and how they split into
pretrain / train / val / test.

A *source* is an indexable collection of RGB PIL images with optional integer labels
(`ImageSource`; its kinds are in `selfsup.data.source_kinds`). `open_splits` turns the user's ``--data``
value into a `Splits`:

* ``demo``: the built-in demo set, which ships train/val/test folders.
* ``cifar10``, ``cifar100``, ``stl10``: torchvision data sets under ``--data-root``
  (default ``$SELFSUP_DATA`` or ``~/.cache/selfsup/datasets``), downloaded when absent.
* anything else is a folder; see `open_splits` for its split folders and `selfsup.data.folders` for how
  each folder's layout is read.

Held-out splits are carved deterministically for a seed, stratified by class, and never overlap.
"""

from __future__ import annotations

import math
import os
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from selfsup.data.folders import IGNORED_NOT_IMAGE, check_layout, count_noun, scan_folder
from selfsup.data.source_kinds import FolderSource, ImageSource, IndexedSource, TorchvisionSource
from selfsup.data.torchvision_sets import TORCHVISION_DIRS, open_torchvision
from selfsup.errors import DataError

BUILTIN_DATA = ("demo", "cifar10", "cifar100", "stl10")

# Folder names that count as a validation split, in order of preference.
_VAL_DIR_NAMES = ("val", "valid", "validation")


@dataclass
class Splits:
    pretrain: ImageSource  # what pretext training reads (labels ignored)
    train: ImageSource | None  # labelled splits for probes; None if the data has no labels
    val: ImageSource | None
    test: ImageSource | None
    notes: list[str] = field(default_factory=list)  # how each split was obtained, for logs

    @property
    def ignored_files(self) -> dict[str, int]:
        """Files left out of the folders these splits read, by reason, summed over the folders
        ({} for torchvision data sets)."""
        total: Counter[str] = Counter()
        for folder in _folders(self):
            total.update(folder.ignored)
        return dict(total)


def _folders(splits: Splits) -> list[FolderSource]:
    """The distinct folders behind the splits (carved parts resolved to the folder they came from)."""
    found: list[FolderSource] = []
    for source in (splits.pretrain, splits.train, splits.val, splits.test):
        while isinstance(source, IndexedSource):
            source = source.base
        if isinstance(source, FolderSource) and not any(source is seen for seen in found):
            found.append(source)
    return found


def _note_ignored(splits: Splits) -> Splits:
    """Add a note summing up the files the folders' scans left out, if any."""
    ignored = Counter(splits.ignored_files)
    if not ignored:
        return splits
    parts = []
    for reason, number in ignored.most_common():
        text = f"{number:,} {reason}"
        if reason == IGNORED_NOT_IMAGE:
            extensions = sorted({extension for folder in _folders(splits) for extension in folder.ignored_extensions})
            text += f" ({', '.join(extensions[:5])}{', ...' if len(extensions) > 5 else ''})"
        parts.append(text)
    splits.notes.append(f"ignored {count_noun(sum(ignored.values()), 'file')}: {', '.join(parts)}")
    return splits


def _percent(fraction: float) -> str:
    return f"{fraction * 100:g}%"


def _allocate(fraction: float, sizes: np.ndarray, available: np.ndarray) -> np.ndarray:
    """Per-class counts summing to ``fraction`` of all items (at least one), each as close to
    ``fraction`` of its class as possible (largest remainder) and within ``available``."""
    target = max(1, math.floor(fraction * sizes.sum() + 0.5))
    quota = fraction * sizes
    counts = np.minimum(np.floor(quota), available).astype(np.int64)
    for _ in range(target - int(counts.sum())):
        shortfall = np.where(counts < available, quota - counts, -np.inf)
        best = int(np.argmax(shortfall))  # ties go to the lower class index: deterministic
        if shortfall[best] == -np.inf:
            break
        counts[best] += 1
    return counts


def stratified_holdout(
    labels: Sequence[int] | np.ndarray, fractions: Sequence[float], seed: int
) -> tuple[np.ndarray, list[np.ndarray]]:
    """Split item indices ``0..len(labels)-1`` into ``(rest, [held-out part per fraction])``.

    Each class is shuffled once with the seed and parts are taken from the front in order, so a
    part depends only on the seed and the fractions before it (changing the test fraction does
    not move val images). Every class keeps at least one item in ``rest``, hence a part can come
    out smaller than asked, or empty, on tiny data. All index arrays are sorted; unlabelled
    items (-1) form one group of their own.
    """
    labels = np.asarray(labels, dtype=np.int64)
    rng = np.random.default_rng(seed)
    by_label = np.argsort(labels, kind="stable")
    _, group_starts = np.unique(labels[by_label], return_index=True)
    groups = [rng.permutation(group) for group in np.split(by_label, group_starts[1:])]
    sizes = np.array([len(group) for group in groups], dtype=np.int64)
    taken = np.zeros(len(groups), dtype=np.int64)
    parts = []
    for fraction in fractions:
        if fraction > 0:
            counts = _allocate(fraction, sizes, np.maximum(sizes - taken - 1, 0))
        else:
            counts = np.zeros_like(taken)
        parts.append(_gather(groups, taken, taken + counts))
        taken = taken + counts
    return _gather(groups, taken, sizes), parts


def stratified_subset(source: ImageSource, count: int, seed: int) -> ImageSource:
    """About ``count`` items of a labelled ``source``, the same share of every class, drawn with ``seed``
    (``stratified_holdout``'s first part); ``source`` itself when it holds no more than ``count``."""
    if count >= len(source):
        return source
    labels = np.array([source.label(index) for index in range(len(source))], dtype=np.int64)
    _, (part,) = stratified_holdout(labels, [count / len(source)], seed)
    return IndexedSource(source, part, f"stratified subset (seed {seed}) of {source.describe()}, kept")


def _gather(groups: list[np.ndarray], starts: np.ndarray, stops: np.ndarray) -> np.ndarray:
    pieces = [group[start:stop] for group, start, stop in zip(groups, starts, stops)]
    return np.sort(np.concatenate(pieces)) if pieces else np.empty(0, dtype=np.int64)


def _hold_out(
    base: ImageSource, base_text: str, parts: Sequence[tuple[str, float]], seed: int, notes: list[str]
) -> tuple[ImageSource, dict[str, IndexedSource | None]]:
    """Carve the named parts out of ``base``; returns (train = the rest, {part: source or None})."""
    labels = np.array([base.label(index) for index in range(len(base))], dtype=np.int64)
    rest, held = stratified_holdout(labels, [fraction for _, fraction in parts], seed)
    carved: dict[str, IndexedSource | None] = {}
    for (split, fraction), indices in zip(parts, held):
        if fraction == 0:
            carved[split] = None
            notes.append(f"{split}: none ({split}_fraction = 0)")
        elif len(indices) == 0:
            carved[split] = None
            notes.append(f"{split}: none ({base_text} is too small to hold out {_percent(fraction)})")
        else:
            part_name = f"{base_text} [{split}: {_percent(fraction)} held out, seed {seed}]"
            carved[split] = IndexedSource(base, indices, part_name)
            notes.append(
                f"{split} = {_percent(fraction)} of {base_text} held out, stratified by class, seed {seed} "
                f"({len(indices):,} images)"
            )
    held_names = " and ".join(split for split, fraction in parts if fraction > 0)
    if held_names:
        train = IndexedSource(base, rest, f"{base_text} [train: rest after holding out {held_names}, seed {seed}]")
        notes.append(f"train = the rest of {base_text} ({len(rest):,} images)")
    else:
        train = base
        notes.append(f"train = all of {base_text}")
    return train, carved


def _check_fractions(val_fraction: float, test_fraction: float) -> None:
    for name, fraction in (("val_fraction", val_fraction), ("test_fraction", test_fraction)):
        if not 0 <= fraction < 1:
            raise DataError(f"{name} = {fraction} is invalid: must be at least 0 and below 1")
    if val_fraction + test_fraction >= 1:
        raise DataError(
            f"val_fraction + test_fraction = {val_fraction + test_fraction:g} is invalid: "
            "must be below 1 so that images remain for training"
        )


def default_data_root() -> str:
    """Where torchvision data sets live unless ``data_root`` says otherwise."""
    return os.environ.get("SELFSUP_DATA") or os.path.join(os.path.expanduser("~"), ".cache", "selfsup", "datasets")


def open_splits(
    data: str,
    data_root: str | None = None,
    *,
    val_fraction: float = 0.1,
    test_fraction: float = 0.1,
    seed: int = 0,
    layout: str = "auto",
) -> Splits:
    """Open ``data`` (a built-in name or a folder) as pretrain/train/val/test sources.

    Folders: with sub-folders ``train/`` and ``val/`` (or ``valid/``, ``validation/``) and
    ``test/``, each is used as is. With ``train/`` + ``val/`` only (ImageNet layout) the val
    folder becomes the test split and val is held out of train; with ``train/`` + ``test/`` only
    val is held out of train. In these cases pretraining reads the whole train folder. A folder
    without split sub-folders (or with ``train/`` alone, which then stands for the data) is one
    data set: if labelled (ImageFolder) val and test are held out of it and pretraining reads
    everything but test; if unlabelled it serves pretraining only and train/val/test are None.
    Built-in data sets: see the module docstring; CIFAR's val is held out
    of its train split (pretraining still reads the full train split), STL-10 pretrains on
    train + unlabeled. ``test_fraction`` only matters where no test split exists.

    ``layout`` is how each folder of images is read (the data folder, or each of its split folders):
    see `scan_folder`. Built-in data sets have their own layout and ignore it. Files the folders'
    scans left out are counted in `Splits.ignored_files` and summed up in a note.

    Raises DataError (one line) for missing, empty, ambiguous or inconsistent data and failed
    downloads; ConfigError for an unknown ``layout``.
    """
    check_layout(layout)
    _check_fractions(val_fraction, test_fraction)
    if data == "demo":
        # Imported here: the demo module generates its images on first use, which only the
        # demo needs.
        from selfsup.data.demo import ensure_demo

        cache_dir = None if data_root is None else Path(os.path.expanduser(data_root))
        demo_root = Path(ensure_demo(cache_dir=cache_dir))
        splits = _folder_splits(str(demo_root / "classification"), val_fraction, test_fraction, seed, "auto")
        splits.notes.insert(0, f"demo data set at {demo_root}")
        return _note_ignored(splits)
    if data in TORCHVISION_DIRS:
        root = os.path.expanduser(data_root) if data_root else default_data_root()
        if data == "stl10":
            return _stl10_splits(root, val_fraction, seed)
        return _cifar_splits(data, root, val_fraction, seed)
    path = os.path.expanduser(data)
    if not os.path.exists(path):
        raise DataError(f"data path not found: {data} (give a folder, or one of: {', '.join(BUILTIN_DATA)})")
    return _note_ignored(_folder_splits(path, val_fraction, test_fraction, seed, layout))


def _folder_splits(root: str, val_fraction: float, test_fraction: float, seed: int, layout: str) -> Splits:
    train_dir = os.path.join(root, "train")
    if not os.path.isdir(train_dir):
        return _single_folder_splits(scan_folder(root, layout=layout), val_fraction, test_fraction, seed)

    train_full = scan_folder(train_dir, layout=layout)
    val_dir = _first_subfolder(root, _VAL_DIR_NAMES)
    test_dir = _first_subfolder(root, ("test",))
    if not train_full.classes or (val_dir is None and test_dir is None):
        return _single_folder_splits(train_full, val_fraction, test_fraction, seed)
    val_folder = _labelled_split_folder(val_dir, train_full, layout) if val_dir else None
    test_folder = _labelled_split_folder(test_dir, train_full, layout) if test_dir else None
    base_text = f"folder {train_full.name}"
    notes = [f"pretrain = all of {base_text} ({len(train_full):,} images)"]

    if val_folder is not None and test_folder is not None:
        notes.append(f"train = {base_text} ({len(train_full):,} images)")
        notes.append(f"val = folder {val_folder.name} ({len(val_folder):,} images)")
        notes.append(f"test = folder {test_folder.name} ({len(test_folder):,} images)")
        return Splits(pretrain=train_full, train=train_full, val=val_folder, test=test_folder, notes=notes)
    train, carved = _hold_out(train_full, base_text, [("val", val_fraction)], seed, notes)
    if test_folder is None:  # ImageNet layout: its labelled val folder is the only held-out set
        test_folder = val_folder
        notes.append(
            f"test = folder {test_folder.name} ({len(test_folder):,} images; "
            "no test folder, so the val folder serves as the test split)"
        )
    else:
        notes.append(f"test = folder {test_folder.name} ({len(test_folder):,} images)")
    return Splits(pretrain=train_full, train=train, val=carved["val"], test=test_folder, notes=notes)


def _first_subfolder(root: str, names: Sequence[str]) -> str | None:
    for name in names:
        path = os.path.join(root, name)
        if os.path.isdir(path):
            return path
    return None


def _single_folder_splits(full: FolderSource, val_fraction: float, test_fraction: float, seed: int) -> Splits:
    """Splits of one folder with no split folders beside it: carved if labelled, pretrain-only if not."""
    base_text = f"folder {full.name}"
    if not full.classes:
        notes = [
            f"pretrain = all of {base_text} ({len(full):,} images)",
            "no labels: probes unavailable (use an ImageFolder layout, one sub-folder per class)",
        ]
        return Splits(pretrain=full, train=None, val=None, test=None, notes=notes)
    carving_notes: list[str] = []
    train, carved = _hold_out(full, base_text, [("val", val_fraction), ("test", test_fraction)], seed, carving_notes)
    test = carved["test"]
    if test is None:
        pretrain: ImageSource = full
        pretrain_note = f"pretrain = all of {base_text} ({len(full):,} images)"
    else:
        # Everything but test: val images are fair game for unsupervised pretext training, test
        # images are not (the same rule as for data sets that come with a test split).
        keep = np.setdiff1d(np.arange(len(full)), test.indices)
        pretrain = IndexedSource(full, keep, f"{base_text} [pretrain: all but test]")
        pretrain_note = f"pretrain = all of {base_text} except the test images ({len(keep):,} images)"
    return Splits(pretrain=pretrain, train=train, val=carved["val"], test=test, notes=[pretrain_note, *carving_notes])


def _labelled_split_folder(folder: str, train: FolderSource, layout: str) -> FolderSource:
    source = scan_folder(folder, classes=train.classes, layout=layout)
    if not source.classes:
        raise DataError(
            f"{folder} holds no class sub-folders but {train.name} does; split folders must share the same layout"
        )
    return source




def _cifar_splits(name: str, root: str, val_fraction: float, seed: int) -> Splits:
    train_set = open_torchvision(name, root, train=True)
    test_set = open_torchvision(name, root, train=False)
    classes = list(train_set.classes)
    train_full = TorchvisionSource(train_set, classes, f"{name} train")
    test = TorchvisionSource(test_set, classes, f"{name} test")
    notes = [
        f"pretrain = the full {name} train split ({len(train_full):,} images; pretext training ignores labels, "
        "so it includes the images held out for val)"
    ]
    train, carved = _hold_out(train_full, f"{name} train", [("val", val_fraction)], seed, notes)
    notes.append(f"test = the official {name} test split ({len(test):,} images)")
    return Splits(pretrain=train_full, train=train, val=carved["val"], test=test, notes=notes)


def _stl10_splits(root: str, val_fraction: float, seed: int) -> Splits:
    pretrain_set = open_torchvision("stl10", root, split="train+unlabeled")
    classes = list(pretrain_set.classes)
    pretrain = TorchvisionSource(pretrain_set, classes, "stl10 train+unlabeled")
    train_full = TorchvisionSource(open_torchvision("stl10", root, split="train"), classes, "stl10 train")
    test = TorchvisionSource(open_torchvision("stl10", root, split="test"), classes, "stl10 test")
    notes = [f"pretrain = stl10 train + unlabeled splits ({len(pretrain):,} images)"]
    train, carved = _hold_out(train_full, "stl10 train", [("val", val_fraction)], seed, notes)
    notes.append(f"test = the official stl10 test split ({len(test):,} images)")
    return Splits(pretrain=pretrain, train=train, val=carved["val"], test=test, notes=notes)
