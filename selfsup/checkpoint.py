"""Checkpoint files: safe to load, atomic to write, and carrying the RNG state that makes a resumed run exact.

A checkpoint holds tensors and plain Python types only (dict, list, tuple, str, int, float, bool, None), so
that it loads with ``torch.load(weights_only=True)``: unpickling an untrusted file can then run no code. A
file that needs more is refused with one line; ``trust=True`` (``--trust-checkpoint``) converts an older
checkpoint once, in place, keeping the original beside it.
"""

from __future__ import annotations

import contextlib
import errno
import os
import random
import re
import tempfile
from collections import OrderedDict
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import IO, Any

import numpy as np
import torch

from selfsup.errors import CheckpointError, OutputError

PLAIN_SCALARS = (str, int, float, bool, type(None))
# Errors a full, read-only or forbidden disk gives: the user's to fix, not a bug.
_DISK_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM})
TEMPORARY_SUFFIX = ".tmp"


def _umask_mode() -> int:
    """0o666 less the process umask: what a plain ``open(path, "w")`` would give (mkstemp gives 0o600)."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


class _WatchedFile:
    """A file handle that remembers the OS error of a failed write: torch's zip writer reports a full disk
    as ``unexpected pos ...`` and drops the cause."""

    def __init__(self, handle: IO) -> None:
        self._handle = handle
        self.os_error: OSError | None = None

    def write(self, data: Any) -> int:
        try:
            return self._handle.write(data)
        except OSError as exc:
            self.os_error = exc
            raise

    def __getattr__(self, name: str) -> Any:
        return getattr(self._handle, name)


@contextlib.contextmanager
def atomic_file(path: str | Path, mode: str = "wb") -> Iterator[IO]:
    """A handle on a temporary file beside ``path``, renamed over ``path`` once the block succeeds.

    A crash mid-write leaves the previous file intact: rename is atomic on POSIX. A full or read-only disk
    is an :class:`OutputError` naming the file. The file gets the permissions a plain ``open`` would give,
    not mkstemp's owner-only ones. A kill -9 can leave the temporary behind: see :func:`remove_stale_temporaries`.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=TEMPORARY_SUFFIX, dir=path.parent)
    except OSError as exc:
        raise OutputError(f"cannot write {path}: {exc.strerror}") from None
    watched = None
    try:
        with os.fdopen(fd, mode) as handle:
            watched = _WatchedFile(handle)
            yield watched
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, _umask_mode())
        os.replace(tmp, path)
    except BaseException as exc:
        Path(tmp).unlink(missing_ok=True)
        cause = exc if isinstance(exc, OSError) else (watched.os_error if watched else None)
        if cause is not None and cause.errno in _DISK_ERRNOS:
            kept = "the previous file is kept" if path.exists() else "nothing was written"
            raise OutputError(f"cannot write {path}: {cause.strerror or os.strerror(cause.errno)}; {kept}") from None
        raise


