"""Data: the built-in demo set, robust image decoding, dataset sources and loaders."""

import os
from pathlib import Path


def cache_root() -> Path:
    """Where selfsup keeps what it can rebuild (permutation sets, decoded images): ``$SELFSUP_CACHE_DIR``, else
    ``$XDG_CACHE_HOME/selfsup``, else ``~/.cache/selfsup``."""
    if os.environ.get("SELFSUP_CACHE_DIR"):
        return Path(os.environ["SELFSUP_CACHE_DIR"]).expanduser()
    if os.environ.get("XDG_CACHE_HOME"):
        return Path(os.environ["XDG_CACHE_HOME"]).expanduser() / "selfsup"
    return Path.home() / ".cache" / "selfsup"
