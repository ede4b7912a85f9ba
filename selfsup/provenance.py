"""Where a result came from: the command line, the commit and the machine, as every record states them."""

from __future__ import annotations

import functools
import os
import platform
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

import torch

_CLI_DIR = Path(__file__).resolve().parent / "cli"


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
        "torch": str(torch.__version__),  # a str subclass that a safe checkpoint load refuses
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "device": str(device),
    }
    if device.type == "cuda":
        described["gpu"] = torch.cuda.get_device_name(device)
    return described


def command_line() -> str:
    """The command as a user would type it again: a console script by its name, also when started as a file
    of ``selfsup/cli`` (``torchrun -m selfsup.cli.pretrain`` makes argv[0] that file's path)."""
    program = Path(sys.argv[0])
    name = f"ssl-{program.stem}" if program.suffix == ".py" and program.resolve().parent == _CLI_DIR else program.name
    return shlex.join([name, *sys.argv[1:]])
