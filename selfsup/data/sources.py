"""Where images come from: folders and torchvision data sets, and how they split into
pretrain / train / val / test.

A *source* is an indexable collection of RGB PIL images with optional integer labels
(`ImageSource`). `open_splits` turns the user's ``--data`` value into a `Splits`:

* ``demo``: the built-in demo set, which ships train/val/test folders.
* ``cifar10``, ``cifar100``, ``stl10``: torchvision data sets under ``--data-root``
  (default ``$SELFSUP_DATA`` or ``~/.cache/selfsup/datasets``), downloaded when absent.
* anything else is a folder; see `open_splits` for how its layout is read.

Held-out splits are carved deterministically for a seed, stratified by class, and never overlap.
"""

from __future__ import annotations

import contextlib
import math
import os
import socket
import urllib.error
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np
from PIL import Image

from selfsup.data.images import IMAGE_EXTENSIONS, DecodeSize, load_rgb
from selfsup.errors import ConfigError, DataError

BUILTIN_DATA = ("demo", "cifar10", "cifar100", "stl10")

# How a folder of images is read (`scan_folder`): "auto" refuses to guess when a folder holds both
# top-level images and sub-folders with images.
LAYOUTS = ("auto", "flat", "classes")

# Reasons a file under a data folder is not used, as keys of `FolderSource.ignored`.
IGNORED_NOT_IMAGE = "not an image"  # by extension (see IMAGE_EXTENSIONS)
IGNORED_HIDDEN = "hidden file or folder"  # counted once per entry: hidden folders are not searched
IGNORED_TOP_LEVEL = "top-level image beside class folders"  # layout "classes"
IGNORED_IN_SUBFOLDER = "image in a sub-folder (flat layout)"  # layout "flat"

# Folder names that count as a validation split, in order of preference.
_VAL_DIR_NAMES = ("val", "valid", "validation")

# Subfolder torchvision expects under the data root, named in error messages so users know
# exactly what to put where.
_TORCHVISION_DIRS = {"cifar10": "cifar-10-batches-py", "cifar100": "cifar-100-python", "stl10": "stl10_binary"}

# torchvision opens URLs without a timeout; on a network that silently drops packets the
# download would otherwise hang forever instead of failing with a message.
_DOWNLOAD_SOCKET_TIMEOUT_S = 30.0


@runtime_checkable
class ImageSource(Protocol):
    classes: list[str]  # [] when unlabelled

    def __len__(self) -> int: ...

    def load(self, index: int, decode_size: DecodeSize | None = None) -> Image.Image:
        """RGB image; may raise BadImageError. ``decode_size``: see `load_rgb` (sources that do not decode
        files ignore it)."""

    def label(self, index: int) -> int:
        """Class index, or -1 when unlabelled."""

    def describe(self) -> str: ...


def _size_text(count: int, classes: Sequence[str]) -> str:
    if not classes:
        return f"{count:,} images, unlabelled"
    return f"{count:,} images, {len(classes)} class{'es' if len(classes) != 1 else ''}"


class FolderSource:
    """Image files on disk, decoded with `load_rgb`.

    ``ignored`` counts the files of the folder that were left out, by reason (the ``IGNORED_*`` keys);
    ``ignored_extensions`` lists the extensions of those left out as not images.
    """

    def __init__(
        self,
        paths: Sequence[str],
        labels: Sequence[int] | None,
        classes: list[str],
        name: str,
        ignored: dict[str, int] | None = None,
        ignored_extensions: Sequence[str] = (),
    ) -> None:
        if labels is not None and len(labels) != len(paths):
            raise ValueError(f"{len(paths)} paths but {len(labels)} labels")
        # Numpy arrays rather than Python lists: DataLoader workers fork from this process, and
        # merely reading list items updates their refcounts, which copies the pages of a large
        # (ImageNet-sized) list into every worker.
        self._paths = np.array([os.fsencode(path) for path in paths], dtype=np.bytes_)
        self._labels = None if labels is None else np.asarray(labels, dtype=np.int64)
        self.classes = list(classes)
        self.name = name
        self.ignored = dict(ignored or {})
        self.ignored_extensions = sorted(ignored_extensions)

    def __len__(self) -> int:
        return len(self._paths)

    def path(self, index: int) -> str:
        return os.fsdecode(self._paths[index])

    def load(self, index: int, decode_size: DecodeSize | None = None) -> Image.Image:
        return load_rgb(self.path(index), decode_size)

    def label(self, index: int) -> int:
        return -1 if self._labels is None else int(self._labels[index])

    def describe(self) -> str:
        return f"folder {self.name} ({_size_text(len(self), self.classes)})"


