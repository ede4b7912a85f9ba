"""ssl-export: a pretrained encoder as a backbone file other frameworks load.

    ssl-export --checkpoint runs/rotation/last.pt --format torchvision --out r50.pth   # torchvision.models.resnet50()
    ssl-export --checkpoint runs/rotation/last.pt --format timm --out r50_timm.pth     # timm, num_classes=0
    ssl-export --checkpoint runs/rotation/last.pt --format detectron2 --out r50.pkl    # Detectron2 checkpoint
    ssl-export --checkpoint runs/jigsaw/last.pt --format selfsup --out alexnet.pt      # any encoder, AlexNets too

Every export takes ImageNet-normalised RGB: DeepCluster's Sobel front-end is folded into conv1 exactly
(away from a thin border), colorization's L by a linear approximation. FILE.json, written beside FILE,
records what was folded and the line of Python that loads it.
"""

from __future__ import annotations

import argparse
import sys

from selfsup.cli.common import Parser, add_trust_option, user_errors_exit
from selfsup.errors import ConfigError
from selfsup.outputs import check_output_file
from selfsup.transfer.export import FORMATS, export_backbone


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="ssl-export", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", required=True, help="an ssl-pretrain checkpoint (last.pt)")
    parser.add_argument("--format", required=True, choices=FORMATS, help="what loads the file")
    parser.add_argument("--out", required=True, help="file to write (.pkl for detectron2); FILE.json goes beside it")
    add_trust_option(parser)
    return parser


@user_errors_exit
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    for name in ("checkpoint", "out"):
        if getattr(args, name) == "":
            raise ConfigError(f"--{name} '' is invalid: give a path")
    check_output_file(args.out, "--out")
    check_output_file(args.out + ".json", "--out's FILE.json")
    metadata = export_backbone(args.checkpoint, args.format, args.out, trust=args.trust_checkpoint)
    print(f"wrote {args.out} ({args.format}: {metadata['arch']} from a {metadata['task']} checkpoint) and {args.out}.json")
    print(f"input: {metadata['input']}")
    if "pixel_format" in metadata:
        print(f"detectron2 pixel format: {metadata['pixel_format']}")
    print(f"front-end folding: {metadata['front_end_folding']}")
    for note in ("stem", "classifier"):
        if note in metadata:
            print(f"{note}: {metadata[note]}")
    print(f"load: {metadata['load']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
