"""Every pretext task at one equal wall-clock pretraining budget, each beside a random encoder fed as the
task feeds its own, with seeds, under three probe protocols: the ~9k-dim linear probe, a linear probe on
globally average-pooled features (one value per channel) and kNN.

Each task pretrains once (seed 0) with its demo preset and, on CIFAR-10, the options of
``experiments/cifar10_tasks/<task>.yaml``, but for ``--minutes`` of wall time whatever its epochs
(``ssl-pretrain --max-minutes``: the schedule is fitted to the time); rotation and jigsaw keep a copy of
their checkpoint every few steps for the budget curves. Each encoder is probed with probe seeds 0, 1, 2
(each seed draws its own val split and its own ``--train-images`` training images, and initialises the
heads; for the random encoders it also draws the weights) by one ssl-probe run per seed that gives all
three protocols from one feature pass (``--also global,global-knn``: kNN on globally pooled features), at
the checkpoint's crop size times the task's content scale, through the task's evaluation input, with BatchNorm statistics re-estimated on the
probe's train split for every encoder alike. The random encoder of each seed is probed at the same size,
fed like the task (``--input-like TASK``). Records go to experiments/records/fair_<dataset>/, the table
(mean ± std over seeds, Δ with Welch's t-test) to experiments/results/fair_<dataset>.md, rebuilt from the
records alone with --table-only; the budget curves to experiments/results/fair_<dataset>_curves.{md,png}.

Each command stays under about 25 minutes on 2 cores (the 64 px tasks, jigsaw and context, in two parts):

    python experiments/fair_tasks.py --dataset cifar10 --task rotation          # rotation, counting, colorization, deepcluster
    python experiments/fair_tasks.py --dataset cifar10 --task jigsaw --part task    # and --part random; context alike
    python experiments/fair_tasks.py --dataset cifar10 --curve rotation         # and jigsaw, after their --task
    python experiments/fair_tasks.py --dataset cifar10 --curve context --curve-minutes 8   # a separate 8-minute run
    python experiments/fair_tasks.py --dataset cifar10 --table-only
"""

from __future__ import annotations

import argparse
import json
import os
import re
from pathlib import Path

from rotation_vs_random import HERE, cifar_folder, copy_summary, report_table, run, tool

TASKS = ("rotation", "jigsaw", "context", "counting", "colorization", "deepcluster")
# One ssl-probe run per encoder and seed gives the three protocols from one feature pass: the ~9k-dim linear
# probe, and with --also the linear probe (NAME.global.json) and the kNN probe (NAME.global-knn.json) of
# globally average-pooled features. (kNN on the ~9k-dim features took about 2 of the 3.3 minutes of a run at
# 32 px here: 20,000 queries x 5,000 neighbours x 8,000 dims per layer.) BatchNorm statistics are re-estimated on the probe's train split for every
# encoder alike (a random encoder's are those of its initialisation); bf16 forward passes where the CPU
# multiplies bf16 in hardware (--precision auto; features within about 0.3 points of fp32, measured) and 5,000
# training images per seed keep a run near 3 minutes at 32 px there.
PROBE = ["--freeze", "all", "--bn-stats", "train", "--also", "global,global-knn"]
SPLITS = {
    "cifar10": "CIFAR-10: pretraining on all 50,000 train images; each probe seed holds 5,000 images out of train "
               "as val (selection) and trains on a stratified draw of {train} of the other 45,000; reported on "
               "the 10,000 test images",
    "demo": "demo set: 5,000 train / 1,000 val / 1,000 test images, 10 classes; probes train on {train} of train",
}
# large enough that the time budget always ends the run first
EPOCH_CEILING = 10_000
# pretraining steps between kept checkpoints, for the budget curves: 4 or more points in 4 minutes here
KEEP_EVERY = {"rotation": 75, "jigsaw": 150}
# checkpoints kept along a separate longer run (--curve TASK --curve-minutes M), besides its last
LONG_RUN_POINTS = 3


def pretrain(task: str, dataset: str, data: str, seed: int, minutes: float, out: Path) -> None:
    options = HERE / f"{dataset}_tasks" / f"{task}.yaml"
    config = ["--preset", "demo", "--config", str(options.relative_to(HERE.parent))] if options.is_file() else []
    run([tool("ssl-pretrain"), "--task", task, *config, "--data", data, "--seed", str(seed), "--out", str(out),
         "--epochs", str(EPOCH_CEILING), "--max-minutes", str(minutes), "--keep-every", str(KEEP_EVERY.get(task, 0))])


def probe(checkpoint: str, data: str, seed: int, train_images: int, record: Path, extra: list[str]) -> dict:
    run([tool("ssl-probe"), "--checkpoint", checkpoint, "--data", data, "--seed", str(seed),
         "--train-images", str(train_images), *extra, "--out", str(record)])
    return json.loads(record.read_text())