class TorchvisionSource:
    """A torchvision data set whose items are ``(PIL image or HxW[xC] uint8 array, label)``.

    The wrapped data set must have no transform: this source hands out plain RGB images.
    """

    def __init__(self, dataset: Any, classes: list[str], name: str) -> None:
        self.dataset = dataset
        self.classes = list(classes)
        self.name = name
        # Reading labels from the data set's own arrays avoids decoding an image per label lookup,
        # which stratified splitting does for every item.
        targets = getattr(dataset, "targets", None)
        if targets is None:
            targets = getattr(dataset, "labels", None)
        self._labels = None if targets is None else np.asarray(targets, dtype=np.int64)

    def __len__(self) -> int:
        return len(self.dataset)

    def load(self, index: int, decode_size: DecodeSize | None = None) -> Image.Image:
        image = self.dataset[index][0]
        if isinstance(image, np.ndarray):
            image = Image.fromarray(image)
        return image.convert("RGB")

    def label(self, index: int) -> int:
        if self._labels is not None:
            return int(self._labels[index])
        return int(self.dataset[index][1])

    def describe(self) -> str:
        return f"{self.name} ({_size_text(len(self), self.classes)})"


class IndexedSource:
    """The items of ``base`` at ``indices`` (a carved split); keeps the base's classes."""

    def __init__(self, base: ImageSource, indices: Sequence[int] | np.ndarray, name: str) -> None:
        self.base = base
        self.indices = np.asarray(indices, dtype=np.int64)
        if self.indices.size and (self.indices.min() < 0 or self.indices.max() >= len(base)):
            raise ValueError(f"indices out of range for a source of {len(base)} items")
        self.classes = list(base.classes)
        self.name = name

    def __len__(self) -> int:
        return len(self.indices)

    def load(self, index: int, decode_size: DecodeSize | None = None) -> Image.Image:
        return self.base.load(int(self.indices[index]), decode_size)

    def label(self, index: int) -> int:
        return self.base.label(int(self.indices[index]))

    def describe(self) -> str:
        return f"{self.name} ({_size_text(len(self), self.classes)})"


def _visible(name: str) -> bool:
    # "__MACOSX" is the resource-fork folder macOS zips carry; it would otherwise become a class.
    return not name.startswith(".") and name != "__MACOSX"


def _is_image_name(name: str) -> bool:
    return _visible(name) and os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS


def _count(number: int, noun: str) -> str:
    return f"{number:,} {noun}{'' if number == 1 else 's'}"


@dataclass
class _Skipped:
    """What a folder scan left out: counts by reason and the extensions of the non-images."""

    counts: Counter[str] = field(default_factory=Counter)
    extensions: set[str] = field(default_factory=set)

    def not_image(self, name: str) -> None:
        self.counts[IGNORED_NOT_IMAGE] += 1
        self.extensions.add(os.path.splitext(name)[1].lower() or "no extension")


def _images_below(folder: str, skipped: _Skipped) -> list[str]:
    found = []
    # followlinks: data set trees are often assembled from symlinked folders.
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=True):
        # A hidden folder counts as one entry and is not searched: walking a .git tree only to
        # count its files would be slow and tell the user nothing.
        for name in dirnames + filenames:
            if not _visible(name):
                skipped.counts[IGNORED_HIDDEN] += 1
        dirnames[:] = [name for name in dirnames if _visible(name)]
        for name in filenames:
            if _is_image_name(name):
                found.append(os.path.join(dirpath, name))
            elif _visible(name):
                skipped.not_image(name)
    return sorted(found)


