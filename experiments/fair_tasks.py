"""Every pretext task at one equal wall-clock pretraining budget, each beside a random encoder fed as the
task feeds its own, over several seeds, under three probe protocols: the ~9k-dim linear probe, a linear
probe on globally average-pooled features (one value per channel) and kNN.

Each task pretrains with its demo preset and, on CIFAR-10, the options of
``experiments/cifar10_tasks/<task>.yaml``, but for ``--minutes`` of wall time whatever its epochs
(``ssl-pretrain --max-minutes``: the schedule is fitted to the time). Probes use the evaluation rules of
ssl-probe's defaults: the checkpoint's crop size times the task's content scale, the task's evaluation
input, BatchNorm statistics chosen on val (``--bn-stats auto``). The random encoder of each seed is probed
at the same size, fed like the task (``--input-like TASK``), with the same protocols. Records go to
experiments/records/fair_<dataset>/, the table (mean ± std over seeds, Δ with Welch's t-test) to
experiments/results/fair_<dataset>.md, rebuilt from the records alone with --table-only.

One command per task keeps each under about 25 minutes on 2 cores (3 seeds x 5 minutes of pretraining
plus the probes):

    python experiments/fair_tasks.py --dataset cifar10 --task rotation --seeds 0,1,2 --minutes 5
    python experiments/fair_tasks.py --dataset cifar10 --table-only
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
from pathlib import Path

from rotation_vs_random import HERE, cifar_folder, report_table, run, tool

TASKS = ("rotation", "jigsaw", "context", "counting", "colorization", "deepcluster")
# name in the record file -> extra ssl-probe arguments
PROTOCOLS = {"linear": [], "global": ["--pool", "global"], "knn": ["--method", "knn"]}
SPLITS = {
    "cifar10": "CIFAR-10: pretraining on all 50,000 train images; probes trained on 45,000, selected on 5,000 "
               "held out of train, reported on the 10,000 test images",
    "demo": "demo set: 5,000 train / 1,000 val / 1,000 test images, 10 classes",
}
# large enough that the time budget always ends the run first
EPOCH_CEILING = 10_000


def pretrain(task: str, dataset: str, data: str, seed: int, minutes: float, out: Path) -> None:
    options = HERE / f"{dataset}_tasks" / f"{task}.yaml"
    config = ["--preset", "demo", "--config", str(options.relative_to(HERE.parent))] if options.is_file() else []
    run([tool("ssl-pretrain"), "--task", task, *config, "--data", data, "--seed", str(seed), "--out", str(out),
         "--epochs", str(EPOCH_CEILING), "--max-minutes", str(minutes)])


def probe(checkpoint: str, data: str, seed: int, record: Path, extra: list[str]) -> dict:
    run([tool("ssl-probe"), "--checkpoint", checkpoint, "--freeze", "all", "--data", data, "--seed", str(seed),
         *extra, "--out", str(record)])
    return json.loads(record.read_text())


def task_and_baseline(task: str, dataset: str, data: str, seed: int, minutes: float, runs: Path,
                      records: Path) -> None:
    out = runs / task / f"seed{seed}"
    pretrain(task, dataset, data, seed, minutes, out)
    shutil.copy(out / "summary.json", records / f"pretrain_{task}_s{seed}.json")
    size = None
    for name, extra in PROTOCOLS.items():
        record = probe(str(out / "last.pt"), data, seed, records / f"{name}_{task}_s{seed}.json", extra)
        size = record["image_size"]
    # the random encoder of this seed, fed and sized like the task's checkpoint was probed
    for name, extra in PROTOCOLS.items():
        probe("random", data, seed, records / f"{name}_random-{task}_s{seed}.json",
              ["--input-like", task, "--image-size", str(size), *extra])


def write_table(dataset: str) -> Path:
    return report_table(f"fair_{dataset}", f"Pretext tasks at one wall-clock budget on {dataset}, matched random "
                        "encoders, seeds", f"Made by: python experiments/fair_tasks.py --dataset {dataset} (one command "
                        f"per task). {SPLITS[dataset]}.", TASKS)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", choices=sorted(SPLITS), default="cifar10")
    parser.add_argument("--task", choices=TASKS, help="the task to pretrain and probe (with its random baselines)")
    parser.add_argument("--seeds", default="0,1,2", help="pretraining and probe seeds, comma-separated")
    parser.add_argument("--minutes", type=float, default=5.0, help="pretraining wall-clock budget per seed")
    parser.add_argument("--data", help="override the data (default: demo, or CIFAR-10 extracted from ../shared/data)")
    parser.add_argument("--scratch", default="runs/data/cifar10", help="where the CIFAR-10 archive is extracted (inside the checkout, so records store it relative)")
    parser.add_argument("--runs", default="runs/experiments", help="folder for checkpoints and logs (not committed)")
    parser.add_argument("--table-only", action="store_true", help="rebuild the table from the committed records")
    args = parser.parse_args()
    os.chdir(HERE.parent)  # the configs and recorded commands use paths relative to the repository
    if not args.table_only:
        if args.task is None:
            parser.error("give --task (one command per task), or --table-only")
        data = args.data or ("demo" if args.dataset == "demo" else str(cifar_folder(Path(args.scratch))))
        records = HERE / "records" / f"fair_{args.dataset}"
        records.mkdir(parents=True, exist_ok=True)
        for seed in (int(part) for part in args.seeds.split(",") if part.strip()):
            task_and_baseline(args.task, args.dataset, data, seed, args.minutes, Path(args.runs) / f"fair_{args.dataset}",
                              records)
    print(write_table(args.dataset).read_text())


if __name__ == "__main__":
    main()
