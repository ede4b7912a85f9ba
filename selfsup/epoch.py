"""What a task's epoch hook and an evaluation may use of a training run without the trainer itself: the
autocast context of a precision, and the plan and context of ``PretextTask.prepare_epoch``."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from tqdm import tqdm

from selfsup.data.loading import Batch, ViewCache, eval_loader
from selfsup.data.source_kinds import ImageSource, IndexedSource
from selfsup.distributed import DistInfo
from selfsup.provenance import cpu_multiplies_bf16


def resolve_precision(precision: str, device: torch.device) -> str:
    """``fp32`` or ``bf16``: what ``precision`` (``auto``, ``fp32`` or ``bf16``) runs on ``device``.

    ``auto`` is bf16 autocast on CUDA and on CPUs that multiply bf16 matrices in hardware (AVX512-BF16 or AMX),
    where it is about twice as fast as fp32, and fp32 on other CPUs: there bf16 products are emulated, and
    every demo preset's training step ran at 0.31-0.34x the fp32 img/s under bf16 autocast (``ssl-bench
    precision``, ``experiments/results/bench_precision.md``)."""
    if precision != "auto":
        return precision
    return "bf16" if device.type == "cuda" or (device.type == "cpu" and cpu_multiplies_bf16()) else "fp32"


def autocast_context(precision: str, device: torch.device):
    if resolve_precision(precision, device) == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16)


@dataclass
class EpochPlan:
    """A task's answer to ``prepare_epoch``: the epoch's sampling order (source indices, identical on
    every process; None = a plain shuffle) and metrics to log for the epoch."""

    order: torch.Tensor | None = None
    metrics: dict[str, float] = field(default_factory=dict)


@dataclass
class EpochContext:
    """What ``prepare_epoch`` may use: the whole training source seen through ``feature_view`` (no
    random augmentation), this process's place in the job, and a way to drop optimiser state."""

    epoch: int
    device: torch.device
    dist: DistInfo
    source: ImageSource
    feature_view: Callable | None  # None: the trainer was given none (a task that passes over the source needs one)
    batch_size: int  # per process
    workers: int
    precision: str
    seed: int
    reset_optimizer_state: Callable[[Iterable[nn.Parameter]], None]
    view_cache: ViewCache | None = None  # decoded feature views kept from earlier passes (see ViewCache)

    def shard_batches(self, indices: Sequence[int] | None = None) -> Iterator[Batch]:
        """This process's share of the source (every ``world_size``-th index from ``rank``; of ``indices`` only
        when given), in order; images as uint8 on the CPU, ``Batch.indices`` says which source index each one is.
        Views decoded by an earlier pass come from ``view_cache``: the same tensors, without decoding again."""
        if self.feature_view is None:
            raise ValueError("a pass over the source needs the Trainer's feature_view, which it was not given")
        wanted = range(len(self.source)) if indices is None else indices
        shard = list(wanted[self.dist.rank :: self.dist.world_size])
        if self.view_cache is not None and self.view_cache.holds(shard):
            yield from self.view_cache.batches(shard, self.batch_size)
            return
        loader = eval_loader(IndexedSource(self.source, shard, "shard"), self.feature_view, batch_size=self.batch_size,
                             workers=self.workers, pin_memory=self.device.type == "cuda")
        # a pass over a large set takes minutes: show it, like the training steps
        bar = tqdm(total=len(shard), desc=f"epoch {self.epoch + 1}: pass over the data", unit="img", leave=False,
                   disable=not self.dist.is_main, mininterval=0.5 if sys.stderr.isatty() else 30.0)
        with bar:
            for batch in loader:
                batch.indices = torch.as_tensor(shard)[batch.indices]
                if self.view_cache is not None:
                    self.view_cache.add(batch)
                bar.update(len(batch.indices))
                yield batch

    def autocast(self):
        return autocast_context(self.precision, self.device)

    def gather_rows(self, rows: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
        """Every process's ``rows`` (one per source index in ``indices``) on every process, in index
        order: the result does not depend on how the source was sharded."""
        rows, indices = rows.cpu(), indices.cpu()
        if self.dist.enabled:
            parts: list[Any] = [None] * self.dist.world_size
            dist.all_gather_object(parts, (rows, indices))
            rows = torch.cat([part[0] for part in parts])
            indices = torch.cat([part[1] for part in parts])
        return rows[torch.argsort(indices)]

    def broadcast(self, value: Any) -> Any:
        """Rank 0's ``value`` on every process."""
        if not self.dist.enabled:
            return value
        box = [value]
        dist.broadcast_object_list(box, src=0)
        return box[0]
