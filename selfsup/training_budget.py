"""The training run's budgets: ``train.epochs``, ``train.max_steps`` (optimiser steps in all) and
``train.max_minutes`` (the run's wall time in all, resumes included, as in the summary's ``wall_time_s``:
epoch passes and the kNN monitor count); a run ends at whichever ends first.

Budgets are checked after every step, so a time budget overshoots by at most one step (or one epoch's end);
the lr schedule is fitted to them (see ``selfsup.optim.lr_factor``), and the checkpoint and summary say which
one ended the run (``ended_by``). `TrainerBudgets` is a part of `selfsup.engine.Trainer`.
"""

from __future__ import annotations

import time
from typing import Any

import torch
import torch.distributed as dist

# The run's clock, looked up as ``training_budget.clock`` at every call: tests drive time budgets through it
# without waiting.
clock = time.perf_counter


class TrainerBudgets:
    """The budgets of `selfsup.engine.Trainer`'s run and the time it has taken; it reads the trainer's config,
    step counters and start time."""

    def _budget(self) -> dict[str, Any]:
        return {"epochs": self.cfg.epochs, "max_steps": self.cfg.max_steps, "max_minutes": self.cfg.max_minutes}

    def _elapsed(self) -> float:
        """Seconds of this run, over all its sessions (a checkpoint carries the earlier ones as ``elapsed_s``)."""
        return self.elapsed_before + clock() - self._started

    def _shared_elapsed(self) -> float:
        """``_elapsed`` as rank 0 measures it: under a time budget every process must take the same lr and
        stop after the same step, whatever its own clock says."""
        elapsed = self._elapsed()
        if self.dist.enabled and self.cfg.max_minutes:
            box = torch.tensor([elapsed], dtype=torch.float64, device=self.device)
            dist.broadcast(box, src=0)
            elapsed = float(box)
        return elapsed

    def _time_progress(self) -> float:
        """The fraction of the time budget spent at the latest step, for the lr schedule."""
        return self.step_elapsed / (60.0 * self.cfg.max_minutes)

    def _budget_ended(self, elapsed: float) -> str | None:
        """The budget that ends the run at this step after ``elapsed`` seconds, or None. The epochs are
        named first, then the step budget, then the time: a budget is named only when it cut the run short."""
        if self.global_step >= self.total_steps:
            return "epochs"
        if self.cfg.max_steps and self.global_step >= self.cfg.max_steps:
            return "max_steps"
        if self.cfg.max_minutes and elapsed >= 60.0 * self.cfg.max_minutes:
            return "max_minutes"
        return None

    def _seconds_left(self, rate: float) -> float:
        """Until the first budget ends, at ``rate`` images/s."""
        steps = min(self.total_steps, self.cfg.max_steps or self.total_steps) - self.global_step
        seconds = steps * self.cfg.batch_size / max(rate, 1e-9)
        if self.cfg.max_minutes:
            seconds = min(seconds, 60.0 * self.cfg.max_minutes - self.step_elapsed)
        return max(seconds, 0.0)
