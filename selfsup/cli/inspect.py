"""ssl-inspect: a PNG of what a pretext task feeds the network and what it asks it to predict.

    ssl-inspect --task rotation                       # random encoder, demo images
    ssl-inspect --checkpoint runs/rotation/last.pt    # the task and weights of a run (shows its predictions)
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

import torch

from selfsup.checkpoint import load_checkpoint
from selfsup.cli.common import user_errors_exit
from selfsup.config import DataConfig, PretrainConfig, from_dict, merge, parse_overrides, set_dotted
from selfsup.data.loading import RandomCrop, TransformedDataset, collate
from selfsup.data.sources import open_splits
from selfsup.models import build_encoder
from selfsup.presets import load_preset
from selfsup.pretext import TASKS, build_task
from selfsup.visualize import render_examples


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ssl-inspect", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--task", choices=list(TASKS), help="task to show (default: the checkpoint's, else rotation)")
    parser.add_argument("--checkpoint", help="an ssl-pretrain checkpoint: its task, options and weights are used")
    parser.add_argument("--data", default="demo")
    parser.add_argument("--data-root", default=None)
    parser.add_argument("--image-size", type=int, default=None, help="crop size (default: the checkpoint's, else the task's demo preset's)")
    parser.add_argument("--arch", default=None, help="encoder (default: the task's demo preset's)")
    parser.add_argument("--count", type=int, default=4, help="number of source images")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="any config field, e.g. pretext.head_pool=1")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=None, help="PNG path (default: inspect_<task>.png)")
    return parser


def run(args: argparse.Namespace) -> Path:
    splits = open_splits(args.data, args.data_root, seed=args.seed)
    if args.checkpoint:
        state = load_checkpoint(args.checkpoint)
        task_name = args.task or state["task"]["name"]
        if task_name != state["task"]["name"]:
            raise ValueError(f"--task {task_name} does not match the checkpoint's task {state['task']['name']}")
        spec = state["encoder"]
        encoder = build_encoder(spec["arch"], in_channels=spec["in_channels"], width=spec["width"])
        task = build_task(task_name, encoder, state["task"]["options"], num_classes=state["task"].get("num_classes"))
        task.load_state_dict(state["model"])
        image_size = args.image_size or state.get("image_size", DataConfig.image_size)
    else:
        task_name = args.task or "rotation"
        values = merge(load_preset("demo", task_name), {"task": task_name})
        if args.arch:
            set_dotted(values, "model.arch", args.arch)
        if args.image_size:
            set_dotted(values, "data.image_size", args.image_size)
        values = merge(values, parse_overrides(args.set))
        cfg = from_dict(PretrainConfig, values)
        torch.manual_seed(args.seed)
        task_cls = TASKS[task_name]
        task_cfg = task_cls.fit_to_data(from_dict(task_cls.Config, cfg.pretext, prefix="pretext."), len(splits.pretrain))
        encoder = build_encoder(cfg.model.arch, in_channels=task_cls.encoder_channels(task_cfg), width=cfg.model.width)
        num_classes = len(splits.train.classes) if splits.train else None
        task = build_task(task_name, encoder, dataclasses.asdict(task_cfg), num_classes=num_classes)
        image_size = cfg.data.image_size
    dataset = TransformedDataset(splits.pretrain, RandomCrop(image_size), replace_bad=True)
    # spread over the source, which is usually sorted by class
    picks = torch.linspace(0, len(dataset) - 1, min(args.count, len(dataset))).round().long().tolist()
    batch = collate([dataset[(i, args.seed * 1000 + i)] for i in picks])
    task.eval()
    with torch.no_grad():
        examples = task.example_images(batch.images.float() / 255, torch.Generator().manual_seed(args.seed))
    title = f"{task_name}: {'checkpoint ' + args.checkpoint if args.checkpoint else 'random encoder'}, data {args.data}"
    out = Path(args.out or f"inspect_{task_name}.png")
    out.parent.mkdir(parents=True, exist_ok=True)
    render_examples(examples, title).save(out)
    print(f"wrote {out}")
    return out


@user_errors_exit
def main(argv: list[str] | None = None) -> int:
    run(build_parser().parse_args(argv))
    return 0


if __name__ == "__main__":
    sys.exit(main())
