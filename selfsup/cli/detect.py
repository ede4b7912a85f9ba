"""ssl-detect: detection transfer, a pretrained (or random) encoder as the backbone of Faster R-CNN.

    ssl-detect --checkpoint runs/rotation/last.pt                          # demo VOC set, CPU-sized
    ssl-detect --checkpoint runs/rotation/last.pt --data /data/VOCdevkit/VOC2007 --min-size 600 --max-size 1000
    ssl-detect --checkpoint random --arch alexnet_small                    # the random-initialisation row
    ssl-detect --checkpoint runs/r18/last.pt --backbone c4 --freeze res2   # ResNet C4 (default: FPN)

Backbones, heads and anchors: see `selfsup.transfer.detection_model`. The encoder is fed what probes and
fine-tuning feed it, its task's evaluation input mapping (``eval_input``): either folded into conv1 so that
it takes ImageNet-normalised RGB (``--frontend fold``; colorization's L, DeepCluster's Sobel, context's kept
green channel under colour dropping; see `selfsup.transfer.frontend`, which refuses a mapping no conv
expresses), or kept exactly in front of the encoder (``--frontend exact``).

BatchNorm statistics (``--bn-stats``, frozen BatchNorms only): ``train`` (the default) re-estimates every
BatchNorm's running mean and variance on the training split's images (not flipped) as the backbone sees
them at test size (short side --min-size, long side capped by --max-size, padded batches, through the front
end), exactly as ssl-probe/ssl-finetune do (`selfsup.probes.bn`), before the BatchNorms are frozen;
``checkpoint`` keeps the pretrained ones. With ``--trainable-bn`` the BatchNorms normalise with batch
statistics and update their own running ones, so the option does not apply and an explicit one is refused.
``--rescale`` comes after the re-estimation and measures through the statistics it set.

Training: horizontal flips, short side drawn from ``--multiscale`` (default: ``--min-size`` only); SGD,
momentum 0.9, weight decay 1e-4, linear warm-up over the first epoch (at most 500 steps) from 0.001 x
``--lr``, then x0.1 at 2/3 and 8/9 of the epochs (Detectron's schedule shape); difficult objects are not
trained on. The selection split (val) is scored every ``--eval-every`` epochs and after the last, and
the best epoch's weights are kept in memory; test is evaluated once, with them, by the VOC07 devkit's
rules (`selfsup.transfer.voc_eval`: IoU >= 0.5, difficult objects ignored, 11-point AP and area AP).
Writes a JSON record (kind "detection") and a PNG of test images with their true and predicted boxes.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any, Callable

import torch
from PIL import Image
from torch.utils.data import DataLoader

from selfsup.checkpoint import seed_everything
from selfsup.cli.common import (
    Parser, add_trust_option, finite_float, int_list, run_until_record, user_errors_exit,
)
from selfsup.config import ModelConfig
from selfsup.data.loading import BadFileLog, EpochBatchSampler
from selfsup.data.voc import VocSplit, open_voc, resolve_voc_root, voc_classes
from selfsup.distributed import pick_device
from selfsup.errors import ConfigError, DataError, check_option_values
from selfsup.models import ARCHS, Encoder
from selfsup.outputs import check_output_file
from selfsup.pretext import TASKS
from selfsup.probes.bn import named_batchnorms
from selfsup.probes.frozen import FrozenEncoder, load_frozen
from selfsup.probes.records import SELECTION_SPLITS, check_selection, finish_record, new_record, write_record
from selfsup.transfer.detection import draw_detections, fit, lr_factor, scores_entry
from selfsup.transfer.detection_data import DetectionDataset, collate_items
from selfsup.transfer.detection_model import (
    BACKBONES,
    FC_DIM,
    MAX_SIZE,
    MIN_SIZE,
    build_detector,
    freeze_batchnorm,
    is_alexnet,
    reestimate_backbone_bn,
    rescale_backbone,
    resolve_backbone,
)
from selfsup.models.base import check_input_size, freeze_layers
from selfsup.pretext.base import PretextFC
from selfsup.transfer.frontend import fold_input_mapping
from selfsup.transfer.voc_eval import format_ap_table

EVAL_BATCH = 8
BN_STATS_CHOICES = ("train", "checkpoint")
RESCALE_IMAGES = 32
MAX_WARMUP_STEPS = 500


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="ssl-detect", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", required=True, help="an ssl-pretrain checkpoint (last.pt) or 'random'")
    parser.add_argument("--data", default="demo", help="a VOC-layout folder (e.g. VOCdevkit/VOC2007) or 'demo' (default)")
    parser.add_argument("--data-root", default=None, help="where the demo set is cached")
    parser.add_argument("--backbone", default="auto", choices=BACKBONES,
                        help="auto (default): conv5 for AlexNets, fpn for ResNets; c4: ResNet res4 + res5 box head")
    parser.add_argument("--frontend", default="fold", choices=("fold", "exact"),
                        help="fold (default): the task's input mapping folded into conv1, the encoder takes "
                             "ImageNet-normalised RGB; exact: the task's own mapping in front of the encoder")
    parser.add_argument("--freeze", default="none",
                        help="'none' (default) trains every stage; a layer (e.g. conv2, res2) keeps it and all before it fixed")
    bn = parser.add_mutually_exclusive_group()
    bn.add_argument("--frozen-bn", dest="frozen_bn", action="store_true", default=True,
                    help="BatchNorms fixed at their pretrained statistics and affine (default)")
    bn.add_argument("--trainable-bn", dest="frozen_bn", action="store_false",
                    help="BatchNorms train (batch statistics) in the stages that are not frozen")
    parser.add_argument("--bn-stats", default=None, choices=BN_STATS_CHOICES,
                        help="frozen BatchNorms' statistics: train (default) re-estimated on the training images at "
                             "test size through the front end, or checkpoint (the pretrained ones); not with "
                             "--trainable-bn")
    parser.add_argument("--min-size", type=int, default=MIN_SIZE, help=f"short side at test time, px (default {MIN_SIZE})")
    parser.add_argument("--max-size", type=int, default=MAX_SIZE, help=f"cap on the long side, px (default {MAX_SIZE})")
    parser.add_argument("--multiscale", type=int_list, default=None,
                        help="short sides drawn from in training, e.g. 112,128,144 (default: --min-size only)")
    parser.add_argument("--epochs", type=int, default=16,
                        help="training epochs (default 16: the demo set in about 8 minutes on 2 CPU cores)")
    parser.add_argument("--lr", type=finite_float, default=0.02, help="peak learning rate (default 0.02)")
    parser.add_argument("--batch-size", type=int, default=4, help="images per step (default 4)")
    parser.add_argument("--fc-dim", type=int, default=FC_DIM,
                        help=f"width of fresh fc6/fc7 box heads (default {FC_DIM}; pretext fc layers keep theirs)")
    parser.add_argument("--rescale", action="store_true",
                        help="Krähenbühl et al. 2016 within-layer rescaling of the trainable encoder stages on "
                             f"{RESCALE_IMAGES} training images before training")
    parser.add_argument("--train-split", default="train")
    parser.add_argument("--val-split", default="val")
    parser.add_argument("--test-split", default="test")
    parser.add_argument("--selection-split", default="val", choices=SELECTION_SPLITS,
                        help="split that picks the epoch kept; test is refused without --force-test-selection")
    parser.add_argument("--force-test-selection", action="store_true",
                        help="allow --selection-split test; the record is marked as test-selected")
    parser.add_argument("--eval-every", type=int, default=1, help="score the selection split every N epochs (and after the last)")
    parser.add_argument("--precision", default="bf16", choices=("fp32", "bf16", "auto"),
                        help="bf16 autocast of backbone and box head (default), fp32, or auto (bf16 on CUDA only)")
    parser.add_argument("--arch", default=ModelConfig.arch, choices=list(ARCHS), help="encoder for --checkpoint random")
    parser.add_argument("--width", type=finite_float, default=None, help="width multiplier for --checkpoint random")
    parser.add_argument("--input-like", default="rotation", choices=sorted(TASKS),
                        help="for --checkpoint random: feed the encoder as this task does (e.g. colorization: L only)")
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=None, help="result JSON (default: next to the checkpoint, detect_<backbone>.json)")
    parser.add_argument("--figure", default=None, help="PNG of test detections (default: next to the record)")
    add_trust_option(parser)
    return parser


def check_args(args: argparse.Namespace) -> None:
    """ConfigError (one line) for an option value or combination that cannot work, before any work."""
    check_option_values(args, paths=("checkpoint", "data", "data_root", "out", "figure"),
                        at_least=(("epochs", 1), ("batch_size", 1), ("min_size", 1), ("max_size", 1), ("fc_dim", 1),
                                  ("eval_every", 1), ("workers", 0)),
                        positive=("lr", "width"))
    if args.rescale and not args.frozen_bn:
        raise ConfigError("--rescale is invalid with --trainable-bn: a BatchNorm that trains renormalises every batch "
                          "and undoes the rescaling; allowed: --rescale with --frozen-bn (the default)")
    if args.bn_stats is not None and not args.frozen_bn:
        raise ConfigError(f"--bn-stats {args.bn_stats} is invalid with --trainable-bn: trainable BatchNorms normalise "
                          "with batch statistics and update their running ones; allowed: --bn-stats with --frozen-bn "
                          "(the default)")
    if args.max_size < args.min_size:
        raise ConfigError(f"--max-size {args.max_size} is invalid: must be at least --min-size {args.min_size}")
    if args.figure is not None and Path(args.figure).suffix.lower() not in Image.registered_extensions():
        raise ConfigError(f"--figure {args.figure} is invalid: give an image file name such as detections.png")
    check_selection(args.selection_split, args.force_test_selection)


def check_outputs(args: argparse.Namespace) -> None:
    """OutputError (one line) when --out or --figure cannot be written, before any work; the default
    places are checked once the checkpoint has loaded (a mistyped path must not create folders)."""
    if args.out is not None:
        check_output_file(args.out, "--out")
    if args.figure is not None:
        check_output_file(args.figure, "--figure")


def default_out(args: argparse.Namespace, frozen: FrozenEncoder, backbone: str) -> Path:
    if args.out is not None:
        return Path(args.out)
    name = f"detect_{backbone}.json"
    if frozen.name == "random":
        suffix = "" if args.input_like == "rotation" else f"-{args.input_like}-input"
        return Path("runs") / f"random-{args.arch}{suffix}" / name
    return Path(frozen.checkpoint).parent / name


def pretext_head(frozen: FrozenEncoder) -> PretextFC | None:
    """fc6/fc7 of the checkpoint's pretext head, for the AlexNet box head (DeepCluster and Jigsaw only)."""
    if frozen.task is None or not is_alexnet(frozen.encoder):
        return None
    return frozen.task.detector_fc()


