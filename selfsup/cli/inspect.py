"""ssl-inspect: a PNG of what a pretext task feeds the network and what it asks it to predict.

    ssl-inspect --task rotation                       # random encoder, demo images
    ssl-inspect --checkpoint runs/rotation/last.pt    # the task and weights of a run (shows its predictions)

For a checkpoint pretrained with a lens (lens.enabled) a second PNG, OUT_lens.png, shows each image as the
encoder is fed it, through the lens, and their difference: what the lens erases is the shortcut it found.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

import torch
from PIL import Image

from selfsup.checkpoint import atomic_file, load_checkpoint
from selfsup.cli.common import Parser, add_data_layout_option, add_trust_option, user_errors_exit
from selfsup.config import DataConfig, PretrainConfig, from_dict, merge, parse_overrides, set_dotted
from selfsup.data.images import unit_float
from selfsup.data.crops import RandomCrop
from selfsup.data.loading import TransformedDataset, collate, sample_seed
from selfsup.data.sources import open_splits
from selfsup.errors import ConfigError, DataError
from selfsup.models import ARCHS, build_encoder
from selfsup.models.base import check_input_size
from selfsup.outputs import check_output_file
from selfsup.presets import load_preset
from selfsup.pretext import TASKS, check_pretrain_config, load_task, new_task
from selfsup.visualize import lens_examples, render_examples


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="ssl-inspect", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--task", choices=list(TASKS), help="task to show (default: the checkpoint's, else rotation)")
    parser.add_argument("--checkpoint", help="an ssl-pretrain checkpoint: its task, options and weights are used")
    parser.add_argument("--data", default="demo")
    parser.add_argument("--data-root", default=None)
    add_data_layout_option(parser)
    parser.add_argument("--image-size", type=int, default=None, help="crop size (default: the checkpoint's, else the task's demo preset's)")
    parser.add_argument("--arch", default=None, choices=list(ARCHS), help="encoder (default: the task's demo preset's)")
    parser.add_argument("--count", type=int, default=4, help="number of source images")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="any config field, e.g. pretext.head_pool=1")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=None, help="PNG path (default: inspect_<task>.png)")
    add_trust_option(parser)
    return parser


def check_args(args: argparse.Namespace) -> None:
    """ConfigError (one line) for an option value that cannot work, before any work."""
    for name in ("checkpoint", "data", "data_root", "out"):
        if getattr(args, name) == "":
            raise ConfigError(f"--{name.replace('_', '-')} '' is invalid: give a path or name")
    for name in ("count", "image_size"):
        value = getattr(args, name)
        if value is not None and value < 1:
            raise ConfigError(f"--{name.replace('_', '-')} {value} is invalid: must be at least 1")
    if args.out is not None and Path(args.out).suffix.lower() not in Image.registered_extensions():
        raise ConfigError(f"--out {args.out} is invalid: give an image file name such as inspect.png")
    if args.checkpoint is not None and (args.arch is not None or args.set):
        raise ConfigError("--arch and --set apply without --checkpoint only: a checkpoint brings its own encoder and "
                          "task options")


def run(args: argparse.Namespace) -> Path:
    check_args(args)
    if args.out is not None:
        check_output_file(args.out, "--out")
    state = None if args.checkpoint is None else load_checkpoint(args.checkpoint, trust=args.trust_checkpoint)
    if state is not None:
        task = load_task(args.checkpoint, state=state)
        task_name = state["task"]["name"]
        if args.task is not None and args.task != task_name:
            raise ConfigError(f"--task {args.task} does not match the checkpoint's task {task_name}: leave --task out "
                              "or give another checkpoint")
    else:
        task_name = "rotation" if args.task is None else args.task
    out = Path(f"inspect_{task_name}.png" if args.out is None else args.out)
    if args.out is None:
        check_output_file(out, "the default --out")
    has_lens = state is not None and task.encoder.lens is not None
    lens_out = out.with_name(f"{out.stem}_lens{out.suffix}") if has_lens else None
    if lens_out is not None:
        check_output_file(lens_out, "the lens view beside --out")
    splits = open_splits(args.data, args.data_root, seed=args.seed, layout=args.data_layout)
    if state is not None:
        image_size = state.get("image_size", DataConfig.image_size) if args.image_size is None else args.image_size
    else:
        values = merge(load_preset("demo", task_name), {"task": task_name})
        if args.arch is not None:
            set_dotted(values, "model.arch", args.arch)
        if args.image_size is not None:
            set_dotted(values, "data.image_size", args.image_size)
        values = merge(values, parse_overrides(args.set))
        cfg = from_dict(PretrainConfig, values)
        check_pretrain_config(cfg)
        torch.manual_seed(args.seed)
        task_cls = TASKS[task_name]
        task_cfg = task_cls.fit_to_data(from_dict(task_cls.Config, cfg.pretext, prefix="pretext."), len(splits.pretrain))
        encoder = build_encoder(cfg.model.arch, in_channels=task_cls.encoder_channels(task_cfg), width=cfg.model.width)
        if task_cls.needs_labels and splits.train is None:
            raise DataError(f"--task {task_name} needs labelled data (class sub-folders); {args.data} has none")
        num_classes = None if splits.train is None else len(splits.train.classes)
        task = new_task(task_name, encoder, dataclasses.asdict(task_cfg), num_classes=num_classes)
        image_size = cfg.data.image_size
    check_input_size(task.encoder, image_size, "--image-size")
    dataset = TransformedDataset(splits.pretrain, RandomCrop(image_size), replace_bad=True)
    # spread over the source, which is usually sorted by class
    picks = torch.linspace(0, len(dataset) - 1, min(args.count, len(dataset))).round().long().tolist()
    batch = collate([dataset[(i, sample_seed(args.seed, 0, i))] for i in picks])  # epoch 0's crops
    task.eval()
    with torch.no_grad():
        examples = task.example_images(unit_float(batch.images), torch.Generator().manual_seed(args.seed))
    shown = "random encoder" if args.checkpoint is None else f"checkpoint {args.checkpoint}"
    title = f"{task_name}: {shown}, data {args.data}"
    with atomic_file(out) as handle:
        render_examples(examples, title).save(handle, format="PNG")
    print(f"wrote {out}")
    if lens_out is not None:
        with atomic_file(lens_out) as handle:
            render_examples(lens_examples(task, unit_float(batch.images)), f"{title}: the lens").save(
                handle, format="PNG")
        print(f"wrote {lens_out}")
    return out


@user_errors_exit
def main(argv: list[str] | None = None) -> int:
    run(build_parser().parse_args(argv))
    return 0


if __name__ == "__main__":
    sys.exit(main())
