"""ssl-bench: speed of the training pipeline, measured as ratios of two sides timed interleaved in one process.

    ssl-bench pipeline --task rotation                 # end-to-end vs step-only img/s on the demo preset
    ssl-bench pipeline --task all --json experiments/records/bench/pipeline.json --table experiments/results/bench_pipeline.md
    ssl-bench threads --task rotation                  # img/s per torch thread count, idle and beside busy processes
    ssl-bench data                                     # jigsaw and context inputs: batched vs per-sample PIL

Every sub-command prints a table; ``--json FILE`` writes a record (rows, command, commit, machine) and
``--table FILE`` the same table in Markdown with how it was produced. No timing is exact on a shared
machine: read the ratios, whose two sides ran interleaved in the same process.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

import torch

from selfsup.bench import measure_data_side, measure_pipeline, measure_threads
from selfsup.checkpoint import atomic_file
from selfsup.cli.common import (
    Parser, add_overrides, check_option_values, int_list, command_line, git_commit, machine_description, user_errors_exit,
)
from selfsup.cli.pretrain import FLAGS, config_from_args
from selfsup.config import PretrainConfig
from selfsup.outputs import check_output_file
from selfsup.presets import load_preset
from selfsup.pretext import TASKS
from selfsup.probes.records import write_record

PRETEXT_TASKS = [name for name in TASKS if not getattr(TASKS[name], "needs_labels", False)]
# what a pipeline measure may change; the rest (budgets, output, resume) means nothing to a benchmark
PIPELINE_FLAGS = {flag: FLAGS[flag] for flag in (
    "--arch", "--width", "--data", "--data-root", "--image-size", "--workers", "--batch-size", "--precision",
    "--device", "--seed",
)}


def add_run_options(parser: argparse.ArgumentParser, *, steps: int) -> None:
    """The task's run config, built as ssl-pretrain builds it, and how many steps to time."""
    parser.add_argument("--steps", type=int, default=steps, help=f"timed steps on each side (default {steps})")
    parser.add_argument("--rounds", type=int, default=4, help="alternating blocks the steps are split into (default 4)")
    parser.add_argument("--config", help="YAML file of config fields, as for ssl-pretrain")
    parser.add_argument("--preset", default=None, help="as for ssl-pretrain (default: demo unless --config)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override any config field, as for ssl-pretrain")
    add_overrides(parser, PIPELINE_FLAGS)
    parser.add_argument("--json", help="write the record to this file")
    parser.add_argument("--table", help="write the table in Markdown to this file")


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="ssl-bench", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=Parser)
    pipeline = commands.add_parser(
        "pipeline", help="end-to-end img/s against the same step on a batch already on the device",
        description="End-to-end training steps (loader, transfer, step) against the same step on a batch already "
                    "on the device, in alternating blocks; efficiency = end-to-end img/s / step-only img/s. The "
                    "task's run config is built as ssl-pretrain builds it (its demo preset unless --config).")
    pipeline.add_argument("--task", default="rotation", choices=[*PRETEXT_TASKS, "all"],
                          help="the task to measure, or all of them one after another (default rotation)")
    add_run_options(pipeline, steps=40)
    threads = commands.add_parser(
        "threads", help="end-to-end img/s per torch thread count, on the machine as it is and beside busy processes",
        description="End-to-end training img/s at each --counts thread count (interleaved blocks), once on the "
                    "machine as it is and once beside --busy processes spinning on the CPU. The OpenMP wait "
                    "policy is the environment's (ssl-* commands default to OMP_WAIT_POLICY=PASSIVE); run it "
                    "again with OMP_WAIT_POLICY=ACTIVE to compare.")
    threads.add_argument("--task", default="rotation", choices=PRETEXT_TASKS, help="the task (default rotation)")
    threads.add_argument("--counts", type=int_list, default=None,
                         help="thread counts to compare (default: 1 and the number of cores)")
    threads.add_argument("--busy", type=int, default=None, help="spinning processes of the busy half (default: cores)")
    add_run_options(threads, steps=24)
    data = commands.add_parser(
        "data", help="data-side ms per image of jigsaw and context against a per-sample PIL implementation",
        description="The task's batched input-making on the CPU (from a batch of uint8 training crops to what "
                    "the encoder is fed) against a per-sample PIL and numpy implementation as the original "
                    "repositories made their inputs, from the same crops, interleaved. Demo size: the demo "
                    "preset's crop and options; paper size: " + "; ".join(
                        f"{task} {size} px crops ({what})" for task, (size, _, what) in PAPER_SIZES.items()) + ".")
    data.add_argument("--task", default="all", choices=[*PAPER_SIZES, "all"], help="default: both")
    data.add_argument("--scale", default="all", choices=["demo", "paper", "all"], help="default: both")
    data.add_argument("--batch-size", type=int, default=64, help="images per batch (default 64)")
    data.add_argument("--rounds", type=int, default=3, help="timed batches on each side (default 3)")
    data.add_argument("--json", help="write the record to this file")
    data.add_argument("--table", help="write the table in Markdown to this file")
    return parser


# the papers' geometry: crop size, task options, and what it gives
PAPER_SIZES = {
    "jigsaw": (225, {"num_permutations": 100}, "3x3 cells of 75 px, 64 px tiles"),
    "context": (398, {}, "96 px patches, 48 px gaps, 7 px jitter"),
}


def task_config(args: argparse.Namespace, task: str) -> PretrainConfig:
    unset = {dotted: None for dotted, _, _ in FLAGS.values()}  # ssl-pretrain's options this command lacks
    return config_from_args(argparse.Namespace(**{**unset, **vars(args), "task": task, "print_config": False}))


