"""Pretext tasks: one module per task; ``TASKS`` maps the ``--task`` name to its class.

:func:`new_task` builds a task from its name and options, :func:`load_task` the task an ssl-pretrain checkpoint
holds. Everything else (the trainer, probes, transfer, reports) asks the task what :class:`PretextTask` declares
and names none: docs/adding_a_task.md shows how a new task joins them all from one module.
"""

from selfsup.pretext.base import PretextTask
from selfsup.pretext.loading import check_pretrain_record, encoder_from_checkpoint, load_task
from selfsup.pretext.registry import TASKS, check_pretrain_config, new_task

__all__ = ["TASKS", "PretextTask", "check_pretrain_config", "check_pretrain_record", "encoder_from_checkpoint",
           "load_task", "new_task"]
