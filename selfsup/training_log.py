"""What a training run reports: per-epoch averages of the task's outputs (`EpochMeter`), the kNN monitor's
accuracy, the TensorBoard writer, the progress bar's time left and the run's summary (``summary.json``).

`TrainerLog` is a part of `selfsup.engine.Trainer`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ContextManager, Protocol

import torch
import torch.distributed as dist

from selfsup import training_budget
from selfsup.distributed import all_reduce_sum
from selfsup.epoch import autocast_context

SUMMARY_NAME = "summary.json"


class Monitor(Protocol):
    """What the trainer asks of a monitor (``selfsup.probes.knn.KnnMonitor``): top-1 and top-5 (percent) of the
    encoder as it is now, computed with ``autocast()`` around its forward passes; unreadable files go to
    ``on_bad``."""

    def evaluate(self, device: torch.device, autocast: Callable[[], ContextManager],
                 on_bad: Callable[[list[str]], None]) -> dict[str, float]: ...


@dataclass
class EpochMeter:
    """Sums of loss/metrics weighted by batch size, kept on the outputs' device (adding them reads nothing back
    to the host); all-reduced across processes at epoch end."""

    names: tuple[str, ...] = ()
    sums: torch.Tensor | None = None

    def add(self, outputs: dict[str, torch.Tensor], count: int) -> None:
        first = next(iter(outputs.values()))
        if self.sums is None:
            self.names = tuple(outputs)
            self.sums = torch.zeros(len(self.names) + 1, dtype=torch.float64, device=first.device)
        elif self.sums.device != first.device:  # restored from a checkpoint (CPU)
            self.sums = self.sums.to(first.device)
        one = torch.ones((), dtype=torch.float64, device=first.device)
        values = torch.stack([torch.as_tensor(outputs[n], device=first.device).double() for n in self.names] + [one])
        self.sums += values * count

    def averages(self) -> dict[str, float]:
        if self.sums is None:
            return {}
        total = all_reduce_sum(self.sums.clone()).cpu()
        return {name: float(total[i] / total[-1]) for i, name in enumerate(self.names)}

    def state(self) -> dict[str, Any]:
        return {"names": self.names, "sums": None if self.sums is None else self.sums.cpu()}

    def load(self, state: dict[str, Any]) -> None:
        self.names, self.sums = tuple(state["names"]), state["sums"]


class TrainerLog:
    """The kNN monitor, the TensorBoard writer and the summary of `selfsup.engine.Trainer`'s run; it reads the
    trainer's record, counters, history and budgets."""

    def _open_writer(self) -> None:
        if self.dist.is_main:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(str(self.out_dir / "tb"), purge_step=self.global_step or None)

    def _knn_due(self) -> bool:
        every = self.cfg.knn_every
        done = self.epoch + 1
        return every > 0 and (done % every == 0 or done == self.cfg.epochs or self.ended_by is not None)

    def _run_knn_monitor(self, monitor: Monitor) -> tuple[dict[str, float], float]:
        """kNN val accuracy of the encoder and the seconds it took. Rank 0 alone computes it (a few
        thousand images: sharding would save little) while the others wait for its result."""
        result: tuple[dict[str, float], float] = ({}, 0.0)
        if self.dist.is_main:
            started = training_budget.clock()
            scores = monitor.evaluate(
                self.device, lambda: autocast_context(self.cfg.precision, self.device), self.bad_files.add
            )
            result = ({"knn_top1": scores["top1"], "knn_top5": scores["top5"]}, training_budget.clock() - started)
        if self.dist.enabled:
            box = [result]
            dist.broadcast_object_list(box, src=0)
            result = box[0]
        return result

    def _summary(self, run_start_step: int) -> dict[str, Any]:
        elapsed = self._elapsed()
        final = self.history[-1] if self.history else {}
        if self.step_in_epoch:  # a budget ended the run inside an epoch: that epoch's averages so far
            final = {"epoch": self.epoch + 1, "step": self.global_step, "steps_in_epoch": self.step_in_epoch,
                     "partial": True, **self.meter.averages(), **self.epoch_metrics}
        return {
            **{k: v for k, v in self.record.items()},
            "checkpoint": str(self.checkpoint_path),
            "epochs": self.cfg.epochs,
            "budget": self._budget(),
            "ended_by": self.ended_by,
            "steps": self.global_step,
            "final": final,
            "history": self.history,
            "images_seen": self.images_seen,
            "images_per_s": round(self.images_seen / max(elapsed, 1e-9), 1),
            "wall_time_s": round(elapsed, 1),
            "bad_files_skipped": self.bad_files.count,
            "bad_files": sorted(self.bad_files.messages)[:100],
            "world_size": self.dist.world_size,
            "device": str(self.device),
        }


def format_seconds(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "?"
    seconds = int(seconds)
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"