def check_steps(args: argparse.Namespace) -> None:
    check_option_values(args, at_least=(("steps", 1), ("rounds", 1)))
    args.rounds = min(args.rounds, args.steps)


def announce(command: str, cfg: PretrainConfig) -> None:
    print(f"ssl-bench {command}: {cfg.task} ({cfg.model.arch}, {cfg.data.image_size} px, batch {cfg.train.batch_size}, "
          f"data.workers {cfg.data.workers}, precision {cfg.train.precision}) ...", file=sys.stderr, flush=True)


def pipeline_rows(args: argparse.Namespace) -> list[dict[str, Any]]:
    check_steps(args)
    rows = []
    for task in PRETEXT_TASKS if args.task == "all" else [args.task]:
        cfg = task_config(args, task)
        announce("pipeline", cfg)
        rows.append(measure_pipeline(cfg, steps=args.steps, rounds=args.rounds).row())
    return rows


def pipeline_table(rows: list[dict[str, Any]]) -> list[str]:
    lines = ["| task | arch, size, batch | workers | end-to-end img/s | step-only img/s | efficiency | loader wait ms | "
             "to device ms | pretext inputs ms | rest of step ms |", "|---|---|---|---|---|---|---|---|---|---|"]
    for row in rows:
        ms = row["end_to_end_ms"]
        lines.append(
            f"| {row['task']} | {row['arch']}, {row['image_size']} px, {row['batch_size']} | {row['workers']} | "
            f"{row['end_to_end_img_s']:.1f} | {row['step_only_img_s']:.1f} | {row['efficiency']:.2f} | "
            f"{ms['loader_wait']:.1f} | {ms['to_device']:.1f} | {ms['pretext_inputs']:.1f} | {ms['rest_of_step']:.1f} |")
    return lines


def threads_rows(args: argparse.Namespace) -> list[dict[str, Any]]:
    check_steps(args)
    check_option_values(args, at_least=(("busy", 0),))
    cores = os.cpu_count() or 1
    counts = args.counts or sorted({1, cores})
    cfg = task_config(args, args.task)
    announce("threads", cfg)
    return measure_threads(cfg, thread_counts=counts, busy=cores if args.busy is None else args.busy,
                           steps=args.steps, rounds=args.rounds)


def threads_table(rows: list[dict[str, Any]]) -> list[str]:
    lines = ["| task | machine load | OMP_WAIT_POLICY | torch threads | end-to-end img/s | vs the fastest count |",
             "|---|---|---|---|---|---|"]
    lines += [f"| {row['task']} | {row['load']} | {row['omp_wait_policy'] or 'unset'} | {row['threads']} | "
              f"{row['end_to_end_img_s']:.1f} | {row['vs_fastest']:.2f} |" for row in rows]
    return lines


def data_rows(args: argparse.Namespace) -> list[dict[str, Any]]:
    check_option_values(args, at_least=(("batch_size", 1), ("rounds", 1)))
    rows = []
    for task in PAPER_SIZES if args.task == "all" else [args.task]:
        for scale in ("demo", "paper") if args.scale == "all" else [args.scale]:
            if scale == "demo":
                preset = load_preset("demo", task)
                size, options = preset.get("data", {}).get("image_size", 32), preset.get("pretext", {})
            else:
                size, options, _ = PAPER_SIZES[task]
            print(f"ssl-bench data: {task}, {scale} size ({size} px crops) ...", file=sys.stderr, flush=True)
            rows.append(measure_data_side(task, scale, size, options, batch_size=args.batch_size,
                                          rounds=args.rounds).row())
    return rows


def data_table(rows: list[dict[str, Any]]) -> list[str]:
    lines = ["| task | size | crop px | tile/patch px | batched ms/img | per-sample PIL ms/img | ratio |",
             "|---|---|---|---|---|---|---|"]
    lines += [f"| {row['task']} | {row['scale']} | {row['image_size']} | {row['piece']} | "
              f"{row['batched_ms_per_image']:.3f} | {row['per_sample_pil_ms_per_image']:.3f} | {row['ratio']:.2f} |"
              for row in rows]
    return lines


MEASURES = {"pipeline": (pipeline_rows, pipeline_table), "threads": (threads_rows, threads_table),
            "data": (data_rows, data_table)}


def run(args: argparse.Namespace) -> dict[str, Any]:
    for option in ("json", "table"):
        if getattr(args, option):
            check_output_file(getattr(args, option), f"--{option}")
    measure, table = MEASURES[args.command]
    rows = measure(args)
    device = torch.device(rows[0]["device"]) if rows and "device" in rows[0] else torch.device("cpu")
    record = {"kind": f"bench_{args.command}", "rows": rows, "command": command_line(), "git_commit": git_commit(),
              "machine": machine_description(device)}
    lines = table(rows)
    print("\n".join(lines))
    if args.json:
        write_record(record, args.json)
        print(f"wrote {args.json}", file=sys.stderr)
    if args.table:
        machine = record["machine"]
        about = (f"{machine['cpu_count']} CPU cores, {machine['torch_threads']} torch threads, torch {machine['torch']}"
                 + (f", {machine['gpu']}" if "gpu" in machine else ""))
        text = [f"# ssl-bench {args.command}", "", f"Made by: `{record['command']}` at commit {record['git_commit']}; "
                f"machine: {about}.", "", *lines, ""]
        with atomic_file(Path(args.table), "w") as handle:
            handle.write("\n".join(text))
        print(f"wrote {args.table}", file=sys.stderr)
    return record


@user_errors_exit
def main(argv: list[str] | None = None) -> int:
    run(build_parser().parse_args(argv))
    return 0


if __name__ == "__main__":
    sys.exit(main())
