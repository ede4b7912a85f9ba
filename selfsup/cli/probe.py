"""ssl-probe: what a frozen pretrained (or random) encoder's layers know, by several protocols.

    ssl-probe --checkpoint runs/rotation/last.pt --freeze all      # linear probes of conv1..conv5 in one pass
    ssl-probe --checkpoint runs/rotation/last.pt --freeze conv3
    ssl-probe --checkpoint random --freeze all                     # the random-initialisation row
    ssl-probe --checkpoint runs/rotation/last.pt --method knn      # weighted kNN on L2-normalised features
    ssl-probe --checkpoint runs/rotation/last.pt --shots 1,5,10    # low-shot linear probes, several draws
    ssl-probe --checkpoint runs/rotation/last.pt --method svm      # VOC07 linear SVMs on the demo VOC split, mAP
    ssl-probe --checkpoint runs/rotation/last.pt --method svm --data VOC_DIR
    ssl-probe ... --save-features feats/                           # pooled features + labels as .npy

Every choice (probe epoch, kNN k, SVM cost) is made on val (SVM: cross-validation on trainval);
test is evaluated once with the chosen model. Each run writes a JSON record that `ssl-report` reads.

The encoder is fed what its training fed it: whole images at the scale its task declares (the
training crop size for every built-in task; --image-size overrides), through the task's evaluation
input mapping (L, Sobel, one colour channel for context with dropped colours), and, with --bn-stats
train or auto (the default), BatchNorm statistics re-estimated on the probe's train split; the record's
protocol says which size and which statistics were used, and why.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import sys
from typing import Any

from selfsup.cli.common import (
    Parser, add_data_layout_option, add_encoder_arguments, finite_float, int_list, user_errors_exit,
)
from selfsup.config import DataConfig
from selfsup.probes.bn import BN_STATS
from selfsup.probes.knn import DEFAULT_KS
from selfsup.probes.linear import PROTOCOLS
from selfsup.probes.options import ALSO, AUTO_EPOCHS, AUTO_IMAGES, KNN_TEMPERATURE, METHODS, ProbeOptions
from selfsup.probes.pooling import PRESETS
from selfsup.probes.run import run_probe


def name_list(text: str) -> list[str]:
    """argparse type: comma-separated names, e.g. ``knn,global``."""
    return [part.strip() for part in text.split(",") if part.strip()]


def float_list(text: str) -> list[float]:
    """argparse type: comma-separated positive finite numbers, e.g. ``0.01,0.1,1``."""
    try:
        values = [float(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of numbers") from None
    if not values or not all(math.isfinite(v) and v > 0 for v in values):
        raise argparse.ArgumentTypeError(f"{text!r}: give positive finite numbers, e.g. 0.01,0.1,1")
    return values


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="ssl-probe", description=__doc__)
    add_encoder_arguments(parser, out_help="result JSON (default: next to the checkpoint, or under runs/random-ARCH/ "
                                           "for random: probe_all.json, knn_conv3.json, ...)")
    parser.add_argument("--freeze", default="all", help="layer whose output is probed (e.g. conv3, res4), or 'all'")
    parser.add_argument("--method", default="linear", choices=METHODS,
                        help="linear: BatchNorm + linear classifier per layer; knn: weighted kNN vote; svm: one linear "
                             "SVM per class on a VOC-layout dataset (Goyal et al. 2019), mAP")
    parser.add_argument("--data", default=None,
                        help="labelled data (default: the checkpoint's pretraining data, else demo); for --method svm "
                             "a VOC-layout folder, or demo-voc (the default) for the demo set's VOC split")
    parser.add_argument("--data-root", default=None)
    add_data_layout_option(parser)
    parser.add_argument("--pool", default="auto", choices=PRESETS, help="feature pooling: auto (about 9k dims per layer), rotnet, deepcluster (the papers' grids), "
                             "or global (global average: one value per channel)")
    parser.add_argument("--protocol", default="common", choices=sorted(PROTOCOLS), help="optimiser preset (linear)")
    parser.add_argument("--epochs", type=int, help="override the protocol's epochs (milestones scale along)")
    parser.add_argument("--lr", type=finite_float, help="override the protocol's learning rate")
    parser.add_argument("--batch-size", type=int, help="override the protocol's batch size")
    parser.add_argument("--augment", action="store_true",
                        help="linear: random crops and flips for the train split (features are then computed every epoch)")
    parser.add_argument("--knn-k", type=int_list, default=list(DEFAULT_KS),
                        help=f"kNN: neighbour counts to choose from on the selection split (default {','.join(map(str, DEFAULT_KS))})")
    parser.add_argument("--knn-temperature", type=finite_float, default=KNN_TEMPERATURE,
                        help=f"kNN: vote weight exp(similarity / T) (default {KNN_TEMPERATURE}, Wu et al. 2018)")
    parser.add_argument("--svm-costs", type=float_list, default=None,
                        help="svm: costs to cross-validate per class (default: the benchmark's list)")
    parser.add_argument("--shots", type=int_list, default=None,
                        help="low-shot: labelled images per class (svm: positive images per class), e.g. 1,5,10")
    parser.add_argument("--draws", type=int, default=3, help="low-shot: random samples per shot count (mean +- std)")
    parser.add_argument("--train-images", type=int, default=None,
                        help="linear/kNN: train the probe on a stratified random subset of this many images of the "
                             "train split (drawn with --seed; val and test stay whole), for cheaper probes; the "
                             "record's splits say so")
    parser.add_argument("--also", type=name_list, default=[], metavar="PROTOCOLS",
                        help="linear probe with cached features: from the same feature pass, also run any of "
                             f"{', '.join(ALSO)} (knn: the kNN probe; global: the linear probe of globally "
                             "average-pooled features; global-knn: kNN on those) on the same splits, size and "
                             "BatchNorm statistics, each written as its own record beside --out (NAME.knn.json, "
                             "NAME.global.json, NAME.global-knn.json)")
    parser.add_argument("--selection-split", default="val",
                        help="split that chooses epochs and k: val (default); test is refused unless forced")
    parser.add_argument("--force-test-selection", action="store_true",
                        help="allow --selection-split test; the record and its tables are marked as test-selected")
    parser.add_argument("--save-features", default=None, metavar="DIR",
                        help="also write each split's pooled features per layer, labels and source indices as .npy")
    parser.add_argument("--max-cache-gb", type=finite_float, default=6.0,
                        help="cache pooled features in memory up to this size; above it they are streamed")
    parser.add_argument("--image-size", type=int, default=None,
                        help=f"probe input size (default: the scale the checkpoint's task trained its encoder at, i.e. "
                             f"its eval_image_size of the training crop size; {DataConfig.image_size} for --checkpoint "
                             "random); the record says which size was used and why")
    parser.add_argument("--bn-stats", default="auto", choices=BN_STATS,
                        help="BatchNorm statistics of the frozen encoder: re-estimated on the probe's train split "
                             "(train), the checkpoint's, or auto: the better of the two on a quick linear probe "
                             f"scored on the selection split (up to {AUTO_IMAGES} images of each split, "
                             f"{AUTO_EPOCHS} epochs); auto is train for svm (no val split) and low-shot probes "
                             "(the quick probe would use more labels than the shots)")
    parser.add_argument("--precision", default="auto", choices=("auto", "fp32", "bf16"),
                        help="the frozen encoder's forward passes: auto = bf16 autocast on CUDA and on CPUs that "
                             "multiply bf16 in hardware (AVX512-BF16, AMX: about 1.6x faster there, accuracies "
                             "within about 0.1-0.3 points of fp32), fp32 elsewhere (features are cached in bf16 "
                             "either way); the record names what ran")
    parser.add_argument("--head-precision", default="auto", choices=("auto", "fp32", "bf16"),
                        help="the linear heads' matrix products (parameters stay fp32): auto = bf16 on CUDA and on "
                             "CPUs with AVX512-BF16 or AMX (about 3x faster head steps), fp32 elsewhere")
    parser.add_argument("--eval-crop", type=finite_float, default=None,
                        help="central fraction of the short side kept at evaluation (default 1.0 below 96 px, else 0.875)")
    return parser


def options_from(args: argparse.Namespace) -> ProbeOptions:
    """The probe's options from the parsed arguments (``--debug`` and ``--threads`` act in the parser)."""
    return ProbeOptions(**{field.name: getattr(args, field.name) for field in dataclasses.fields(ProbeOptions)})


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Runs the probe the arguments ask for, prints each record's table and where it went, and returns the
    probe's record."""
    result = run_probe(options_from(args))
    for record, path in result.written:
        print(format_table(record))
        print(f"record written to {path}")
    record = result.record
    selection = record["selection_split"] + (" (FORCED: test-selected)" if record["forced_test_selection"] else "")
    print(f"\nselection on {selection}, reported on {record['reported_split']}; {record['bad_files_skipped']} "
          f"unreadable files skipped; {record['wall_time_s']} s")
    return record


