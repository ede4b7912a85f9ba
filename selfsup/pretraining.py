"""From a resolved :class:`~selfsup.config.PretrainConfig` to the pieces of a pretraining run: the task with
its encoder, the images it trains on, and the Trainer. ssl-pretrain and ssl-bench build runs the same way."""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from selfsup.config import PretrainConfig, from_dict
from selfsup.data.decoded import decoded_source
from selfsup.data.device_decode import reads_files
from selfsup.data.crops import CenterCrop, RandomCrop
from selfsup.data.loading import auto_workers
from selfsup.data.source_kinds import ImageSource
from selfsup.data.sources import Splits, open_splits
from selfsup.distributed import DistInfo
from selfsup.engine import Trainer
from selfsup.errors import ConfigError, DataError
from selfsup.models import build_encoder, use_channels_last
from selfsup.models.lens import Lens
from selfsup.pretext import TASKS, PretextTask, new_task
from selfsup.training_log import Monitor


@dataclass
class Pretraining:
    task: PretextTask
    splits: Splits
    source: ImageSource  # what the task trains on: the pretraining split, or train for tasks that need labels
    in_channels: int


def build_pretraining(cfg: PretrainConfig, *, workers: int = 0) -> Pretraining:
    """The task (a freshly initialised encoder, behind an adversarial lens when ``lens.enabled``: seed torch
    first) and its training images, through a decoded cache when ``data.decoded_cache_gb`` asks for one (built
    by ``workers`` loader workers if absent)."""
    task_cls = TASKS[cfg.task]
    splits = open_splits(cfg.data.data, cfg.data.data_root, val_fraction=cfg.data.val_fraction, seed=cfg.train.seed,
                         layout=cfg.data.layout)
    source = splits.train if task_cls.needs_labels else splits.pretrain
    if source is None:
        raise DataError(f"task {cfg.task} needs labelled data, but {cfg.data.data} has no class sub-folders")
    if cfg.data.decoded_cache_gb > 0:
        source = decoded_source(source, int(cfg.data.decoded_cache_gb * 1e9), workers=workers)
    task_cfg = task_cls.fit_to_data(from_dict(task_cls.Config, cfg.pretext, prefix="pretext."), len(source))
    in_channels = task_cls.encoder_channels(task_cfg)
    encoder = build_encoder(cfg.model.arch, in_channels=in_channels, width=cfg.model.width)
    if cfg.lens.enabled:
        encoder.lens = Lens(in_channels, cfg.lens.width, reconstruction_weight=cfg.lens.reconstruction_weight)
    task = new_task(cfg.task, encoder, dataclasses.asdict(task_cfg), num_classes=len(source.classes) or None)
    return Pretraining(task, splits, source, in_channels)


def encoder_record(cfg: PretrainConfig, setup: Pretraining) -> dict[str, Any]:
    """A checkpoint's ``encoder`` entry, what rebuilds the encoder (:func:`selfsup.pretext.load_task`): arch,
    width, input channels and, with a lens, the lens's spec (no ``lens`` key without one, as before lenses)."""
    record: dict[str, Any] = {"arch": cfg.model.arch, "width": cfg.model.width, "in_channels": setup.in_channels}
    lens = setup.task.encoder.lens
    if lens is not None:
        record["lens"] = lens.spec()
    return record


def loader_workers(cfg: PretrainConfig, dist_info: DistInfo) -> int:
    """``data.workers``, with -1 (auto) resolved for this machine and device."""
    if cfg.data.workers >= 0:
        return cfg.data.workers
    processes = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    return auto_workers(dist_info.device, processes)


def new_trainer(cfg: PretrainConfig, setup: Pretraining, dist_info: DistInfo, out_dir: Path, record: dict[str, Any], *,
                knn_monitor: Monitor | None = None, trust_checkpoint: bool = False) -> Trainer:
    """The Trainer of ``setup``'s task: random-resized crops of ``data.image_size`` for the steps, centre crops
    for whole-source passes (``prepare_epoch``)."""
    return Trainer(
        setup.task,
        setup.source,
        RandomCrop(cfg.data.image_size, scale=(cfg.data.crop_scale_min, 1.0), hflip=cfg.data.hflip,
                   jpeg_draft=cfg.data.jpeg_draft),
        train_cfg=cfg.train,
        optim_cfg=cfg.optim,
        workers=loader_workers(cfg, dist_info),
        out_dir=out_dir,
        dist_info=dist_info,
        record=record,
        channels_last=(use_channels_last(setup.task.encoder, dist_info.device, training=True)
                       if cfg.model.channels_last is None else cfg.model.channels_last),
        feature_view=CenterCrop(cfg.data.image_size, jpeg_draft=cfg.data.jpeg_draft),
        knn_monitor=knn_monitor,
        trust_checkpoint=trust_checkpoint,
        decode_on_device=decode_on_device(cfg, setup.source, dist_info.device),
        lens_lr=cfg.lens.lr,
    )


def decode_on_device(cfg: PretrainConfig, source: ImageSource, device) -> bool:
    """``data.gpu_decode``, with None resolved: on CUDA for a folder of files (a decoded cache is faster still)."""
    if cfg.data.gpu_decode is not None:
        if cfg.data.gpu_decode and (device.type != "cuda" or not reads_files(source)):
            raise ConfigError(f"data.gpu_decode = true is invalid here: it needs a CUDA device (train.device is "
                              f"{device}) and a folder of image files (data is {source.describe()})")
        return cfg.data.gpu_decode
    return device.type == "cuda" and reads_files(source)
