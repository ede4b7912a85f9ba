"""ssl-report: a paper-style markdown table and a per-layer chart from evaluation records.

    ssl-report runs/rotation runs/random-alexnet_small              # every record found below these folders
    ssl-report records/*.json --out results.md --chart results.png --published

Reads the JSON records written by ssl-probe (linear, kNN, SVM, low-shot), ssl-finetune and
ssl-detect, ssl-pretrain's summary.json (for the pretraining columns) and ssl-diagnose's records
(a table of shortcut diagnostics beside the probe tables). Nothing is typed by hand:
rebuilding from the same records gives the same table.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from selfsup.checkpoint import atomic_file
from selfsup.cli.common import Parser, user_errors_exit
from selfsup.provenance import command_line
from selfsup.errors import ConfigError
from selfsup.outputs import check_output_file
from selfsup.probes.records import load_records
from selfsup.probes.report import build_report, draw_chart


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="ssl-report", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("paths", nargs="+", help="record files, or folders searched recursively for *.json records")
    parser.add_argument("--out", default=None, help="markdown file (default: print to stdout only)")
    parser.add_argument("--chart", default=None, help="PNG of per-layer accuracy per method (default: next to --out)")
    parser.add_argument("--title", default="Frozen-encoder evaluation", help="heading of the report")
    parser.add_argument("--published", action="store_true",
                        help="add the published AlexNet/ImageNet rows (the papers' numbers), labelled as such")
    parser.add_argument("--description", default=None, help="a paragraph under the title (data, splits, budget)")
    parser.add_argument("--order", default="", help="comma-separated methods in row order, e.g. rotation,jigsaw")
    parser.add_argument("--notes", default=None, help="markdown file appended to the report (hand-written reading)")
    return parser


def read_notes(path: str | None) -> str | None:
    if path is None:
        return None
    try:
        return Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"--notes {path} cannot be read: {getattr(exc, 'strerror', None) or exc}") from None


def run(args: argparse.Namespace) -> str:
    # outputs and inputs are checked before the records are read
    out = check_output_file(args.out) if args.out else None
    chart = args.chart or (str(out.with_suffix(".png")) if out else None)
    if chart:
        check_output_file(chart, "--chart")
    notes = read_notes(args.notes)
    records, skipped = load_records(args.paths)
    order = [m for m in args.order.split(",") if m]
    report = build_report(records, title=args.title, command=command_line(),
                          published=args.published, notes=notes, description=args.description, order=order)
    print(report)
    if out:
        with atomic_file(out, "w") as handle:
            handle.write(report)
        print(f"report written to {out}", file=sys.stderr)
    if chart:
        written = draw_chart(records, chart, args.title, order)
        print(f"chart written to {written}" if written else "no per-layer records: no chart", file=sys.stderr)
    if skipped:
        print(f"{len(records)} records used, {len(skipped)} files skipped (named above)", file=sys.stderr)
    return report


@user_errors_exit
def main(argv: list[str] | None = None) -> int:
    run(build_parser().parse_args(argv))
    return 0


if __name__ == "__main__":
    sys.exit(main())
