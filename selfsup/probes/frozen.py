"""Rebuilding a frozen encoder, and the input mapping its task used, from a checkpoint of any task."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch import Tensor

from selfsup.checkpoint import load_checkpoint
from selfsup.config import DataConfig, from_dict
from selfsup.models import Encoder, build_encoder
from selfsup.pretext import TASKS, build_task


@dataclass
class FrozenEncoder:
    encoder: Encoder
    input_fn: Callable[[Tensor], Tensor]  # [0, 1] RGB batch -> what the encoder was trained on
    image_size: int
    name: str  # "random" or the task name
    checkpoint: str
    record: dict[str, Any]


def load_frozen(checkpoint: str, *, arch: str, width: float | None, image_size: int | None, seed: int,
                input_task: str = "rotation") -> FrozenEncoder:
    """``checkpoint == "random"`` gives a randomly initialised ``arch`` fed as ``input_task`` feeds its
    encoder (RGB for most tasks, L for colorization), so that random rows compare like with like;
    otherwise the checkpoint's own encoder and input mapping. ``image_size = None`` probes a
    checkpoint at its training crop size and a random encoder at the demo preset's."""
    if checkpoint == "random":
        torch.manual_seed(seed)
        task_cls = TASKS[input_task]
        # the task is built only for its input mapping; its heads (sized for a nominal dataset) are discarded
        task_cfg = task_cls.fit_to_data(from_dict(task_cls.Config, {}), num_samples=1000)
        in_channels = task_cls.encoder_channels(task_cfg)
        encoder = build_encoder(arch, in_channels=in_channels, width=width)
        input_fn = build_task(input_task, encoder, dataclasses.asdict(task_cfg), num_classes=1).encoder_input
        record = {"encoder": {"arch": arch, "width": width, "in_channels": in_channels},
                  "task": {"name": "random", "input": input_task}}
        return FrozenEncoder(encoder.eval(), input_fn, image_size or DataConfig.image_size, "random", "random", record)
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
    size = image_size or state.get("image_size", DataConfig.image_size)
    return FrozenEncoder(task.encoder, task.encoder_input, size, task_spec["name"],
                         str(checkpoint), record)
