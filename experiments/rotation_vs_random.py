"""Rotation pretraining, then conv1..conv5 linear probes of the pretrained encoder beside a random
one (and, with --supervised, an encoder trained on the labels), at a fixed CPU budget.

Writes the run records under experiments/records/<name>/ and the table
experiments/results/<name>.md, which is rebuilt from those records alone (--table-only).

    python experiments/rotation_vs_random.py --dataset demo --supervised    # the README's demo commands
    python experiments/rotation_vs_random.py --dataset cifar10              # real CIFAR-10 from ../shared/data
    python experiments/rotation_vs_random.py --dataset cifar10 --table-only
"""

from __future__ import annotations

import argparse
import os
import json
import shutil
import subprocess
import sys
import tarfile
from collections.abc import Sequence
from pathlib import Path

HERE = Path(__file__).resolve().parent
SHARED_DATA = HERE.parent.parent / "shared" / "data"  # ../shared/data beside the repository
CIFAR_ARCHIVE = SHARED_DATA / "cifar10-jpg.tar.gz"
LAYERS = ("conv1", "conv2", "conv3", "conv4", "conv5")
# per dataset: pretraining flags (beyond --data/--out) and a description of the splits
PRESETS = {
    "demo": {"pretrain": [], "splits": "demo set: 5,000 train / 1,000 val / 1,000 test images, 10 classes"},
    "cifar10": {
        "pretrain": ["--config", "experiments/cifar10_rotation.yaml"],
        "splits": "CIFAR-10: pretraining on all 50,000 train images; probes trained on 45,000, "
        "selected on 5,000 held out of train, reported on the 10,000 test images",
    },
}


def cifar_folder(scratch: Path) -> Path:
    if not CIFAR_ARCHIVE.is_file():
        sys.exit(f"{CIFAR_ARCHIVE} does not exist: pass --data with a folder holding train/<class>/ and test/<class>/")
    target = scratch / "cifar10"
    if not (target / "test").is_dir():
        print(f"extracting {CIFAR_ARCHIVE} to {scratch} ...", flush=True)
        with tarfile.open(CIFAR_ARCHIVE) as archive:
            archive.extractall(scratch, filter="data")
    return target


def shared_voc_folder(name: str, scratch: Path, shared: Path) -> Path:
    """A VOC-layout set of ../shared/data (e.g. raccoon_voc), extracted to ``scratch`` the first time."""
    target = scratch / name
    if not target.is_dir():
        archive = shared / f"{name}.tar.gz"
        if not archive.is_file():
            sys.exit(f"{archive} does not exist: this suite needs ../shared/data (or --shared-data)")
        with tarfile.open(archive) as tar:
            tar.extractall(scratch, filter="data")
    return target


def tool(name: str) -> str:
    found = shutil.which(name, path=str(Path(sys.executable).parent)) or shutil.which(name)
    if not found:
        sys.exit(f"{name} not found: install the project first (pip install -e .)")
    return found


def run(command: list[str]) -> None:
    print("$", " ".join(command), flush=True)
    subprocess.run(command, check=True)


def copy_summary(summary: Path, record: Path) -> None:
    """An ssl-pretrain summary.json copied among the records in their portable form (paths relative to the
    record's folder inside the checkout, as ssl-probe writes its records)."""
    from selfsup.probes.records import write_record

    write_record(json.loads(summary.read_text()), record)


def pretrain_and_probe(task: str, data: str, runs: Path, records: Path, extra: list[str]) -> None:
    out = runs / task
    run([tool("ssl-pretrain"), "--task", task, *extra, "--data", data, "--out", str(out)])
    copy_summary(out / "summary.json", records / f"pretrain_{task}.json")
    run([tool("ssl-probe"), "--checkpoint", str(out / "last.pt"), "--freeze", "all", "--out", str(records / f"probe_{task}.json")])


def report_table(name: str, title: str, description: str, order: Sequence[str]) -> Path:
    """experiments/results/<name>.md and .png, built by ssl-report from experiments/records/<name> alone, with
    experiments/<name>/NOTES.md appended when it exists."""
    table = HERE / "results" / f"{name}.md"
    notes = HERE / name / "NOTES.md"
    run([tool("ssl-report"), f"experiments/records/{name}", "--out", str(table.relative_to(HERE.parent)),
         "--title", title, "--description", description, "--order", ",".join(order),
         *(["--notes", str(notes.relative_to(HERE.parent))] if notes.is_file() else [])])
    return table


def write_table(name: str, dataset: str) -> Path:
    """experiments/results/<name>.md and .png, built by ssl-report from the records alone."""
    table = HERE / "results" / f"{name}.md"
    run([tool("ssl-report"), f"experiments/records/{name}", "--out", str(table.relative_to(HERE.parent)),
         "--title", f"Rotation vs random on {dataset}: conv1..conv5 linear probes",
         "--description", f"Made by: python experiments/rotation_vs_random.py --dataset {dataset}. "
         f"{PRESETS[dataset]['splits']}.", "--order", "rotation,supervised"])
    return table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", choices=sorted(PRESETS), required=True)
    parser.add_argument("--data", help="override the data (default: demo, or CIFAR-10 extracted from ../shared/data)")
    parser.add_argument("--scratch", default="runs/data/cifar10", help="where the CIFAR-10 archive is extracted (inside the checkout, so records store it relative)")
    parser.add_argument("--runs", default="runs/experiments", help="folder for checkpoints and logs (not committed)")
    parser.add_argument("--supervised", action="store_true", help="also train and probe the supervised upper bound")
    parser.add_argument("--table-only", action="store_true", help="rebuild the table from the committed records")
    args = parser.parse_args()
    os.chdir(HERE.parent)  # the presets and recorded commands use paths relative to the repository
    name = f"{args.dataset}_rotation"
    if not args.table_only:
        data = args.data or ("demo" if args.dataset == "demo" else str(cifar_folder(Path(args.scratch))))
        records = HERE / "records" / name
        records.mkdir(parents=True, exist_ok=True)
        runs = Path(args.runs) / args.dataset
        extra = PRESETS[args.dataset]["pretrain"]
        pretrain_and_probe("rotation", data, runs, records, extra)
        if args.supervised:
            pretrain_and_probe("supervised", data, runs, records, extra)
        run([tool("ssl-probe"), "--checkpoint", "random", "--freeze", "all", "--data", data,
             "--out", str(records / "probe_random.json")])
    print(write_table(name, args.dataset).read_text())


if __name__ == "__main__":
    main()
