"""Shared fixtures: a tiny labelled image folder made on the fly, and an offline environment."""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

os.environ.setdefault("HF_HUB_OFFLINE", "1")
# Decoded caches of the tests' throw-away folders go to a folder of this session, not the user's cache.
if "SELFSUP_DECODED_DIR" not in os.environ:
    os.environ["SELFSUP_DECODED_DIR"] = tempfile.mkdtemp(prefix="selfsup-decoded-")
    atexit.register(shutil.rmtree, os.environ["SELFSUP_DECODED_DIR"], ignore_errors=True)

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def make_image_folder(root: Path, per_class: dict[str, int], size: int = 40, seed: int = 0) -> Path:
    """Class sub-folders of small RGB PNGs: a triangle pointing up whose height depends on the class."""
    rng = np.random.default_rng(seed)
    for split, count in per_class.items():
        for c in range(3):
            folder = root / split / f"class{c}"
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(count):
                pixels = (rng.random((size, size, 3)) * 80).astype(np.uint8)
                img = Image.fromarray(pixels)
                x = int(rng.integers(2, size // 2))
                ImageDraw.Draw(img).polygon([(x, size - 8), (x + 14, size - 8), (x + 7, size - 14 - 6 * c)], fill=(220, 60 * c, 90))
                img.save(folder / f"{i:03d}.png")
    return root


@pytest.fixture(scope="session")
def tiny_folder(tmp_path_factory) -> Path:
    return make_image_folder(tmp_path_factory.mktemp("tiny"), {"train": 16, "val": 4, "test": 4})


def one_error_line(capsys: pytest.CaptureFixture) -> str:
    """The command's only stderr line, which must be a user error (``error: ...``)."""
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:"), err
    return err[0]


@pytest.fixture(autouse=True)
def _restore_torch_threads():
    """A command run with --threads sets torch's thread count for the whole process: later tests must not
    inherit it (a subprocess would not, and CPU kernels may round differently with another count)."""
    import torch

    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)
