"""The kinds of image source: the `ImageSource` protocol that loaders, probes and the engine read, and
its three kinds: image files on disk (`FolderSource`), a torchvision data set (`TorchvisionSource`) and
a carved part of another source (`IndexedSource`).

How sources are found and split is `selfsup.data.sources`; how a folder is read, `selfsup.data.folders`.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any, Protocol, runtime_checkable

import numpy as np
from PIL import Image

from selfsup.data.images import DecodeSize, load_rgb


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

    ``ignored`` counts the files of the folder that were left out, by reason (the ``IGNORED_*`` keys of
    `selfsup.data.folders`);
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