def prepare_encoder(args: argparse.Namespace, frozen: FrozenEncoder) -> tuple[Encoder, Callable | None, str]:
    """The encoder to train (front-end folded or not), the input mapping to put before it, and what was done."""
    if args.frontend == "exact":
        # load_frozen's input_fn is the task's eval_input, what probes and fine-tuning feed the encoder
        return frozen.encoder, frozen.input_fn, "exact: the task's evaluation input mapping in front of the encoder"
    task = frozen.record["task"]
    if frozen.name == "random":
        encoder, folded = fold_input_mapping(frozen.encoder, task["input"], {})
    else:
        encoder, folded = fold_input_mapping(frozen.encoder, task["name"], task.get("options", {}))
    return encoder, None, f"fold: {folded}"


def bn_stats_step(args: argparse.Namespace, model: torch.nn.Module, encoder: Encoder, train_split: VocSplit,
                  device: torch.device, on_bad: Callable[[list[str]], None]) -> dict[str, Any]:
    """Applies --bn-stats to the detector's encoder (its BatchNorms not yet frozen) and says what was done,
    for the record's protocol."""
    if not args.frozen_bn:
        return {"option": None, "used": None,
                "reason": "--trainable-bn: BatchNorms normalise with batch statistics in training and update their "
                          "running ones from the checkpoint's"}
    option = args.bn_stats or "train"
    entry: dict[str, Any] = {"option": option, "used": option,
                             "reason": "--bn-stats" if args.bn_stats else "default with frozen BatchNorm"}
    if not named_batchnorms(encoder):
        entry.update(used="checkpoint", reason="the encoder has no BatchNorm")
        return entry
    if option == "checkpoint":
        return entry
    loader = DataLoader(DetectionDataset(train_split, train=False), batch_size=EVAL_BATCH, num_workers=args.workers,
                        collate_fn=collate_items)

    def batches():
        for items in loader:
            for item in items:
                on_bad(item.bad)
            images = [item.image.float().div_(255) for item in items if item.image is not None]
            if images:
                yield images

    print(f"ssl-detect: re-estimating BatchNorm statistics on {train_split.describe()}", file=sys.stderr)
    seen = reestimate_backbone_bn(model, batches(), device)
    if seen == 0:
        raise DataError(f"no readable image in {train_split.describe()} to re-estimate BatchNorm statistics on "
                        "(batches of one image are skipped); use --bn-stats checkpoint")
    entry.update(images=seen, input=(f"{train_split.describe()}, not flipped, at test size (short side {args.min_size}, "
                                     f"long side at most {args.max_size}), padded batches of {EVAL_BATCH}, through "
                                     "the detector's front end"))
    return entry


