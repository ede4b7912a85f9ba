"""ssl-bench: speed of the training pipeline, measured as ratios of two sides timed interleaved in one process.

    ssl-bench pipeline --task rotation                 # end-to-end vs step-only img/s on the demo preset
    ssl-bench pipeline --task all --json experiments/records/bench/pipeline.json --table experiments/results/bench_pipeline.md
    ssl-bench threads --task rotation                  # img/s per torch thread count, idle and beside busy processes
    ssl-bench data                                     # jigsaw and context inputs: batched vs per-sample PIL
    ssl-bench probe                                    # ssl-probe --freeze all vs --freeze conv3
    ssl-bench deepcluster                              # share of a reclustering epoch outside the training steps
    ssl-bench precision --task all                     # training step img/s in fp32 and in bf16 autocast

Every sub-command prints a table; ``--json FILE`` writes a record (rows, command, commit, machine) and
``--table FILE`` the same table in Markdown with how it was produced. No timing is exact on a shared
machine: read the ratios, whose two sides ran interleaved in the same process.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import shlex
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any, Callable

import torch

from selfsup.bench.data_side import measure_data_side
from selfsup.bench.pipeline import measure_epoch_share, measure_pipeline, measure_precision, measure_threads
from selfsup.bench.probe_heads import forward_ratio, measure_head_steps
from selfsup.checkpoint import atomic_file
from selfsup.cli.common import Parser, add_overrides, int_list, user_errors_exit
from selfsup.cli.pretrain import FLAGS, config_from_args
from selfsup.config import PretrainConfig
from selfsup.distributed import pick_device
from selfsup.errors import check_option_values
from selfsup.outputs import check_output_file
from selfsup.presets import load_preset
from selfsup.provenance import command_line, git_commit, machine_description, machine_text
from selfsup.pretext import TASKS
from selfsup.probes.records import write_record

PRETEXT_TASKS = [name for name in TASKS if not TASKS[name].needs_labels]
# what a pipeline measure may change; the rest (budgets, output, resume) means nothing to a benchmark
PIPELINE_FLAGS = {flag: FLAGS[flag] for flag in (
    "--arch", "--width", "--data", "--data-root", "--image-size", "--workers", "--batch-size", "--precision",
    "--device", "--seed",
)}


def add_config_options(parser: argparse.ArgumentParser) -> None:
    """The task's run config, built as ssl-pretrain builds it."""
    parser.add_argument("--config", help="YAML file of config fields, as for ssl-pretrain")
    parser.add_argument("--preset", default=None, help="as for ssl-pretrain (default: demo unless --config)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override any config field, as for ssl-pretrain")
    add_overrides(parser, PIPELINE_FLAGS)


def add_step_options(parser: argparse.ArgumentParser, *, steps: int) -> None:
    parser.add_argument("--steps", type=int, default=steps, help=f"timed steps on each side (default {steps})")
    parser.add_argument("--rounds", type=int, default=4, help="alternating blocks the steps are split into (default 4)")


