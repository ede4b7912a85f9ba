"""Rebuilding a frozen encoder, and the input mapping its task used, from a checkpoint of any task."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch import Tensor

from selfsup.checkpoint import load_checkpoint
from selfsup.models import Encoder, build_encoder
from selfsup.pretext import build_task
from selfsup.pretext.base import normalize_rgb


@dataclass
class FrozenEncoder:
    encoder: Encoder
    input_fn: Callable[[Tensor], Tensor]  # [0, 1] RGB batch -> what the encoder was trained on
    image_size: int
    name: str  # "random" or the task name
    checkpoint: str
    record: dict[str, Any]


def load_frozen(checkpoint: str, *, arch: str, width: float | None, image_size: int, seed: int) -> FrozenEncoder:
    """``checkpoint == "random"`` gives a randomly initialised ``arch``; otherwise the checkpoint's own."""
    if checkpoint == "random":
        torch.manual_seed(seed)
        encoder = build_encoder(arch, width=width).eval()
        record = {"encoder": {"arch": arch, "width": width, "in_channels": 3}, "task": {"name": "random"}}
        return FrozenEncoder(encoder, normalize_rgb, image_size, "random", "random", record)
    state = load_checkpoint(checkpoint)
    if "encoder" not in state or "task" not in state:
        raise ValueError(f"{checkpoint} is not an ssl-pretrain checkpoint (no encoder/task record)")
    spec, task_spec = state["encoder"], state["task"]
    encoder = build_encoder(spec["arch"], in_channels=spec["in_channels"], width=spec["width"])
    task = build_task(task_spec["name"], encoder, task_spec["options"], num_classes=task_spec.get("num_classes"))
    task.load_state_dict(state["model"])
    task.eval()
    record = {key: state[key] for key in ("encoder", "task", "image_size", "data", "command", "git_commit", "global_step", "epoch")
              if key in state}
    return FrozenEncoder(task.encoder, task.encoder_input, state.get("image_size", image_size), task_spec["name"],
                         str(checkpoint), record)
