"""Every pretext task at the same fixed CPU budget, then conv1..conv5 linear probes beside random
encoders fed as the tasks feed theirs (RGB, and L only for colorization).

Each task trains with its demo preset (``selfsup/presets/demo/<task>.yaml``: crop size, optimiser,
task knobs). On CIFAR-10 the budget comes from ``experiments/cifar10_tasks/<task>.yaml``: a number of
epochs per task chosen so that every task gets about the same minutes of this 2-core CPU (the tasks
differ in cost per image: rotation feeds 4 views, jigsaw 9 tiles, counting 5 half-size views, context
2 patches, colorization 1 L image), and every probe runs at CIFAR's 32 px. On the demo set each task
runs exactly as `ssl-pretrain --task NAME` does and is probed at its own crop size, beside random
encoders at 32 and 64 px. Records go to experiments/records/<dataset>_tasks/, the table to
experiments/results/<dataset>_tasks.md, rebuilt from the records alone with --table-only; an optional
experiments/<dataset>_tasks/NOTES.md is appended to the table.

    python experiments/pretext_tasks.py --dataset cifar10                         # all tasks (~80 min)
    python experiments/pretext_tasks.py --dataset cifar10 --tasks jigsaw counting # some of them
    python experiments/pretext_tasks.py --dataset demo                            # the defaults (~25 min)
    python experiments/pretext_tasks.py --dataset cifar10 --table-only
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from rotation_vs_random import HERE, cifar_folder, copy_summary, report_table, run, tool

TASKS = ("rotation", "jigsaw", "context", "counting", "colorization", "deepcluster")
DATASETS = {
    "cifar10": {
        # every checkpoint is probed at CIFAR's native 32 px, whatever its training crop
        "probe_size": 32,
        # random baselines: record name -> (task whose input mapping the encoder is fed, probe size)
        "random": {"random": ("rotation", 32), "random_L": ("colorization", 32)},
        "splits": "CIFAR-10: pretraining on all 50,000 train images; probes trained on 45,000, "
        "selected on 5,000 held out of train, reported on the 10,000 test images",
    },
    "demo": {
        # what a user gets from `ssl-pretrain --task NAME` then `ssl-probe`: each checkpoint at its own crop size
        "probe_size": None,
        "random": {"random_32": ("rotation", 32), "random_64": ("rotation", 64), "random_L_32": ("colorization", 32)},
        "splits": "demo set: 5,000 train / 1,000 val / 1,000 test images, 10 classes",
    },
}

def pretrain_and_probe(task: str, dataset: str, data: str, runs: Path, records: Path) -> None:
    out = runs / task
    budget = HERE / f"{dataset}_tasks" / f"{task}.yaml"
    config = ["--preset", "demo", "--config", str(budget.relative_to(HERE.parent))] if budget.is_file() else []
    run([tool("ssl-pretrain"), "--task", task, *config, "--data", data, "--out", str(out)])
    copy_summary(out / "summary.json", records / f"pretrain_{task}.json")
    size = DATASETS[dataset]["probe_size"]
    run([tool("ssl-probe"), "--checkpoint", str(out / "last.pt"), "--freeze", "all", "--data", data,
         *(["--image-size", str(size)] if size else []), "--out", str(records / f"probe_{task}.json")])


def probe_random(name: str, dataset: str, data: str, records: Path) -> None:
    input_like, size = DATASETS[dataset]["random"][name]
    run([tool("ssl-probe"), "--checkpoint", "random", "--freeze", "all", "--data", data,
         "--input-like", input_like, "--image-size", str(size), "--out", str(records / f"probe_{name}.json")])


def write_table(dataset: str) -> Path:
    """experiments/results/<dataset>_tasks.md and .png, built by ssl-report from the records alone."""
    return report_table(f"{dataset}_tasks", f"Pretext tasks at one CPU budget on {dataset}: conv1..conv5 linear probes",
                        f"Made by: python experiments/pretext_tasks.py --dataset {dataset}. "
                        f"{DATASETS[dataset]['splits']}.", TASKS)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", choices=sorted(DATASETS), default="cifar10")
    parser.add_argument("--data", help="override the data (default: demo, or CIFAR-10 extracted from ../shared/data)")
    parser.add_argument("--scratch", default="runs/data/cifar10", help="where the CIFAR-10 archive is extracted (inside the checkout, so records store it relative)")
    parser.add_argument("--runs", default="runs/experiments", help="folder for checkpoints and logs (not committed)")
    parser.add_argument("--tasks", nargs="*", choices=TASKS,
                        help="tasks to run (default: every task; on CIFAR-10, those with a budget file)")
    parser.add_argument("--random", nargs="*", help="random baselines to probe (default: all of the dataset's)")
    parser.add_argument("--table-only", action="store_true", help="rebuild the table from the committed records")
    args = parser.parse_args()
    os.chdir(HERE.parent)  # the configs and recorded commands use paths relative to the repository
    unknown = sorted(set(args.random or []) - set(DATASETS[args.dataset]["random"]))
    if unknown:
        parser.error(f"--random {unknown[0]} is not a baseline of {args.dataset}: {', '.join(DATASETS[args.dataset]['random'])}")
    if not args.table_only:
        data = args.data or ("demo" if args.dataset == "demo" else str(cifar_folder(Path(args.scratch))))
        records = HERE / "records" / f"{args.dataset}_tasks"
        records.mkdir(parents=True, exist_ok=True)
        runs = Path(args.runs) / f"{args.dataset}_tasks"
        tasks = args.tasks
        if tasks is None:
            with_budget = [t for t in TASKS if (HERE / f"{args.dataset}_tasks" / f"{t}.yaml").is_file()]
            tasks = list(TASKS) if args.dataset == "demo" else with_budget
        for task in tasks:
            pretrain_and_probe(task, args.dataset, data, runs, records)
        for name in DATASETS[args.dataset]["random"] if args.random is None else args.random:
            probe_random(name, args.dataset, data, records)
    print(write_table(args.dataset).read_text())


if __name__ == "__main__":
    main()
