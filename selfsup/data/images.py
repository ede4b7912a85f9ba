"""Image decoding that survives real-world folders.

`load_rgb` turns whatever PIL can open into a fully decoded 8-bit RGB image, and turns every
way a file can be broken into one exception type, `BadImageError`, so data loaders can report
(or skip) a bad file by name instead of dying on a raw PIL/OS error deep inside a worker.
"""

from __future__ import annotations

import os
from collections.abc import Callable

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from selfsup.errors import DataError

IMAGE_EXTENSIONS: frozenset[str] = frozenset(
    {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm"}
)

# Transparent pixels are composited over white: that is how viewers and browsers show such images,
# so it is what the picture looks like to whoever labelled it. (Dropping alpha instead would expose
# whatever colour the encoder left under transparent pixels, often black.)
ALPHA_BACKGROUND: tuple[int, int, int] = (255, 255, 255)

_ALPHA_MODES = frozenset({"LA", "La", "PA", "RGBA", "RGBa"})
_SIXTEEN_BIT_MODES = frozenset({"I;16", "I;16B", "I;16L", "I;16N", "I"})


class BadImageError(DataError):
    """A file that cannot be decoded into an image (truncated, corrupt, empty, not an image...)."""

    def __init__(self, path: str | os.PathLike, reason: str) -> None:
        self.path = os.fspath(path)
        # Messages end up in one-line log records; PIL reasons occasionally contain newlines.
        self.reason = " ".join(str(reason).split()) or "unknown error"
        super().__init__(f"cannot read image {self.path}: {self.reason}")

    def __reduce__(self) -> tuple[type[BadImageError], tuple[str, str]]:
        # Exceptions pickle as cls(*args); args holds only the message, so rebuild from the
        # fields instead (needed when the error crosses a process boundary, e.g. from a worker).
        return type(self), (self.path, self.reason)


# (stored width, stored height) -> the smallest (width, height) the image may be decoded at without losing
# resolution where it is used; see `load_rgb`.
DecodeSize = Callable[[int, int], tuple[int, int]]


def load_rgb(path: str | os.PathLike, decode_size: DecodeSize | None = None) -> Image.Image:
    """Decode `path` fully and return it as an 8-bit RGB image with EXIF orientation applied.

    `decode_size`: for JPEGs, ask the decoder for the smallest of 1/2, 1/4 or 1/8 scale that is at least
    ``decode_size(width, height)`` (JPEG draft mode: the DCT scales while decoding, which is both faster and an
    anti-aliasing filter). Files of other formats, and JPEGs that cannot shrink by half, decode at full size.

    Mode handling: palette/greyscale/1-bit are expanded; alpha (including palette or colour-key
    transparency) is composited over `ALPHA_BACKGROUND` (white); CMYK uses the subtractive formula
    R = (255 - C)(255 - K) / 255 (embedded ICC profiles are not applied); 16-bit greyscale
    ("I;16*", and "I", which is what 16-bit PNGs open as in older Pillow) is scaled 0..65535 -> 0..255
    with values outside that range clipped; float "F" images are taken as 0..1 if every value lies
    in [0, 1], else as 0..255, and clipped. Multi-frame files (GIF, TIFF) give their first frame.

    Raises BadImageError for missing, empty, truncated or corrupt files and for non-image content.
    """
    path_str = os.fspath(path)
    try:
        if os.path.getsize(path_str) == 0:
            raise BadImageError(path_str, "empty file (0 bytes)")
        with Image.open(path_str) as img:
            if decode_size is not None and img.format == "JPEG":
                width, height = decode_size(*img.size)
                if 2 * width <= img.width and 2 * height <= img.height:
                    img.draft(img.mode, (width, height))
            # Image.open is lazy; decoding here makes truncation surface now, with this path,
            # rather than later inside a transform.
            img.load()
            img = _apply_exif_orientation(img)
            return _to_rgb(img)
    except BadImageError:
        raise
    except UnidentifiedImageError:
        raise BadImageError(path_str, "not a recognised image format") from None
    except Exception as exc:
        # PIL's format plugins signal malformed input with many exception types (OSError,
        # SyntaxError, ValueError, struct.error, EOFError, DecompressionBombError, ...); all of them
        # mean "this file is unusable", which is what callers need to know.
        raise BadImageError(path_str, f"{type(exc).__name__}: {exc}") from exc


def _apply_exif_orientation(img: Image.Image) -> Image.Image:
    try:
        return ImageOps.exif_transpose(img)
    except Exception:
        # A damaged EXIF block should not cost us pixels that decoded fine; keep the stored
        # orientation.
        return img


def _to_rgb(img: Image.Image) -> Image.Image:
    mode = img.mode
    if mode in _SIXTEEN_BIT_MODES:
        values = np.asarray(img, dtype=np.float64)
        # 257 = 65535 / 255 maps the 16-bit range exactly onto the 8-bit one (65535 -> 255).
        grey = np.rint(np.clip(values, 0, 65535) / 257.0).astype(np.uint8)
        return Image.fromarray(grey, mode="L").convert("RGB")
    if mode == "F":
        values = np.nan_to_num(np.asarray(img, dtype=np.float64), nan=0.0, posinf=255.0, neginf=0.0)
        if values.size and values.min() >= 0.0 and values.max() <= 1.0:
            values = values * 255.0
        grey = np.rint(np.clip(values, 0, 255)).astype(np.uint8)
        return Image.fromarray(grey, mode="L").convert("RGB")
    if mode == "CMYK":
        # Pillow's own CMYK->RGB formula changed across versions (older ones clip C+K); do the
        # subtractive conversion explicitly so results do not depend on the Pillow release.
        cmyk = np.asarray(img, dtype=np.float64)
        white = 255.0 - cmyk[..., 3:4]
        rgb = np.rint((255.0 - cmyk[..., :3]) * white / 255.0).astype(np.uint8)
        return Image.fromarray(rgb, mode="RGB")
    if mode in _ALPHA_MODES or "transparency" in img.info:
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (*ALPHA_BACKGROUND, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return img.convert("RGB")


def unit_float(images: torch.Tensor) -> torch.Tensor:
    """uint8 pixels (0..255) as float32 in [0, 1], in one pass (the same values as ``x.float() / 255``); float
    input is returned as it is."""
    return torch.div(images, 255) if images.dtype == torch.uint8 else images


def gather_windows(images: torch.Tensor, plane: torch.Tensor, top: torch.Tensor, left: torch.Tensor,
                   size: int) -> torch.Tensor:
    """The ``size`` x ``size`` window at (``top``, ``left``) of plane ``plane`` of ``images`` (its planes are the
    H x W matrices of ``images.flatten(0, -3)``), for every entry of the three index tensors broadcast together:
    shape ``broadcast shape + (size, size)``.

    Each row of a window is ``size`` consecutive elements of the images' memory, so every row of every window
    is one row of an overlapping strided view (row ``i`` is the ``size`` elements from element ``i``: no copy)
    and one ``index_select`` copies them all, row by row. Indexing a view of every window (``unfold``) copies
    element by element instead: about 5x slower on a CPU for jigsaw's 64 px tiles."""
    height, width = images.shape[-2:]
    flat = images.contiguous().view(-1)
    rows = flat.as_strided((flat.numel() - size + 1, size), (1, 1))
    start = (plane * height + top) * width + left
    offsets = start.unsqueeze(-1) + torch.arange(size, device=images.device) * width
    return rows.index_select(0, offsets.flatten()).view(*start.shape, size, size)

