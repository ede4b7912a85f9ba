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


def cpu_model() -> str:
    """The CPU's model name as the OS reports it (Linux: /proc/cpuinfo), or "unknown"."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def cpu_multiplies_bf16() -> bool:
    """Whether this CPU multiplies bfloat16 matrices in hardware (AVX512-BF16 or AMX). Without it a bfloat16
    product is emulated and slower than a float32 one; two hosts of the same model name can differ here."""
    # private helpers of torch.cpu, looked up defensively: a torch without them gets the safe answer
    native = [getattr(torch.cpu, name, lambda: False) for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported")]
    return any(check() for check in native)


def machine_description(device: torch.device) -> dict[str, Any]:
    described = {
        "python": platform.python_version(),
        "torch": str(torch.__version__),  # a str subclass that a safe checkpoint load refuses
        "platform": platform.platform(),
        "cpu": cpu_model(),
        "cpu_bf16_matmul": cpu_multiplies_bf16(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "device": str(device),
    }
    if device.type == "cuda":
        described["gpu"] = torch.cuda.get_device_name(device)
    return described


def machine_text(machine: dict[str, Any]) -> str:
    """One line for a record's ``machine`` (see :func:`machine_description`); older records lack the CPU."""
    cpu = machine.get("cpu")
    if cpu is not None:
        cpu = f"{cpu} ({'with' if machine.get('cpu_bf16_matmul') else 'no'} bf16 matrix products in hardware), "
    text = (f"{machine.get('platform', '?')}, {cpu or ''}{machine.get('cpu_count', '?')} CPU cores, "
            f"{machine.get('torch_threads', '?')} torch threads, torch {machine.get('torch', '?')}, "
            f"device {machine.get('device', '?')}")
    return text + (f" ({machine['gpu']})" if machine.get("gpu") else "")


def command_line() -> str:
    """The command as a user would type it again: a console script by its name, also when started as a file
    of ``selfsup/cli`` (``torchrun -m selfsup.cli.pretrain`` makes argv[0] that file's path)."""
    program = Path(sys.argv[0])
    name = f"ssl-{program.stem}" if program.suffix == ".py" and program.resolve().parent == _CLI_DIR else program.name
    return shlex.join([name, *sys.argv[1:]])
