"""ssl-pretrain: train an encoder with a pretext task.

    ssl-pretrain                                   # rotation, demo data, small AlexNet, CPU-sized
    ssl-pretrain --task rotation --arch alexnet --data /data/imagenet --config experiments/rotation_imagenet_alexnet.yaml
    torchrun --nproc_per_node 2 -m selfsup.cli.pretrain ...   # the same command on several processes
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path
from typing import Any

import yaml

from selfsup.checkpoint import atomic_file, remove_stale_temporaries, seed_everything
from selfsup.cli.common import (
    Parser, add_overrides, add_trust_option, given_overrides, user_errors_exit,
)
from selfsup.config import (
    ConfigError,
    PretrainConfig,
    dotted_default,
    from_dict,
    load_yaml,
    merge,
    parse_overrides,
    set_dotted,
    to_dict,
)
from selfsup.data.crops import CenterCrop
from selfsup.data.sources import Splits
from selfsup.distributed import init_distributed, shutdown
from selfsup.epoch import resolve_precision
from selfsup.models import ARCHS
from selfsup.outputs import RunLock, check_free_space, check_output_dir
from selfsup.presets import load_preset
from selfsup.pretext import TASKS, PretextTask, check_pretrain_config
from selfsup.pretraining import build_pretraining, encoder_record, loader_workers, new_trainer
from selfsup.provenance import command_line, git_commit, machine_description
from selfsup.probes.knn import KnnMonitor, random_subset
from selfsup.training_checkpoint import CHECKPOINT_NAME

FLAGS: dict[str, tuple[str, type, str]] = {
    "--task": ("task", str, "pretext task: " + ", ".join(TASKS)),
    "--arch": ("model.arch", str, "encoder architecture: " + ", ".join(ARCHS)),
    "--width": ("model.width", float, "encoder channel-width multiplier"),
    "--data": ("data.data", str, "'demo' (default), cifar10, cifar100, stl10 or an image folder"),
    "--data-root": ("data.data_root", str, "where demo/torchvision data is cached or downloaded"),
    "--image-size": ("data.image_size", int, "training crop size in pixels"),
    "--workers": ("data.workers", int, "data loading worker processes per training process (-1 = auto)"),
    "--epochs": ("train.epochs", int, "number of epochs"),
    "--max-steps": ("train.max_steps", int, "step budget: stop after this many steps in all if that comes before "
                                            "the epochs, with the lr schedule ended there; reproducible (0 = none)"),
    "--max-minutes": ("train.max_minutes", float,
                      "time budget: stop after this many minutes in all (resumes included) if that comes first, "
                      "the lr schedule following the time spent; NOT exactly reproducible: where it stops and the "
                      "lr at each step depend on the machine's speed (0 = none)"),
    "--batch-size": ("train.batch_size", int, "images per step over all processes"),
    "--lr": ("optim.lr", float, "peak learning rate"),
    "--precision": ("train.precision", str, "auto, fp32 or bf16"),
    "--device": ("train.device", str, "auto, cpu or cuda"),
    "--seed": ("train.seed", int, "random seed"),
    "--out": ("train.out", str, "output folder"),
    "--checkpoint-every": ("train.checkpoint_every", int, "checkpoint interval in steps"),
    "--keep-every": ("train.keep_every", int, "also keep a copy of the checkpoint every N steps as step_NNNNNN.pt "
                                              "(to probe along pretraining; 0 = none)"),
    "--data-layout": ("data.layout", str, "how a folder of images is read: auto, flat or classes"),
    "--resume": ("train.resume", bool, "continue from <out>/last.pt (its config must match; see the README's Safety)"),
    "--accept-config-changes": ("train.accept_config_changes", bool,
                                "with --resume: continue although the config differs from the checkpoint's"),
}


def parse_config(argv: list[str] | None) -> PretrainConfig:
    return config_from_args(build_parser().parse_args(argv))


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="ssl-pretrain", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", help="YAML file of config fields (e.g. experiments/*.yaml)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override any field, e.g. --set optim.schedule=step --set pretext.head_hidden=0")
    parser.add_argument("--preset", default=None,
                        help="run-level preset of the task (selfsup/presets/NAME/TASK.yaml): 'demo' (the default "
                             "without --config: CPU-sized runs that learn in minutes) or 'none' (dataclass defaults)")
    parser.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    add_overrides(parser, FLAGS, lambda dotted: dotted_default(PretrainConfig, dotted))
    add_trust_option(parser)
    return parser


def config_from_args(args: argparse.Namespace) -> PretrainConfig:
    file_values: dict[str, Any] = load_yaml(args.config) if args.config else {}
    set_values = parse_overrides(args.set)
    task = args.task or set_values.get("task") or file_values.get("task") or PretrainConfig.task
    # a --config file is a complete preset of its own; without one the task's demo preset applies
    values = merge(load_preset(args.preset or ("none" if args.config else "demo"), str(task)), file_values)
    for dotted, value in given_overrides(args, FLAGS).items():
        set_dotted(values, dotted, value)
    values = merge(values, set_values)
    cfg = from_dict(PretrainConfig, values)
    check_pretrain_config(cfg)
    if args.print_config:
        print(yaml.safe_dump(to_dict(cfg), sort_keys=False))
        sys.exit(0)
    return cfg


# Images per forward pass of the kNN monitor: without gradients they take less memory than any
# training step, and larger batches run faster on CPUs.
KNN_BATCH = 256


def build_knn_monitor(cfg: PretrainConfig, splits: Splits, task: PretextTask, workers: int,
                      announce: bool) -> KnnMonitor | None:
    """The kNN monitor that ``train.knn_*`` asks for, or None when it is off or the data has no
    labelled train and val splits (``announce``: say so on stderr)."""
    if not cfg.train.knn_every:
        return None
    encoder = task.encoder
    layer = cfg.train.knn_layer or encoder.layer_names[-1]
    if layer not in encoder.layer_names and layer not in encoder.aliases:
        raise ConfigError(
            f"train.knn_layer = {layer!r} is invalid: layers of {cfg.model.arch} are "
            f"{', '.join([*encoder.layer_names, *encoder.aliases])}"
        )
    if splits.train is None or splits.val is None:
        if announce:
            print(f"kNN monitor off: {cfg.data.data} has no labelled train and val splits", file=sys.stderr)
        return None
    return KnnMonitor(
        encoder=encoder,
        input_fn=task.encoder_input,
        train=random_subset(splits.train, cfg.train.knn_max_train, cfg.train.seed),
        val=random_subset(splits.val, cfg.train.knn_max_val, cfg.train.seed),
        view=CenterCrop(cfg.data.image_size),
        layer=layer,
        batch_size=KNN_BATCH,
        workers=workers,
    )


def output_folder(cfg: PretrainConfig) -> Path:
    try:
        return Path(cfg.train.out.format(task=cfg.task, arch=cfg.model.arch))
    except (KeyError, IndexError, ValueError):
        raise ConfigError(f"train.out = {cfg.train.out!r} is invalid: the only placeholders are {{task}} and {{arch}}") from None


def run(cfg: PretrainConfig, *, trust_checkpoint: bool = False) -> dict[str, Any]:
    """Trains ``cfg``'s task; ``trust_checkpoint``: a resume may convert an older, pickled checkpoint."""
    dist_info = init_distributed(cfg.train.device)
    out_dir = output_folder(cfg)
    lock = None
    if dist_info.is_main:  # before any work: a bad --out or a busy folder fails at once
        check_output_dir(out_dir)
        lock = RunLock(out_dir).acquire()
        for stale in remove_stale_temporaries(out_dir):
            print(f"removed {stale}, left by a write that was killed", file=sys.stderr)
    try:
        return _train(cfg, dist_info, out_dir, trust_checkpoint)
    finally:
        if lock is not None:
            lock.release()


