"""ssl-probe: frozen-layer linear probes of a pretrained (or random) encoder.

    ssl-probe --checkpoint runs/rotation/last.pt --freeze all      # conv1..conv5 in one pass
    ssl-probe --checkpoint runs/rotation/last.pt --freeze conv3
    ssl-probe --checkpoint random --freeze all                     # the random-initialisation row

Heads are trained on the train split, the epoch kept per layer is chosen on val, and test is
evaluated once with the kept heads.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path
from typing import Any

import torch

from selfsup.checkpoint import seed_everything
from selfsup.cli.common import command_line, git_commit, machine_description, user_errors_exit
from selfsup.config import DataConfig, ModelConfig
from selfsup.data.loading import BadFileLog, CenterCrop, EpochBatchSampler, RandomCrop, eval_loader, train_loader
from selfsup.data.sources import DataError, open_splits
from selfsup.distributed import pick_device
from selfsup.probes.frozen import FrozenEncoder, load_frozen
from selfsup.probes.linear import (
    PROTOCOLS,
    LinearHeads,
    cached_batches,
    evaluate,
    extract_features,
    streamed_batches,
    train_heads,
)
from selfsup.pretext import TASKS
from selfsup.probes.pooling import PRESETS, build_pool


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ssl-probe", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", required=True, help="an ssl-pretrain checkpoint (last.pt) or 'random'")
    parser.add_argument("--freeze", default="all", help="layer whose output is probed (e.g. conv3, res4), or 'all'")
    parser.add_argument("--data", default=None, help="labelled data (default: the checkpoint's pretraining data, else demo)")
    parser.add_argument("--data-root", default=None)
    parser.add_argument("--pool", default="auto", choices=PRESETS, help="feature pooling preset (see SPEC.md)")
    parser.add_argument("--protocol", default="common", choices=sorted(PROTOCOLS), help="optimiser preset")
    parser.add_argument("--epochs", type=int, help="override the protocol's epochs (milestones scale along)")
    parser.add_argument("--lr", type=float, help="override the protocol's learning rate")
    parser.add_argument("--batch-size", type=int, help="override the protocol's batch size")
    parser.add_argument("--augment", action="store_true",
                        help="random crops and flips for the train split (features are then computed every epoch)")
    parser.add_argument("--max-cache-gb", type=float, default=6.0,
                        help="cache pooled features in memory up to this size; above it they are streamed")
    parser.add_argument("--arch", default=ModelConfig.arch, help="encoder for --checkpoint random")
    parser.add_argument("--width", type=float, default=None, help="width multiplier for --checkpoint random")
    parser.add_argument("--input-like", default="rotation", choices=sorted(TASKS),
                        help="for --checkpoint random: feed the encoder as this task does (e.g. colorization: L only)")
    parser.add_argument("--image-size", type=int, default=None,
                        help=f"probe input size (default: the checkpoint's training crop size; {DataConfig.image_size} "
                             "for --checkpoint random); set it to compare encoders trained at different sizes")
    parser.add_argument("--eval-crop", type=float, default=None,
                        help="central fraction of the short side kept at evaluation (default 1.0 below 96 px, else 0.875)")
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=None, help="result JSON (default: next to the checkpoint)")
    return parser


def probe_layers(frozen: FrozenEncoder, freeze: str) -> list[str]:
    if freeze == "all":
        return list(frozen.encoder.layer_names)
    frozen.encoder.canonical(freeze)  # raises with the list of valid names
    return [freeze]


def default_out(args: argparse.Namespace, frozen: FrozenEncoder) -> Path:
    if args.out:
        return Path(args.out)
    if frozen.name == "random":
        suffix = "" if args.input_like == "rotation" else f"-{args.input_like}-input"
        return Path("runs") / f"random-{args.arch}{suffix}" / f"probe_{args.freeze}.json"
    return Path(frozen.checkpoint).parent / f"probe_{args.freeze}.json"


def run(args: argparse.Namespace) -> dict[str, Any]:
    started = time.perf_counter()
    device = pick_device(args.device)
    seed_everything(args.seed)
    frozen = load_frozen(args.checkpoint, arch=args.arch, width=args.width, image_size=args.image_size, seed=args.seed,
                         input_task=args.input_like)
    frozen.encoder.to(device).eval()
    layers = probe_layers(frozen, args.freeze)
    trained_on = frozen.record.get("data", {})
    data = args.data or trained_on.get("spec") or "demo"
    data_root = args.data_root or (trained_on.get("root") if data == trained_on.get("spec") else None)
    splits = open_splits(data, data_root, seed=args.seed)
    if splits.train is None or splits.val is None or splits.test is None:
        raise DataError(f"linear probes need labelled train/val/test splits; {data} has none ({'; '.join(splits.notes)})")
    num_classes = len(splits.train.classes)
    protocol = PROTOCOLS[args.protocol]
    overrides = {k: v for k, v in (("epochs", args.epochs), ("lr", args.lr), ("batch_size", args.batch_size)) if v}
    if args.epochs:
        scale = args.epochs / protocol.epochs
        overrides["milestones"] = tuple(max(1, round(m * scale)) for m in protocol.milestones)
    protocol = dataclasses.replace(protocol, **overrides)

    shapes = frozen.encoder.feature_shapes(frozen.image_size)
    pools, dims, pooling = {}, {}, {}
    for layer in layers:
        pools[layer], dims[layer], pooling[layer] = build_pool(args.pool, frozen.encoder.canonical(layer),
                                                               shapes[frozen.encoder.canonical(layer)])
    heads = LinearHeads(pools, dims, num_classes).to(device)
    eval_crop = args.eval_crop or (1.0 if frozen.image_size < 96 else 0.875)
    eval_view = CenterCrop(frozen.image_size, eval_crop)
    bad = BadFileLog()
    batch_eval = 256

    n_images = len(splits.train) + len(splits.val) + len(splits.test)
    cache_gb = n_images * sum(dims.values()) * 2 / 2**30  # bfloat16
    cached = not args.augment and cache_gb <= args.max_cache_gb
    print(
        f"ssl-probe: {frozen.name} encoder {frozen.record['encoder']['arch']} at {frozen.image_size}px, layers "
        f"{', '.join(layers)}; data {splits.train.describe()}; protocol {protocol.name} ({protocol.epochs} epochs); "
        f"features {'cached in memory' if cached else 'streamed'} ({cache_gb:.2f} GiB if cached)",
        file=sys.stderr,
    )
    streams = {}
    for split_name, source in (("val", splits.val), ("test", splits.test)):
        loader = eval_loader(source, eval_view, batch_size=batch_eval, workers=args.workers)
        if cached:
            features, labels = extract_features(frozen.encoder, frozen.input_fn, heads, loader, device, split_name, bad.add)
            streams[split_name] = cached_batches(features, labels, batch_eval, device)
        else:
            streams[split_name] = streamed_batches(frozen.encoder, frozen.input_fn, heads, loader, device, bad.add)
    if cached:
        loader = eval_loader(splits.train, eval_view, batch_size=batch_eval, workers=args.workers)
        features, labels = extract_features(frozen.encoder, frozen.input_fn, heads, loader, device, "train", bad.add)
        train_batches = cached_batches(features, labels, protocol.batch_size, device, shuffle_seed=args.seed)
        steps_per_epoch = len(labels) // protocol.batch_size
    else:
        view = RandomCrop(frozen.image_size) if args.augment else eval_view
        sampler = EpochBatchSampler(len(splits.train), protocol.batch_size, seed=args.seed)
        loader = train_loader(splits.train, view, sampler, workers=args.workers, pin_memory=device.type == "cuda")
        train_batches = streamed_batches(frozen.encoder, frozen.input_fn, heads, loader, device, bad.add)
        steps_per_epoch = sampler.steps_per_epoch
    if steps_per_epoch == 0:
        raise DataError(f"train split has fewer images than one batch ({protocol.batch_size}); use --batch-size")

    best, history = train_heads(heads, train_batches, streams["val"], protocol, steps_per_epoch)
    for layer in layers:
        heads.heads[layer].load_state_dict(best[layer]["state"])
    val_scores = evaluate(heads, streams["val"]())
    test_scores = evaluate(heads, streams["test"]())

    results = {
        layer: {
            "dims": dims[layer],
            "pooling": pooling[layer],
            "best_epoch": best[layer]["epoch"],
            "val_top1": round(val_scores[layer]["top1"], 2),
            "val_top5": round(val_scores[layer]["top5"], 2),
            "test_top1": round(test_scores[layer]["top1"], 2),
            "test_top5": round(test_scores[layer]["top5"], 2),
        }
        for layer in layers
    }
    record = {
        "kind": "linear_probe",
        "checkpoint": frozen.checkpoint,
        "method": frozen.name,
        "encoder": frozen.record["encoder"],
        "pretraining": {k: v for k, v in frozen.record.items() if k not in ("encoder",)},
        "image_size": frozen.image_size,
        "eval_crop": eval_crop,
        "data": data,
        "splits": {"train": splits.train.describe(), "val": splits.val.describe(), "test": splits.test.describe(),
                   "notes": splits.notes},
        "selection_split": "val",
        "reported_split": "test",
        "protocol": dataclasses.asdict(protocol),
        "pool_preset": args.pool,
        "augment": args.augment,
        "features": "cached" if cached else "streamed",
        "layers": results,
        "history": history,
        "bad_files_skipped": bad.count,
        "command": command_line(),
        "git_commit": git_commit(),
        "machine": machine_description(device),
        "wall_time_s": round(time.perf_counter() - started, 1),
    }
    out = default_out(args, frozen)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(record, indent=2))
    print(format_table(record))
    print(f"\nselection on val, reported on test; {bad.count} unreadable files skipped; "
          f"{record['wall_time_s']} s; record written to {out}")
    return record


def format_table(record: dict[str, Any]) -> str:
    title = f"linear probe: {record['method']} ({record['encoder']['arch']}), data {record['data']}, protocol {record['protocol']['name']}"
    header = f"{'layer':<7}{'dims':>7}  {'pooling':<22}{'epoch':>6}{'val@1':>8}{'test@1':>8}{'test@5':>8}"
    rows = [
        f"{layer:<7}{r['dims']:>7}  {r['pooling']:<22}{r['best_epoch']:>6}{r['val_top1']:>8.2f}{r['test_top1']:>8.2f}{r['test_top5']:>8.2f}"
        for layer, r in record["layers"].items()
    ]
    return "\n".join([title, header, *rows])


@user_errors_exit
def main(argv: list[str] | None = None) -> int:
    run(build_parser().parse_args(argv))
    return 0


if __name__ == "__main__":
    sys.exit(main())