def add_output_options(parser: argparse.ArgumentParser) -> None:
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
    add_step_options(pipeline, steps=40)
    add_config_options(pipeline)
    add_output_options(pipeline)
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
    add_step_options(threads, steps=24)
    add_config_options(threads)
    add_output_options(threads)
    precision = commands.add_parser(
        "precision", help="training step img/s in fp32 against bf16 autocast, and what auto runs here",
        description="The task's training step on a batch kept on the device, in fp32 and under bf16 autocast, "
                    "alternated; bf16 is about twice as fast where the device multiplies bf16 matrices in hardware "
                    "and slower where it is emulated. The task's run config is built as ssl-pretrain builds it "
                    "(its demo preset unless --config); --precision is ignored.")
    precision.add_argument("--task", default="all", choices=[*PRETEXT_TASKS, "all"], help="default: all of them")
    add_step_options(precision, steps=24)
    add_config_options(precision)
    add_output_options(precision)
    deepcluster = commands.add_parser(
        "deepcluster", help="share of a reclustering epoch spent outside the training steps",
        description="Whole DeepCluster epochs, built as ssl-pretrain builds them (the demo preset unless --config): "
                    "the seconds of each epoch's clustering step (feature pass over the training set, PCA, "
                    "k-means) against the seconds of its training steps, end to end.")
    deepcluster.add_argument("--epochs", type=int, default=2, help="epochs to time (default 2)")
    deepcluster.add_argument("--warmup-epochs", type=int, default=0,
                             help="epochs run untimed first (default 0; 1 with reuse_features, whose first "
                                  "epoch has no banked features yet)")
    add_config_options(deepcluster)
    add_output_options(deepcluster)
    probe = commands.add_parser(
        "probe", help="ssl-probe --freeze all against one layer, same data: ratio_all_vs_one",
        description="ssl-probe's linear probe of every layer (--freeze all) against one layer (--freeze LAYER) "
                    "of the same encoder on the same data, the two runs alternated --rounds times; the time "
                    "split is read from the records (head epochs' seconds).")
    probe.add_argument("--checkpoint", default="random", help="as for ssl-probe (default random)")
    probe.add_argument("--arch", default="alexnet_small", help="with --checkpoint random (default alexnet_small)")
    probe.add_argument("--layer", default="conv3", help="the one layer (default conv3)")
    probe.add_argument("--data", default=None, help="as for ssl-probe (default: the demo set)")
    probe.add_argument("--rounds", type=int, default=1, help="alternations of the two runs (default 1)")
    probe.add_argument("--probe-args", default="", help="more ssl-probe options for both runs, in one string, "
                                                         "e.g. '--train-images 2000 --precision bf16'")
    add_output_options(probe)
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
    data.add_argument("--device", default="cpu", choices=("cpu", "cuda"),
                      help="where the batched side runs (default cpu; the per-sample reference always does)")
    add_output_options(data)
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


def per_task_rows(args: argparse.Namespace, command: str,
                  measure: Callable[[PretrainConfig], dict[str, Any]]) -> list[dict[str, Any]]:
    """A row of ``measure`` for ``args.task`` (or each pretext task for "all"), its run config built as
    ssl-pretrain builds it."""
    check_steps(args)
    rows = []
    for task in PRETEXT_TASKS if args.task == "all" else [args.task]:
        cfg = task_config(args, task)
        announce(command, cfg)
        rows.append(measure(cfg))
    return rows


def pipeline_rows(args: argparse.Namespace) -> list[dict[str, Any]]:
    return per_task_rows(args, "pipeline", lambda cfg: measure_pipeline(cfg, steps=args.steps, rounds=args.rounds).row())


