"""The mistakes a user can fix. Each is raised where the problem is found, with a one-line message that
names the file, field or value and what is allowed; the console scripts print it and exit with status 2.
Any other exception is a bug and keeps its traceback. :func:`check_option_values` holds the range checks
that commands and the library functions behind them share."""

from __future__ import annotations

from typing import Any


class UserError(Exception):
    """Base of the user-fixable errors; the message is folded onto one line."""

    def __init__(self, message: str) -> None:
        super().__init__(" ".join(str(message).split()))


class ConfigError(UserError, ValueError):
    """A configuration value or command-line option is unknown, out of range or inconsistent."""


class DataError(UserError):
    """The user's data is missing, empty, unreadable or laid out ambiguously."""


class CheckpointError(UserError):
    """A checkpoint or exported file is unreadable, of the wrong kind, unsafe or holds non-finite weights."""


class OutputError(UserError):
    """An output path cannot be written: it is a file where a folder is needed, not writable, in use by
    another run, or on a disk without room."""


class DeviceError(UserError):
    """The requested device is not available on this machine."""


class TrainingDivergedError(UserError):
    """The loss or gradients became non-finite; the last good checkpoint was kept."""


def check_option_values(options: Any, *, paths: tuple[str, ...] = (),
                        at_least: tuple[tuple[str, int], ...] = (), positive: tuple[str, ...] = (),
                        reasons: dict[str, str] | None = None) -> None:
    """ConfigError (one line) for the first option of ``options`` (parsed arguments or an options dataclass,
    read by attribute) that cannot work: an empty path or name in ``paths``, an integer below its least value
    in ``at_least``, a number in ``positive`` that is not above 0. Options left at None are not given; 0 is a
    value like any other, never read as "not given". ``reasons`` adds a why to an option's message."""
    reasons = reasons or {}

    def flag(name: str) -> str:
        return "--" + name.replace("_", "-")

    for name in paths:
        if getattr(options, name) == "":
            raise ConfigError(f"{flag(name)} '' is invalid: give a path or name")
    for name, least in at_least:
        value = getattr(options, name)
        if value is not None and value < least:
            raise ConfigError(f"{flag(name)} {value} is invalid: must be at least {least}{reasons.get(name, '')}")
    for name in positive:
        value = getattr(options, name)
        if value is not None and value <= 0:
            raise ConfigError(f"{flag(name)} {value:g} is invalid: must be above 0")
