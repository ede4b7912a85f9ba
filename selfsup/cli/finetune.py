"""ssl-finetune: full fine-tuning of a pretrained (or random) encoder with a new classifier.

    ssl-finetune --checkpoint runs/rotation/last.pt                    # everything trained ("all")
    ssl-finetune --checkpoint runs/rotation/last.pt --freeze conv3     # conv1-3 frozen, conv4+ trained
    ssl-finetune --checkpoint runs/rotation/last.pt --data demo-voc --freeze conv5   # VOC "fc6-8"
    ssl-finetune --checkpoint random                                   # the random-initialisation row

The task's evaluation input mapping (L only for colorization, Sobel for DeepCluster, one colour
channel for context with dropped colours) stays in front of the encoder, images are fed at the scale
the task trained the encoder at (--image-size overrides), and the encoder's BatchNorm statistics are
re-estimated on the train split first (--bn-stats train, the default): frozen stages keep them. Training: 8 epochs (30 on VOC), batch 64, random-resized crops (50-100% of the area) and
flips, bf16 autocast; SGD with lr 0.02, momentum 0.9, weight decay 5e-4 (none on biases and
BatchNorms), one epoch of linear warm-up then a cosine decay to zero.
After every epoch the selection split (val) is scored and the best epoch's weights are kept in
memory; test is evaluated once, with them. A VOC-layout folder (or demo-voc) is fine-tuned as
multi-label classification (one sigmoid per class, mAP), selected on VOC val, reported on VOC test.

Nothing is written until the end: an interrupted run leaves no record.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from typing import Any

from selfsup.cli.common import (
    Parser, add_data_layout_option, add_encoder_arguments, finite_float, run_until_record, user_errors_exit,
)
from selfsup.probes.finetune import MultiLabel, Objective, SingleLabel
from selfsup.probes.finetune_run import EPOCHS, FinetuneOptions, run_finetune
from selfsup.probes.records import SELECTION_SPLITS


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="ssl-finetune", description=__doc__)
    add_encoder_arguments(parser, out_help="result JSON (default: next to the checkpoint, or under runs/random-ARCH/ "
                                           "for random: finetune_FREEZE.json, finetune-voc_FREEZE.json for VOC)")
    parser.add_argument("--data", default=None,
                        help="labelled data, or a VOC-layout folder / demo-voc for multi-label "
                             "(default: the checkpoint's pretraining data, else demo)")
    parser.add_argument("--data-root", default=None)
    add_data_layout_option(parser)
    parser.add_argument("--freeze", default="none",
                        help="'none' trains everything; a layer (e.g. conv2, res3) freezes it and all before it, "
                             "BatchNorm statistics included")
    parser.add_argument("--epochs", type=int, default=None,
                        help=f"default {EPOCHS['single-label']}, or {EPOCHS['multi-label']} for VOC, whose train splits are "
                             "small (200 images in demo-voc, 2,501 in VOC2007)")
    parser.add_argument("--lr", type=finite_float, default=0.02, help="peak learning rate (batch 64)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--schedule", default="cosine", choices=("cosine", "step"),
                        help="after one warm-up epoch: cosine to zero, or x0.1 at 50%% and 75%% of the epochs")
    parser.add_argument("--hidden", type=int, default=None,
                        help="fc6/fc7 width of the AlexNet head (default: 4096 from 160 px, 1024 from 96 px, else 512)")
    parser.add_argument("--image-size", type=int, default=None,
                        help="input size (default: the scale the checkpoint's task trained its encoder at, i.e. its "
                             "eval_image_size of the training crop size; the demo preset's for random)")
    parser.add_argument("--bn-stats", default="train", choices=("train", "checkpoint"),
                        help="BatchNorm statistics to start from, and to keep in frozen stages: re-estimated on the "
                             "train split's images (default) or the checkpoint's (ssl-probe's auto would fine-tune "
                             "twice)")
    parser.add_argument("--eval-crop", type=finite_float, default=None,
                        help="central fraction of the short side kept at evaluation (default 1.0 below 96 px, else 0.875)")
    parser.add_argument("--precision", default="auto", choices=("auto", "fp32", "bf16"),
                        help="auto (default) = bf16 autocast on CUDA and on CPUs that multiply bf16 in hardware "
                             "(AVX512-BF16, AMX: about 3x faster there), fp32 elsewhere, where bf16 is emulated "
                             "and about 3x slower")
    parser.add_argument("--selection-split", default="val", choices=SELECTION_SPLITS,
                        help="split that picks the epoch kept; test is refused without --force-test-selection")
    parser.add_argument("--force-test-selection", action="store_true",
                        help="allow --selection-split test; the record is marked as test-selected")
    return parser


def options_from(args: argparse.Namespace) -> FinetuneOptions:
    """The run's options from the parsed arguments (``--debug`` and ``--threads`` act in the parser)."""
    return FinetuneOptions(**{field.name: getattr(args, field.name) for field in dataclasses.fields(FinetuneOptions)})


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Runs the fine-tuning the arguments ask for, prints its summary and where the record went, and returns
    the record."""
    result = run_finetune(options_from(args))
    record = result.record
    print(format_summary(record, result.objective))
    forced = " (FORCED: test-selected)" if record["forced_test_selection"] else ""
    print(f"\nselected on {record['selection_split']}{forced}, reported on test; {record['bad_files_skipped']} "
          f"unreadable files skipped; {record['wall_time_s']} s; record written to {result.path}")
    return record


def format_summary(record: dict[str, Any], objective: Objective) -> str:
    title = (f"fine-tuning: {record['method']} ({record['encoder']['arch']}), data {record['data']}, "
             f"{record['protocol']['epochs']} epochs, {record['protocol']['objective']}")
    metrics = ("top1", "top5") if isinstance(objective, SingleLabel) else ("mAP", "mAP_area")
    header = f"{'trained':<9}{'epoch':>6}" + "".join(f"{f'{s}_{m}':>15}" for s in ("val", "test") for m in metrics)
    rows = [f"{column:<9}{r['best_epoch']:>6}" + "".join(f"{_shown(r[f'{s}_{m}']):>15}" for s in ("val", "test") for m in metrics)
            for column, r in record["layers"].items()]
    lines = [title, header, *rows]
    if isinstance(objective, MultiLabel):
        for column, r in record["layers"].items():
            lines.append(f"test AP per class ({column}, VOC07 11-point): "
                         + ", ".join(f"{cls} {_shown(ap)}" for cls, ap in r["test_AP"].items()))
    return "\n".join(lines)


def _shown(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}"


@user_errors_exit
def main(argv: list[str] | None = None) -> int:
    return run_until_record(run, build_parser().parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
