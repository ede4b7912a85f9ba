"""A decoded uint8 copy of a folder of images, memory-mapped: each file is decoded once, and later epochs (and
later runs) read pixels instead of decoding JPEGs or PNGs again.

The cache holds exactly what `load_rgb` returns (full size, EXIF orientation applied), so a run gives the same
batches with and without it. It lives in ``$SELFSUP_DECODED_DIR``, else in ``decoded/`` under
``$SELFSUP_CACHE_DIR`` (else ``$XDG_CACHE_HOME/selfsup``, else ``~/.cache/selfsup``), named by a fingerprint of the files (paths, sizes, modification times):
a changed file makes a new cache. Two files make one cache: ``<key>.u8`` (every image's H x W x 3 bytes, one
after another) and ``<key>.npz`` (where each image starts, its shape, and the message of each file that could
not be decoded, which loads raise as before). Both are written under temporary names and renamed into place,
the index last, so a killed build leaves no cache that looks complete; processes that build the same cache at
once each rename an identical copy.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import uuid
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader

from selfsup.data import cache_root
from selfsup.data.images import BadImageError
from selfsup.data.source_kinds import FolderSource, ImageSource, IndexedSource

log = logging.getLogger(__name__)

CACHE_FORMAT = 1  # bump when the layout of the files changes: old caches are then ignored
_BUILD_BATCH = 64
_FREE_MARGIN = 2**30  # left free on the cache's disk after a build: other writes (checkpoints) must still fit


def decoded_cache_dir() -> Path:
    """``$SELFSUP_DECODED_DIR``, else ``decoded/`` under the cache root (`selfsup.data.cache_root`)."""
    if os.environ.get("SELFSUP_DECODED_DIR"):
        return Path(os.environ["SELFSUP_DECODED_DIR"]).expanduser()
    return cache_root() / "decoded"


class DecodedSource:
    """``base``'s images read from a decoded cache (see the module docstring); labels and classes are base's.

    The memory map is opened lazily in each process and left out of pickles, so loader workers share the
    page cache instead of receiving a copy of the pixels."""

    def __init__(self, base: ImageSource, pixels_path: Path, index_path: Path) -> None:
        self.base = base
        self.classes = list(base.classes)
        self.name = getattr(base, "name", "images")
        self.pixels_path = pixels_path
        with np.load(index_path, allow_pickle=False) as index:
            self.starts = index["starts"]
            self.shapes = index["shapes"]
            self.bad_messages = index["bad_messages"]
        self._pixels: np.ndarray | None = None

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_pixels": None}

    def __len__(self) -> int:
        return len(self.starts)

    @property
    def nbytes(self) -> int:
        return int(self.shapes.prod(axis=1).sum())

    def array(self, index: int) -> np.ndarray:
        """The decoded H x W x 3 uint8 image (a view of the memory map); BadImageError for a bad file."""
        height, width, channels = (int(v) for v in self.shapes[index])
        if height == 0:
            raise BadImageError(_path_of(self.base, index), str(self.bad_messages[index]))
        if self._pixels is None:
            # a plain array over the map: slicing an np.memmap runs its __array_finalize__ for every image
            self._pixels = np.memmap(self.pixels_path, dtype=np.uint8, mode="r").view(np.ndarray)
        start = int(self.starts[index])
        return self._pixels[start : start + height * width * channels].reshape(height, width, channels)

    def load(self, index: int, decode_size=None) -> Image.Image:
        pixels = self.array(index)
        # an image over the mapped bytes, not a copy of them (Image.fromarray copies)
        return Image.frombuffer("RGB", (pixels.shape[1], pixels.shape[0]), pixels, "raw", "RGB", 0, 1)

    def label(self, index: int) -> int:
        return self.base.label(index)

    def describe(self) -> str:
        return f"{self.base.describe()}, decoded cache"


def _path_of(source: ImageSource, index: int) -> str:
    while isinstance(source, IndexedSource):
        source, index = source.base, int(source.indices[index])
    return source.path(index) if isinstance(source, FolderSource) else f"{source.describe()} item {index}"


def _files(source: ImageSource) -> list[str] | None:
    """The image file of each item of ``source``, in order; None for sources that are not files on disk."""
    if isinstance(source, FolderSource):
        return [source.path(i) for i in range(len(source))]
    if isinstance(source, IndexedSource):
        base = _files(source.base)
        return None if base is None else [base[i] for i in source.indices]
    return None


def fingerprint(paths: list[str]) -> str:
    """A key that changes when any file is added, removed, renamed, resized or rewritten."""
    digest = hashlib.sha256(f"selfsup decoded cache v{CACHE_FORMAT}\n".encode())
    for path in paths:
        try:
            stat = os.stat(path)
            digest.update(f"{os.path.abspath(path)}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
        except OSError:
            digest.update(f"{os.path.abspath(path)}\0missing\n".encode())
    return digest.hexdigest()[:24]


def _header_shape(path: str) -> tuple[int, int]:
    """(height, width) from the file's header, without decoding; (0, 0) when unreadable (load reports it)."""
    try:
        with Image.open(path) as img:
            width, height = img.size
    except Exception:  # any unreadable header: decoding will say why, by name, when the file is used
        return 0, 0
    return height, width


