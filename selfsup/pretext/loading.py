"""An ssl-pretrain checkpoint back to the task that wrote it (:func:`load_task`).

Whoever evaluates or transfers an encoder rebuilds it here from what the checkpoint records (``encoder``,
``task``, ``model``), so no caller needs to know which task wrote it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from selfsup.checkpoint import load_checkpoint
from selfsup.config import from_dict
from selfsup.errors import CheckpointError
from selfsup.models import ARCHS, Encoder, build_encoder
from selfsup.models.base import load_weights
from selfsup.models.lens import Lens
from selfsup.pretext.base import PretextTask
from selfsup.pretext.registry import TASKS, new_task


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
    lens = spec.get("lens")
    if lens is not None and (not isinstance(lens, dict) or set(lens) != {"channels", "width"}
                             or lens["channels"] != channels or type(lens["width"]) is not int or lens["width"] < 1):
        raise CheckpointError(f"checkpoint {checkpoint} has encoder.lens {lens!r}: a lens record is "
                              f"{{'channels': {channels}, 'width': N >= 1}}")
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
        encoder = build_encoder(spec["arch"], in_channels=spec["in_channels"], width=spec.get("width"))
    except (ValueError, TypeError) as exc:  # ConfigError included: the values came from the file
        raise CheckpointError(f"checkpoint {checkpoint}: its encoder record {spec} cannot be built ({exc})") from exc
    if spec.get("lens") is not None:
        # no reconstruction weight: outside pretraining the lens is no adversary (fine-tuning trains it as it
        # trains the encoder, unless frozen)
        encoder.lens = Lens(**spec["lens"])
    return encoder


def load_task(checkpoint: str | Path, *, trust: bool = False, state: dict[str, Any] | None = None) -> PretextTask:
    """The pretext task (encoder included) that wrote the ssl-pretrain ``checkpoint``, with its weights, in
    eval mode. ``state``: the checkpoint's contents when the caller has already loaded them (to read its
    record too: the file is then not read again and ``checkpoint`` only names it in messages); ``trust`` is
    :func:`selfsup.checkpoint.load_checkpoint`'s (``--trust-checkpoint``). CheckpointError (one line) when
    the file is not an ssl-pretrain checkpoint or its weights do not fit the task and encoder it records."""
    if state is None:
        state = load_checkpoint(checkpoint, trust=trust)
    check_pretrain_record(state, checkpoint)
    task_spec = state["task"]
    encoder = encoder_from_checkpoint(state, checkpoint)
    try:
        task = new_task(task_spec["name"], encoder, task_spec.get("options") or {},
                        num_classes=task_spec.get("num_classes"))
    except (ValueError, TypeError) as exc:
        raise CheckpointError(f"checkpoint {checkpoint}: its task record cannot be rebuilt ({exc})") from exc
    load_weights(task, state["model"], f"checkpoint {checkpoint}")
    return task.eval()
