"""The tasks by their ``--task`` name (``TASKS``), and a new task from a name and its options (:func:`new_task`)."""

from __future__ import annotations

from typing import Any

from selfsup.config import PretrainConfig, from_dict
from selfsup.errors import ConfigError, DataError
from selfsup.models import Encoder, check_arch
from selfsup.pretext.base import PretextTask
from selfsup.pretext.colorization import ColorizationTask
from selfsup.pretext.context import ContextTask
from selfsup.pretext.counting import CountingTask
from selfsup.pretext.deepcluster import DeepClusterTask
from selfsup.pretext.jigsaw import JigsawTask
from selfsup.pretext.rotation import RotationTask
from selfsup.pretext.supervised import SupervisedTask

TASKS: dict[str, type[PretextTask]] = {
    ColorizationTask.name: ColorizationTask,
    ContextTask.name: ContextTask,
    CountingTask.name: CountingTask,
    DeepClusterTask.name: DeepClusterTask,
    JigsawTask.name: JigsawTask,
    RotationTask.name: RotationTask,
    SupervisedTask.name: SupervisedTask,
}


def check_pretrain_config(cfg: PretrainConfig) -> None:
    """The checks a pretraining config needs the registries for: the task and architecture names, the task's
    options (``pretext.*``) and its crop size; a ConfigError naming the field, the value and what is allowed."""
    if cfg.task not in TASKS:
        raise ConfigError(f"task = {cfg.task!r} is invalid: allowed values are {', '.join(TASKS)}")
    check_arch(cfg.model.arch)
    task_cls = TASKS[cfg.task]
    task_cls.check_image_size(from_dict(task_cls.Config, cfg.pretext, prefix="pretext."), cfg.data.image_size)


def new_task(name: str, encoder: Encoder, options: dict[str, Any], *, num_classes: int | None = None) -> PretextTask:
    """A new ``name`` task on ``encoder``, its heads freshly initialised, with ``options`` (its ``pretext.*``
    fields; those not given take their defaults). ``num_classes``: the labelled classes, for a task that
    ``needs_labels``; DataError when such a task gets none."""
    task_cls = TASKS[name]
    cfg = from_dict(task_cls.Config, options, prefix="pretext.")
    if task_cls.needs_labels:
        if not num_classes:
            raise DataError(f"task {name} needs labelled data (class sub-folders, or a labelled dataset)")
        return task_cls(encoder, cfg, num_classes)
    return task_cls(encoder, cfg)