def run(args: argparse.Namespace) -> dict[str, Any]:
    started = time.perf_counter()
    check_args(args)
    check_outputs(args)
    device = pick_device(args.device)
    seed_everything(args.seed)
    frozen = load_frozen(args.checkpoint, arch=args.arch, width=args.width, image_size=None, seed=args.seed,
                         input_task=args.input_like, trust=args.trust_checkpoint)
    backbone = resolve_backbone(frozen.encoder, args.backbone)
    out_path = default_out(args, frozen, backbone)
    if args.out is None:
        check_output_file(out_path, "the default --out")
    if args.figure is None:
        check_output_file(out_path.with_suffix(".png"), "the default --figure")
    check_input_size(frozen.encoder, args.min_size, "--min-size")
    if args.multiscale is not None:
        check_input_size(frozen.encoder, min(args.multiscale), "--multiscale")
    root = resolve_voc_root(args.data, args.data_root)
    classes = voc_classes(root)
    splits = {role: open_voc(root, getattr(args, f"{role}_split"), classes) for role in ("train", "val", "test")}
    if len(splits["train"]) < args.batch_size:
        raise ConfigError(f"--batch-size {args.batch_size} is invalid for {splits['train'].describe()}: "
                          "must be at most the number of training images")

    encoder, input_fn, frontend_text = prepare_encoder(args, frozen)
    model, parts = build_detector(encoder, len(classes), backbone=backbone, min_size=args.min_size,
                                  max_size=args.max_size, train_sizes=args.multiscale, input_fn=input_fn,
                                  pretext=pretext_head(frozen), fc_dim=args.fc_dim, precision=args.precision)
    model.to(device)
    bad = BadFileLog()
    # the BatchNorms are re-estimated while they are still BatchNorms, then frozen; --rescale measures after both
    bn_stats = bn_stats_step(args, model, encoder, splits["train"], device, bad.add)
    frozen_norms = freeze_batchnorm(encoder) if args.frozen_bn else 0
    freeze_layers(encoder, args.freeze)
    train_set = DetectionDataset(splits["train"], train=True)
    rescaled = None
    if args.rescale:
        images = [item.image.to(device).float() / 255
                  for item in (train_set[i] for i in range(min(RESCALE_IMAGES, len(train_set))))
                  if item.image is not None]
        if not images:
            raise DataError(f"--rescale found no readable image among the first {RESCALE_IMAGES} of "
                            f"{splits['train'].describe()}")
        rescaled = [unit.name for unit in rescale_backbone(model, images)]

    sampler = EpochBatchSampler(len(train_set), args.batch_size, seed=args.seed)
    train_loader = DataLoader(train_set, batch_sampler=sampler, num_workers=args.workers, collate_fn=collate_items)
    eval_loaders = {role: DataLoader(DetectionDataset(splits[role], train=False), batch_size=EVAL_BATCH,
                                     num_workers=args.workers, collate_fn=collate_items) for role in ("val", "test")}
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(trainable, lr=args.lr, momentum=0.9, weight_decay=1e-4)
    steps = sampler.steps_per_epoch
    warmup = min(MAX_WARMUP_STEPS, steps)
    milestones = [round(args.epochs * steps * 2 / 3), round(args.epochs * steps * 8 / 9)]
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_factor(step, warmup, milestones))
    arch = frozen.record["encoder"]["arch"]
    print(f"ssl-detect: {frozen.name} {arch}, Faster R-CNN {backbone} ({parts['box_head']}); freeze {args.freeze}, "
          f"{'frozen' if args.frozen_bn else 'trainable'} BatchNorm, {sum(p.numel() for p in trainable):,} trained "
          f"parameters; {splits['train'].describe()}; {args.epochs} epochs x {steps} steps of {args.batch_size}, "
          f"lr {args.lr:g}, sizes {parts['train_sizes']} (test {args.min_size}, max {args.max_size}), {args.precision}",
          file=sys.stderr)

    selection = args.selection_split
    fitted = fit(model, train_loader, eval_loaders, splits, optimizer, scheduler, epochs=args.epochs,
                 eval_every=args.eval_every, selection=selection, device=device, on_bad=bad.add)
    scores = fitted.scores
    result: dict[str, Any] = {"best_epoch": fitted.best_epoch}
    for role in ("val", "test"):
        result.update(scores_entry(scores[role], classes, role, per_class=role == "test"))

    record = new_record(
        "detection",
        method=frozen.name,
        checkpoint=frozen.checkpoint,
        encoder=frozen.record["encoder"],
        pretraining={k: v for k, v in frozen.record.items() if k != "encoder"},
        data=args.data,
        splits={"root": str(root), "classes": classes,
                **{role: split.describe() for role, split in splits.items()},
                "clipped_boxes": {role: split.clipped_boxes for role, split in splits.items()}},
        protocol={
            "detector": "torchvision Faster R-CNN",
            **parts,
            "frontend": frontend_text,
            # the detector resizes to its own sizes; the checkpoint's crop size and task scale are not used
            "input_size_source": "--min-size/--max-size" + ("/--multiscale" if args.multiscale else ""),
            "freeze": args.freeze,
            "batchnorm": f"frozen ({frozen_norms} FrozenBatchNorm2d)" if args.frozen_bn else "trainable",
            "bn_stats": bn_stats,
            "rescale": {"method": "Krähenbühl et al. 2016 within-layer: conv weights scaled, BatchNorm shifted so "
                                  "that every unit's output has per-channel mean 0, std 1 on the rescaling images",
                        "images": RESCALE_IMAGES, "units": rescaled} if rescaled is not None else None,
            "epochs": args.epochs,
            "batch_size": args.batch_size,
            "optimizer": {"name": "sgd", "lr": args.lr, "momentum": 0.9, "weight_decay": 1e-4,
                          "warmup_steps": warmup, "warmup_start": 0.001, "milestone_steps": milestones, "gamma": 0.1},
            "augmentation": "horizontal flip" + (f", short side from {args.multiscale}" if args.multiscale else ""),
            "difficult": "not trained on; ignored in evaluation",
            "evaluation": "VOC07 devkit rules, IoU >= 0.5; mAP: 11-point, mAP_area: area under the precision envelope",
            "precision": args.precision,
            "selection_metric": f"{selection} mAP (11-point)",
            "seed": args.seed,
        },
        selection_split=selection,
        force_test_selection=args.force_test_selection,
    )
    figure_path = out_path.with_suffix(".png") if args.figure is None else args.figure
    figure = draw_detections(splits["test"], fitted.test_indices, fitted.test_detections, figure_path)
    # image_size: the test-time short side, the key tables use to pair a row with its random baseline
    record.update(layers={backbone: result}, history=fitted.history, figure=str(figure), image_size=args.min_size,
                  trainable_parameters=sum(p.numel() for p in trainable), bad_files_skipped=bad.count)
    finish_record(record, started=started, device=device)
    out = write_record(record, out_path)
    print(f"detection: {frozen.name} ({arch}), Faster R-CNN {backbone}, data {args.data}, best epoch {fitted.best_epoch} of "
          f"{args.epochs} on {selection}")
    print(format_ap_table(scores["test"], classes))
    print(f"val mAP {result['val_mAP']} (area {result['val_mAP_area']}), test mAP {result['test_mAP']} "
          f"(area {result['test_mAP_area']})")
    forced = " (FORCED: test-selected)" if record["forced_test_selection"] else ""
    print(f"\nselected on {selection}{forced}, reported on test; {bad.count} unreadable files skipped; "
          f"{record['wall_time_s']} s; record written to {out}, figure to {figure}")
    return record


@user_errors_exit
def main(argv: list[str] | None = None) -> int:
    return run_until_record(run, build_parser().parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
