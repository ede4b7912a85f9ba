"""ssl-diagnose: how much of a pretext task trivial solvers already get, beside chance and the network.

    ssl-diagnose --task jigsaw                          # the demo preset's task on held-out demo images
    ssl-diagnose --checkpoint runs/jigsaw/last.pt       # a run's task options, crops and network
    ssl-diagnose --task counting --images 800 --json diagnose_counting.json
    ssl-diagnose --checkpoint runs/context/last.pt --png ablated.png   # the ablated inputs of 4 examples

Each solver uses one low-level cue only (tile borders, chromatic aberration, colour averages, tiny pixels,
colour priors, colour histograms) and learns nothing beyond a closed-form or linear fit; a solver close to
the network's pretext accuracy says the task can be solved from that cue in these settings. With a
checkpoint the network is also scored with each cue destroyed (borders masked, colour channels aligned,
colour statistics equalised, low- or high-pass images): a large drop says it relies on the cue.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from selfsup.cli.common import Parser, add_trust_option, user_errors_exit
from selfsup.data.folders import LAYOUTS
from selfsup.diagnose.diagnosis import ABLATED_TASKS, DEFAULT_IMAGES, diagnose
from selfsup.diagnose.subjects import DIAGNOSED_TASKS
from selfsup.errors import check_option_values


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="ssl-diagnose", description=__doc__)
    parser.add_argument("--task", choices=DIAGNOSED_TASKS, default=None,
                        help="pretext task (default: the checkpoint's); without --checkpoint its demo preset")
    parser.add_argument("--checkpoint", default=None,
                        help="an ssl-pretrain checkpoint: its task options, crops and network (scored beside the "
                             "solvers on the same inputs)")
    parser.add_argument("--data", default=None, help="'demo', cifar10, cifar100, stl10 or an image folder "
                                                     "(default: the checkpoint's data, else demo); its test split "
                                                     "is read")
    parser.add_argument("--data-root", default=None, help="where demo/torchvision data is cached or downloaded")
    parser.add_argument("--data-layout", default=None, choices=LAYOUTS,
                        help="how a folder of images is read (default: the run's, else auto)")
    parser.add_argument("--images", type=int, default=DEFAULT_IMAGES,
                        help=f"held-out images to diagnose on (default {DEFAULT_IMAGES}; fitted solvers fit on half "
                             "of them and are scored on the other half)")
    parser.add_argument("--seed", type=int, default=None,
                        help="draws the images, their crops and the task's random inputs (default: the run's "
                             "train.seed)")
    parser.add_argument("--json", default=None, metavar="FILE", help="also write the record (kind 'diagnose') here")
    parser.add_argument("--png", default=None, metavar="FILE",
                        help=f"write a grid of a few examples' inputs, intact and with each cue ablated "
                             f"({', '.join(ABLATED_TASKS)})")
    add_trust_option(parser)
    return parser


def _number(value: float | None, metric: str) -> str:
    if value is None:
        return "-"
    return f"{100 * value:.1f}%" if metric in ("acc", "count_acc") else f"{value:.3f}"


def _with_loss(value: float | None, metric: str, extra: dict[str, float]) -> str:
    text = _number(value, metric)
    return text if value is None or "loss" not in extra else f"{text} (loss {extra['loss']:.3g})"


def _aligned(header: tuple[str, ...], lines: list[tuple[str, ...]]) -> tuple[list[str], list[str]]:
    """The header with its rule, and the lines, as fixed-width columns."""
    widths = [max(len(str(cells[i])) for cells in [header, *lines]) for i in range(len(header))]

    def joined(cells: tuple[str, ...]) -> str:
        return " | ".join(str(cell).ljust(width) for cell, width in zip(cells, widths)).rstrip()

    return [joined(header), "-+-".join("-" * width for width in widths)], [joined(cells) for cells in lines]


def format_table(record: dict[str, Any]) -> str:
    """The record's rows as a fixed-width table, one note line under each row that has one; then its cue
    ablations, when there are any."""
    header = ("task", "solver", "cue", "value", "chance", "network")
    lines = []
    for row in record["rows"]:
        lines.append((record["task"], row["solver"], row["cue"],
                      f"{row['metric']} {_with_loss(row['value'], row['metric'], row['extra'])}",
                      _number(row["chance"], row["metric"]),
                      _with_loss(row["network"], row["metric"], row["network_extra"])))
    top, body = _aligned(header, lines)
    out = list(top)
    for text, row in zip(body, record["rows"]):
        out.append(text)
        scored = f"scored on {row['scored']} of {record['images']} held-out images"
        out.append(f"    {row['note'] + '; ' if row['note'] else ''}{scored}")
    source = f"checkpoint {record['checkpoint']}" if record["checkpoint"] else "demo preset, no checkpoint"
    out.insert(0, f"ssl-diagnose: {record['task']} ({source}), data {record['data']['spec']}, "
                  f"{record['images']} images: {record['data']['view']}")
    ablations = record.get("ablations") or []
    if ablations:
        header = ("ablation", "cue destroyed", "network before", "network after", "solver", "solver before",
                  "solver after")
        lines = [(a["name"], a["cue"], _number(a["network_before"], a["metric"]),
                  _number(a["network_after"], a["metric"]), a["solver"] or "-",
                  _number(a["solver_before"], a["metric"]), _number(a["solver_after"], a["metric"]))
                 for a in ablations]
        top, body = _aligned(header, lines)
        out += ["", *top]
        for text, ablation in zip(body, ablations):
            scored = f"; network scored on {ablation['scored']} held-out images" if ablation["scored"] else ""
            out += [text, f"    {ablation['note']}{scored}"]
    return "\n".join(out)


@user_errors_exit
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    check_option_values(args, paths=("checkpoint", "data", "data_root", "json", "png"))
    record = diagnose(args.task, checkpoint=args.checkpoint, data=args.data, data_root=args.data_root,
                      layout=args.data_layout, images=args.images, seed=args.seed, json_path=args.json,
                      png_path=args.png, trust_checkpoint=args.trust_checkpoint,
                      progress=lambda line: print(f"ssl-diagnose: {line}", file=sys.stderr, flush=True))
    print(format_table(record))
    for written in (args.json, args.png):
        if written:
            print(f"wrote {written}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
