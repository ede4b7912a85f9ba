"""Crops decided by numbers, not by a generator: a crop's numbers are a hash of its sample's seed
(`crop_uniforms`), so the same sample gets the same crop in any worker, process or resumed run, and a batch's
numbers are drawn in one pass. `RandomCrop` (training) and `CenterCrop` (evaluation) also say how small a JPEG
may be decoded for them (``decode_size``)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
from PIL import Image

# Uniform draws a crop may use: two per attempt at a box (area, aspect), two for its place, one for the flip.
_CROP_ATTEMPTS = 10
_CROP_DRAWS = 2 * _CROP_ATTEMPTS + 3

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)


def _splitmix64(x: np.ndarray) -> np.ndarray:
    """The splitmix64 finaliser of uint64 ``x`` (wrapping arithmetic), a well-mixed 64-bit hash."""
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def crop_uniforms(seeds: Sequence[int]) -> np.ndarray:
    """The uniform numbers in [0, 1) a crop draws, ``len(seeds)`` x ``_CROP_DRAWS`` float64: a hash of (seed,
    k), so a seed's numbers are the same wherever they are drawn and however many seeds are drawn together.
    One numpy pass for a batch: seeding a generator per image cost more than its crop at 32 px."""
    keys = np.asarray(seeds, dtype=np.int64).astype(np.uint64).reshape(-1, 1)
    counters = np.arange(1, _CROP_DRAWS + 1, dtype=np.uint64)
    with np.errstate(over="ignore"):
        bits = _splitmix64(_splitmix64(keys * _GOLDEN) + counters * _GOLDEN)
    return (bits >> np.uint64(11)).astype(np.float64) * 2.0**-53


def _lerp(low: float, high: float, u: float) -> float:
    return low + (high - low) * u


def _at_least(width: int, height: int, side: float, smallest_region: float) -> tuple[int, int]:
    """The (width, height) at which a region of ``smallest_region`` pixels still has ``side`` pixels or more."""
    scale = min(1.0, side / max(smallest_region, 1e-9))
    return max(1, math.ceil(width * scale)), max(1, math.ceil(height * scale))


def _to_uint8_tensor(img: Image.Image) -> torch.Tensor:
    return torch.from_numpy(np.array(img, dtype=np.uint8)).permute(2, 0, 1).contiguous()


@dataclass(frozen=True)
class RandomCrop:
    """Random-resized crop (area ``scale``, aspect ``ratio``) and optional horizontal flip. ``jpeg_draft``: JPEGs
    may decode at a reduced scale (see `decode_size`)."""

    size: int
    scale: tuple[float, float] = (0.5, 1.0)
    ratio: tuple[float, float] = (3 / 4, 4 / 3)
    hflip: bool = True
    jpeg_draft: bool = True

    def decode_size(self, width: int, height: int) -> tuple[int, int]:
        """The smallest image size at which every crop this may draw still has ``size`` pixels a side (a JPEG
        decoded smaller gives the same crops, up to resampling: the box is drawn in fractions of the image)."""
        if not self.jpeg_draft:
            return width, height
        narrowest = min(math.sqrt(self.ratio[0]), 1 / math.sqrt(self.ratio[1]))
        smallest_side = min(math.sqrt(width * height * self.scale[0]) * narrowest, width, height)
        return _at_least(width, height, self.size, smallest_side)

    def draw(self, width: int, height: int, uniforms: Sequence[float]) -> tuple[tuple[float, float, float, float], bool]:
        """The crop box (left, top, right, bottom) in pixels of a ``width`` x ``height`` image, and whether to
        flip it, from the sample's ``uniforms`` (a row of `crop_uniforms`); what a crop of that image uses (a crop
        made elsewhere, e.g. on a GPU, draws it here)."""
        area = width * height
        box = (0.0, 0.0, float(width), float(height))
        u = np.asarray(uniforms, dtype=np.float64).tolist()
        for attempt in range(_CROP_ATTEMPTS):
            target = area * _lerp(*self.scale, u[2 * attempt])
            aspect = math.exp(_lerp(math.log(self.ratio[0]), math.log(self.ratio[1]), u[2 * attempt + 1]))
            w = math.sqrt(target * aspect)
            h = math.sqrt(target / aspect)
            if w <= width and h <= height:
                left, top = _lerp(0, width - w, u[-3]), _lerp(0, height - h, u[-2])
                box = (left, top, left + w, top + h)
                break
        return box, self.hflip and u[-1] < 0.5

    def crop_image(self, img: Image.Image, uniforms: Sequence[float]) -> Image.Image:
        """The crop of ``img`` as a ``size`` x ``size`` image (what `__call__` returns as a tensor)."""
        box, flip = self.draw(*img.size, uniforms)
        # resize with a box crops and scales in one resampling step (and upscales small images)
        out = img.resize((self.size, self.size), Image.BILINEAR, box=box, reducing_gap=None)
        return out.transpose(Image.FLIP_LEFT_RIGHT) if flip else out

    def __call__(self, img: Image.Image, uniforms: Sequence[float]) -> torch.Tensor:
        return _to_uint8_tensor(self.crop_image(img, uniforms))


@dataclass(frozen=True)
class CenterCrop:
    """Deterministic evaluation view: the central ``crop_fraction`` of the short side, resized. ``jpeg_draft``: as
    for `RandomCrop`."""

    size: int
    crop_fraction: float = 1.0
    jpeg_draft: bool = True

    def decode_size(self, width: int, height: int) -> tuple[int, int]:
        """The smallest image size at which the crop still has ``size`` pixels a side."""
        if not self.jpeg_draft:
            return width, height
        return _at_least(width, height, self.size, min(width, height) * self.crop_fraction)

    def crop_image(self, img: Image.Image, uniforms: Sequence[float] | None = None) -> Image.Image:
        """The crop of ``img`` as a ``size`` x ``size`` image (what `__call__` returns as a tensor)."""
        width, height = img.size
        side = min(width, height) * self.crop_fraction
        left, top = (width - side) / 2, (height - side) / 2
        return img.resize((self.size, self.size), Image.BILINEAR, box=(left, top, left + side, top + side))

    def __call__(self, img: Image.Image, uniforms: Sequence[float] | None = None) -> torch.Tensor:
        return _to_uint8_tensor(self.crop_image(img, uniforms))
