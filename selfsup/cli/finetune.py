"""ssl-finetune: full fine-tuning of a pretrained (or random) encoder with a new classifier.

    ssl-finetune --checkpoint runs/rotation/last.pt                    # everything trained ("all")
    ssl-finetune --checkpoint runs/rotation/last.pt --freeze conv3     # conv1-3 frozen, conv4+ trained
    ssl-finetune --checkpoint runs/rotation/last.pt --data demo-voc --freeze conv5   # VOC "fc6-8"
    ssl-finetune --checkpoint random                                   # the random-initialisation row

The task's evaluation input mapping (L only for colorization, Sobel for DeepCluster, one colour
channel for context with dropped colours) stays in front of the encoder, images are fed at the scale
the task trained the encoder at (--image-size overrides), and the encoder's BatchNorm statistics are
re-estimated on the train split first (--bn-stats train, the default): frozen stages keep them. Training: 8 epochs (30 on VOC), batch 64, random-resized crops (50-100% of the area) and
flips, bf16 autocast; SGD with lr 0.02, momentum 0.9, weight decay 5e-4 (none on biases and
BatchNorms), one epoch of linear warm-up then a cosine decay to zero.
After every epoch the selection split (val) is scored and the best epoch's weights are kept in
memory; test is evaluated once, with them. A VOC-layout folder (or demo-voc) is fine-tuned as
multi-label classification (one sigmoid per class, mAP), selected on VOC val, reported on VOC test.

Nothing is written until the end: an interrupted run leaves no record.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path
from typing import Any


from selfsup.checkpoint import seed_everything
from selfsup.cli.common import (
    Parser, add_data_layout_option, add_trust_option, finite_float, run_until_record,
    user_errors_exit,
)
from selfsup.config import ModelConfig, OptimConfig
from selfsup.data.loading import BadFileLog, CenterCrop, EpochBatchSampler, RandomCrop, eval_loader, train_loader
from selfsup.data.sources import DataError, ImageSource, open_splits
from selfsup.data.voc import open_voc, resolve_voc_root, voc_classes
from selfsup.distributed import pick_device
from selfsup.errors import ConfigError, check_option_values
from selfsup.models import ARCHS
from selfsup.optim import build_optimizer, build_scheduler
from selfsup.outputs import check_output_file
from selfsup.pretext import TASKS
from selfsup.probes.finetune import (
    FinetuneNet,
    MultiLabel,
    Objective,
    SingleLabel,
    build_classifier,
    column_name,
    evaluate,
    fit,
    trained_from,
)
from selfsup.models.base import check_input_size, freeze_layers
from selfsup.probes.bn import loader_images, named_batchnorms, reestimate_bn_statistics
from selfsup.probes.frozen import FrozenEncoder, load_frozen
from selfsup.probes.records import SELECTION_SPLITS, check_selection, finish_record, new_record, write_record

VOC_DEMO = "demo-voc"
CROP_SCALE = (0.5, 1.0)
# per objective; 8 epochs of the demo set take a few minutes on 2 CPU cores
EPOCHS = {"single-label": 8, "multi-label": 30}
EVAL_BATCH = 256


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="ssl-finetune", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", required=True, help="an ssl-pretrain checkpoint (last.pt) or 'random'")
    parser.add_argument("--data", default=None,
                        help="labelled data, or a VOC-layout folder / demo-voc for multi-label "
                             "(default: the checkpoint's pretraining data, else demo)")
    parser.add_argument("--data-root", default=None)
    add_data_layout_option(parser)
    parser.add_argument("--freeze", default="none",
                        help="'none' trains everything; a layer (e.g. conv2, res3) freezes it and all before it, "
                             "BatchNorm statistics included")
    parser.add_argument("--epochs", type=int, default=None,
                        help=f"default {EPOCHS['single-label']}, or {EPOCHS['multi-label']} for VOC, whose train splits are "
                             "small (200 images in demo-voc, 2,501 in VOC2007)")
    parser.add_argument("--lr", type=finite_float, default=0.02, help="peak learning rate (batch 64)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--schedule", default="cosine", choices=("cosine", "step"),
                        help="after one warm-up epoch: cosine to zero, or x0.1 at 50%% and 75%% of the epochs")
    parser.add_argument("--hidden", type=int, default=None,
                        help="fc6/fc7 width of the AlexNet head (default: 4096 from 160 px, 1024 from 96 px, else 512)")
    parser.add_argument("--image-size", type=int, default=None,
                        help="input size (default: the scale the checkpoint's task trained its encoder at, i.e. its "
                             "eval_image_size of the training crop size; the demo preset's for random)")
    parser.add_argument("--bn-stats", default="train", choices=("train", "checkpoint"),
                        help="BatchNorm statistics to start from, and to keep in frozen stages: re-estimated on the "
                             "train split's images (default) or the checkpoint's (ssl-probe's auto would fine-tune "
                             "twice)")
    parser.add_argument("--eval-crop", type=finite_float, default=None,
                        help="central fraction of the short side kept at evaluation (default 1.0 below 96 px, else 0.875)")
    parser.add_argument("--precision", default="bf16", choices=("fp32", "bf16", "auto"),
                        help="bf16 autocast (default: about 3x faster than fp32 on a CPU with AVX512-BF16), "
                             "fp32, or auto (bf16 on CUDA only)")
    parser.add_argument("--selection-split", default="val", choices=SELECTION_SPLITS,
                        help="split that picks the epoch kept; test is refused without --force-test-selection")
    parser.add_argument("--force-test-selection", action="store_true",
                        help="allow --selection-split test; the record is marked as test-selected")
    parser.add_argument("--arch", default=ModelConfig.arch, choices=list(ARCHS), help="encoder for --checkpoint random")
    parser.add_argument("--width", type=finite_float, default=None, help="width multiplier for --checkpoint random")
    parser.add_argument("--input-like", default="rotation", choices=sorted(TASKS),
                        help="for --checkpoint random: feed the encoder as this task does (e.g. colorization: L only)")
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=None, help="result JSON (default: next to the checkpoint)")
    add_trust_option(parser)
    return parser


def check_args(args: argparse.Namespace) -> None:
    """ConfigError (one line) for an option value that cannot work, before any work; 0 is a value like
    any other, never read as "not given"."""
    check_option_values(args, paths=("checkpoint", "data", "data_root", "out"),
                        at_least=(("epochs", 1), ("batch_size", 2), ("workers", 0), ("hidden", 1), ("image_size", 1)),
                        positive=("lr", "width"),
                        reasons={"batch_size": " (the classifier's BatchNorms need two images)"})
    if args.eval_crop is not None and not 0 < args.eval_crop <= 1:
        raise ConfigError(f"--eval-crop {args.eval_crop:g} is invalid: must be a fraction in (0, 1]")
    check_selection(args.selection_split, args.force_test_selection)


def default_out(args: argparse.Namespace, frozen: FrozenEncoder, multi_label: bool) -> Path:
    if args.out is not None:
        return Path(args.out)
    name = f"finetune{'-voc' if multi_label else ''}_{args.freeze}.json"
    if frozen.name == "random":
        suffix = "" if args.input_like == "rotation" else f"-{args.input_like}-input"
        return Path("runs") / f"random-{args.arch}{suffix}" / name
    return Path(frozen.checkpoint).parent / name


def is_voc(data: str) -> bool:
    """``demo-voc``, or a folder with VOC's JPEGImages/ or Annotations/ in it or in a sub-folder
    (VOCdevkit/VOC2007); `resolve_voc_root` then says what is missing, if anything."""
    if data == VOC_DEMO:
        return True
    folder = Path(data).expanduser()
    if not folder.is_dir():
        return False
    candidates = [folder, *(child for child in folder.iterdir() if child.is_dir())]
    return any((c / "JPEGImages").is_dir() or (c / "Annotations").is_dir() for c in candidates)


def open_data(data: str, data_root: str | None, seed: int,
              layout: str = "auto") -> tuple[dict[str, ImageSource], Objective, list[str]]:
    """Train/val/test sources, the objective that fits them, and notes on how the splits were made."""
    if is_voc(data):
        root = resolve_voc_root("demo" if data == VOC_DEMO else data, data_root)
        classes = voc_classes(root)
        sources = {split: open_voc(root, split, classes) for split in ("train", "val", "test")}
        objective = MultiLabel({split: source.image_labels() for split, source in sources.items()}, classes)
        return sources, objective, [f"VOC folder {root}: ImageSets/Main train, val and test as given"]
    splits = open_splits(data, data_root, seed=seed, layout=layout)
    if splits.train is None or splits.val is None or splits.test is None:
        raise DataError(f"fine-tuning needs labelled train/val/test splits; {data} has none ({'; '.join(splits.notes)})")
    return {"train": splits.train, "val": splits.val, "test": splits.test}, SingleLabel(), splits.notes


def run(args: argparse.Namespace) -> dict[str, Any]:
    started = time.perf_counter()
    check_args(args)
    if args.out is not None:
        check_output_file(args.out, "--out")
    device = pick_device(args.device)
    seed_everything(args.seed)
    frozen = load_frozen(args.checkpoint, arch=args.arch, width=args.width, image_size=args.image_size, seed=args.seed,
                         input_task=args.input_like, trust=args.trust_checkpoint)
    encoder = frozen.encoder
    freeze_layers(encoder, args.freeze)
    check_input_size(encoder, frozen.image_size, "--image-size")
    trained_on = frozen.record.get("data", {})
    data = args.data if args.data is not None else trained_on.get("spec") or "demo"
    if args.data_root is not None:
        data_root = args.data_root
    else:
        data_root = trained_on.get("root") if data == trained_on.get("spec") else None
    sources, objective, notes = open_data(data, data_root, args.seed, args.data_layout)
    multi_label = isinstance(objective, MultiLabel)
    out_path = default_out(args, frozen, multi_label)
    if args.out is None:  # checked only now: its name depends on the data
        check_output_file(out_path, "the default --out")
    if len(sources["train"]) < args.batch_size:
        raise DataError(f"--batch-size {args.batch_size} is invalid for {sources['train'].describe()}: "
                        "must be at most the number of training images")
    epochs = EPOCHS[objective.kind] if args.epochs is None else args.epochs
    head, head_text = build_classifier(encoder, frozen.image_size, len(sources["train"].classes), args.hidden)
    model = FinetuneNet(encoder, head, frozen.input_fn).to(device)

    # one warm-up epoch (half of a shorter run): the new head's first gradients are large
    step_at = [epochs * 0.5, epochs * 0.75] if args.schedule == "step" else []
    optim_cfg = OptimConfig(optimizer="sgd", lr=args.lr, momentum=0.9, weight_decay=5e-4, schedule=args.schedule,
                            warmup_epochs=min(1.0, epochs / 2), milestones=step_at, gamma=0.1)
    sampler = EpochBatchSampler(len(sources["train"]), args.batch_size, seed=args.seed)
    optimizer = build_optimizer(model, optim_cfg)
    scheduler = build_scheduler(optimizer, optim_cfg, sampler.steps_per_epoch, epochs)
    eval_crop = (1.0 if frozen.image_size < 96 else 0.875) if args.eval_crop is None else args.eval_crop
    eval_view = CenterCrop(frozen.image_size, eval_crop)
    pin = device.type == "cuda"
    loaders = {
        "train": train_loader(sources["train"], RandomCrop(frozen.image_size, scale=CROP_SCALE), sampler,
                              workers=args.workers, pin_memory=pin),
        **{split: eval_loader(sources[split], eval_view, batch_size=EVAL_BATCH, workers=args.workers, pin_memory=pin)
           for split in ("val", "test")},
    }
    column = column_name(encoder, args.freeze)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    print(f"ssl-finetune: {frozen.name} encoder {frozen.record['encoder']['arch']} at {frozen.image_size}px, "
          f"freeze {args.freeze} (trained: {column}, {trainable:,} parameters); {objective.kind} on "
          f"{sources['train'].describe()}; {epochs} epochs, batch {args.batch_size}, lr {args.lr:g} {args.schedule}, "
          f"{args.precision}", file=sys.stderr)
    bad = BadFileLog()
    # frozen stages normalise with these statistics throughout; trained ones start from them
    bn_stats = {"option": args.bn_stats, "used": args.bn_stats, "reason": "--bn-stats"}
    if not named_batchnorms(encoder):
        bn_stats.update(used="checkpoint", reason="the encoder has no BatchNorm")
    elif args.bn_stats == "train":
        images = loader_images(eval_loader(sources["train"], eval_view, batch_size=EVAL_BATCH, workers=args.workers),
                               bad.add)
        if reestimate_bn_statistics(encoder, frozen.input_fn, images, device) == 0:
            raise DataError(f"no readable image in {sources['train'].describe()} to re-estimate BatchNorm "
                            "statistics on")

    record = new_record(
        "finetune",
        method=frozen.name,
        checkpoint=frozen.checkpoint,
        encoder=frozen.record["encoder"],
        pretraining={k: v for k, v in frozen.record.items() if k != "encoder"},
        data=data,
        splits={**{split: source.describe() for split, source in sources.items()}, "notes": notes},
        protocol={
            "objective": objective.kind,
            "epochs": epochs,
            "batch_size": args.batch_size,
            "optimizer": dataclasses.asdict(optim_cfg),
            "freeze": args.freeze,
            "head": head_text,
            "augmentation": f"random-resized crop {frozen.image_size}px, area {CROP_SCALE[0]:g}-{CROP_SCALE[1]:g}, "
                            f"aspect 3/4-4/3, horizontal flip",
            "eval_view": f"centre crop {eval_crop:g} of the short side, resized to {frozen.image_size}px",
            "precision": args.precision,
            "selection_metric": f"{args.selection_split} {objective.metric}",
            "seed": args.seed,
            # the input size, and whether the checkpoint's task scale or --image-size chose it
            "probe_image_size": frozen.image_size,
            "probe_image_size_source": frozen.image_size_source,
            "bn_stats": bn_stats,
        },
        selection_split=args.selection_split,
        force_test_selection=args.force_test_selection,
    )
    best, history = fit(model, loaders["train"], loaders[args.selection_split], args.selection_split, objective,
                        optimizer, scheduler, epochs, device, args.precision, bad.add)
    model.load_state_dict(best.state)
    # the selection split was scored with these weights already; the other split is evaluated once now
    other = "test" if args.selection_split == "val" else "val"
    scores = {args.selection_split: best.scores,
              other: evaluate(model, loaders[other], objective, other, device, args.precision, bad.add)}
    result: dict[str, Any] = {"trained_from": trained_from(encoder, args.freeze), "best_epoch": best.epoch}
    for split in ("val", "test"):
        result.update({f"{split}_{name}": value for name, value in scores[split].items()})
    record.update(
        image_size=frozen.image_size,  # top level as in probe records: tables group random rows by it
        eval_crop=eval_crop,
        layers={column: result},
        history=history,
        trainable_parameters=trainable,
        bad_files_skipped=bad.count,
    )
    finish_record(record, started=started, device=device)
    out = write_record(record, out_path)
    print(format_summary(record, objective))
    print(f"\nselected on {args.selection_split}{' (FORCED: test-selected)' if record['forced_test_selection'] else ''}, "
          f"reported on test; {bad.count} unreadable files skipped; {record['wall_time_s']} s; record written to {out}")
    return record


def format_summary(record: dict[str, Any], objective: Objective) -> str:
    title = (f"fine-tuning: {record['method']} ({record['encoder']['arch']}), data {record['data']}, "
             f"{record['protocol']['epochs']} epochs, {record['protocol']['objective']}")
    metrics = ("top1", "top5") if isinstance(objective, SingleLabel) else ("mAP", "mAP_area")
    header = f"{'trained':<9}{'epoch':>6}" + "".join(f"{f'{s}_{m}':>15}" for s in ("val", "test") for m in metrics)
    rows = [f"{column:<9}{r['best_epoch']:>6}" + "".join(f"{_shown(r[f'{s}_{m}']):>15}" for s in ("val", "test") for m in metrics)
            for column, r in record["layers"].items()]
    lines = [title, header, *rows]
    if isinstance(objective, MultiLabel):
        for column, r in record["layers"].items():
            lines.append(f"test AP per class ({column}, VOC07 11-point): "
                         + ", ".join(f"{cls} {_shown(ap)}" for cls, ap in r["test_AP"].items()))
    return "\n".join(lines)


def _shown(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}"


@user_errors_exit
def main(argv: list[str] | None = None) -> int:
    return run_until_record(run, build_parser().parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