def _train(cfg: PretrainConfig, dist_info, out_dir: Path, trust_checkpoint: bool) -> dict[str, Any]:
    seed_everything(cfg.train.seed)
    setup = build_pretraining(cfg, workers=loader_workers(cfg, dist_info))
    task, source = setup.task, setup.source
    record = {
        "kind": "pretrain",
        "task": {"name": cfg.task, "options": dataclasses.asdict(task.cfg), "num_classes": len(source.classes) or None},
        "encoder": encoder_record(cfg, setup),
        "image_size": cfg.data.image_size,
        "config": to_dict(cfg),
        "data": {"spec": cfg.data.data, "root": cfg.data.data_root, "source": source.describe(),
                 "notes": setup.splits.notes, "ignored_files": setup.splits.ignored_files,
                 "labelled": setup.splits.train is not None},
        "command": command_line(),
        "git_commit": git_commit(),
        "machine": machine_description(dist_info.device),
        "precision": resolve_precision(cfg.train.precision, dist_info.device),
    }
    if dist_info.is_main:
        # weights, up to two optimiser slots per weight (Adam), and room for the temporary of an atomic write
        weight_bytes = sum(t.numel() * t.element_size() for t in task.state_dict().values())
        check_free_space(out_dir, 4 * weight_bytes + 2**20, f"a checkpoint ({out_dir / CHECKPOINT_NAME})")
        with atomic_file(out_dir / "config.yaml", "w") as handle:
            handle.write(yaml.safe_dump(to_dict(cfg), sort_keys=False))
        n_params = sum(p.numel() for p in task.parameters())
        print(
            f"ssl-pretrain: task {cfg.task}, encoder {cfg.model.arch} ({n_params / 1e6:.2f} M parameters with heads), "
            f"data {source.describe()}, {dist_info.world_size} process(es) on {dist_info.device}, "
            f"{loader_workers(cfg, dist_info)} loader worker(s) per process, {record['precision']}",
            file=sys.stderr,
        )
    trainer = new_trainer(cfg, setup, dist_info, out_dir, record,
                          knn_monitor=build_knn_monitor(cfg, setup.splits, task, loader_workers(cfg, dist_info), dist_info.is_main),
                          trust_checkpoint=trust_checkpoint)
    summary = trainer.fit()
    if dist_info.is_main:
        print_summary(summary, type(task).metric)
    shutdown()
    return summary


