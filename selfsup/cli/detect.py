"""ssl-detect: detection transfer, a pretrained (or random) encoder as the backbone of Faster R-CNN.

    ssl-detect --checkpoint runs/rotation/last.pt                          # demo VOC set, CPU-sized
    ssl-detect --checkpoint runs/rotation/last.pt --data /data/VOCdevkit/VOC2007 --min-size 600 --max-size 1000
    ssl-detect --checkpoint random --arch alexnet_small                    # the random-initialisation row
    ssl-detect --checkpoint runs/r18/last.pt --backbone c4 --freeze res2   # ResNet C4 (default: FPN)

Backbones, heads and anchors: see `selfsup.transfer.detection_model`. The encoder is fed what probes and
fine-tuning feed it, its task's evaluation input mapping (``eval_input``): either folded into conv1 so that
it takes ImageNet-normalised RGB (``--frontend fold``; colorization's L, DeepCluster's Sobel, context's kept
green channel under colour dropping; see `selfsup.transfer.frontend`, which refuses a mapping no conv
expresses), or kept exactly in front of the encoder (``--frontend exact``).

BatchNorm statistics (``--bn-stats``, frozen BatchNorms only): ``train`` (the default) re-estimates every
BatchNorm's running mean and variance on the training split's images (not flipped) as the backbone sees
them at test size (short side --min-size, long side capped by --max-size, padded batches, through the front
end), exactly as ssl-probe/ssl-finetune do (`selfsup.probes.bn`), before the BatchNorms are frozen;
``checkpoint`` keeps the pretrained ones. With ``--trainable-bn`` the BatchNorms normalise with batch
statistics and update their own running ones, so the option does not apply and an explicit one is refused.
``--rescale`` comes after the re-estimation and measures through the statistics it set.

Training: horizontal flips, short side drawn from ``--multiscale`` (default: ``--min-size`` only); SGD,
momentum 0.9, weight decay 1e-4, linear warm-up over the first epoch (at most 500 steps) from 0.001 x
``--lr``, then x0.1 at 2/3 and 8/9 of the epochs (Detectron's schedule shape); difficult objects are not
trained on. The selection split (val) is scored every ``--eval-every`` epochs and after the last, and
the best epoch's weights are kept in memory; test is evaluated once, with them, by the VOC07 devkit's
rules (`selfsup.transfer.voc_eval`: IoU >= 0.5, difficult objects ignored, 11-point AP and area AP).
Writes a JSON record (kind "detection"), a PNG of test images with their true boxes and the detections
scoring above 0.5 (at least each image's top 3, scores shown), and the trained detector beside the record
(NAME.detector.pt: a safe checkpoint that `selfsup.transfer.detection_saved.load_detector` rebuilds).
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from typing import Any

from selfsup.cli.common import (
    Parser, add_encoder_arguments, finite_float, int_list, run_until_record, user_errors_exit,
)
from selfsup.probes.records import SELECTION_SPLITS
from selfsup.transfer.detection_model import BACKBONES, FC_DIM, MAX_SIZE, MIN_SIZE
from selfsup.transfer.detection_options import (
    BN_STATS_CHOICES, DEFAULT_EPOCHS, FRONTENDS, RESCALE_IMAGES, DetectOptions,
)
from selfsup.transfer.detection_run import run_detection
from selfsup.transfer.voc_eval import format_ap_table


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="ssl-detect", description=__doc__)
    add_encoder_arguments(parser, out_help="result JSON (default: next to the checkpoint, or under runs/random-ARCH/ "
                                           "for random: detect_BACKBONE.json); the trained detector is saved "
                                           "beside the record, NAME.detector.pt for NAME.json")
    parser.add_argument("--data", default="demo", help="a VOC-layout folder (e.g. VOCdevkit/VOC2007) or 'demo' (default)")
    parser.add_argument("--data-root", default=None, help="where the demo set is cached")
    parser.add_argument("--backbone", default="auto", choices=BACKBONES,
                        help="auto (default): conv5 for AlexNets, fpn for ResNets; c4: ResNet res4 + res5 box head")
    parser.add_argument("--frontend", default="fold", choices=FRONTENDS,
                        help="fold (default): the task's input mapping folded into conv1, the encoder takes "
                             "ImageNet-normalised RGB; exact: the task's own mapping in front of the encoder")
    parser.add_argument("--freeze", default="none",
                        help="'none' (default) trains every stage; a layer (e.g. conv2, res2) keeps it and all before it fixed")
    bn = parser.add_mutually_exclusive_group()
    bn.add_argument("--frozen-bn", dest="frozen_bn", action="store_true", default=True,
                    help="BatchNorms fixed at their pretrained statistics and affine (default)")
    bn.add_argument("--trainable-bn", dest="frozen_bn", action="store_false",
                    help="BatchNorms train (batch statistics) in the stages that are not frozen")
    parser.add_argument("--bn-stats", default=None, choices=BN_STATS_CHOICES,
                        help="frozen BatchNorms' statistics: train (default) re-estimated on the training images at "
                             "test size through the front end, or checkpoint (the pretrained ones); not with "
                             "--trainable-bn")
    parser.add_argument("--min-size", type=int, default=MIN_SIZE, help=f"short side at test time, px (default {MIN_SIZE})")
    parser.add_argument("--max-size", type=int, default=MAX_SIZE, help=f"cap on the long side, px (default {MAX_SIZE})")
    parser.add_argument("--multiscale", type=int_list, default=None,
                        help="short sides drawn from in training, e.g. 112,128,144 (default: --min-size only)")
    parser.add_argument("--epochs", type=int, default=DEFAULT_EPOCHS,
                        help=f"training epochs (default {DEFAULT_EPOCHS}: the demo set in about 8 minutes on 2 CPU "
                             "cores)")
    parser.add_argument("--lr", type=finite_float, default=0.02, help="peak learning rate (default 0.02)")
    parser.add_argument("--batch-size", type=int, default=4, help="images per step (default 4)")
    parser.add_argument("--fc-dim", type=int, default=FC_DIM,
                        help=f"width of fresh fc6/fc7 box heads (default {FC_DIM}; pretext fc layers keep theirs)")
    parser.add_argument("--rescale", action="store_true",
                        help="Krähenbühl et al. 2016 within-layer rescaling of the trainable encoder stages on "
                             f"{RESCALE_IMAGES} training images before training")
    parser.add_argument("--train-split", default="train")
    parser.add_argument("--val-split", default="val")
    parser.add_argument("--test-split", default="test")
    parser.add_argument("--selection-split", default="val", choices=SELECTION_SPLITS,
                        help="split that picks the epoch kept; test is refused without --force-test-selection")
    parser.add_argument("--force-test-selection", action="store_true",
                        help="allow --selection-split test; the record is marked as test-selected")
    parser.add_argument("--eval-every", type=int, default=1, help="score the selection split every N epochs (and after the last)")
    parser.add_argument("--precision", default="auto", choices=("auto", "fp32", "bf16"),
                        help="autocast of backbone and box head: auto (default) = bf16 on CUDA and on CPUs that "
                             "multiply bf16 in hardware (AVX512-BF16, AMX), fp32 elsewhere, where bf16 is emulated "
                             "and about 3x slower")
    parser.add_argument("--figure", default=None, help="PNG of test detections (default: next to the record)")
    return parser


def options_from(args: argparse.Namespace) -> DetectOptions:
    """The run's options from the parsed arguments (``--debug`` and ``--threads`` act in the parser)."""
    return DetectOptions(**{field.name: getattr(args, field.name) for field in dataclasses.fields(DetectOptions)})


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Runs the detection transfer the arguments ask for, prints its summary and where its files went, and
    returns the record."""
    result = run_detection(options_from(args))
    record, scores = result.record, result.fitted.scores
    entry = record["layers"][record["protocol"]["backbone"]]
    selection = record["selection_split"]
    print(f"detection: {record['method']} ({record['encoder']['arch']}), Faster R-CNN {record['protocol']['backbone']}, "
          f"data {record['data']}, best epoch {entry['best_epoch']} of {record['protocol']['epochs']} on {selection}")
    print(format_ap_table(scores["test"], result.classes))
    print(f"val mAP {entry['val_mAP']} (area {entry['val_mAP_area']}), test mAP {entry['test_mAP']} "
          f"(area {entry['test_mAP_area']})")
    forced = " (FORCED: test-selected)" if record["forced_test_selection"] else ""
    print(f"\nselected on {selection}{forced}, reported on test; {record['bad_files_skipped']} unreadable files "
          f"skipped; {record['wall_time_s']} s; record written to {result.path}, figure to {result.figure}, "
          f"detector to {result.detector}")
    return record


@user_errors_exit
def main(argv: list[str] | None = None) -> int:
    return run_until_record(run, build_parser().parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
