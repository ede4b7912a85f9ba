"""Run-level presets shipped with the package: ``presets/<name>/<task>.yaml``.

A preset fits a budget to the data (encoder width, crop size, epochs, precision, optimiser) and,
where a task's paper defaults cannot learn within that budget, the few task knobs that make it learn;
each file says why it departs from the dataclass defaults. ``ssl-pretrain`` applies the ``demo``
preset of the chosen task when no ``--config`` is given, so ``ssl-pretrain --task NAME`` alone runs
a CPU-sized job that learns. Precedence: dataclass defaults < preset < --config file < flags.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from selfsup.config import ConfigError, load_yaml

PRESET_DIR = Path(__file__).resolve().parent


def available_presets() -> list[str]:
    return sorted(p.name for p in PRESET_DIR.iterdir() if p.is_dir() and not p.name.startswith("_"))


def preset_path(name: str, task: str) -> Path | None:
    """The YAML file of preset ``name`` for ``task``, or None when the task needs nothing beyond the defaults."""
    if name not in available_presets():
        raise ConfigError(f"--preset = {name!r} is invalid: allowed values are none, {', '.join(available_presets())}")
    path = PRESET_DIR / name / f"{task}.yaml"
    return path if path.is_file() else None


def load_preset(name: str, task: str) -> dict[str, Any]:
    """The preset's config values for ``task`` ({} for ``none`` or a task without a file)."""
    if name == "none":
        return {}
    path = preset_path(name, task)
    if path is None:
        return {}
    values = load_yaml(path)
    if values.get("task", task) != task:
        raise ConfigError(f"preset file {path} is for task {values['task']!r}, not {task!r}")
    return values
