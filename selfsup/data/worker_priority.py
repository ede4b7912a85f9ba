"""How loader workers share a CPU with the training step that computes on it: at idle priority while that
keeps the step fed (`idle_priority`, `BackgroundLoader`), at nice 10 when the machine is too busy for it
(`lower_priority`)."""

from __future__ import annotations

import logging
import os
import threading
import time
from collections import deque
from typing import Any, Callable, Iterator, Protocol, Sequence

import torch
from torch.utils.data import DataLoader

log = logging.getLogger(__name__)


class EpochSampler(Protocol):
    """What `BackgroundLoader` asks of its loader's batch sampler (`selfsup.data.loading.EpochBatchSampler`): the
    epoch's position, to restart another loader's workers at it."""

    epoch: int
    start_step: int
    order: torch.Tensor | None

    def set_epoch(self, epoch: int, start_step: int = 0, order: torch.Tensor | None = None) -> None: ...


# the nice value of loader workers beside a CPU step once idle priority fell behind (see BackgroundLoader)
WORKER_NICENESS = 10


def lower_priority(worker_id: int) -> None:
    """A loader worker's ``worker_init_fn`` beside a training step on the same CPU, on a machine whose other
    processes keep its cores busy: at nice 10 the worker still gets its share of the cores, and a torch thread
    that wakes preempts it sooner than one at normal priority (measured on 2 cores, 32 px batches of 64: the first
    operation on a batch just received took 3.0-3.9 ms beside a worker at nice 0, 1.4-2.4 ms at nice 10 or 19)."""
    if hasattr(os, "nice"):  # not on Windows
        os.nice(WORKER_NICENESS)


def idle_priority(worker_id: int) -> None:
    """A loader worker's ``worker_init_fn`` that lets it run only on a core no other task wants (Linux's
    SCHED_IDLE; `lower_priority` where there is none): a torch thread that wakes takes the core at once, where at
    nice 10 it may wait out the worker's time slice (measured on 2 cores, DeepCluster's demo preset: the first
    operation on a batch took 0.6-0.7 ms against 1.5-2.4 ms at nice 10; pipeline efficiency 0.94-0.98 against
    0.89-0.93). Such a worker starves while other processes keep every core busy: `BackgroundLoader` watches."""
    if hasattr(os, "sched_setscheduler") and hasattr(os, "SCHED_IDLE"):
        os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
    else:
        lower_priority(worker_id)


def fell_behind(waits: Sequence[float], steps: Sequence[float]) -> bool:
    """Whether a loader fell behind the training step: it kept it waiting longer than the step took."""
    return sum(waits) > sum(steps)


class BackgroundLoader:
    """The batches of a training step that computes on the CPU, from loader workers at idle priority
    (`idle_priority`), which run only in the moments the step leaves a core idle.

    Should they fall behind (``behind``, `fell_behind` by default, over the last ``window`` batches, from the
    second: other processes keep every core busy, or decoding needs more than those moments), the rest of the run
    takes its batches from workers at nice 10 (`lower_priority`), from the epoch's next batch on; the batches are
    the same, a sample's crop being a function of its seed. ``make_loader`` builds the DataLoader for a
    worker_init_fn."""

    def __init__(self, make_loader: Callable[[Callable[[int], None]], DataLoader], sampler: EpochSampler, *,
                 window: int, behind: Callable[[Sequence[float], Sequence[float]], bool] = fell_behind) -> None:
        self.make_loader = make_loader
        self.sampler = sampler
        self.window = window
        self.behind = behind
        self.loader = make_loader(idle_priority)
        self.idle = True

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self) -> Iterator[Any]:
        position = self.sampler.start_step
        batches = iter(self.loader)
        waits: deque[float] = deque(maxlen=self.window)  # seconds in next(), per batch
        steps: deque[float] = deque(maxlen=self.window)  # seconds from handing a batch over to asking for the next
        handed = None  # an epoch's first batch waits for its workers to start over: not counted
        while True:
            asked = time.perf_counter()
            try:
                batch = next(batches)
            except StopIteration:
                return
            if handed is not None:
                steps.append(asked - handed)
                waits.append(time.perf_counter() - asked)
            position += 1
            # from two batches on: a starved worker takes seconds a batch, and a window to fill would cost many
            if self.idle and len(waits) >= 2 and self.behind(waits, steps):
                retired = [self.loader, batches]
                batches = self._fall_back(position, waits, steps)
                # the idle workers stop when the last reference to their loader goes, which waits up to seconds
                # for them to finish (starved ones are slow to): that wait is left to a thread
                threading.Thread(target=list.clear, args=(retired,), daemon=True).start()
            handed = time.perf_counter()
            yield batch  # (a generator resumes here when its consumer asks for the next batch)

    def _fall_back(self, position: int, waits: Sequence[float], steps: Sequence[float]) -> Iterator[Any]:
        """Workers at nice 10 from step ``position`` of the epoch on."""
        log.warning("loader workers at idle priority fell behind the training step (the step waited %.2f s for the "
                    "last %d batches and computed %.2f s: the machine's cores are busy, or decoding needs more than the "
                    "step leaves idle): from step %d of this epoch on they run at nice %d", sum(waits), len(waits),
                    sum(steps), position + 1, WORKER_NICENESS)
        self.idle = False
        self.loader = self.make_loader(lower_priority)
        self.sampler.set_epoch(self.sampler.epoch, position, self.sampler.order)
        return iter(self.loader)