def pipeline_table(rows: list[dict[str, Any]]) -> list[str]:
    lines = ["| task | arch, size, batch | workers, decoding | end-to-end img/s | step-only img/s | efficiency (± std over "
             "blocks) | loader wait ms | to device ms | pretext inputs ms | rest of step ms |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for row in rows:
        ms = row["end_to_end_ms"]
        blocks = row["efficiency_per_round"]
        spread = statistics.stdev(blocks) if len(blocks) > 1 else float("nan")
        lines.append(
            f"| {row['task']} | {row['arch']}, {row['image_size']} px, {row['batch_size']}"
            f"{', channels_last' if row.get('channels_last') else ''} | {row['workers']}, {row.get('decoding', 'workers')} | "
            f"{row['end_to_end_img_s']:.1f} | {row['step_only_img_s']:.1f} | {row['efficiency']:.2f} ± {spread:.2f} | "
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


def precision_rows(args: argparse.Namespace) -> list[dict[str, Any]]:
    return per_task_rows(args, "precision", lambda cfg: measure_precision(cfg, steps=args.steps, rounds=args.rounds))


def precision_table(rows: list[dict[str, Any]]) -> list[str]:
    lines = ["| task | arch, size, batch | fp32 img/s | bf16 autocast img/s | bf16 / fp32 | auto runs |",
             "|---|---|---|---|---|---|"]
    lines += [f"| {row['task']} | {row['arch']}, {row['image_size']} px, {row['batch_size']} | {row['fp32_img_s']:.1f} | "
              f"{row['bf16_img_s']:.1f} | {row['bf16_vs_fp32']:.2f} | {row['auto_runs']} |" for row in rows]
    return lines


def deepcluster_rows(args: argparse.Namespace) -> list[dict[str, Any]]:
    check_option_values(args, at_least=(("epochs", 1), ("warmup_epochs", 0)))
    cfg = task_config(args, "deepcluster")
    announce("deepcluster", cfg)
    return [measure_epoch_share(cfg, epochs=args.epochs, warmup_epochs=args.warmup_epochs).row()]


def deepcluster_table(rows: list[dict[str, Any]]) -> list[str]:
    lines = ["| task | reclustering | reuse_features | epochs timed (after untimed) | steps per epoch | clustering "
             "step s per epoch | training steps s per epoch | share outside the steps | of which feature pass s "
             "(images passed), k-means s |", "|---|---|---|---|---|---|---|---|---|"]
    for row in rows:
        metrics = row["prepare_metrics"]
        extract = sum(m.get("extract_s", 0.0) for m in metrics) / max(len(metrics), 1)
        cluster = sum(m.get("cluster_s", 0.0) for m in metrics) / max(len(metrics), 1)
        passed = sum(m.get("passed_images", 0.0) for m in metrics) / max(len(metrics), 1)
        lines.append(f"| {row['task']} | every {row['options']['reassign_every']} epoch(s) | "
                     f"{'on' if row['options']['reuse_features'] else 'off'} | {row['epochs']} ({row['warmup_epochs']}) | "
                     f"{row['steps_per_epoch']} | {row['prepare_s']:.1f} | {row['steps_s']:.1f} | "
                     f"{100 * row['outside_share']:.1f}% | {extract:.1f} ({passed:.0f}), {cluster:.1f} |")
    return lines


def probe_rows(args: argparse.Namespace) -> list[dict[str, Any]]:
    from selfsup.cli import probe as ssl_probe  # --probe-args are read as ssl-probe reads its command line

    check_option_values(args, at_least=(("rounds", 1),))
    common = ["--checkpoint", args.checkpoint, "--seed", "0", *shlex.split(args.probe_args)]
    if args.checkpoint == "random":
        common += ["--arch", args.arch]
    if args.data is not None:
        common += ["--data", args.data]
    times: dict[str, list[dict[str, float]]] = {"all": [], args.layer: []}
    records: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory(prefix="ssl-bench-probe-") as scratch:
        for round_ in range(args.rounds):
            for freeze in times:
                print(f"ssl-bench probe: round {round_ + 1}/{args.rounds}, --freeze {freeze} ...", file=sys.stderr,
                      flush=True)
                argv = [*common, "--freeze", freeze, "--out", str(Path(scratch) / f"{freeze}_{round_}.json")]
                with contextlib.redirect_stdout(io.StringIO()):
                    record = records[freeze] = ssl_probe.run(ssl_probe.build_parser().parse_args(argv))
                # the heads of --bn-stats auto's quick probe, then the probe's
                quick = record["protocol"]["bn_stats"].get("quick_probe", {}).get("head_epochs_s", 0.0)
                heads = quick + sum(epoch["seconds"] for epoch in record["history"])
                times[freeze].append({"total_s": record["wall_time_s"], "head_epochs_s": heads,
                                      "dims": sum(layer["dims"] for layer in record["layers"].values())})
    mean = {freeze: {key: sum(t[key] for t in runs) / len(runs) for key in runs[0]} for freeze, runs in times.items()}
    forward = forward_ratio(args.checkpoint, args.arch, args.layer, record["image_size"])
    print("ssl-bench probe: head steps against their memory floor ...", file=sys.stderr, flush=True)
    protocol = record["protocol"]
    steps = measure_head_steps({freeze: {layer: row["dims"] for layer, row in records[freeze]["layers"].items()}
                                for freeze in times}, num_classes=record["classes"],
                               batch_size=protocol["batch_size"],
                               dtype=torch.bfloat16 if protocol["head_precision"] == "bf16" else torch.float32)
    # the runs' time with their head epochs as fast as the floor (the rest as measured)
    at_floor = {freeze: values["total_s"] - values["head_epochs_s"] * (1 - steps[freeze].floor_ms / steps[freeze].step_ms)
                for freeze, values in mean.items()}
    return [{"freeze": freeze, "layers": freeze, **values, "other_s": values["total_s"] - values["head_epochs_s"],
             "ratio_all_vs_one": mean["all"]["total_s"] / mean[args.layer]["total_s"],
             "forward_ratio_all_vs_one": forward, "head_step_ms": steps[freeze].step_ms,
             "head_step_floor_ms": steps[freeze].floor_ms, "ratio_heads_at_floor": at_floor["all"] / at_floor[args.layer],
             "rounds": args.rounds, "probe_command": "ssl-probe " + shlex.join([*common, "--freeze", freeze]),
             "device": "cpu"}
            for freeze, values in mean.items()]


def probe_table(rows: list[dict[str, Any]]) -> list[str]:
    lines = ["| --freeze | feature dims | total s | head epochs s (quick probe + probe) | feature passes, BatchNorm "
             "and evaluation s | ratio_all_vs_one |", "|---|---|---|---|---|---|"]
    lines += [f"| {row['freeze']} | {row['dims']:.0f} | {row['total_s']:.1f} | {row['head_epochs_s']:.1f} | "
              f"{row['other_s']:.1f} | {row['ratio_all_vs_one']:.2f} |" for row in rows]
    all_, one = rows
    return lines + ["", f"Each run: `{all_['probe_command']}` (and the other --freeze), mean of {all_['rounds']} "
                        "alternated round(s); the head epochs include --bn-stats auto's quick probe (10 epochs "
                        "with each of the two statistics).", "",
                    f"Without the heads the runs would take {all_['other_s'] / one['other_s']:.2f}x (the ratio of "
                    f"the feature-pass column): the encoder's forward pass to its last layer alone takes "
                    f"{all_['forward_ratio_all_vs_one']:.2f}x the pass to {one['freeze']} (a batch of 256, "
                    "alternated), and the BatchNorm re-estimation passes every layer in both runs.", "",
                    f"A head step takes {all_['head_step_ms']:.1f} ms on every layer's features ({one['head_step_ms']:.1f} "
                    f"ms on {one['freeze']}'s); the three passes over its batch that no step can skip (gathering its rows "
                    f"from the cache, the forward product, the weight-gradient product) take {all_['head_step_floor_ms']:.1f} "
                    f"ms ({one['head_step_floor_ms']:.1f} ms), random features of the same widths, alternated. With head "
                    f"epochs at that floor the runs would take {all_['ratio_heads_at_floor']:.2f}x."]


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
                                          rounds=args.rounds, device=pick_device(args.device, option="--device")).row())
    return rows


def data_table(rows: list[dict[str, Any]]) -> list[str]:
    lines = ["| task | size | crop px | tile/patch px | batched on | batched ms/img | per-sample PIL ms/img | ratio |",
             "|---|---|---|---|---|---|---|---|"]
    lines += [f"| {row['task']} | {row['scale']} | {row['image_size']} | {row['piece']} | {row['device']} | "
              f"{row['batched_ms_per_image']:.3f} | {row['per_sample_pil_ms_per_image']:.3f} | {row['ratio']:.2f} |"
              for row in rows]
    return lines


MEASURES = {"pipeline": (pipeline_rows, pipeline_table), "threads": (threads_rows, threads_table),
            "data": (data_rows, data_table), "probe": (probe_rows, probe_table),
            "deepcluster": (deepcluster_rows, deepcluster_table), "precision": (precision_rows, precision_table)}


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
        text = [f"# ssl-bench {args.command}", "", f"Made by: `{record['command']}` at commit {record['git_commit']}; "
                f"machine: {machine_text(record['machine'])}.", "", *lines, ""]
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
