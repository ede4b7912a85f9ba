"""One ssl-finetune run from its options (:class:`FinetuneOptions`, one field per ``ssl-finetune`` option): load
the encoder, open the data and pick the objective that fits it, re-estimate the BatchNorm statistics, train
with model selection (:func:`selfsup.probes.finetune.fit`), evaluate once and write the record.

The recipe: 8 epochs (30 on VOC), batch 64, random-resized crops (50-100% of the area) and flips, bf16
autocast; SGD with lr 0.02, momentum 0.9, weight decay 5e-4 (none on biases and BatchNorms), one epoch of
linear warm-up then a cosine decay to zero (or x0.1 at 50% and 75% of the epochs).
"""

from __future__ import annotations

import dataclasses
import sys
import time
from pathlib import Path
from typing import Any

from selfsup.checkpoint import seed_everything
from selfsup.config import OptimConfig
from selfsup.data.crops import CenterCrop, RandomCrop
from selfsup.data.loading import BadFileLog, EpochBatchSampler, eval_loader, train_loader
from selfsup.data.sources import DataError, ImageSource, open_splits
from selfsup.data.voc import open_voc, resolve_voc_root, voc_classes
from selfsup.distributed import pick_device
from selfsup.epoch import resolve_precision
from selfsup.errors import ConfigError, check_option_values
from selfsup.models.base import check_input_size, freeze_layers
from selfsup.optim import build_optimizer, build_scheduler
from selfsup.outputs import check_output_file
from selfsup.probes.bn import loader_images, named_batchnorms, reestimate_bn_statistics
from selfsup.probes.finetune import (
    FinetuneNet, MultiLabel, Objective, SingleLabel, build_classifier, column_name, evaluate, fit, trained_from,
)
from selfsup.probes.frozen import load_frozen
from selfsup.probes.options import EncoderOptions, default_record_path
from selfsup.probes.records import check_selection, finish_record, new_record, write_record

VOC_DEMO = "demo-voc"
CROP_SCALE = (0.5, 1.0)
# per objective; 8 epochs of the demo set take a few minutes on 2 CPU cores
EPOCHS = {"single-label": 8, "multi-label": 30}
EVAL_BATCH = 256


@dataclasses.dataclass(kw_only=True)
class FinetuneOptions(EncoderOptions):
    """One field per ``ssl-finetune`` option, with its default (``ssl-finetune --help`` says what each means);
    None is "not given": the objective's, the checkpoint's or the data's value is used."""

    data: str | None = None  # labelled data, a VOC-layout folder or demo-voc
    data_root: str | None = None
    data_layout: str = "auto"
    freeze: str = "none"  # "none" or the last frozen layer
    epochs: int | None = None  # EPOCHS[objective] when None
    lr: float = 0.02
    batch_size: int = 64
    schedule: str = "cosine"  # "cosine" or "step"
    hidden: int | None = None
    image_size: int | None = None
    bn_stats: str = "train"  # "train" or "checkpoint"
    eval_crop: float | None = None
    precision: str = "auto"
    selection_split: str = "val"
    force_test_selection: bool = False


@dataclasses.dataclass
class FinetuneRun:
    """What a run wrote: its record, where, and the objective it trained (whose metrics the summary shows)."""

    record: dict[str, Any]
    path: Path
    objective: Objective


def check_options(options: FinetuneOptions) -> None:
    """ConfigError (one line) for an option value that cannot work, before any work; 0 is a value like
    any other, never read as "not given"."""
    check_option_values(options, paths=("checkpoint", "data", "data_root", "out"),
                        at_least=(("epochs", 1), ("batch_size", 2), ("workers", 0), ("hidden", 1), ("image_size", 1)),
                        positive=("lr", "width"),
                        reasons={"batch_size": " (the classifier's BatchNorms need two images)"})
    if options.eval_crop is not None and not 0 < options.eval_crop <= 1:
        raise ConfigError(f"--eval-crop {options.eval_crop:g} is invalid: must be a fraction in (0, 1]")
    check_selection(options.selection_split, options.force_test_selection)


def default_out(options: FinetuneOptions, multi_label: bool) -> Path:
    """``--out``, else the record's place (:func:`selfsup.probes.options.default_record_path`)."""
    if options.out is not None:
        return Path(options.out)
    name = f"finetune{'-voc' if multi_label else ''}_{options.freeze}.json"
    return default_record_path(options.checkpoint, options.arch, options.input_like, name)


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


