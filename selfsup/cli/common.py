"""Pieces shared by the console scripts: argument plumbing, error reporting, run records."""

from __future__ import annotations

import argparse
import functools
import logging
import os
import platform
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any, Callable

import torch

from selfsup.config import ConfigError
from selfsup.data.images import BadImageError
from selfsup.data.sources import DataError

USER_ERRORS = (ConfigError, DataError, BadImageError, FileNotFoundError, ValueError)


def user_errors_exit(main: Callable[..., int]) -> Callable[..., int]:
    """Turns the errors a user can fix into one line on stderr and exit status 2, not a traceback."""

    @functools.wraps(main)
    def wrapper(argv: list[str] | None = None) -> int:
        logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
        try:
            return main(argv)
        except USER_ERRORS as exc:
            if os.environ.get("SELFSUP_DEBUG"):
                raise
            print(f"error: {exc}", file=sys.stderr)
            return 2
        except KeyboardInterrupt:
            print("interrupted; the last checkpoint is kept (use --resume to continue)", file=sys.stderr)
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


def add_overrides(parser: argparse.ArgumentParser, flags: dict[str, tuple[str, type, str]]) -> None:
    """Adds ``--flag`` options that map onto dotted config fields (default None = not given)."""
    for flag, (dotted, kind, text) in flags.items():
        if kind is bool:
            parser.add_argument(flag, dest=dotted, action="store_const", const=True, default=None, help=text)
        else:
            parser.add_argument(flag, dest=dotted, type=kind, default=None, help=f"{text} ({dotted})")


def int_list(text: str) -> list[int]:
    """argparse type: a comma-separated list of positive integers, e.g. ``1,5,20``."""
    try:
        values = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of integers") from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: give positive integers, e.g. 1,5,20")
    return values


def given_overrides(args: argparse.Namespace, flags: dict[str, tuple[str, type, str]]) -> dict[str, Any]:
    return {dotted: getattr(args, dotted) for dotted, _, _ in flags.values() if getattr(args, dotted) is not None}


@functools.lru_cache(maxsize=1)
def git_commit() -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=Path(__file__).resolve().parent, capture_output=True,
            text=True, timeout=5,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def machine_description(device: torch.device) -> dict[str, Any]:
    described = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "device": str(device),
    }
    if device.type == "cuda":
        described["gpu"] = torch.cuda.get_device_name(device)
    return described


def command_line() -> str:
    return shlex.join([Path(sys.argv[0]).name, *sys.argv[1:]])