class _Decode:
    """Loader dataset: item ``i`` is (i, decoded array or None, bad message)."""

    def __init__(self, source: ImageSource) -> None:
        self.source = source

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, index: int) -> tuple[int, np.ndarray | None, str]:
        try:
            return index, np.asarray(self.source.load(index), dtype=np.uint8), ""
        except BadImageError as exc:
            return index, None, exc.reason


def decoded_source(source: ImageSource, max_bytes: int, *, workers: int = 0, cache_dir: Path | None = None) -> ImageSource:
    """``source`` read through a decoded cache of at most ``max_bytes`` (building it if absent), or ``source``
    itself with a logged reason when it is not a folder of files or its decoded images would not fit."""
    paths = _files(source)
    if paths is None:
        log.info("decoded cache not used for %s: its images are not files (they are decoded in memory already)",
                 source.describe())
        return source
    shapes = np.array([_header_shape(path) for path in paths], dtype=np.int64).reshape(-1, 2)
    needed = int((shapes[:, 0] * shapes[:, 1] * 3).sum())
    if needed > max_bytes:
        log.info("decoded cache not used for %s: its images take %.2f GB decoded, more than data.decoded_cache_gb "
                    "(%.2f GB); images are decoded from their files every epoch", source.describe(), needed / 1e9,
                    max_bytes / 1e9)
        return source
    folder = cache_dir if cache_dir is not None else decoded_cache_dir()
    key = fingerprint(paths)
    pixels_path, index_path = folder / f"{key}.u8", folder / f"{key}.npz"
    if not (pixels_path.exists() and index_path.exists()):
        folder.mkdir(parents=True, exist_ok=True)
        free = shutil.disk_usage(folder).free
        if free < needed + _FREE_MARGIN:
            log.warning("decoded cache not built for %s: it needs %.2f GB and %s has %.2f GB free; images are "
                        "decoded from their files every epoch", source.describe(), needed / 1e9, folder, free / 1e9)
            return source
        log.info("decoding %d images of %s once into %s (%.2f GB)", len(paths), source.describe(), folder, needed / 1e9)
        _build(source, pixels_path, index_path, workers)
    return DecodedSource(source, pixels_path, index_path)


def _build(source: ImageSource, pixels_path: Path, index_path: Path, workers: int) -> None:
    count = len(source)
    loader = DataLoader(_Decode(source), batch_size=_BUILD_BATCH, num_workers=workers, collate_fn=list)
    # a loader draws its workers' base seed from torch's global generator: a run that builds the cache must
    # go on to draw what a run that finds it draws (its encoder's initial weights, for one)
    with torch.random.fork_rng(devices=[]):
        _write(loader, count, pixels_path, index_path)


def _write(loader: DataLoader, count: int, pixels_path: Path, index_path: Path) -> None:
    suffix = f".tmp-{uuid.uuid4().hex}"
    pixels_tmp, index_tmp = Path(f"{pixels_path}{suffix}"), Path(f"{index_path}{suffix}.npz")
    starts = np.zeros(count, dtype=np.int64)
    shapes = np.zeros((count, 3), dtype=np.int64)
    bad_messages = np.full(count, "", dtype=object)
    try:
        with open(pixels_tmp, "wb") as pixels:
            offset = 0
            # Written in source order (the loader keeps it), so each image's start is the bytes before it.
            for items in loader:
                for index, array, message in items:
                    starts[index] = offset
                    if array is None:
                        bad_messages[index] = message
                        continue
                    shapes[index] = array.shape
                    pixels.write(array.tobytes())
                    offset += array.nbytes
            pixels.flush()
            os.fsync(pixels.fileno())
        np.savez(index_tmp, starts=starts, shapes=shapes, bad_messages=bad_messages.astype(str))
        os.replace(pixels_tmp, pixels_path)
        os.replace(index_tmp, index_path)  # last: an index names a complete pixel file
    finally:
        pixels_tmp.unlink(missing_ok=True)
        index_tmp.unlink(missing_ok=True)
