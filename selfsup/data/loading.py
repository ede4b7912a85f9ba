"""Loaders shared by every task: per-sample crops (selfsup.data.crops), resumable epoch order, and bad files
counted instead of crashing the run.

Every random choice of the data pipeline is a function of (run seed, epoch, sample index) (a crop's numbers are
a hash of the sample's seed, `sample_seed`), never drawn from a worker's global RNG: the same run gives the same
batches whatever the number of workers or processes, and a resumed run continues with exactly the batches it
would have seen.
"""

from __future__ import annotations

import functools
import logging
import math
import os
from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from selfsup.data.crops import crop_uniforms
from selfsup.data.images import BadImageError
from selfsup.data.sources import ImageSource
from selfsup.data.worker_priority import BackgroundLoader
from selfsup.errors import ConfigError
from selfsup.seeds import mix_seed

log = logging.getLogger(__name__)


def sample_seed(run_seed: int, epoch: int, index: int) -> int:
    """The seed of the ``index``-th sample of an epoch: its crop's numbers (`crop_uniforms`) are a hash of it."""
    return mix_seed("crop", run_seed, epoch, index)


@dataclass
class EncodedJpegs:
    """The JPEGs of a batch still to decode: their bytes, crop boxes and flips, and their rows in the batch."""

    data: list[torch.Tensor]  # 1-D uint8 file contents
    boxes: torch.Tensor  # float64 k x 4 (left, top, right, bottom) in pixels of the full image
    flips: torch.Tensor  # bool k
    rows: torch.Tensor  # int64 k: where each goes in the batch
    paths: list[str] = field(default_factory=list)  # for a CPU decode and for naming a bad file


@dataclass
class Batch:
    images: torch.Tensor  # uint8, N x 3 x H x W
    labels: torch.Tensor  # int64, -1 where unlabelled
    bad_files: list[str] = field(default_factory=list)  # messages of files that could not be decoded
    indices: torch.Tensor | None = None  # int64 source index of each image (a replaced bad file's substitute)
    # JPEGs left to decode on the device (selfsup.data.device_decode): then ``images`` holds only the rows
    # ``pixel_rows`` that workers decoded
    jpegs: EncodedJpegs | None = None
    pixel_rows: torch.Tensor | None = None

    def pin_memory(self) -> Batch:
        """Called by a DataLoader with ``pin_memory=True`` (it pins only tensors and containers it knows): page-
        locked images make the host-to-GPU copy asynchronous."""
        self.images = self.images.pin_memory()
        return self

    def __reduce__(self):
        # How a loader worker sends a batch: torch passes each tensor through a shared-memory file of its own (a
        # file created, mapped and its descriptor handed over), which pays for itself on the images only; the
        # short index rows travel by value (measured: 2.8 -> 1.7 ms a batch received on a 2-core CPU).
        small = [None if rows is None else rows.numpy() for rows in (self.labels, self.indices, self.pixel_rows)]
        return _rebuild_batch, (self.images, *small, self.bad_files, self.jpegs)


def _rebuild_batch(images: torch.Tensor, labels: np.ndarray, indices: np.ndarray | None,
                   pixel_rows: np.ndarray | None, bad_files: list[str], jpegs: EncodedJpegs | None) -> Batch:
    indices, pixel_rows = (None if rows is None else torch.from_numpy(rows) for rows in (indices, pixel_rows))
    return Batch(images=images, labels=torch.from_numpy(labels), bad_files=bad_files, indices=indices, jpegs=jpegs,
                 pixel_rows=pixel_rows)


