"""The learned lens (``lens.enabled``, Minderer et al. 2020; selfsup/models/lens.py) on CIFAR-10: each task
pretrained with and without it at the budget of the tasks table (``experiments/cifar10_tasks/<task>.yaml``
on the demo preset), then conv1..conv5 linear probes at 32 px, seed by seed, beside a random encoder.

Records go to experiments/records/lens_cifar10/ and the table, rebuilt by ssl-report from the records alone,
to experiments/results/lens_cifar10.md. A run whose probe record exists is skipped: the same command picks
up where a stopped one left off, and more seeds are added by naming them.

    python experiments/lens_cifar10.py --tasks jigsaw context --seeds 0       # ~60 min on 2 cores
    python experiments/lens_cifar10.py --tasks rotation jigsaw context --seeds 0 1 2
    python experiments/lens_cifar10.py --tasks jigsaw --seeds 0 --variants lens-w3
    python experiments/lens_cifar10.py --table-only
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from rotation_vs_random import HERE, cifar_folder, copy_summary, report_table, run, tool

TASKS = ("rotation", "jigsaw", "context")
NAME = "lens_cifar10"
# "lens-w3": a penalty 10x the default (lens.reconstruction_weight 3, the largest that still passes the
# planted-shortcut test), tried where the default lens erased too much (jigsaw)
VARIANTS = {"plain": [], "lens": ["--set", "lens.enabled=true"],
            "lens-w3": ["--set", "lens.enabled=true", "--set", "lens.reconstruction_weight=3"]}


def pretrain_and_probe(task: str, variant: str, seed: int, data: str, runs: Path, records: Path) -> None:
    probe = records / f"probe_{task}_{variant}_s{seed}.json"
    if probe.is_file():
        print(f"{probe} exists: skipped", flush=True)
        return
    out = runs / f"{task}_{variant}_s{seed}"
    budget = HERE / "cifar10_tasks" / f"{task}.yaml"
    run([tool("ssl-pretrain"), "--task", task, "--preset", "demo", "--config", str(budget.relative_to(HERE.parent)),
         *VARIANTS[variant], "--set", f"train.seed={seed}", "--data", data, "--out", str(out)])
    copy_summary(out / "summary.json", records / f"pretrain_{task}_{variant}_s{seed}.json")
    run([tool("ssl-probe"), "--checkpoint", str(out / "last.pt"), "--freeze", "all", "--data", data,
         "--image-size", "32", "--seed", str(seed), "--out", str(probe)])


def probe_random(seed: int, data: str, records: Path) -> None:
    probe = records / f"probe_random_s{seed}.json"
    if not probe.is_file():
        run([tool("ssl-probe"), "--checkpoint", "random", "--freeze", "all", "--data", data, "--input-like",
             "rotation", "--image-size", "32", "--seed", str(seed), "--out", str(probe)])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", help="override the data (default: CIFAR-10 extracted from ../shared/data)")
    parser.add_argument("--scratch", default="runs/data/cifar10", help="where the CIFAR-10 archive is extracted")
    parser.add_argument("--runs", default="runs/experiments", help="folder for checkpoints and logs (not committed)")
    parser.add_argument("--tasks", nargs="+", choices=TASKS, default=list(TASKS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0])
    parser.add_argument("--variants", nargs="+", choices=VARIANTS, default=["plain", "lens"],
                        help="which pretrainings of each task and seed (default: plain and lens)")
    parser.add_argument("--random", action="store_true", help="also probe a random encoder with each seed")
    parser.add_argument("--table-only", action="store_true", help="rebuild the table from the committed records")
    args = parser.parse_args()
    os.chdir(HERE.parent)  # the configs and recorded commands use paths relative to the repository
    if not args.table_only:
        data = args.data or str(cifar_folder(Path(args.scratch)))
        records = HERE / "records" / NAME
        records.mkdir(parents=True, exist_ok=True)
        runs = Path(args.runs) / NAME
        for seed in args.seeds:
            for task in args.tasks:
                for variant in args.variants:
                    pretrain_and_probe(task, variant, seed, data, runs, records)
            if args.random:
                probe_random(seed, data, records)
    table = report_table(NAME, "The learned lens on CIFAR-10: conv1..conv5 linear probes with and without it",
                         "Made by: python experiments/lens_cifar10.py (see its --tasks and --seeds). CIFAR-10: "
                         "pretraining on all 50,000 train images at the tasks table's budget (same epochs with "
                         "and without the lens); probes trained on 45,000, selected on 5,000 held out of train, "
                         "reported on the 10,000 test images", TASKS)
    print(table.read_text())


if __name__ == "__main__":
    main()