def remove_stale_temporaries(folder: str | Path) -> list[Path]:
    """Deletes the temporaries that a killed :func:`atomic_file` left in ``folder`` (``.NAME.XXXX.tmp``);
    call it only while no other process writes there (under the run's lock)."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    stale = [p for p in folder.iterdir() if p.name.startswith(".") and p.name.endswith(TEMPORARY_SUFFIX) and p.is_file()]
    for path in stale:
        path.unlink(missing_ok=True)
    return stale


def check_plain(value: Any, where: str = "checkpoint") -> None:
    """Raises TypeError naming the first entry that ``torch.load(weights_only=True)`` would refuse: the
    caller built a checkpoint it could not read back safely, which is a bug."""
    if isinstance(value, torch.Tensor) or type(value) in PLAIN_SCALARS:
        return
    if type(value) in (list, tuple):
        for index, item in enumerate(value):
            check_plain(item, f"{where}[{index}]")
        return
    if type(value) in (dict, OrderedDict):
        for key, item in value.items():
            if type(key) not in (str, int):
                raise TypeError(f"{where} has a key of type {type(key).__name__}: checkpoints hold plain types")
            check_plain(item, f"{where}[{key!r}]")
        return
    raise TypeError(f"{where} is a {type(value).__module__}.{type(value).__qualname__}: checkpoints hold tensors "
                    "and plain types only")


def nonfinite_tensors(tensors: Mapping[str, Any]) -> list[str]:
    """Names of the floating-point tensors in ``tensors`` holding NaN or infinity."""
    return [name for name, value in tensors.items()
            if isinstance(value, torch.Tensor) and value.is_floating_point() and not bool(torch.isfinite(value).all())]


def atomic_save(obj: Any, path: str | Path) -> None:
    """``torch.save`` of tensors and plain types through :func:`atomic_file`: a killed run never leaves half a
    checkpoint, and the file loads with ``weights_only=True``."""
    check_plain(obj)
    with atomic_file(path) as handle:
        torch.save(obj, handle)


_UNSAFE_GLOBAL = re.compile(r"GLOBAL ([\w.]+)")


def _convert_legacy(value: Any) -> Any:
    """An object from an older, pickled checkpoint as tensors and plain types (numpy arrays and scalars,
    torch's version string, paths); anything else is refused."""
    if isinstance(value, torch.Tensor) or type(value) in PLAIN_SCALARS:
        return value
    if isinstance(value, np.ndarray):
        # uint32 (numpy's RNG keys) has no tensor type of its own on older torch
        return torch.from_numpy(value.astype(np.int64) if value.dtype == np.uint32 else value.copy())
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if isinstance(value, str):  # torch.__version__ is a str subclass
        return str(value)
    if isinstance(value, (list, tuple)):
        return [_convert_legacy(item) for item in value]
    if isinstance(value, Mapping):
        return {key: _convert_legacy(item) for key, item in value.items()}
    raise CheckpointError(f"cannot convert a {type(value).__qualname__} to the safe checkpoint format")


def _load_trusted(path: Path) -> dict[str, Any]:
    """Loads an older checkpoint with full unpickling, converts it, and writes the safe form in its place
    (the original is kept as ``NAME.orig``)."""
    state = _convert_legacy(torch.load(path, map_location="cpu", weights_only=False))
    if isinstance(state, dict) and isinstance(state.get("rng"), dict):
        state["rng"] = _rng_state_from_legacy(state["rng"])
    backup = path.with_name(path.name + ".orig")
    os.replace(path, backup)
    atomic_save(state, path)
    print(f"converted {path} to the safe checkpoint format; the original is kept as {backup}")
    return state


def load_checkpoint(path: str | Path, *, trust: bool = False) -> dict[str, Any]:
    """A checkpoint's contents, loaded with ``weights_only=True``.

    Raises :class:`CheckpointError` (one line) when the file is missing, unreadable, not a dict, holds
    objects other than tensors and plain types (unless ``trust``: see the module docstring), or has
    non-finite weights under ``model`` (ssl-pretrain) or ``state_dict`` (ssl-export).
    """
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"checkpoint not found: {path}")
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} is not a file")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - whatever the file did, it is the file's fault, named below
        text = str(exc)
        unsafe = _UNSAFE_GLOBAL.search(text) if "Weights only load failed" in text else None
        if unsafe is None:  # not a pickle of objects at all: damaged, truncated or another kind of file
            reason = " ".join(text.split())[:160] or type(exc).__name__
            raise CheckpointError(f"checkpoint {path} cannot be read (truncated, damaged or not a torch "
                                  f"checkpoint: {reason})") from None
        if not trust:
            raise CheckpointError(
                f"checkpoint {path} was refused: it holds a {unsafe.group(1)} object besides tensors and plain types, and loading it "
                "could run code; if you made this file and trust it, convert it once with --trust-checkpoint"
            ) from None
        state = _load_trusted(path)
    if not isinstance(state, dict):
        raise CheckpointError(f"checkpoint {path} holds a {type(state).__name__}, not a checkpoint's dict")
    for weights in (state.get("model"), state.get("state_dict")):  # a checkpoint's, an ssl-export file's
        bad = nonfinite_tensors(weights) if isinstance(weights, Mapping) else []
        if bad:
            raise CheckpointError(
                f"checkpoint {path} has non-finite weights in {len(bad)} tensor(s), e.g. {bad[0]}: it comes from a "
                "run that diverged; retrain it with a lower optim.lr or with optim.grad_clip"
            )
    return state


# ------------------------------------------------------------------------------------------- RNG state
def rng_state() -> dict[str, Any]:
    """The process's Python, numpy and torch RNG states as tensors and plain types."""
    _, keys, position, has_gauss, cached_gaussian = np.random.get_state(legacy=True)
    state = {
        "python": random.getstate(),
        "numpy": {"keys": torch.from_numpy(keys.astype(np.int64)), "position": int(position),
                  "has_gauss": int(has_gauss), "cached_gaussian": float(cached_gaussian)},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _rng_state_from_legacy(state: dict[str, Any]) -> dict[str, Any]:
    """An older checkpoint's RNG state (numpy's as a tuple) in the form :func:`rng_state` gives."""
    numpy_state = state.get("numpy")
    if isinstance(numpy_state, (list, tuple)):
        _, keys, position, has_gauss, cached_gaussian = numpy_state
        state = {**state, "numpy": {"keys": torch.as_tensor(keys, dtype=torch.int64), "position": int(position),
                                    "has_gauss": int(has_gauss), "cached_gaussian": float(cached_gaussian)}}
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    numpy_state = state["numpy"]
    np.random.set_state(("MT19937", numpy_state["keys"].numpy().astype(np.uint32), numpy_state["position"],
                         numpy_state["has_gauss"], numpy_state["cached_gaussian"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
