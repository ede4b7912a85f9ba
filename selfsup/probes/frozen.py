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
from selfsup.pretext import TASKS, PretextTask, load_task, new_task


@dataclass
class FrozenEncoder:
    encoder: Encoder
    input_fn: Callable[[Tensor], Tensor]  # [0, 1] RGB batch -> what the encoder was trained on
    image_size: int
    name: str  # "random" or the task name
    checkpoint: str
    record: dict[str, Any]
    task: PretextTask | None = None  # the checkpoint's whole task, heads included; None for "random"
    # why ``image_size``: "--image-size", "checkpoint task scale" or "default" (a random encoder's)
    image_size_source: str = "--image-size"

    def provenance(self) -> dict[str, Any]:
        """What every evaluation record says of the encoder (``probes.records.new_record``'s arguments): the
        method, its checkpoint, the encoder record and the rest of the pretraining record."""
        return {"method": self.name, "checkpoint": self.checkpoint, "encoder": self.record["encoder"],
                "pretraining": {k: v for k, v in self.record.items() if k != "encoder"}}


# how a random encoder is fed unless told otherwise: as rotation feeds its encoder, whole RGB images (like most tasks)
RANDOM_INPUT_TASK = "rotation"


def load_frozen(checkpoint: str, *, arch: str, width: float | None, image_size: int | None, seed: int,
                input_task: str = RANDOM_INPUT_TASK, trust: bool = False) -> FrozenEncoder:
    """``checkpoint == "random"`` gives a randomly initialised ``arch`` fed as ``input_task`` feeds its
    encoder (RGB for most tasks, L for colorization), so that random rows compare like with like;
    otherwise the checkpoint's own encoder and evaluation input mapping (the task's ``eval_input``).
    ``image_size = None`` feeds a checkpoint's encoder whole images at the scale its task trained it on
    (the task's ``eval_image_size`` of the checkpoint's crop size) and a random encoder at the demo
    preset's size. ``trust`` is :func:`selfsup.checkpoint.load_checkpoint`'s (``--trust-checkpoint``)."""
    if checkpoint == "random":
        torch.manual_seed(seed)
        task_cls = TASKS[input_task]
        # the task is built only for its input mapping; its heads (sized for a nominal dataset) are discarded
        task_cfg = task_cls.fit_to_data(from_dict(task_cls.Config, {}), num_samples=1000)
        in_channels = task_cls.encoder_channels(task_cfg)
        encoder = build_encoder(arch, in_channels=in_channels, width=width)
        input_fn = new_task(input_task, encoder, dataclasses.asdict(task_cfg), num_classes=1).eval_input
        record = {"encoder": {"arch": arch, "width": width, "in_channels": in_channels},
                  "task": {"name": "random", "input": input_task}}
        size, source = (DataConfig.image_size, "default") if image_size is None else (image_size, "--image-size")
        return FrozenEncoder(encoder.eval(), input_fn, size, "random", "random", record, image_size_source=source)
    state = load_checkpoint(checkpoint, trust=trust)
    task = load_task(checkpoint, state=state)
    record = {key: state[key] for key in ("encoder", "task", "image_size", "data", "config", "command", "git_commit",
                                          "global_step", "epoch") if key in state}
    if image_size is None:
        trained_at = state.get("image_size", DataConfig.image_size)
        size, source = type(task).eval_image_size(task.cfg, trained_at), "checkpoint task scale"
    else:
        size, source = image_size, "--image-size"
    return FrozenEncoder(task.encoder, task.eval_input, size, state["task"]["name"], str(checkpoint), record, task,
                         image_size_source=source)
