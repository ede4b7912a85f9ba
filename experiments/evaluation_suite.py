"""Every evaluation protocol on one pretrained encoder and the random baseline, then the table.

    python experiments/evaluation_suite.py --suite demo      # rotation demo checkpoint vs random, demo data
    python experiments/evaluation_suite.py --suite voc-real --checkpoint CKPT   # VOC07 SVMs on raccoon + fruits
    python experiments/evaluation_suite.py --suite demo --table-only            # rebuild from the records

demo: linear probes (all layers), kNN, low-shot linear probes, full fine-tuning, and on the demo
set's VOC split the VOC07 linear SVMs and multi-label fine-tuning (fc6-8 and all); every command's wall time is in its record. voc-real: the VOC07 SVM
protocol on the real photos of ../shared/data (raccoon, fruits) for a checkpoint and a random encoder.
Records go to experiments/records/<suite>_evaluation/, the table to experiments/results/ (ssl-report).
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from rotation_vs_random import HERE, SHARED_DATA, copy_summary, run, shared_voc_folder, tool

VOC_SETS = ("raccoon_voc", "fruits_voc")


def demo_suite(records: Path, runs: Path, checkpoint: str | None) -> None:
    if checkpoint is None:
        out = runs / "rotation"
        run([tool("ssl-pretrain"), "--task", "rotation", "--data", "demo", "--out", str(out)])
        checkpoint = str(out / "last.pt")
    summary = Path(checkpoint).parent / "summary.json"
    if summary.is_file():
        copy_summary(summary, records / "pretrain_rotation.json")
    for name, source in (("rotation", checkpoint), ("random", "random")):
        probe = [tool("ssl-probe"), "--checkpoint", source, "--data", "demo", "--freeze", "all"]
        run([*probe, "--out", str(records / f"linear_{name}.json")])
        run([*probe, "--method", "knn", "--out", str(records / f"knn_{name}.json")])
        run([*probe, "--shots", "1,5,20,100", "--draws", "3", "--out", str(records / f"lowshot_{name}.json")])
        run([tool("ssl-probe"), "--checkpoint", source, "--method", "svm", "--data", "demo-voc", "--freeze", "all",
             "--out", str(records / f"svm_{name}.json")])
        run([tool("ssl-finetune"), "--checkpoint", source, "--data", "demo", "--out", str(records / f"finetune_{name}.json")])
        for freeze, column in (("conv5", "fc6-8"), ("none", "all")):  # the VOC07 classification columns of the papers
            run([tool("ssl-finetune"), "--checkpoint", source, "--data", "demo-voc", "--freeze", freeze,
                 "--out", str(records / f"finetune_voc_{column}_{name}.json")])


def voc_real_suite(records: Path, scratch: Path, checkpoint: str, image_size: int, shared: Path) -> None:
    for name in VOC_SETS:
        folder = shared_voc_folder(name, scratch, shared)
        for method, source in (("rotation", checkpoint), ("random", "random")):
            run([tool("ssl-probe"), "--checkpoint", source, "--method", "svm", "--data", str(folder),
                 "--freeze", "all", "--image-size", str(image_size),
                 "--out", str(records / f"svm_{name}_{method}.json")])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--suite", choices=("demo", "voc-real"), required=True)
    parser.add_argument("--checkpoint", help="pretrained checkpoint (demo: default = pretrain rotation first)")
    parser.add_argument("--image-size", type=int, default=64, help="voc-real: probe input size")
    parser.add_argument("--runs", default="runs/experiments", help="folder for checkpoints (not committed)")
    parser.add_argument("--scratch", default="runs/data/voc", help="voc-real: where the archives are extracted (inside the checkout, so records store it relative)")
    parser.add_argument("--shared-data", default=str(SHARED_DATA), help="voc-real: folder holding the VOC archives")
    parser.add_argument("--table-only", action="store_true", help="rebuild the table from the committed records")
    args = parser.parse_args()
    os.chdir(HERE.parent)  # the recorded commands use paths relative to the repository
    name = f"{args.suite.replace('-', '_')}_evaluation"
    records = HERE / "records" / name
    if not args.table_only:
        records.mkdir(parents=True, exist_ok=True)
        if args.suite == "demo":
            demo_suite(records, Path(args.runs) / name, args.checkpoint)
        else:
            if not args.checkpoint:
                parser.error("--suite voc-real needs --checkpoint")
            voc_real_suite(records, Path(args.scratch), args.checkpoint, args.image_size, Path(args.shared_data))
    titles = {"demo": "Every evaluation protocol on the demo set: rotation vs random",
              "voc-real": "VOC07 linear SVMs on real photos (raccoon, fruits)"}
    table = HERE / "results" / f"{name}.md"
    notes = HERE / name / "NOTES.md"
    run([tool("ssl-report"), str(records.relative_to(HERE.parent)), "--out", str(table.relative_to(HERE.parent)),
         "--title", titles[args.suite], "--description", f"Made by: python experiments/evaluation_suite.py --suite {args.suite}.",
         "--order", "rotation", *(["--notes", str(notes.relative_to(HERE.parent))] if notes.is_file() else [])])
    print(table.read_text())


if __name__ == "__main__":
    main()