class TransformedDataset(Dataset):
    """Applies a per-sample transform to a source. Items are ``index`` or ``(index, seed)``.

    ``replace_bad=True`` (training) substitutes the next readable image so batch shapes stay
    fixed across processes; ``False`` (evaluation) drops the file from the batch. JPEGs decode at the
    smallest size the transform says it needs (its ``decode_size``, when it has one; see `load_rgb`).
    """

    def __init__(self, source: ImageSource, transform, *, replace_bad: bool) -> None:
        self.source = source
        self.transform = transform
        self.replace_bad = replace_bad
        self.decode_size = getattr(transform, "decode_size", None)

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, item: int | tuple[int, int]):
        img, label, bad, index, seed = self._load(item)
        if img is None:
            return None, label, bad, index
        return self.transform(img, crop_uniforms([seed])[0]), label, bad, index

    def __getitems__(self, items: list[int | tuple[int, int]]) -> list[tuple[torch.Tensor | None, int, list[str], int]]:
        """The items of one batch (a DataLoader asks for them together), the same as `__getitem__` gives.

        A transform with ``crop_image`` (a PIL image out) has every crop written into one array, converted to a
        tensor once for the batch, with the uniforms of every item drawn in one pass: at 32 px, converting and
        drawing for each item on its own cost more than its crop, and a loader worker's time is taken from the
        training step on a CPU. Its images are views of that height x width x channel array (channels_last
        strides): `collate` lays them out in the batch's memory format with its one copy."""
        crop_image = getattr(self.transform, "crop_image", None)
        if crop_image is None:
            return [self[item] for item in items]
        loaded = [self._load(item) for item in items]
        readable = [entry for entry in loaded if entry[0] is not None]
        uniforms = crop_uniforms([seed for *_, seed in readable])
        pixels = np.empty((len(readable), self.transform.size, self.transform.size, 3), dtype=np.uint8)
        for row, (img, *_) in enumerate(readable):
            pixels[row] = np.asarray(crop_image(img, uniforms[row]))
        images = iter(torch.from_numpy(pixels).permute(0, 3, 1, 2))
        return [(None if img is None else next(images), label, bad, index) for img, label, bad, index, _ in loaded]

    def _load(self, item: int | tuple[int, int]) -> tuple[Image.Image | None, int, list[str], int, int]:
        """The RGB image of ``item`` (None if unreadable and not replaced), its label, the messages of the files
        that could not be read, its source index and its seed."""
        index, seed = item if isinstance(item, tuple) else (item, item)
        bad: list[str] = []
        for attempt in range(len(self.source)):
            current = (index + attempt) % len(self.source)
            try:
                img = self.source.load(current, self.decode_size)
            except BadImageError as exc:
                bad.append(str(exc))
                if not self.replace_bad:
                    return None, -1, bad, index, seed
                continue
            return img, self.source.label(current), bad, current, seed
        # Nothing in the source decodes: an empty item, which the main process reports as a DataError
        # (an exception raised here would reach it rewrapped by the DataLoader, with a worker's traceback).
        return None, -1, bad, index, seed


def collate(items: Sequence[tuple[torch.Tensor | None, int, list[str], int]],
            memory_format: torch.memory_format = torch.contiguous_format) -> Batch:
    """One Batch of a loader's items; its images in ``memory_format`` (channels_last where the model takes it:
    laid out here, in the worker, the main process has no copy to make)."""
    kept = [(image, label, index) for image, label, _, index in items if image is not None]
    bad = [message for _, _, messages, _ in items for message in messages]
    if kept:
        shape = (len(kept), *kept[0][0].shape)
        images = torch.stack([image for image, _, _ in kept],
                             out=torch.empty(shape, dtype=torch.uint8, memory_format=memory_format))
        labels = torch.tensor([label for _, label, _ in kept], dtype=torch.long)
        indices = torch.tensor([index for _, _, index in kept], dtype=torch.long)
    else:
        images = torch.empty(0, dtype=torch.uint8)
        labels = torch.empty(0, dtype=torch.long)
        indices = torch.empty(0, dtype=torch.long)
    return Batch(images=images, labels=labels, bad_files=bad, indices=indices)


class EpochBatchSampler:
    """Shuffled batches of (index, sample seed); rank ``r`` of ``w`` takes its slice of each global batch.

    The global order depends only on (seed, epoch): a single process with batch B and two
    processes with B/2 each see the same images at every step.
    """

    def __init__(self, num_samples: int, global_batch: int, *, rank: int = 0, world_size: int = 1, seed: int = 0) -> None:
        if global_batch % world_size:
            raise ConfigError(f"train.batch_size = {global_batch} is invalid: must be divisible by the {world_size} processes")
        if num_samples < global_batch:
            raise ConfigError(
                f"train.batch_size = {global_batch} is invalid: the data has only {num_samples} images; use a smaller batch"
            )
        self.num_samples = num_samples
        self.global_batch = global_batch
        self.local_batch = global_batch // world_size
        self.rank = rank
        self.seed = seed
        self.epoch = 0
        self.start_step = 0
        self.order: torch.Tensor | None = None

    @property
    def steps_per_epoch(self) -> int:
        return self.num_samples // self.global_batch

    def set_epoch(self, epoch: int, start_step: int = 0, order: torch.Tensor | None = None) -> None:
        """``order``: this epoch's sequence of source indices (``num_samples`` of them, the same on every
        process), for tasks that choose what to sample; None = a shuffle of every index."""
        if order is not None and len(order) != self.num_samples:
            raise ValueError(f"an epoch order has {len(order)} indices, expected {self.num_samples}")
        self.epoch = epoch
        self.start_step = start_step
        self.order = order

    def __len__(self) -> int:
        return self.steps_per_epoch - self.start_step

    def __iter__(self):
        order = self.order
        if order is None:
            generator = torch.Generator().manual_seed(mix_seed("epoch order", self.seed, self.epoch))
            order = torch.randperm(self.num_samples, generator=generator)
        for step in range(self.start_step, self.steps_per_epoch):
            first = step * self.global_batch + self.rank * self.local_batch
            block = order[first : first + self.local_batch].tolist()
            if self.order is None:
                yield [(index, sample_seed(self.seed, self.epoch, index)) for index in block]
            else:  # an index drawn twice in one epoch gets two different crops
                yield [(index, sample_seed(self.seed, self.epoch, first + i)) for i, index in enumerate(block)]