def format_table(record: dict[str, Any]) -> str:
    """The record as the lines printed after a run: a title, then a row per layer."""
    kind = record["kind"]
    title = f"{kind}: {record['method']} ({record['encoder']['arch']}), data {record['data']}"
    rows = [title]
    for layer, r in record["layers"].items():
        if kind in ("linear_probe", "knn"):
            chosen = f"epoch {r['best_epoch']}" if kind == "linear_probe" else f"k {r['k']}"
            rows.append(f"{layer:<7}{r['dims']:>7}  {r['pooling']:<22}{chosen:>10}  val@1 {r['val_top1']:6.2f}  "
                        f"test@1 {r['test_top1']:6.2f}  test@5 {r['test_top5']:6.2f}")
        elif kind == "svm_voc07":
            per_class = "  ".join(f"{cls} {ap if ap is not None else 'n/a'}" for cls, ap in r["test_AP"].items())
            rows.append(f"{layer:<7}{r['dims']:>7}  mAP {r['test_mAP']}  (area {r['test_mAP_area']})  {per_class}")
        else:
            metric = "test_top1" if kind == "lowshot_linear" else "test_mAP"
            shots = "  ".join(f"k={k}: {v[metric]['mean']:.2f}+-{v[metric]['std']:.2f}"
                              for k, v in r.items() if isinstance(v, dict) and metric in v)
            rows.append(f"{layer:<7}{r['dims']:>7}  {shots}")
    return "\n".join(rows)


@user_errors_exit
def main(argv: list[str] | None = None) -> int:
    run(build_parser().parse_args(argv))
    return 0


if __name__ == "__main__":
    sys.exit(main())
