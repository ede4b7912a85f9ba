"""One ssl-detect run from its options (:class:`selfsup.transfer.detection_options.DetectOptions`): load the
encoder (the checkpoint is read once), assemble Faster R-CNN around it, set its BatchNorm statistics, freeze
and rescale as asked, train with model selection (:func:`selfsup.transfer.detection.fit`), then write the
figure of test detections, the trained detector and the record."""

from __future__ import annotations

import dataclasses
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import DataLoader
from torchvision.models.detection import FasterRCNN

from selfsup.checkpoint import seed_everything
from selfsup.data.images import unit_float
from selfsup.data.loading import BadFileLog, EpochBatchSampler
from selfsup.data.voc import VocSplit, open_voc, resolve_voc_root, voc_classes
from selfsup.distributed import pick_device
from selfsup.epoch import resolve_precision
from selfsup.errors import ConfigError, DataError
from selfsup.models import Encoder
from selfsup.models.base import check_input_size, freeze_layers
from selfsup.outputs import check_output_file
from selfsup.probes.bn import named_batchnorms
from selfsup.probes.frozen import load_frozen
from selfsup.probes.records import finish_record, new_record, write_record
from selfsup.transfer.detection import DetectionFit, draw_detections, fit, lr_factor, scores_entry
from selfsup.transfer.detection_data import DetectionDataset, collate_items
from selfsup.transfer.detection_model import freeze_batchnorm, reestimate_backbone_bn, rescale_backbone, resolve_backbone
from selfsup.transfer.detection_options import (
    RESCALE_IMAGES, DetectOptions, check_options, check_outputs, default_out, detector_path, figure_path,
)
from selfsup.transfer.detection_saved import DetectorSpec, assemble_detector, save_detector

EVAL_BATCH = 8
MAX_WARMUP_STEPS = 500


@dataclasses.dataclass
class DetectionRun:
    """What a run wrote (record, figure, detector) and kept: the trained detector (selected weights, on the run's
    device), the class names and the fit, whose test scores the summary shows."""

    record: dict[str, Any]
    path: Path
    figure: Path
    detector: Path
    model: FasterRCNN
    classes: list[str]
    fitted: DetectionFit


def bn_stats_step(options: DetectOptions, model: FasterRCNN, encoder: Encoder, train_split: VocSplit,
                  device: torch.device, on_bad: Callable[[list[str]], None]) -> dict[str, Any]:
    """Applies --bn-stats to the detector's encoder (its BatchNorms not yet frozen) and says what was done,
    for the record's protocol."""
    if not options.frozen_bn:
        return {"option": None, "used": None,
                "reason": "--trainable-bn: BatchNorms normalise with batch statistics in training and update their "
                          "running ones from the checkpoint's"}
    option = options.bn_stats or "train"
    entry: dict[str, Any] = {"option": option, "used": option,
                             "reason": "--bn-stats" if options.bn_stats else "default with frozen BatchNorm"}
    if not named_batchnorms(encoder):
        entry.update(used="checkpoint", reason="the encoder has no BatchNorm")
        return entry
    if option == "checkpoint":
        return entry
    loader = DataLoader(DetectionDataset(train_split, train=False), batch_size=EVAL_BATCH, num_workers=options.workers,
                        collate_fn=collate_items)

    def batches() -> Iterator[list[Tensor]]:
        for items in loader:
            for item in items:
                on_bad(item.bad)
            images = [unit_float(item.image) for item in items if item.image is not None]
            if images:
                yield images

    print(f"ssl-detect: re-estimating BatchNorm statistics on {train_split.describe()}", file=sys.stderr)
    seen = reestimate_backbone_bn(model, batches(), device)
    if seen == 0:
        raise DataError(f"no readable image in {train_split.describe()} to re-estimate BatchNorm statistics on "
                        "(batches of one image are skipped); use --bn-stats checkpoint")
    entry.update(images=seen, input=(f"{train_split.describe()}, not flipped, at test size (short side "
                                     f"{options.min_size}, long side at most {options.max_size}), padded batches of "
                                     f"{EVAL_BATCH}, through the detector's front end"))
    return entry