def auto_workers(device: torch.device, processes_per_machine: int = 1) -> int:
    """Loader workers per training process when ``data.workers`` is -1 (auto), from the cores this process may
    use. On CUDA the step runs on the GPU and the CPU's only job is to feed it: every core but one (at most 8
    per process). On a CPU the step itself uses every core through torch's threads, so workers only take
    cores from it: one worker (a quarter of the cores on large machines) overlaps decoding with the step."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    per_process = max(1, cores // max(1, processes_per_machine))
    if device.type == "cuda":
        return min(8, max(1, per_process - 1))
    return max(1, per_process // 4)


# batches in flight per worker: enough to ride out a slow file without holding many batches in memory
TRAIN_PREFETCH = 4


def train_loader(
    source: ImageSource, transform, sampler: EpochBatchSampler, *, workers: int, pin_memory: bool,
    channels_last: bool = False, background_workers: bool = False,
) -> DataLoader | BackgroundLoader:
    """``channels_last``: batches of images in that memory format (see `collate`)."""
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    return training_loader(TransformedDataset(source, transform, replace_bad=True),
                           functools.partial(collate, memory_format=memory_format), sampler, workers=workers,
                           pin_memory=pin_memory, background_workers=background_workers)


def training_loader(dataset: Dataset, collate_fn, sampler: EpochBatchSampler, *, workers: int,
                    pin_memory: bool, background_workers: bool = False) -> DataLoader | BackgroundLoader:
    """Workers persist across epochs (a restart costs every worker's start-up and its first batches at each
    epoch) and keep ``TRAIN_PREFETCH`` batches each in flight. ``background_workers``: for a step that computes
    on the same cores, they take only the moments it leaves a core idle (see `BackgroundLoader`)."""

    def loader(worker_init_fn: Callable[[int], None] | None) -> DataLoader:
        return DataLoader(
            dataset,
            batch_sampler=sampler,
            num_workers=workers,
            collate_fn=collate_fn,
            pin_memory=pin_memory,
            persistent_workers=workers > 0,
            prefetch_factor=TRAIN_PREFETCH if workers > 0 else None,
            worker_init_fn=worker_init_fn,
        )

    if background_workers and workers > 0:
        return BackgroundLoader(loader, sampler, window=2 * TRAIN_PREFETCH)
    return loader(None)


def eval_loader(source: ImageSource, transform, *, batch_size: int, workers: int, pin_memory: bool = False) -> DataLoader:
    return DataLoader(
        TransformedDataset(source, transform, replace_bad=False),
        batch_size=batch_size,
        shuffle=False,
        num_workers=workers,
        collate_fn=collate,
        pin_memory=pin_memory,
    )


class ViewCache:
    """Decoded deterministic views (e.g. centre crops) of a source's images, by source index, kept in memory
    across passes: a task that passes over the whole source every epoch (DeepCluster's clustering step)
    decodes each image once. Sized on the first batch it is given; holds nothing when all the views would
    take more than ``max_bytes``."""

    def __init__(self, num_samples: int, max_bytes: int) -> None:
        self.num_samples = num_samples
        self.max_bytes = max_bytes
        self.images: torch.Tensor | None = None  # N x C x H x W uint8
        self.labels = torch.full((num_samples,), -1, dtype=torch.long)
        self.held = torch.zeros(num_samples, dtype=torch.bool)
        self.disabled = False

    def add(self, batch: Batch) -> None:
        if self.disabled or batch.images.numel() == 0:
            return
        if self.images is None:
            shape = (self.num_samples, *batch.images.shape[1:])
            if math.prod(shape) > self.max_bytes:
                self.disabled = True
                return
            self.images = torch.empty(shape, dtype=torch.uint8)
        self.images[batch.indices] = batch.images
        self.labels[batch.indices] = batch.labels
        self.held[batch.indices] = True

    def holds(self, indices: Sequence[int]) -> bool:
        return self.images is not None and bool(self.held[torch.as_tensor(indices, dtype=torch.long)].all())

    def batches(self, indices: Sequence[int], batch_size: int):
        """The held views of ``indices`` (all held: see :meth:`holds`) as Batches, in order."""
        order = torch.as_tensor(indices, dtype=torch.long)
        for start in range(0, len(order), batch_size):
            index = order[start : start + batch_size]
            yield Batch(images=self.images[index], labels=self.labels[index], indices=index)


class BadFileLog:
    """Counts undecodable files across a run and warns once per file."""

    def __init__(self) -> None:
        self.messages: set[str] = set()

    def add(self, messages: list[str]) -> None:
        for message in messages:
            if message not in self.messages:
                self.messages.add(message)
                log.warning("skipped unreadable image (%d so far): %s", len(self.messages), message)

    @property
    def count(self) -> int:
        return len(self.messages)
