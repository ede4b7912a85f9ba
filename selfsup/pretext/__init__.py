"""Pretext tasks: one module per task; ``TASKS`` maps the ``--task`` name to its class."""

from __future__ import annotations

from typing import Any

from selfsup.config import from_dict
from selfsup.models import Encoder
from selfsup.errors import DataError
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


def build_task(name: str, encoder: Encoder, options: dict[str, Any], *, num_classes: int | None = None) -> PretextTask:
    task_cls = TASKS[name]
    cfg = from_dict(task_cls.Config, options, prefix="pretext.")
    if getattr(task_cls, "needs_labels", False):
        if not num_classes:
            raise DataError(f"task {name} needs labelled data (class sub-folders, or a labelled dataset)")
        return task_cls(encoder, cfg, num_classes)
    return task_cls(encoder, cfg)


__all__ = ["TASKS", "PretextTask", "build_task"]
