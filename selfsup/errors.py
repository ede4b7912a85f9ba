"""The mistakes a user can fix. Each is raised where the problem is found, with a one-line message that
names the file, field or value and what is allowed; the console scripts print it and exit with status 2.
Any other exception is a bug and keeps its traceback."""

from __future__ import annotations


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
