"""Optimisers and per-step learning-rate schedules (warm-up, then constant / step / cosine)."""

from __future__ import annotations

import math
from typing import Iterable

import torch
from torch import nn

from selfsup.config import OptimConfig


def parameter_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """No weight decay on biases and normalisation parameters (1-d tensors), as is standard."""
    decay, no_decay = [], []
    for param in model.parameters():
        if param.requires_grad:
            (no_decay if param.ndim <= 1 else decay).append(param)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def build_optimizer(params: Iterable | nn.Module, cfg: OptimConfig) -> torch.optim.Optimizer:
    groups = parameter_groups(params, cfg.weight_decay) if isinstance(params, nn.Module) else params
    if cfg.optimizer in ("sgd", "nesterov"):
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.optimizer == "nesterov",
                               weight_decay=cfg.weight_decay)
    if cfg.optimizer == "adam":
        return torch.optim.Adam(groups, lr=cfg.lr, weight_decay=cfg.weight_decay)
    return torch.optim.AdamW(groups, lr=cfg.lr, weight_decay=cfg.weight_decay)


def lr_factor(step: int, steps_per_epoch: int, total_epochs: int, cfg: OptimConfig) -> float:
    """Multiplier of the peak lr at optimiser step ``step`` (0-based)."""
    epoch = step / steps_per_epoch
    warmup = cfg.warmup_epochs
    if warmup > 0 and epoch < warmup:
        return (step + 1) / (warmup * steps_per_epoch)
    if cfg.schedule == "constant":
        return 1.0
    if cfg.schedule == "step":
        return cfg.gamma ** sum(epoch >= m for m in cfg.milestones)
    progress = (epoch - warmup) / max(total_epochs - warmup, 1e-8)
    return 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: OptimConfig, steps_per_epoch: int,
                    epochs: int) -> torch.optim.lr_scheduler.LambdaLR:
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: lr_factor(step, steps_per_epoch, epochs, cfg)
    )
