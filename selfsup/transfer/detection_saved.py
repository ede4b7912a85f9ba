"""Detection transfer, the trained detector as a file: how ssl-detect assembles a detector around an encoder
(:func:`assemble_detector`), and the safe checkpoint it saves at the end (:func:`save_detector`), from which
:func:`load_detector` assembles the same detector again without the pretraining checkpoint.

The file holds tensors and plain types only (it loads with ``torch.load(weights_only=True)``): the detector's
weights, the records of the encoder and of the task that fed it (which fix the front end and the box head's
shape), the class names and the settings that fix the rest (:class:`DetectorSpec`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from torchvision.models.detection import FasterRCNN

from selfsup.checkpoint import atomic_save, load_checkpoint, nonfinite_tensors
from selfsup.errors import CheckpointError, TrainingDivergedError
from selfsup.models import Encoder
from selfsup.models.base import load_weights
from selfsup.pretext import encoder_from_checkpoint, new_task
from selfsup.pretext.base import PretextFC
from selfsup.probes.frozen import FrozenEncoder, load_frozen
from selfsup.transfer.detection_model import build_detector, freeze_batchnorm, is_alexnet
from selfsup.transfer.frontend import fold_input_mapping

DETECTOR_KIND = "selfsup-detector"


@dataclasses.dataclass
class DetectorSpec:
    """What fixes a detector's layout besides its encoder and task (``ssl-detect``'s options of the same names;
    ``backbone`` resolved, never "auto"; ``train_sizes`` is --multiscale)."""

    backbone: str
    frontend: str  # "fold" or "exact"
    min_size: int
    max_size: int
    train_sizes: list[int] | None
    fc_dim: int
    precision: str
    frozen_bn: bool


@dataclasses.dataclass
class SavedDetector:
    """A detector rebuilt from its file, in eval mode on the CPU: ``model([image])`` with [0, 1] RGB images
    gives torchvision's detections, whose labels are class index + 1 (0 is background)."""

    model: FasterRCNN
    classes: list[str]
    state: dict[str, Any]  # the file's entries but the weights: encoder, task, detector, method, ...


def pretext_head(frozen: FrozenEncoder) -> PretextFC | None:
    """fc6/fc7 of the checkpoint's pretext head, for the AlexNet box head (DeepCluster and Jigsaw only)."""
    if frozen.task is None or not is_alexnet(frozen.encoder):
        return None
    return frozen.task.detector_fc()


def prepare_encoder(frozen: FrozenEncoder, frontend: str) -> tuple[Encoder, Callable[[Tensor], Tensor] | None, str]:
    """The encoder to train (front end folded into it or not), the input mapping to put before it, and what was
    done."""
    if frontend == "exact":
        # load_frozen's input_fn is the task's eval_input, what probes and fine-tuning feed the encoder
        return frozen.encoder, frozen.input_fn, "exact: the task's evaluation input mapping in front of the encoder"
    task = frozen.record["task"]
    if frozen.name == "random":
        encoder, folded = fold_input_mapping(frozen.encoder, task["input"], {})
    else:
        encoder, folded = fold_input_mapping(frozen.encoder, task["name"], task.get("options", {}))
    return encoder, None, f"fold: {folded}"


def assemble_detector(frozen: FrozenEncoder, num_classes: int,
                      spec: DetectorSpec) -> tuple[FasterRCNN, Encoder, dict[str, Any], str]:
    """Faster R-CNN over ``frozen``'s encoder as ``spec`` lays it out, its BatchNorms not yet frozen; the encoder
    inside it (a folded copy with ``spec.frontend`` fold), the description of its parts and of its front end."""
    encoder, input_fn, frontend_text = prepare_encoder(frozen, spec.frontend)
    model, parts = build_detector(encoder, num_classes, backbone=spec.backbone, min_size=spec.min_size,
                                  max_size=spec.max_size, train_sizes=spec.train_sizes, input_fn=input_fn,
                                  pretext=pretext_head(frozen), fc_dim=spec.fc_dim, precision=spec.precision)
    return model, encoder, parts, frontend_text


def save_detector(model: FasterRCNN, frozen: FrozenEncoder, classes: list[str], spec: DetectorSpec,
                  path: str | Path, **record: Any) -> Path:
    """Writes the detector's weights (on the CPU) with what rebuilds it, atomically; ``record`` adds plain
    entries (the best epoch, ...). TrainingDivergedError when a weight is NaN or infinite: such a file would
    only ever give NaN boxes."""
    weights = {name: value.detach().to("cpu", copy=True) for name, value in model.state_dict().items()}
    bad = nonfinite_tensors(weights)
    if bad:
        raise TrainingDivergedError(f"the trained detector has {len(bad)} non-finite weight tensor(s) (e.g. {bad[0]}); "
                                    "it was not saved; use a smaller --lr")
    path = Path(path)
    atomic_save({"kind": DETECTOR_KIND, "model": weights, "encoder": frozen.record["encoder"],
                 "task": frozen.record["task"], "method": frozen.name, "checkpoint": frozen.checkpoint,
                 "classes": list(classes), "detector": dataclasses.asdict(spec), **record}, path)
    return path


def load_detector(path: str | Path) -> SavedDetector:
    """The detector :func:`save_detector` wrote to ``path``, its weights loaded. CheckpointError (one line) for
    a file that is not such a detector or whose weights do not fit the detector its record describes."""
    state = load_checkpoint(path)
    if state.get("kind") != DETECTOR_KIND:
        raise CheckpointError(f"{path} is not a detector saved by ssl-detect (its kind is {state.get('kind')!r})")
    missing = [key for key, kind in (("model", dict), ("encoder", dict), ("task", dict), ("detector", dict),
                                     ("classes", list)) if not isinstance(state.get(key), kind)]
    if missing:
        raise CheckpointError(f"detector {path} is damaged: it has no {', '.join(missing)} entry")
    try:
        spec = DetectorSpec(**state["detector"])
    except TypeError as exc:
        raise CheckpointError(f"detector {path}: its detector entry {state['detector']} does not describe a "
                              f"detector ({exc})") from exc
    model, encoder, _, _ = assemble_detector(_saved_encoder(state, path), len(state["classes"]), spec)
    if spec.frozen_bn:
        freeze_batchnorm(encoder)
    load_weights(model, state["model"], f"detector {path}")
    return SavedDetector(model.eval(), list(state["classes"]),
                         {key: value for key, value in state.items() if key != "model"})


def _saved_encoder(state: dict[str, Any], path: str | Path) -> FrozenEncoder:
    """The encoder (untrained) and task input mapping that the saved records name, as training had them."""
    task_record, spec = state["task"], state["encoder"]
    if task_record.get("name") == "random":
        # the random weights are replaced by the saved ones; the caller's random stream is left as it was
        with torch.random.fork_rng(devices=[]):
            return load_frozen("random", arch=spec["arch"], width=spec.get("width"), image_size=None, seed=0,
                               input_task=task_record["input"])
    encoder = encoder_from_checkpoint(state, path)
    try:
        task = new_task(task_record["name"], encoder, task_record.get("options") or {},
                          num_classes=task_record.get("num_classes")).eval()
    except (KeyError, ValueError, TypeError) as exc:
        raise CheckpointError(f"{path}: its task record {task_record} cannot be rebuilt ({exc})") from exc
    # image size 0: a detector sizes its input itself (min_size, max_size)
    return FrozenEncoder(task.encoder, task.eval_input, 0, task_record["name"], state["checkpoint"], state, task)
