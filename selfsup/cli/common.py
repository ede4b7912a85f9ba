"""Pieces shared by the console scripts: argument plumbing, error reporting, run records."""

from __future__ import annotations

import argparse
import functools
import logging
import math
import os
import sys
from typing import Any, Callable

import torch

from selfsup.config import ModelConfig
from selfsup.data.folders import LAYOUTS
from selfsup.errors import UserError
from selfsup.models import ARCHS
from selfsup.pretext import TASKS
from selfsup.probes.frozen import RANDOM_INPUT_TASK


def thread_count(text: str) -> int:
    """argparse type of ``--threads``: a whole number of at least 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} is invalid: give at least 1")
    return value


class Parser(argparse.ArgumentParser):
    """The console scripts' parser: a bad option is one line (not the whole usage) with exit status 2, and
    every command takes ``--debug`` and ``--threads`` (applied as soon as the arguments are parsed)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", argparse.RawDescriptionHelpFormatter)
        super().__init__(*args, **kwargs)
        self.add_argument("--debug", action="store_true",
                          help="show the full traceback of every error, including mistakes in the input")
        # SUPPRESS: a sub-command's parser must not reset a value given before the sub-command
        self.add_argument("--threads", type=thread_count, default=argparse.SUPPRESS,
                          help="CPU threads of torch's operators (default: torch's, one per core; OpenMP threads "
                               "wait passively, see selfsup/cli/__init__.py)")

    def parse_known_args(self, args: Any = None, namespace: Any = None) -> tuple[argparse.Namespace, list[str]]:
        parsed, extras = super().parse_known_args(args, namespace)
        if getattr(parsed, "threads", None) is not None:
            torch.set_num_threads(parsed.threads)
        return parsed, extras

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"error: {self.prog}: {' '.join(message.split())} (see {self.prog} --help)\n")


def add_trust_option(parser: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    parser.add_argument("--trust-checkpoint", action="store_true",
                        help="DANGEROUS: load a checkpoint of an older format with full unpickling, which can run "
                             "any code the file holds, and convert it to the safe format in place (the original is "
                             "kept as NAME.orig); only for files you made yourself")


def add_encoder_arguments(parser: argparse.ArgumentParser, *, out_help: str) -> None:
    """The options ssl-probe, ssl-finetune and ssl-detect share: which encoder (a checkpoint, or a random one of
    some architecture fed as some task feeds its encoder), where the run happens and where its record goes.
    Added first, so that ``--checkpoint`` leads the usage line; ``--help`` lists them in a group of their own."""
    parser.add_argument("--checkpoint", required=True, help="an ssl-pretrain checkpoint (last.pt) or 'random'")
    group = parser.add_argument_group("encoder, device and record (shared by ssl-probe, ssl-finetune, ssl-detect)")
    group.add_argument("--arch", default=ModelConfig.arch, choices=list(ARCHS),
                       help=f"encoder for --checkpoint random (default {ModelConfig.arch})")
    group.add_argument("--width", type=finite_float, default=None,
                       help="width multiplier for --checkpoint random (default: the architecture's own)")
    group.add_argument("--input-like", default=RANDOM_INPUT_TASK, choices=sorted(TASKS),
                       help="for --checkpoint random: feed the encoder as this task does (e.g. colorization: L only; "
                            f"default {RANDOM_INPUT_TASK}: RGB)")
    group.add_argument("--workers", type=int, default=1, help="data-loading processes (default 1; 0: in this one)")
    group.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"),
                       help="auto (default): CUDA when available")
    group.add_argument("--seed", type=int, default=0, help="seed of every random draw (default 0)")
    group.add_argument("--out", default=None, help=out_help)
    add_trust_option(group)


def add_data_layout_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data-layout", default="auto", choices=LAYOUTS,
                        help="how a folder of images is read: flat (unlabelled images at its top level), classes "
                             "(one sub-folder per class) or auto (whichever it holds; both is an error)")


def user_errors_exit(main: Callable[..., int]) -> Callable[..., int]:
    """Turns the errors a user can fix (:class:`selfsup.errors.UserError`) into one line on stderr and exit
    status 2; any other exception is a bug and keeps its traceback. ``--debug`` (or ``$SELFSUP_DEBUG``) shows
    the traceback of user errors too."""

    @functools.wraps(main)
    def wrapper(argv: list[str] | None = None) -> int:
        logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
        # faiss's loader reports at INFO which CPU build it tried, failures included: noise that reads as errors
        logging.getLogger("faiss").setLevel(logging.WARNING)
        given = sys.argv[1:] if argv is None else list(argv)
        debug = "--debug" in given or bool(os.environ.get("SELFSUP_DEBUG"))
        try:
            return main(argv)
        except UserError as exc:
            if debug:
                raise
            print(f"error: {exc}", file=sys.stderr)
            return 2
        except SystemExit as exc:  # argparse's errors and --help: a status, also for callers of main()
            if isinstance(exc.code, int):
                return exc.code
            raise
        except KeyboardInterrupt:
            print("interrupted", file=sys.stderr)
            return 130

    return wrapper


def run_until_record(run: Callable[[argparse.Namespace], Any], args: argparse.Namespace) -> int:
    """Exit status of a command whose only output, its record, is written atomically at the very end:
    Ctrl-C before then leaves nothing partial behind."""
    try:
        run(args)
    except KeyboardInterrupt:
        print("interrupted; no record written", file=sys.stderr)
        return 130
    return 0


def add_overrides(parser: argparse.ArgumentParser, flags: dict[str, tuple[str, type, str]],
                  defaults: Callable[[str], Any] | None = None) -> None:
    """Adds ``--flag`` options that map onto dotted config fields (default None = not given); ``defaults(dotted)``
    gives the value a field has when neither the flag nor the preset sets it, for the help."""
    for flag, (dotted, kind, text) in flags.items():
        if kind is bool:
            parser.add_argument(flag, dest=dotted, action="store_const", const=True, default=None, help=text)
        else:
            shown = "" if defaults is None else f"; default {defaults(dotted)!r} unless the preset sets it"
            parser.add_argument(flag, dest=dotted, type=kind, default=None, help=f"{text} ({dotted}{shown})")


def int_list(text: str) -> list[int]:
    """argparse type: a comma-separated list of positive integers, e.g. ``1,5,20``."""
    try:
        values = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of integers") from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: give positive integers, e.g. 1,5,20")
    return values


def finite_float(text: str) -> float:
    """argparse type: a finite number (``nan`` and ``inf`` parse as floats but are never meaningful here)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"{text!r} is invalid: give a finite number")
    return value


def given_overrides(args: argparse.Namespace, flags: dict[str, tuple[str, type, str]]) -> dict[str, Any]:
    return {dotted: getattr(args, dotted) for dotted, _, _ in flags.values() if getattr(args, dotted) is not None}