def rescale_step(model: FasterRCNN, train_set: DetectionDataset, device: torch.device) -> list[str]:
    """--rescale: Krähenbühl et al.'s rescaling measured on the first RESCALE_IMAGES training images; the units
    rescaled."""
    images = [unit_float(item.image.to(device))
              for item in (train_set[i] for i in range(min(RESCALE_IMAGES, len(train_set))))
              if item.image is not None]
    if not images:
        raise DataError(f"--rescale found no readable image among the first {RESCALE_IMAGES} of "
                        f"{train_set.split.describe()}")
    return [unit.name for unit in rescale_backbone(model, images)]


def run_detection(options: DetectOptions) -> DetectionRun:
    """Checks ``options``, trains and evaluates the detector they ask for, and writes the figure, the detector
    and the record (the record last: an interrupted run leaves none); progress goes to stderr. The caller
    prints the summary."""
    started = time.perf_counter()
    check_options(options)
    check_outputs(options)
    device = pick_device(options.device)
    seed_everything(options.seed)
    frozen = load_frozen(options.checkpoint, arch=options.arch, width=options.width, image_size=None,
                         seed=options.seed, input_task=options.input_like, trust=options.trust_checkpoint)
    backbone = resolve_backbone(frozen.encoder, options.backbone)
    out_path = default_out(options, backbone)
    if options.out is None:
        check_output_file(out_path, "the default --out")
    if options.figure is None:
        check_output_file(figure_path(options, out_path), "the default --figure")
    check_output_file(detector_path(out_path), "the detector file")
    check_input_size(frozen.encoder, options.min_size, "--min-size")
    if options.multiscale is not None:
        check_input_size(frozen.encoder, min(options.multiscale), "--multiscale")
    root = resolve_voc_root(options.data, options.data_root)
    classes = voc_classes(root)
    splits = {role: open_voc(root, getattr(options, f"{role}_split"), classes) for role in ("train", "val", "test")}
    if len(splits["train"]) < options.batch_size:
        raise ConfigError(f"--batch-size {options.batch_size} is invalid for {splits['train'].describe()}: "
                          "must be at most the number of training images")

    spec = DetectorSpec(backbone=backbone, frontend=options.frontend, min_size=options.min_size,
                        max_size=options.max_size, train_sizes=options.multiscale, fc_dim=options.fc_dim,
                        precision=options.precision, frozen_bn=options.frozen_bn)
    model, encoder, parts, frontend_text = assemble_detector(frozen, len(classes), spec)
    model.to(device)
    bad = BadFileLog()
    # the BatchNorms are re-estimated while they are still BatchNorms, then frozen; --rescale measures after both
    bn_stats = bn_stats_step(options, model, encoder, splits["train"], device, bad.add)
    frozen_norms = freeze_batchnorm(encoder) if options.frozen_bn else 0
    freeze_layers(encoder, options.freeze)
    train_set = DetectionDataset(splits["train"], train=True)
    rescaled = rescale_step(model, train_set, device) if options.rescale else None

    sampler = EpochBatchSampler(len(train_set), options.batch_size, seed=options.seed)
    train_loader = DataLoader(train_set, batch_sampler=sampler, num_workers=options.workers, collate_fn=collate_items)
    eval_loaders = {role: DataLoader(DetectionDataset(splits[role], train=False), batch_size=EVAL_BATCH,
                                     num_workers=options.workers, collate_fn=collate_items) for role in ("val", "test")}
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(trainable, lr=options.lr, momentum=0.9, weight_decay=1e-4)
    steps = sampler.steps_per_epoch
    warmup = min(MAX_WARMUP_STEPS, steps)
    milestones = [round(options.epochs * steps * 2 / 3), round(options.epochs * steps * 8 / 9)]
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_factor(step, warmup, milestones))
    print(f"ssl-detect: {frozen.name} {frozen.record['encoder']['arch']}, Faster R-CNN {backbone} "
          f"({parts['box_head']}); freeze {options.freeze}, {'frozen' if options.frozen_bn else 'trainable'} "
          f"BatchNorm, {sum(p.numel() for p in trainable):,} trained parameters; {splits['train'].describe()}; "
          f"{options.epochs} epochs x {steps} steps of {options.batch_size}, lr {options.lr:g}, sizes "
          f"{parts['train_sizes']} (test {options.min_size}, max {options.max_size}), "
          f"{resolve_precision(options.precision, device)}",
          file=sys.stderr)

    selection = options.selection_split
    fitted = fit(model, train_loader, eval_loaders, splits, optimizer, scheduler, epochs=options.epochs,
                 eval_every=options.eval_every, selection=selection, device=device, on_bad=bad.add)
    result: dict[str, Any] = {"best_epoch": fitted.best_epoch}
    for role in ("val", "test"):
        result.update(scores_entry(fitted.scores[role], classes, role, per_class=role == "test"))

    record = new_record(
        "detection",
        **frozen.provenance(),
        data=options.data,
        splits={"root": str(root), "classes": classes,
                **{role: split.describe() for role, split in splits.items()},
                "clipped_boxes": {role: split.clipped_boxes for role, split in splits.items()}},
        protocol={
            "detector": "torchvision Faster R-CNN",
            **parts,
            "frontend": frontend_text,
            # the detector resizes to its own sizes; the checkpoint's crop size and task scale are not used
            "input_size_source": "--min-size/--max-size" + ("/--multiscale" if options.multiscale else ""),
            "freeze": options.freeze,
            "batchnorm": f"frozen ({frozen_norms} FrozenBatchNorm2d)" if options.frozen_bn else "trainable",
            "bn_stats": bn_stats,
            "rescale": {"method": "Krähenbühl et al. 2016 within-layer: conv weights scaled, BatchNorm shifted so "
                                  "that every unit's output has per-channel mean 0, std 1 on the rescaling images",
                        "images": RESCALE_IMAGES, "units": rescaled} if rescaled is not None else None,
            "epochs": options.epochs,
            "batch_size": options.batch_size,
            "optimizer": {"name": "sgd", "lr": options.lr, "momentum": 0.9, "weight_decay": 1e-4,
                          "warmup_steps": warmup, "warmup_start": 0.001, "milestone_steps": milestones, "gamma": 0.1},
            "augmentation": "horizontal flip" + (f", short side from {options.multiscale}" if options.multiscale else ""),
            "difficult": "not trained on; ignored in evaluation",
            "evaluation": "VOC07 devkit rules, IoU >= 0.5; mAP: 11-point, mAP_area: area under the precision envelope",
            "precision": resolve_precision(options.precision, device),
            "selection_metric": f"{selection} mAP (11-point)",
            "seed": options.seed,
        },
        selection_split=selection,
        force_test_selection=options.force_test_selection,
    )
    figure = draw_detections(splits["test"], fitted.test_indices, fitted.test_detections,
                             figure_path(options, out_path))
    detector = save_detector(model, frozen, classes, spec, detector_path(out_path), best_epoch=fitted.best_epoch,
                             seed=options.seed)
    # image_size: the test-time short side, the key tables use to pair a row with its random baseline
    record.update(layers={backbone: result}, history=fitted.history, figure=str(figure), detector=str(detector),
                  image_size=options.min_size, trainable_parameters=sum(p.numel() for p in trainable),
                  bad_files_skipped=bad.count)
    finish_record(record, started=started, device=device)
    return DetectionRun(record, write_record(record, out_path), figure, detector, model, classes, fitted)
