"""Optimisers and per-step learning-rate schedules (warm-up, then constant / step / cosine), fitted to
whichever training budget ends first: the epochs, a number of steps or a number of minutes."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable

import torch
from torch import nn

from selfsup.config import OptimConfig


def parameter_groups(model: nn.Module, weight_decay: float, leave_out: nn.Module | None = None) -> list[dict]:
    """No weight decay on biases and normalisation parameters (1-d tensors), as is standard. The parameters of
    ``leave_out`` (a part of ``model`` with an optimiser of its own) are in neither group."""
    left_out = set() if leave_out is None else {id(param) for param in leave_out.parameters()}
    decay, no_decay = [], []
    for param in model.parameters():
        if param.requires_grad and id(param) not in left_out:
            (no_decay if param.ndim <= 1 else decay).append(param)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def build_optimizer(params: Iterable | nn.Module, cfg: OptimConfig, *,
                    leave_out: nn.Module | None = None) -> torch.optim.Optimizer:
    groups = parameter_groups(params, cfg.weight_decay, leave_out) if isinstance(params, nn.Module) else params
    if cfg.optimizer in ("sgd", "nesterov"):
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.optimizer == "nesterov",
                               weight_decay=cfg.weight_decay)
    if cfg.optimizer == "adam":
        return torch.optim.Adam(groups, lr=cfg.lr, weight_decay=cfg.weight_decay)
    return torch.optim.AdamW(groups, lr=cfg.lr, weight_decay=cfg.weight_decay)


def lr_factor(step: int, steps_per_epoch: int, total_epochs: int, cfg: OptimConfig, *, max_steps: int = 0,
              time_progress: float = 0.0) -> float:
    """Multiplier of the peak lr at optimiser step ``step`` (0-based).

    The schedule is fitted to the budget that ends first. Warm-up and step milestones are given in epochs
    and stay there; a cosine ends at the budget: over ``min(total_epochs * steps_per_epoch, max_steps)``
    steps (``max_steps`` 0 = no step budget) and, with a time budget, no later than the time:
    ``time_progress`` is the fraction of it spent so far (0 = none), and the cosine's progress is the larger
    of the step and the time fractions, so that its factor reaches 0 when the time runs out however fast the
    steps go. The time fraction counts from the run's start, warm-up included.
    """
    epoch = step / steps_per_epoch
    warmup = cfg.warmup_epochs
    if warmup > 0 and epoch < warmup:
        return (step + 1) / (warmup * steps_per_epoch)
    if cfg.schedule == "constant":
        return 1.0
    if cfg.schedule == "step":
        return cfg.gamma ** sum(epoch >= m for m in cfg.milestones)
    end = min(total_epochs, max_steps / steps_per_epoch) if max_steps else total_epochs
    progress = max((epoch - warmup) / max(end - warmup, 1e-8), time_progress)
    return 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: OptimConfig, steps_per_epoch: int, epochs: int, *,
                    max_steps: int = 0, time_progress: Callable[[], float] | None = None,
                    ) -> torch.optim.lr_scheduler.LambdaLR:
    """The per-step schedule of ``lr_factor``; ``time_progress`` (None = no time budget) is asked at every
    step for the fraction of the time budget spent."""
    spent = time_progress or (lambda: 0.0)
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer,
        lambda step: lr_factor(step, steps_per_epoch, epochs, cfg, max_steps=max_steps, time_progress=spent()),
    )