def _no_images_error(root: str | os.PathLike) -> DataError:
    looked_for = ", ".join(sorted(IMAGE_EXTENSIONS))
    return DataError(f"no images found under {os.fspath(root)} (looked for {looked_for})")


def _check_layout(layout: str) -> None:
    if layout not in LAYOUTS:
        raise ConfigError(f"data.layout = {layout!r} is invalid: allowed values are {', '.join(LAYOUTS)}")


def scan_folder(root: str | os.PathLike, *, classes: list[str] | None = None, layout: str = "auto") -> FolderSource:
    """Index the images of a folder, read as ``layout``:

    * ``"flat"``: the unlabelled images directly in ``root``; sub-folders are ignored.
    * ``"classes"`` (ImageFolder): each first-level sub-folder holding images is a class (named by
      the folder, indexed in sorted order) whose images are found recursively; files directly in
      ``root`` are ignored.
    * ``"auto"``: ``"classes"`` if some sub-folder holds images, else ``"flat"``; a folder with both
      top-level images and sub-folders with images is ambiguous, hence a DataError.

    Hidden files and folders are skipped, and so are files whose extension is not in
    `IMAGE_EXTENSIONS`; every file left out is counted in ``FolderSource.ignored``. Order is
    deterministic: by class, then by path.

    ``classes`` fixes the class list and indices (so a val folder uses the train folder's
    indices even when it lacks some classes); a class folder not in it is an error.
    """
    _check_layout(layout)
    root_text = os.fspath(root)
    if not os.path.exists(root_text):
        raise DataError(f"data path not found: {root_text}")
    if not os.path.isdir(root_text):
        raise DataError(f"data path is not a folder: {root_text}")
    folder = os.path.abspath(root_text)
    with os.scandir(folder) as scan:
        entries = sorted(scan, key=lambda entry: entry.name)

    skipped = _Skipped()
    top_level: list[str] = []
    images_by_class: dict[str, list[str]] = {}
    for entry in entries:
        if not _visible(entry.name):
            skipped.counts[IGNORED_HIDDEN] += 1
        elif entry.is_dir():
            # Walked in every layout: "auto" needs to know which sub-folders hold images, "flat" counts them.
            paths = _images_below(entry.path, skipped)
            if paths:
                images_by_class[entry.name] = paths
        elif entry.is_file() and _is_image_name(entry.name):
            top_level.append(entry.path)
        else:
            skipped.not_image(entry.name)
    below = sum(len(paths) for paths in images_by_class.values())
    below_text = f"{_count(len(images_by_class), 'sub-folder')} with images ({_count(below, 'image')})"

    if layout == "auto" and top_level and images_by_class:
        raise DataError(
            f"{folder} holds {_count(len(top_level), 'image')} at top level and {below_text}, so its layout is "
            "ambiguous: pass --data-layout flat (the top-level images only, unlabelled; sub-folders ignored and "
            "counted) or --data-layout classes (one class per sub-folder; top-level images ignored and counted)"
        )
    if layout == "flat" or (layout == "auto" and not images_by_class):
        if not top_level and images_by_class:
            raise DataError(
                f"no images at the top level of {folder}, the only ones --data-layout flat reads; it has "
                f"{below_text}: use --data-layout classes"
            )
        if not top_level:
            raise _no_images_error(root_text)
        if below:
            skipped.counts[IGNORED_IN_SUBFOLDER] += below
        return FolderSource(sorted(top_level), None, [], folder, skipped.counts, skipped.extensions)

    if not images_by_class:
        if not top_level:
            raise _no_images_error(root_text)
        raise DataError(
            f"{folder} has no sub-folders with images, which --data-layout classes needs (one sub-folder per "
            f"class); it holds {_count(len(top_level), 'image')} at top level: use --data-layout flat"
        )
    if top_level:
        skipped.counts[IGNORED_TOP_LEVEL] += len(top_level)
    if classes is None:
        classes = sorted(images_by_class)
    unknown = sorted(set(images_by_class) - set(classes))
    if unknown:
        shown = ", ".join(unknown[:5]) + (", ..." if len(unknown) > 5 else "")
        raise DataError(
            f"{folder} has class folders that the training classes lack ({shown}); "
            "every split must use class names from the train split"
        )
    class_index = {name: index for index, name in enumerate(classes)}
    paths = [path for name in sorted(images_by_class) for path in images_by_class[name]]
    labels = [class_index[name] for name in sorted(images_by_class) for _ in images_by_class[name]]
    return FolderSource(paths, labels, classes, folder, skipped.counts, skipped.extensions)


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
    splits.notes.append(f"ignored {_count(sum(ignored.values()), 'file')}: {', '.join(parts)}")
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
    _check_layout(layout)
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
    if data in _TORCHVISION_DIRS:
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


