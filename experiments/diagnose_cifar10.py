"""Shortcut diagnostics of the CIFAR-10 checkpoints of the tasks table (experiments/results/fair_cifar10.md):
``ssl-diagnose`` on each task's seed-0 checkpoint, on held-out CIFAR-10 test images, with the task's own
options, crops and seeds; a record per task in experiments/records/diagnose_cifar10/, and the table
experiments/results/diagnose_cifar10.md made from the records by ssl-report. About 3 minutes on 2 cores:

    python experiments/diagnose_cifar10.py                 # after the fair_tasks.py runs made the checkpoints
    python experiments/diagnose_cifar10.py --table-only    # the table again from the committed records
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from rotation_vs_random import HERE, cifar_folder, run, tool

TASKS = ("rotation", "jigsaw", "context", "counting", "colorization", "deepcluster")
# relative to the checkout (run from its root, as the other experiment scripts): the table names its command
RECORDS = Path(os.path.relpath(HERE / "records" / "diagnose_cifar10"))
TABLE = Path(os.path.relpath(HERE / "results" / "diagnose_cifar10.md"))
NOTES = Path(os.path.relpath(HERE / "fair_cifar10" / "diagnose_notes.md"))  # what the table shows, by hand
# enough for a solver fitted on half and scored on the other half to be within about 3 points (binomial std
# at 50% on 500 images: 2.2 points)
IMAGES = 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", default="runs/experiments/fair_cifar10",
                        help="where fair_tasks.py put the runs (TASK/seed0/last.pt)")
    parser.add_argument("--data", default=None, help="CIFAR-10 folder (default: extracted from ../shared/data)")
    parser.add_argument("--scratch", default="runs/data/cifar10", help="where the shared archive is extracted")
    parser.add_argument("--table-only", action="store_true", help="rebuild the table from the records")
    args = parser.parse_args()
    if not args.table_only:
        data = args.data or str(cifar_folder(Path(args.scratch)))
        RECORDS.mkdir(parents=True, exist_ok=True)
        for task in TASKS:
            checkpoint = Path(args.runs) / task / "seed0" / "last.pt"
            if not checkpoint.is_file():
                raise SystemExit(f"{checkpoint} does not exist: run python experiments/fair_tasks.py --dataset "
                                 f"cifar10 --task {task} first")
            run([tool("ssl-diagnose"), "--checkpoint", str(checkpoint), "--data", data, "--images", str(IMAGES),
                 "--json", str(RECORDS / f"{task}.json")])
    run([tool("ssl-report"), str(RECORDS), "--out", str(TABLE), "--title",
         "Shortcut diagnostics of the CIFAR-10 tasks-table checkpoints (ssl-diagnose)", "--description",
         f"Each task's seed-0 checkpoint of experiments/results/fair_cifar10.md, {IMAGES} CIFAR-10 test images "
         "(fitted solvers fit on half, scored on the other half; the network is scored on the same inputs). "
         "Made by `python experiments/diagnose_cifar10.py`.", "--notes", str(NOTES)])


if __name__ == "__main__":
    main()
