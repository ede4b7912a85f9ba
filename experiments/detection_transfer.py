"""Detection transfer (ssl-detect): a pretrained backbone, a random one and a supervised one trained with
the same detector, budget and seed, then the VOC AP table (ssl-report).

    python experiments/detection_transfer.py --suite demo                  # demo VOC split, ssl-detect defaults
    python experiments/detection_transfer.py --suite voc-real --rotation CKPT --supervised CKPT
    python experiments/detection_transfer.py --suite voc-real --rotation CKPT --seeds 1,2 --methods rotation,random
    python experiments/detection_transfer.py --suite voc-real --table-only # rebuild from the records

demo: the rotation and supervised demo checkpoints (pretrained first with `ssl-pretrain --task rotation`
/ `--task supervised` unless given) and a random AlexNet-small, each with `ssl-detect` defaults.
voc-real: the real photos of ../shared/data (raccoon: 1 class, 120 train images; fruits: 3 classes, 192
train images) at one fixed CPU budget: about 1,500 training images per run (EPOCHS below), the default
128 px short side. Encoders are pretrained elsewhere on CIFAR-10 (no detection data), e.g.
    ssl-pretrain --task rotation --config experiments/cifar10_rotation.yaml --data runs/data/cifar10/cifar10
    ssl-pretrain --task supervised --config experiments/cifar10_rotation.yaml --data runs/data/cifar10/cifar10
so that "supervised" means the same encoder and budget trained on CIFAR-10's labels.
Records go to experiments/records/<suite>_detection/, the table to experiments/results/<suite>_detection.md.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from rotation_vs_random import HERE, SHARED_DATA, copy_summary, run, shared_voc_folder, tool

# voc-real budget: epochs per data set so that every run trains on about 1,500 images
EPOCHS = {"raccoon_voc": 12, "fruits_voc": 8}
ORDER = ("rotation", "supervised")


def int_list_or_zero(text: str) -> list[int]:
    return [int(part) for part in text.split(",")]


def copy_pretraining(checkpoint: str, records: Path, method: str) -> None:
    summary = Path(checkpoint).parent / "summary.json"
    if summary.is_file():
        copy_summary(summary, records / f"pretrain_{method}.json")


def demo_suite(records: Path, runs: Path, checkpoints: dict[str, str | None]) -> None:
    for method in ORDER:
        checkpoint = checkpoints[method]
        if checkpoint is None:
            run([tool("ssl-pretrain"), "--task", method, "--data", "demo", "--out", str(runs / method)])
            checkpoint = str(runs / method / "last.pt")
        copy_pretraining(checkpoint, records, method)
        run([tool("ssl-detect"), "--checkpoint", checkpoint, "--out", str(records / f"detect_{method}.json")])
    run([tool("ssl-detect"), "--checkpoint", "random", "--out", str(records / "detect_random.json")])


def voc_real_suite(records: Path, scratch: Path, shared: Path, checkpoints: dict[str, str | None],
                   seeds: list[int], methods: list[str]) -> None:
    """Every data set x method x seed; seed 0 is the table's main run, other seeds add a mean ± std."""
    if checkpoints["rotation"] is None and "rotation" in methods:
        raise SystemExit("--suite voc-real needs --rotation CKPT (see the commands in this script's help)")
    for method, checkpoint in checkpoints.items():
        if checkpoint is not None:
            copy_pretraining(checkpoint, records, method)
    sources = {**{m: c for m, c in checkpoints.items() if c is not None}, "random": "random"}
    for name, epochs in EPOCHS.items():
        folder = shared_voc_folder(name, scratch, shared)
        for seed in seeds:
            for method in (m for m in sources if m in methods):
                suffix = f"_seed{seed}" if seed else ""
                run([tool("ssl-detect"), "--checkpoint", sources[method], "--data", str(folder), "--epochs", str(epochs),
                     "--seed", str(seed), "--out", str(records / f"detect_{name}_{method}{suffix}.json")])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--suite", choices=("demo", "voc-real"), required=True)
    parser.add_argument("--rotation", help="rotation checkpoint (demo: default = pretrain one first)")
    parser.add_argument("--supervised", help="supervised checkpoint (demo: default = pretrain one first)")
    parser.add_argument("--runs", default="runs/experiments", help="folder for checkpoints (not committed)")
    parser.add_argument("--scratch", default="runs/data/voc", help="voc-real: where the archives are extracted (inside the checkout, so records store it relative)")
    parser.add_argument("--shared-data", default=str(SHARED_DATA), help="voc-real: folder holding the VOC archives")
    parser.add_argument("--seeds", type=int_list_or_zero, default=[0], help="voc-real: seeds, e.g. 0,1,2 (default 0)")
    parser.add_argument("--methods", default="rotation,supervised,random",
                        help="voc-real: which backbones to train (default rotation,supervised,random)")
    parser.add_argument("--table-only", action="store_true", help="rebuild the table from the committed records")
    args = parser.parse_args()
    checkpoints = {"rotation": args.rotation, "supervised": args.supervised}
    checkpoints = {m: (str(Path(c).resolve()) if c else None) for m, c in checkpoints.items()}
    os.chdir(HERE.parent)  # the recorded commands use paths relative to the repository
    name = f"{args.suite.replace('-', '_')}_detection"
    records = HERE / "records" / name
    if not args.table_only:
        records.mkdir(parents=True, exist_ok=True)
        if args.suite == "demo":
            demo_suite(records, Path(args.runs) / name, checkpoints)
        else:
            voc_real_suite(records, Path(args.scratch), Path(args.shared_data), checkpoints, args.seeds,
                           args.methods.split(","))
    table = HERE / "results" / f"{name}.md"
    notes = HERE / name / "NOTES.md"
    budget = ("ssl-detect defaults" if args.suite == "demo" else
              ", ".join(f"{data}: {epochs} epochs" for data, epochs in EPOCHS.items()) + " (about 1,500 training images each)")
    run([tool("ssl-report"), f"experiments/records/{name}", "--out", str(table.relative_to(HERE.parent)),
         "--title", f"Detection transfer ({args.suite}): Faster R-CNN with pretrained, random and supervised backbones",
         "--description", f"Made by: python experiments/detection_transfer.py --suite {args.suite}. Every backbone "
         f"is fine-tuned end to end with the same detector, schedule and seed; budget: {budget}; epoch kept by val mAP.",
         "--order", ",".join(ORDER), *(["--notes", str(notes.relative_to(HERE.parent))] if notes.is_file() else [])])
    print(table.read_text())


if __name__ == "__main__":
    main()
