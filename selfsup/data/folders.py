"""Reading a folder of images: its layout (flat and unlabelled, or one sub-folder per class), which files
are left out and why, and the resulting `FolderSource`.
"""

from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass, field

from selfsup.data.images import IMAGE_EXTENSIONS
from selfsup.data.source_kinds import FolderSource
from selfsup.errors import ConfigError, DataError
# How a folder of images is read (`scan_folder`): "auto" refuses to guess when a folder holds both
# top-level images and sub-folders with images.
LAYOUTS = ("auto", "flat", "classes")

# Reasons a file under a data folder is not used, as keys of `FolderSource.ignored`.
IGNORED_NOT_IMAGE = "not an image"  # by extension (see IMAGE_EXTENSIONS)
IGNORED_HIDDEN = "hidden file or folder"  # counted once per entry: hidden folders are not searched
IGNORED_TOP_LEVEL = "top-level image beside class folders"  # layout "classes"
IGNORED_IN_SUBFOLDER = "image in a sub-folder (flat layout)"  # layout "flat"



def _visible(name: str) -> bool:
    # "__MACOSX" is the resource-fork folder macOS zips carry; it would otherwise become a class.
    return not name.startswith(".") and name != "__MACOSX"


def _is_image_name(name: str) -> bool:
    return _visible(name) and os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS


def count_noun(number: int, noun: str) -> str:
    """``"1 image"``, ``"1,024 images"``."""
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


def check_layout(layout: str) -> None:
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
    check_layout(layout)
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
    below_text = f"{count_noun(len(images_by_class), 'sub-folder')} with images ({count_noun(below, 'image')})"

    if layout == "auto" and top_level and images_by_class:
        raise DataError(
            f"{folder} holds {count_noun(len(top_level), 'image')} at top level and {below_text}, so its layout is "
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
            f"class); it holds {count_noun(len(top_level), 'image')} at top level: use --data-layout flat"
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