def task_and_baselines(task: str, args: argparse.Namespace, data: str, runs: Path, records: Path) -> None:
    """--part task: pretraining and the probes of its checkpoint (probes: those only); --part random: the
    random encoders of every probe seed, fed and sized like the task's checkpoint was probed."""
    out = runs / task / f"seed{args.pretrain_seed}"
    if args.part in ("all", "task"):
        pretrain(task, args.dataset, data, args.pretrain_seed, args.minutes, out)
        copy_summary(out / "summary.json", records / f"pretrain_{task}_s{args.pretrain_seed}.json")
    if args.part in ("all", "task", "probes"):
        for seed in args.probe_seeds:
            probe(str(out / "last.pt"), data, seed, args.train_images,
                  records / f"linear_{task}_p{args.pretrain_seed}_s{seed}.json", PROBE)
    if args.part in ("all", "random"):
        size = json.loads((records / f"linear_{task}_p{args.pretrain_seed}_s{args.probe_seeds[0]}.json")
                          .read_text())["image_size"]
        for seed in args.probe_seeds:
            probe("random", data, seed, args.train_images, records / f"linear_random-{task}_s{seed}.json",
                  [*PROBE, "--input-like", task, "--image-size", str(size)])


def budget_curve(task: str, args: argparse.Namespace, data: str, runs: Path, records: Path) -> None:
    """Linear probes (probe seed 0) of every checkpoint kept along the task's pretraining: the table's run, or
    with --curve-minutes a separate longer run that keeps LONG_RUN_POINTS checkpoints (and its last)."""
    out = runs / task / f"seed{args.pretrain_seed}"
    curve = records.parent / f"fair_{args.dataset}_curves"
    curve.mkdir(parents=True, exist_ok=True)
    prefix = task
    if args.curve_minutes:
        prefix = f"{task}-{args.curve_minutes:g}min"
        out = runs / task / f"seed{args.pretrain_seed}-{args.curve_minutes:g}min"
        table_run = json.loads((records / f"pretrain_{task}_s{args.pretrain_seed}.json").read_text())
        # the table's run gives the steps per minute; keep LONG_RUN_POINTS checkpoints along the longer run
        every = max(1, round(table_run["steps"] / args.minutes * args.curve_minutes / LONG_RUN_POINTS))
        options = HERE / f"{args.dataset}_tasks" / f"{task}.yaml"
        config = ["--preset", "demo", "--config", str(options.relative_to(HERE.parent))] if options.is_file() else []
        run([tool("ssl-pretrain"), "--task", task, *config, "--data", data, "--seed", str(args.pretrain_seed),
             "--out", str(out), "--epochs", str(EPOCH_CEILING), "--max-minutes", str(args.curve_minutes),
             "--keep-every", str(every)])
        copy_summary(out / "summary.json", curve / f"{prefix}_pretrain.json")
    kept = sorted(out.glob("step_*.pt"))
    if args.curve_steps:
        kept = [path for path in kept if int(path.stem.split("_")[1]) in args.curve_steps]
    if not kept:
        raise SystemExit(f"no kept checkpoints in {out}: run --task {task} first")
    for checkpoint in kept:
        probe(str(checkpoint), data, 0, args.train_images, curve / f"{prefix}_{checkpoint.stem}.json", PROBE[:-2])
    if args.curve_minutes:
        steps = json.loads((curve / f"{prefix}_pretrain.json").read_text())["steps"]
        probe(str(out / "last.pt"), data, 0, args.train_images, curve / f"{prefix}_step_{steps:06d}.json", PROBE[:-2])
        # step 0 of this series: the random encoder of seed 0, fed and sized like the task, probed by the same code
        size = json.loads((curve / f"{prefix}_step_{steps:06d}.json").read_text())["image_size"]
        probe("random", data, 0, args.train_images, curve / f"{prefix}_step_000000.json",
              [*PROBE[:-2], "--input-like", task, "--image-size", str(size)])


def best_layer(record: dict) -> float:
    return max(layer["test_top1"] for layer in record["layers"].values())