@contextlib.contextmanager
def _socket_timeout(seconds: float) -> Iterator[None]:
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(seconds)
    try:
        yield
    finally:
        socket.setdefaulttimeout(previous)


def _short_reason(exc: BaseException) -> str:
    if isinstance(exc, urllib.error.URLError) and not isinstance(exc, urllib.error.HTTPError):
        text = f"network error: {exc.reason}"
    else:
        text = f"{type(exc).__name__}: {exc}"
    text = " ".join(text.split())
    return text if len(text) <= 160 else text[:157] + "..."


def _open_torchvision(name: str, root: str, **split: Any) -> Any:
    """Construct a torchvision data set from ``root``, downloading it there if it is absent."""
    # Imported here: torchvision's import is slow and only the built-in data sets need it.
    from torchvision import datasets

    dataset_class = {"cifar10": datasets.CIFAR10, "cifar100": datasets.CIFAR100, "stl10": datasets.STL10}[name]
    try:
        return dataset_class(root, download=False, **split)
    except RuntimeError:
        pass  # not there (or incomplete): try to download it
    try:
        with _socket_timeout(_DOWNLOAD_SOCKET_TIMEOUT_S):
            return dataset_class(root, download=True, **split)
    except Exception as exc:
        # Whatever went wrong (no network, HTTP error, disk full, bad checksum), the user's fix is
        # the same: provide the files. Programming errors would already have surfaced above.
        folder = _TORCHVISION_DIRS[name]
        hint = f"; to use the local folder ./{name} instead, pass it as a path: ./{name}" if os.path.isdir(name) else ""
        raise DataError(
            f"cannot load {name}: {os.path.join(root, folder)} is missing or incomplete and the download failed "
            f"({_short_reason(exc)}); put the extracted {folder}/ folder under {root} "
            f"or pass --data-root pointing at the folder that contains {folder}/{hint}"
        ) from exc


def _cifar_splits(name: str, root: str, val_fraction: float, seed: int) -> Splits:
    train_set = _open_torchvision(name, root, train=True)
    test_set = _open_torchvision(name, root, train=False)
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
    pretrain_set = _open_torchvision("stl10", root, split="train+unlabeled")
    classes = list(pretrain_set.classes)
    pretrain = TorchvisionSource(pretrain_set, classes, "stl10 train+unlabeled")
    train_full = TorchvisionSource(_open_torchvision("stl10", root, split="train"), classes, "stl10 train")
    test = TorchvisionSource(_open_torchvision("stl10", root, split="test"), classes, "stl10 test")
    notes = [f"pretrain = stl10 train + unlabeled splits ({len(pretrain):,} images)"]
    train, carved = _hold_out(train_full, "stl10 train", [("val", val_fraction)], seed, notes)
    notes.append(f"test = the official stl10 test split ({len(test):,} images)")
    return Splits(pretrain=pretrain, train=train, val=carved["val"], test=test, notes=notes)
