"""What ssl-diagnose diagnoses, and on which images: a checkpoint's task with its run's config, or the task as
``ssl-pretrain --task NAME`` starts it (the demo preset); and the held-out test images, cropped as the task's
training crops them.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from torch import Tensor

from selfsup.checkpoint import load_checkpoint
from selfsup.config import PretrainConfig, from_dict, merge
from selfsup.data.images import unit_float
from selfsup.data.crops import CenterCrop, RandomCrop
from selfsup.data.loading import TransformedDataset, collate, sample_seed
from selfsup.data.source_kinds import ImageSource, IndexedSource
from selfsup.data.sources import Splits, open_splits, stratified_subset
from selfsup.errors import CheckpointError, DataError
from selfsup.models import build_encoder
from selfsup.presets import load_preset
from selfsup.pretext import TASKS, PretextTask, check_pretrain_record, load_task, new_task

DIAGNOSED_TASKS = ("rotation", "jigsaw", "context", "counting", "colorization", "deepcluster")
# Fewest images worth a diagnosis: each half of a fitted solver needs a few, counting needs pairs.
MIN_IMAGES = 8

Progress = Callable[[str], None]


@dataclass
class Subject:
    """The task to diagnose and where its settings came from."""

    task: PretextTask
    cfg: PretrainConfig  # the run's config: data, crops and seeds
    image_size: int
    trained: bool
    splits: Splits
    data: str  # the data spec read


def checkpoint_subject(checkpoint: str, task_name: str | None, data: str | None, data_root: str | None,
                        layout: str | None, trust: bool, progress: Progress) -> Subject:
    progress(f"loading checkpoint {checkpoint}")
    state = load_checkpoint(checkpoint, trust=trust)
    check_pretrain_record(state, checkpoint)
    name = state["task"]["name"]
    if task_name is not None and task_name != name:
        raise CheckpointError(f"--checkpoint {checkpoint} is a {name} checkpoint; --task {task_name} needs a "
                              f"{task_name} one (or leave --task out)")
    if name not in DIAGNOSED_TASKS:
        raise CheckpointError(f"--checkpoint {checkpoint} is a {name} checkpoint; ssl-diagnose has trivial solvers "
                              f"for {', '.join(DIAGNOSED_TASKS)} only")
    try:
        cfg = from_dict(PretrainConfig, state.get("config"))
    except (ValueError, TypeError) as exc:  # ConfigError included: the values came from the file
        raise CheckpointError(f"checkpoint {checkpoint} has a config this version cannot read: {exc}") from exc
    task = load_task(checkpoint, state=state)
    return Subject(task, cfg, state.get("image_size", cfg.data.image_size), True, *_open(cfg, data, data_root, layout))


def preset_subject(task_name: str, data: str | None, data_root: str | None, layout: str | None,
                    progress: Progress) -> Subject:
    """The task as ``ssl-pretrain --task NAME`` would start it: the demo preset, a fresh encoder (whose weights
    no solver reads: the task is built for the methods that make its inputs)."""
    cfg = from_dict(PretrainConfig, merge(load_preset("demo", task_name), {"task": task_name}))
    splits, spec = _open(cfg, data, data_root, layout)
    task_cls = TASKS[task_name]
    # Data-dependent defaults (DeepCluster's k) are resolved from the pretraining split, as a run resolves them.
    task_cfg = task_cls.fit_to_data(from_dict(task_cls.Config, cfg.pretext, prefix="pretext."), len(splits.pretrain))
    progress(f"building task {task_name} with the demo preset's options (no checkpoint: no network column)")
    encoder = build_encoder(cfg.model.arch, in_channels=task_cls.encoder_channels(task_cfg), width=cfg.model.width)
    task = new_task(task_name, encoder, dataclasses.asdict(task_cfg))
    return Subject(task.eval(), cfg, cfg.data.image_size, False, splits, spec)


def _open(cfg: PretrainConfig, data: str | None, data_root: str | None, layout: str | None) -> tuple[Splits, str]:
    """The splits of ``data`` (default: the run's data) and its spec."""
    spec = data or cfg.data.data
    # The run's split seed, not --seed: a folder's test split is carved with it, and it must be the one the
    # run held out.
    splits = open_splits(spec, data_root if data_root is not None else cfg.data.data_root,
                         val_fraction=cfg.data.val_fraction, seed=cfg.train.seed, layout=layout or cfg.data.layout)
    return splits, spec


def held_out_images(subject: Subject, count: int, seed: int, progress: Progress) -> tuple[Tensor, Tensor, dict]:
    """Up to ``count`` test images ([0, 1] RGB, shuffled), their labels and what was read, cropped as the
    task's training crops them: random-resized crops for the steps, centre crops for DeepCluster, whose
    clustering pass (what its classes are) sees centre crops."""
    test = subject.splits.test
    if test is None:
        raise DataError(f"{subject.data} has no test split: ssl-diagnose "
                        "needs images held out of pretraining (class sub-folders, or a data set with a test split)")
    data = subject.cfg.data
    if subject.task.name == "deepcluster":
        view: CenterCrop | RandomCrop = CenterCrop(subject.image_size, jpeg_draft=data.jpeg_draft)
        view_text = f"centre crops of {subject.image_size} px (as DeepCluster's clustering pass)"
    else:
        view = RandomCrop(subject.image_size, scale=(data.crop_scale_min, 1.0), hflip=data.hflip,
                          jpeg_draft=data.jpeg_draft)
        view_text = (f"random-resized crops of {subject.image_size} px, area {data.crop_scale_min:g}-1"
                     f"{', flips' if data.hflip else ''} (as training)")
    source: ImageSource = stratified_subset(test, count, seed)
    # A stratified subset is ordered by class: shuffled, the fitted half and the scored half hold every class.
    order = np.random.default_rng(seed).permutation(len(source))
    source = IndexedSource(source, order, f"{source.describe()}, shuffled")
    progress(f"loading {len(source)} held-out images ({test.describe()}): {view_text}")
    dataset = TransformedDataset(source, view, replace_bad=False)
    batch = collate([dataset[(i, sample_seed(seed, 0, i))] for i in range(len(dataset))])
    if len(batch.images) < MIN_IMAGES:
        raise DataError(f"ssl-diagnose needs at least {MIN_IMAGES} readable held-out images; the test split of "
                        f"{subject.data} gave {len(batch.images)}")
    described = {"split": "test", "source": test.describe(), "view": view_text,
                 "unreadable_skipped": len(batch.bad_files)}
    return unit_float(batch.images), batch.labels, described