def draw_curves(dataset: str) -> Path | None:
    """Best-layer test top-1 along pretraining, per curve task, from the committed records: the kept
    checkpoints, the last one (the table's probe seed 0) and step 0 (the random encoder of seed 0 fed like
    the task, the table's baseline)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    folder = HERE / "records" / f"fair_{dataset}_curves"
    table = HERE / "records" / f"fair_{dataset}"
    if not folder.is_dir():
        return None
    points: dict[str, list[tuple[int, float]]] = {}
    for path in sorted(folder.glob("*_step_*.json")):
        series, step = re.fullmatch(r"([\w.-]+)_step_(\d+)", path.stem).groups()
        points.setdefault(series, []).append((int(step), best_layer(json.loads(path.read_text()))))
    lines = []
    figure, axes = plt.subplots(figsize=(6, 4))
    for series, kept in points.items():
        task, _, minutes = series.partition("-")
        if minutes:  # a separate longer run: its step 0 (random encoder) and last checkpoint are among its records
            label = f"{task}, separate {minutes} run"
            points_of_run = sorted(kept)
        else:  # the table's run: step 0 and its last checkpoint are the table's probes of seed 0
            label = task
            start = best_layer(json.loads((table / f"linear_random-{task}_s0.json").read_text()))
            last = json.loads((table / f"pretrain_{task}_s0.json").read_text())["steps"]
            end = best_layer(json.loads((table / f"linear_{task}_p0_s0.json").read_text()))
            points_of_run = sorted([(0, start), *kept, (last, end)])
        axes.plot([s for s, _ in points_of_run], [v for _, v in points_of_run], marker="o", label=label)
        lines.append(f"| {label} | " + " | ".join(f"{s}: {v:.2f}" for s, v in points_of_run) + " |")
    axes.set_xlabel("pretraining step")
    axes.set_ylabel("best-layer test top-1 (%), linear probe")
    axes.set_title(f"Probe accuracy along pretraining ({dataset}, seed 0)")
    axes.legend()
    axes.grid(alpha=0.3)
    chart = HERE / "results" / f"fair_{dataset}_curves.png"
    tmp = chart.with_name(f".{chart.name}.tmp.png")
    figure.savefig(tmp, dpi=100, bbox_inches="tight")
    plt.close(figure)
    os.replace(tmp, chart)
    text = HERE / "results" / f"fair_{dataset}_curves.md"
    tmp = text.with_name(f".{text.name}.tmp")
    tmp.write_text(f"# Budget curves on {dataset}: best-layer linear probe along pretraining\n\n"
                   f"Made by: python experiments/fair_tasks.py --dataset {dataset} --table-only, from "
                   f"experiments/records/fair_{dataset}_curves/ (kept checkpoints) and the table's seed-0 records "
                   "(step 0 = the random encoder fed like the task; the last step = the final checkpoint; a "
                   "\"separate N min\" series is its own longer pretraining run, probed along the way and at its end). "
                   f"Chart: fair_{dataset}_curves.png.\n\n| task | step: test top-1 |\n|---|---|\n" + "\n".join(lines) + "\n")
    os.replace(tmp, text)
    return chart


def write_table(dataset: str, train_images: int) -> Path:
    return report_table(f"fair_{dataset}", f"Pretext tasks at one wall-clock budget on {dataset}, matched random "
                        "encoders, seeds", f"Made by: python experiments/fair_tasks.py --dataset {dataset} (one command "
                        f"per task). {SPLITS[dataset].format(train=f'{train_images:,}')}.", TASKS)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", choices=sorted(SPLITS), default="cifar10")
    parser.add_argument("--task", choices=TASKS, help="the task to pretrain and probe (with its random baselines)")
    parser.add_argument("--curve", choices=TASKS, help="probe the checkpoints kept along this task's pretraining")
    parser.add_argument("--part", choices=("all", "task", "probes", "random"), default="all",
                        help="with --task: all, or only the pretraining and its probes (task), or the probes of its "
                             "existing checkpoint (probes), or only the random encoders (random)")
    parser.add_argument("--curve-steps", type=lambda text: [int(part) for part in text.split(",")], default=None,
                        help="with --curve: probe only the checkpoints kept at these steps (default: all kept)")
    parser.add_argument("--curve-minutes", type=float, default=0.0,
                        help="with --curve: pretrain a separate run of this many minutes that keeps checkpoints "
                             "along the way, and probe them (default 0: the table's run's kept checkpoints)")
    parser.add_argument("--pretrain-seed", type=int, default=0)
    parser.add_argument("--probe-seeds", type=lambda text: [int(part) for part in text.split(",")], default=[0, 1, 2],
                        help="probe seeds (val split, training draw, head; for the random encoder also its weights)")
    parser.add_argument("--minutes", type=float, default=4.0, help="pretraining wall-clock budget")
    parser.add_argument("--train-images", type=int, default=5_000, help="probe training images per seed")
    parser.add_argument("--data", help="override the data (default: demo, or CIFAR-10 extracted from ../shared/data)")
    parser.add_argument("--scratch", default="runs/data/cifar10", help="where the CIFAR-10 archive is extracted (inside the checkout, so records store it relative)")
    parser.add_argument("--runs", default="runs/experiments", help="folder for checkpoints and logs (not committed)")
    parser.add_argument("--table-only", action="store_true", help="rebuild the table from the committed records")
    args = parser.parse_args()
    os.chdir(HERE.parent)  # the configs and recorded commands use paths relative to the repository
    if not args.table_only:
        if (args.task is None) == (args.curve is None):
            parser.error("give --task or --curve (one command per task), or --table-only")
        data = args.data or ("demo" if args.dataset == "demo" else str(cifar_folder(Path(args.scratch))))
        records = HERE / "records" / f"fair_{args.dataset}"
        records.mkdir(parents=True, exist_ok=True)
        runs = Path(args.runs) / f"fair_{args.dataset}"
        if args.task:
            task_and_baselines(args.task, args, data, runs, records)
        else:
            budget_curve(args.curve, args, data, runs, records)
    print(write_table(args.dataset, args.train_images).read_text())
    draw_curves(args.dataset)


if __name__ == "__main__":
    main()