def run_finetune(options: FinetuneOptions) -> FinetuneRun:
    """Checks ``options``, fine-tunes the encoder as they ask, and writes the record (only at the end: an
    interrupted run leaves none); progress goes to stderr. The caller prints the summary."""
    started = time.perf_counter()
    check_options(options)
    if options.out is not None:
        check_output_file(options.out, "--out")
    device = pick_device(options.device)
    seed_everything(options.seed)
    frozen = load_frozen(options.checkpoint, arch=options.arch, width=options.width, image_size=options.image_size,
                         seed=options.seed, input_task=options.input_like, trust=options.trust_checkpoint)
    encoder = frozen.encoder
    freeze_layers(encoder, options.freeze)
    check_input_size(encoder, frozen.image_size, "--image-size")
    trained_on = frozen.record.get("data", {})
    data = options.data if options.data is not None else trained_on.get("spec") or "demo"
    if options.data_root is not None:
        data_root = options.data_root
    else:
        data_root = trained_on.get("root") if data == trained_on.get("spec") else None
    sources, objective, notes = open_data(data, data_root, options.seed, options.data_layout)
    out_path = default_out(options, isinstance(objective, MultiLabel))
    if options.out is None:  # checked only now: its name depends on the data
        check_output_file(out_path, "the default --out")
    if len(sources["train"]) < options.batch_size:
        raise DataError(f"--batch-size {options.batch_size} is invalid for {sources['train'].describe()}: "
                        "must be at most the number of training images")
    epochs = EPOCHS[objective.kind] if options.epochs is None else options.epochs
    head, head_text = build_classifier(encoder, frozen.image_size, len(sources["train"].classes), options.hidden)
    model = FinetuneNet(encoder, head, frozen.input_fn).to(device)

    # one warm-up epoch (half of a shorter run): the new head's first gradients are large
    step_at = [epochs * 0.5, epochs * 0.75] if options.schedule == "step" else []
    optim_cfg = OptimConfig(optimizer="sgd", lr=options.lr, momentum=0.9, weight_decay=5e-4, schedule=options.schedule,
                            warmup_epochs=min(1.0, epochs / 2), milestones=step_at, gamma=0.1)
    sampler = EpochBatchSampler(len(sources["train"]), options.batch_size, seed=options.seed)
    optimizer = build_optimizer(model, optim_cfg)
    scheduler = build_scheduler(optimizer, optim_cfg, sampler.steps_per_epoch, epochs)
    eval_crop = (1.0 if frozen.image_size < 96 else 0.875) if options.eval_crop is None else options.eval_crop
    eval_view = CenterCrop(frozen.image_size, eval_crop)
    pin = device.type == "cuda"
    loaders = {
        "train": train_loader(sources["train"], RandomCrop(frozen.image_size, scale=CROP_SCALE), sampler,
                              workers=options.workers, pin_memory=pin),
        **{split: eval_loader(sources[split], eval_view, batch_size=EVAL_BATCH, workers=options.workers,
                              pin_memory=pin)
           for split in ("val", "test")},
    }
    column = column_name(encoder, options.freeze)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    print(f"ssl-finetune: {frozen.name} encoder {frozen.record['encoder']['arch']} at {frozen.image_size}px, "
          f"freeze {options.freeze} (trained: {column}, {trainable:,} parameters); {objective.kind} on "
          f"{sources['train'].describe()}; {epochs} epochs, batch {options.batch_size}, lr {options.lr:g} "
          f"{options.schedule}, {resolve_precision(options.precision, device)}", file=sys.stderr)
    bad = BadFileLog()
    # frozen stages normalise with these statistics throughout; trained ones start from them
    bn_stats = {"option": options.bn_stats, "used": options.bn_stats, "reason": "--bn-stats"}
    if not named_batchnorms(encoder):
        bn_stats.update(used="checkpoint", reason="the encoder has no BatchNorm")
    elif options.bn_stats == "train":
        images = loader_images(eval_loader(sources["train"], eval_view, batch_size=EVAL_BATCH,
                                           workers=options.workers), bad.add)
        if reestimate_bn_statistics(encoder, frozen.input_fn, images, device) == 0:
            raise DataError(f"no readable image in {sources['train'].describe()} to re-estimate BatchNorm "
                            "statistics on")

    record = new_record(
        "finetune",
        **frozen.provenance(),
        data=data,
        splits={**{split: source.describe() for split, source in sources.items()}, "notes": notes},
        protocol={
            "objective": objective.kind,
            "epochs": epochs,
            "batch_size": options.batch_size,
            "optimizer": dataclasses.asdict(optim_cfg),
            "freeze": options.freeze,
            "head": head_text,
            "augmentation": f"random-resized crop {frozen.image_size}px, area {CROP_SCALE[0]:g}-{CROP_SCALE[1]:g}, "
                            f"aspect 3/4-4/3, horizontal flip",
            "eval_view": f"centre crop {eval_crop:g} of the short side, resized to {frozen.image_size}px",
            "precision": resolve_precision(options.precision, device),
            "selection_metric": f"{options.selection_split} {objective.metric}",
            "seed": options.seed,
            # the input size, and whether the checkpoint's task scale or --image-size chose it
            "probe_image_size": frozen.image_size,
            "probe_image_size_source": frozen.image_size_source,
            "bn_stats": bn_stats,
        },
        selection_split=options.selection_split,
        force_test_selection=options.force_test_selection,
    )
    best, history = fit(model, loaders["train"], loaders[options.selection_split], options.selection_split, objective,
                        optimizer, scheduler, epochs, device, options.precision, bad.add)
    model.load_state_dict(best.state)
    # the selection split was scored with these weights already; the other split is evaluated once now
    other = "test" if options.selection_split == "val" else "val"
    scores = {options.selection_split: best.scores,
              other: evaluate(model, loaders[other], objective, other, device, options.precision, bad.add)}
    result: dict[str, Any] = {"trained_from": trained_from(encoder, options.freeze), "best_epoch": best.epoch}
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
    return FinetuneRun(record, write_record(record, out_path), objective)
