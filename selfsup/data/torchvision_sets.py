"""The torchvision data sets among the built-in data: the folder each expects under the data root, and
opening one, downloading it there when absent, with a one-line error that says where to put the files.
"""

from __future__ import annotations

import contextlib
import os
import socket
import urllib.error
from collections.abc import Iterator
from typing import Any

from selfsup.errors import DataError

# exactly what to put where.
TORCHVISION_DIRS = {"cifar10": "cifar-10-batches-py", "cifar100": "cifar-100-python", "stl10": "stl10_binary"}

# torchvision opens URLs without a timeout; on a network that silently drops packets the
# download would otherwise hang forever instead of failing with a message.
_DOWNLOAD_SOCKET_TIMEOUT_S = 30.0



@contextlib.contextmanager
def _socket_timeout(seconds: float) -> Iterator[None]:
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(seconds)
    try:
        yield
    finally:
        socket.setdefaulttimeout(previous)


def _short_reason(exc: BaseException) -> str:
    if isinstance(exc, urllib.error.URLError) and not isinstance(exc, urllib.error.HTTPError):
        text = f"network error: {exc.reason}"
    else:
        text = f"{type(exc).__name__}: {exc}"
    text = " ".join(text.split())
    return text if len(text) <= 160 else text[:157] + "..."


def open_torchvision(name: str, root: str, **split: Any) -> Any:
    """Construct a torchvision data set from ``root``, downloading it there if it is absent."""
    # Imported here: torchvision's import is slow and only the built-in data sets need it.
    from torchvision import datasets

    dataset_class = {"cifar10": datasets.CIFAR10, "cifar100": datasets.CIFAR100, "stl10": datasets.STL10}[name]
    try:
        return dataset_class(root, download=False, **split)
    except RuntimeError:
        pass  # not there (or incomplete): try to download it
    try:
        with _socket_timeout(_DOWNLOAD_SOCKET_TIMEOUT_S):
            return dataset_class(root, download=True, **split)
    except Exception as exc:
        # Whatever went wrong (no network, HTTP error, disk full, bad checksum), the user's fix is
        # the same: provide the files. Programming errors would already have surfaced above.
        folder = TORCHVISION_DIRS[name]
        hint = f"; to use the local folder ./{name} instead, pass it as a path: ./{name}" if os.path.isdir(name) else ""
        raise DataError(
            f"cannot load {name}: {os.path.join(root, folder)} is missing or incomplete and the download failed "
            f"({_short_reason(exc)}); put the extracted {folder}/ folder under {root} "
            f"or pass --data-root pointing at the folder that contains {folder}/{hint}"
        ) from exc