def print_summary(summary: dict[str, Any], metric: str) -> None:
    final = summary["final"]
    lines = [
        "",
        f"== ssl-pretrain finished: {summary['task']['name']} on {summary['encoder']['arch']} ==",
        f"data            {summary['data']['source']}",
        f"epochs / steps  {summary['epochs']} / {summary['steps']}",
        f"ended by        {ended_text(summary)}",
        f"final loss      {final.get('loss', float('nan')):.4f}",
    ]
    if metric in final:
        seen = "last epoch"
        if final.get("partial"):
            steps = final["steps_in_epoch"]
            seen = f"epoch {final['epoch']}'s first {steps} step{'s' * (steps != 1)}"
        lines.append(f"final {metric:<10}{final[metric]:.4f}  ({seen}, training batches)")
    if "knn_top1" in final:
        lines.append(f"final kNN       top-1 {final['knn_top1']:.2f}%  top-5 {final['knn_top5']:.2f}%  (val split)")
    lines += [
        f"throughput      {summary['images_per_s']} images/s over {summary['wall_time_s']} s ({summary['precision']})",
        f"unreadable files skipped: {summary['bad_files_skipped']}",
        f"files ignored   {ignored_text(summary['data'].get('ignored_files') or {})}",
        f"checkpoint      {summary['checkpoint']}",
        f"summary         {Path(summary['checkpoint']).parent / 'summary.json'}",
        f"tensorboard     tensorboard --logdir {Path(summary['checkpoint']).parent / 'tb'}",
        f"next            {next_probe(summary)}",
    ]
    print("\n".join(lines))


def next_probe(summary: dict[str, Any]) -> str:
    """The probe to run next: on the pretraining data (ssl-probe's default) when it has labels, else on data
    that has (ssl-probe would stop with an error)."""
    command = f"ssl-probe --checkpoint {summary['checkpoint']} --freeze all"
    if summary["data"].get("labelled", True):
        return command
    return f"{command} --data LABELLED_DATA   ({summary['data']['spec']} has no labels to probe with; e.g. --data demo)"


def ended_text(summary: dict[str, Any]) -> str:
    """What ended the run, and its budgets: ``max_steps at step 8 (budgets: 2 epochs, 8 steps)``."""
    budget = summary["budget"]
    budgets = [f"{budget['epochs']} epochs"]
    if budget["max_steps"]:
        budgets.append(f"{budget['max_steps']} steps")
    if budget["max_minutes"]:
        budgets.append(f"{budget['max_minutes']:g} minutes")
    return f"{summary['ended_by']} at step {summary['steps']} (budgets: {', '.join(budgets)})"


def ignored_text(ignored: dict[str, int]) -> str:
    """``{"not an image": 2, ...}`` as ``3 (2 not an image, 1 hidden)``, or ``0``."""
    total = sum(ignored.values())
    if not total:
        return "0"
    return f"{total} ({', '.join(f'{count} {reason}' for reason, count in ignored.items())})"


@user_errors_exit
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        run(config_from_args(args), trust_checkpoint=args.trust_checkpoint)
    except KeyboardInterrupt:
        print("interrupted; the last checkpoint is kept (the same command with --resume continues)", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
