"""ssl-diagnose's library side: how much of a pretext task its trivial solvers solve (issue 16).

:func:`diagnose` builds the pretext inputs a task's ``forward`` builds (the run's task options, crops and
seeds) for images held out of pretraining, runs that task's trivial solvers (:mod:`selfsup.diagnose.solvers`)
on them and, given a checkpoint, scores the trained network on exactly the inputs each solver is scored on.
A solver near the network says the task can be solved from that low-level cue in these settings. Given a
checkpoint, the network is also scored on the same inputs with each cue destroyed (the record's
``ablations``, :mod:`selfsup.diagnose.ablations`), beside the cue's solver before and after: the ablation
is shown to remove the cue, and a large drop of the network says it relies on it.

The images come from the data's test split: it is the only split no pretraining reads (CIFAR's and a single
folder's val splits are carved out of what pretraining reads). The fitted solvers fit on the first half of
them and are scored on the second; the images are shuffled first, so both halves are random draws.

What is diagnosed and on which images is :mod:`selfsup.diagnose.subjects`; each task's solvers, network and
ablations, :mod:`selfsup.diagnose.tasks`; the --png grid, :mod:`selfsup.diagnose.previews`.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Any

import torch
from threadpoolctl import threadpool_limits

from selfsup.checkpoint import atomic_file
from selfsup.diagnose.subjects import (
    DIAGNOSED_TASKS, MIN_IMAGES, Progress, checkpoint_subject, held_out_images, preset_subject,
)
from selfsup.diagnose.tasks import (
    FIT_FRACTION, diagnose_colorization, diagnose_context, diagnose_counting, diagnose_deepcluster,
    diagnose_jigsaw, diagnose_rotation,
)
from selfsup.errors import ConfigError
from selfsup.outputs import check_output_file
from selfsup.probes.records import finish_record, write_record
from selfsup.visualize import render_examples

# Tasks with cue ablations: the cues of colorization (colour priors) and DeepCluster (colour histograms) are
# not something an input can be cleaned of without removing what the task predicts.
ABLATED_TASKS = ("rotation", "jigsaw", "context", "counting")
DEFAULT_IMAGES = 400


def _silent(_: str) -> None:
    """The default progress callback: a library call says nothing unless asked."""


def diagnose(task_name: str | None = None, *, checkpoint: str | None = None, data: str | None = None,
             data_root: str | None = None, layout: str | None = None, images: int = DEFAULT_IMAGES,
             seed: int | None = None, json_path: str | None = None, png_path: str | None = None,
             trust_checkpoint: bool = False, progress: Progress = _silent) -> dict[str, Any]:
    """The diagnosis record of ``task_name`` (or of ``checkpoint``'s task), written to ``json_path`` when given.

    Without ``checkpoint`` the task is the one ``ssl-pretrain --task NAME`` starts (the demo preset) and only
    the solvers are scored; with it, the checkpoint's task options, crops and weights, its network beside
    every solver, and the network again on the inputs with each cue ablated (:mod:`selfsup.diagnose.ablations`;
    the record's ``ablations``). ``png_path`` gets a grid of a few examples' inputs, intact and ablated.
    ``data`` defaults to the run's; ``seed`` (default the run's ``train.seed``) draws the images, their crops
    and the task's random inputs. ``progress`` is told each stage, one line at a time.
    """
    started = time.perf_counter()
    if task_name is not None and task_name not in DIAGNOSED_TASKS:
        raise ConfigError(f"--task {task_name} is invalid: ssl-diagnose has trivial solvers for "
                          f"{', '.join(DIAGNOSED_TASKS)}")
    if task_name is None and checkpoint is None:
        raise ConfigError(f"give --task (one of {', '.join(DIAGNOSED_TASKS)}) or --checkpoint")
    if images < MIN_IMAGES:
        raise ConfigError(f"--images {images} is invalid: must be at least {MIN_IMAGES}")
    if json_path is not None:
        check_output_file(json_path, "--json")
    if png_path is not None:
        if Path(png_path).suffix.lower() != ".png":
            raise ConfigError(f"--png {png_path} is invalid: give a file name ending in .png")
        check_output_file(png_path, "--png")
    if task_name is not None and png_path is not None:
        _check_png_task(task_name)
    if checkpoint is not None:
        subject = checkpoint_subject(checkpoint, task_name, data, data_root, layout, trust_checkpoint, progress)
    else:
        subject = preset_subject(str(task_name), data, data_root, layout, progress)
    task = subject.task.eval()
    if png_path is not None:
        _check_png_task(task.name)
    seed = subject.cfg.train.seed if seed is None else seed
    pixels, labels, described = held_out_images(subject, images, seed, progress)
    # scikit-learn's BLAS and OpenMP pools take every core whatever torch was told (--threads): hold them to it.
    with torch.no_grad(), threadpool_limits(torch.get_num_threads()):
        if task.name == "deepcluster":
            found = diagnose_deepcluster(task, pixels, labels, subject.trained, seed, progress)
        else:
            solve = {"rotation": diagnose_rotation, "jigsaw": diagnose_jigsaw, "context": diagnose_context, "counting": diagnose_counting,
                     "colorization": diagnose_colorization}[task.name]
            found = solve(task, pixels, subject.trained, seed, progress)
    record = {
        "kind": "diagnose",
        "task": task.name,
        "options": dataclasses.asdict(task.cfg),
        "checkpoint": checkpoint,
        "encoder": {"arch": subject.cfg.model.arch, "width": subject.cfg.model.width,
                    **({} if task.encoder.lens is None else {"lens": task.encoder.lens.spec()})},
        "data": {"spec": subject.data, **described},
        "image_size": subject.image_size,
        "images": len(pixels),
        "seed": seed,
        "fit_fraction": FIT_FRACTION,
        "rows": [dataclasses.asdict(row) for row in found.rows],
        "ablations": [dataclasses.asdict(ablation) for ablation in found.ablations],
    }
    if png_path is not None and found.preview is not None:
        title = f"ssl-diagnose {task.name}: inputs intact and with each cue ablated"
        with atomic_file(png_path) as handle:
            render_examples(found.preview, title).save(handle, format="PNG")
        record["png"] = png_path
    finish_record(record, started=started, device=torch.device("cpu"))
    if json_path is not None:
        write_record(record, json_path)
    return record


def _check_png_task(name: str) -> None:
    if name not in ABLATED_TASKS:
        raise ConfigError(f"--png shows the inputs with each cue ablated; {name} has no cue ablations (they exist for "
                          f"{', '.join(ABLATED_TASKS)})")
