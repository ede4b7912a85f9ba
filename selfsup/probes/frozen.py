"""Rebuilding a frozen encoder, and the input mapping its task used, from a checkpoint of any task."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
from torch import Tensor

from selfsup.checkpoint import load_checkpoint
from selfsup.config import DataConfig, from_dict
from selfsup.errors import CheckpointError
from selfsup.models import ARCHS, Encoder, build_encoder
from selfsup.models.base import load_weights
from selfsup.pretext import TASKS, PretextTask, build_task


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


def check_pretrain_record(state: dict[str, Any], checkpoint: str | Path) -> None:
    """CheckpointError (one line) unless ``state`` has the ``encoder``, ``task`` and ``model`` entries of
    an ssl-pretrain checkpoint, naming an encoder and a task this version knows, with task options it
    accepts and the input channels that task feeds its encoder."""
    missing = [key for key in ("encoder", "task", "model") if not isinstance(state.get(key), dict)]
    if missing:
        raise CheckpointError(f"checkpoint {checkpoint} is not an ssl-pretrain checkpoint: it has no "
                              f"{', '.join(missing)} entry")
    spec, task_spec = state["encoder"], state["task"]
    if spec.get("arch") not in ARCHS:
        raise CheckpointError(f"checkpoint {checkpoint} has encoder.arch {spec.get('arch')!r}, which this version does "
                              f"not know; known: {', '.join(ARCHS)}")
    name = task_spec.get("name")
    if name not in TASKS:
        raise CheckpointError(f"checkpoint {checkpoint} has task.name {name!r}, which this version does not know; "
                              f"known: {', '.join(TASKS)}")
    task_cls = TASKS[name]
    try:
        task_cfg = from_dict(task_cls.Config, task_spec.get("options"), prefix="pretext.")
    except (ValueError, TypeError) as exc:  # ConfigError included: the options came from the file
        raise CheckpointError(f"checkpoint {checkpoint} has task options that {name} does not accept: {exc}") from exc
    channels = task_cls.encoder_channels(task_cfg)
    if spec.get("in_channels") != channels:
        raise CheckpointError(f"checkpoint {checkpoint} has encoder.in_channels {spec.get('in_channels')!r}, but its "
                              f"task {name} feeds the encoder {channels} channel(s)")
    size = state.get("image_size", 1)
    if type(size) is not int or size < 1:
        raise CheckpointError(f"checkpoint {checkpoint} has image_size {size!r}: a crop size is a positive integer")
    if not isinstance(state.get("data", {}), dict):
        raise CheckpointError(f"checkpoint {checkpoint} has a data entry of type {type(state['data']).__name__}, not "
                              "the record of its pretraining data")


def encoder_from_checkpoint(state: dict[str, Any], checkpoint: str | Path) -> Encoder:
    """The (untrained) encoder that the record of ``state`` describes; CheckpointError when it cannot be built."""
    spec = state["encoder"]
    try:
        return build_encoder(spec["arch"], in_channels=spec["in_channels"], width=spec.get("width"))
    except (ValueError, TypeError) as exc:  # ConfigError included: the values came from the file
        raise CheckpointError(f"checkpoint {checkpoint}: its encoder record {spec} cannot be built ({exc})") from exc


def task_from_checkpoint(state: dict[str, Any], checkpoint: str | Path) -> PretextTask:
    """The pretext task (encoder included) that wrote ``state``, with its weights, in eval mode.
    CheckpointError (one line) when ``state`` is not an ssl-pretrain checkpoint or its weights do not
    fit the task and encoder its record names."""
    check_pretrain_record(state, checkpoint)
    task_spec = state["task"]
    encoder = encoder_from_checkpoint(state, checkpoint)
    try:
        task = build_task(task_spec["name"], encoder, task_spec.get("options") or {},
                          num_classes=task_spec.get("num_classes"))
    except (ValueError, TypeError) as exc:
        raise CheckpointError(f"checkpoint {checkpoint}: its task record cannot be rebuilt ({exc})") from exc
    load_weights(task, state["model"], f"checkpoint {checkpoint}")
    return task.eval()


def load_frozen(checkpoint: str, *, arch: str, width: float | None, image_size: int | None, seed: int,
                input_task: str = "rotation", trust: bool = False) -> FrozenEncoder:
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
        input_fn = build_task(input_task, encoder, dataclasses.asdict(task_cfg), num_classes=1).eval_input
        record = {"encoder": {"arch": arch, "width": width, "in_channels": in_channels},
                  "task": {"name": "random", "input": input_task}}
        size, source = (DataConfig.image_size, "default") if image_size is None else (image_size, "--image-size")
        return FrozenEncoder(encoder.eval(), input_fn, size, "random", "random", record, image_size_source=source)
    state = load_checkpoint(checkpoint, trust=trust)
    task = task_from_checkpoint(state, checkpoint)
    record = {key: state[key] for key in ("encoder", "task", "image_size", "data", "config", "command", "git_commit",
                                          "global_step", "epoch") if key in state}
    if image_size is None:
        trained_at = state.get("image_size", DataConfig.image_size)
        size, source = type(task).eval_image_size(task.cfg, trained_at), "checkpoint task scale"
    else:
        size, source = image_size, "--image-size"
    return FrozenEncoder(task.encoder, task.eval_input, size, state["task"]["name"], str(checkpoint), record, task,
                         image_size_source=source)
