"""Composing the demo data set's images: isotropic backgrounds and clutter, the 64x64 classification
images and the multi-object detection scenes with their VOC boxes.

Every image is a pure function of its key (split, class and number, or detection index) through its own
seeded random stream, so any subset can be rendered in any order or process. Backgrounds are deliberately
isotropic (noise, stripes at random angles, randomly rotated clutter): no global "sky is up" colour cue
exists, and orientation must come from the objects (`selfsup.data.demo_draw`), which are placed here at a
random size, aspect, tilt and mirroring.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

from selfsup.data.demo_draw import _CLASS_DRAW, DEMO_CLASSES
from selfsup.data.demo_pen import _color, _grid, _Pen

SEED = 20240521
IMAGE_SIZE = 64
CLASSIFICATION_COUNTS: dict[str, int] = {"train": 500, "val": 100, "test": 100}
VOC_COUNTS: dict[str, int] = {"train": 200, "val": 50, "test": 150}
VOC_SIZE_RANGE = (112, 160)
# Pixels whose (visible) object alpha exceeds this count as "drawn" for boxes.
BOX_ALPHA = 0.3
DIFFICULT_MIN_SIDE = 12.0  # geometric-mean box side below which an object is "tiny"
DIFFICULT_VISIBLE = 0.45  # visible share of the in-image object below which it is "heavily occluded"
# Objects are drawn this many times larger and box-filtered down: cheap and
# clean anti-aliasing for PIL's aliased polygon rasteriser.
SUPERSAMPLE = 3
MAX_TILT_DEG = 15.0


# --------------------------------------------------------------------------- backgrounds


def _smooth_field(rng: np.random.Generator, w: int, h: int, cells: int) -> np.ndarray:
    """Low-frequency noise in [0, 1]: a few random values per side, bicubic-upsampled."""
    coarse = rng.random((cells, cells), dtype=np.float32)
    field = np.asarray(Image.fromarray(coarse).resize((w, h), Image.Resampling.BICUBIC))
    return np.clip(field, 0.0, 1.0)


def _clutter_layer(rng: np.random.Generator, w: int, h: int, count: int) -> Image.Image:
    """Small primitives at random rotations: texture without an up direction."""
    ss = 2
    layer = Image.new("RGBA", (w * ss, h * ss), (0, 0, 0, 0))
    d = ImageDraw.Draw(layer)
    alpha = int(rng.integers(110, 230))
    for _ in range(count):
        x, y = rng.uniform(0, w * ss), rng.uniform(0, h * ss)
        r = rng.uniform(1.2, 4.5) * ss
        col = (*_color(rng, sat=(0.1, 0.8), val=(0.2, 1.0)), alpha)
        kind = int(rng.integers(5))
        if kind == 0:
            d.ellipse([x - r, y - r, x + r, y + r], fill=col)
        elif kind == 1:
            d.ellipse([x - r, y - r, x + r, y + r], outline=col, width=max(1, round(r / 3)))
        elif kind in (2, 3):  # triangle or square, randomly rotated
            k = 3 if kind == 2 else 4
            t0 = rng.uniform(0, 2 * math.pi)
            d.polygon([(x + r * math.cos(t0 + 2 * math.pi * i / k), y + r * math.sin(t0 + 2 * math.pi * i / k))
                       for i in range(k)], fill=col)
        else:
            t0 = rng.uniform(0, math.pi)
            dx, dy = 1.6 * r * math.cos(t0), 1.6 * r * math.sin(t0)
            d.line([(x - dx, y - dy), (x + dx, y + dy)], fill=col, width=max(1, round(r / 2.5)))
    return layer.reduce(ss)


def _background(rng: np.random.Generator, w: int, h: int) -> Image.Image:
    """An isotropic background: smooth two-colour noise plus one or two random overlays."""
    c1 = np.asarray(_color(rng, sat=(0.05, 0.6), val=(0.25, 0.95)), np.float32)
    c2 = np.asarray(_color(rng, sat=(0.05, 0.6), val=(0.25, 0.95)), np.float32)
    t = _smooth_field(rng, w, h, int(rng.integers(2, 6)))[..., None]
    img = c1 * (1 - t) + c2 * t
    ys, xs = _grid(w, h)
    overlays = rng.choice(["stripes", "blotches", "clutter", "grain", "waves"], size=int(rng.integers(1, 3)),
                          replace=False, p=[0.22, 0.22, 0.3, 0.13, 0.13])
    layers: list[Image.Image] = []
    for kind in overlays:
        if kind == "stripes":
            theta = rng.uniform(0, math.pi)
            u = xs * math.cos(theta) + ys * math.sin(theta)
            band = 0.5 + 0.5 * np.sin(2 * math.pi * u / rng.uniform(3.0, 12.0))
            col = np.asarray(_color(rng, sat=(0.0, 0.6), val=(0.2, 1.0)), np.float32)
            k = rng.uniform(0.15, 0.5) * band[..., None]
            img = img * (1 - k) + col * k
        elif kind == "waves":  # interference of two random plane waves: wood/marble-like
            th1, th2 = rng.uniform(0, math.pi, size=2)
            f1, f2 = rng.uniform(0.08, 0.3, size=2)
            wave = np.sin(f1 * (xs * math.cos(th1) + ys * math.sin(th1)) + 2.0 * np.sin(
                f2 * (xs * math.cos(th2) + ys * math.sin(th2))))
            img = img * (1.0 + rng.uniform(0.08, 0.25) * wave[..., None])
        elif kind == "blotches":
            field = _smooth_field(rng, w, h, int(rng.integers(5, 10)))
            col = np.asarray(_color(rng, sat=(0.1, 0.7), val=(0.2, 1.0)), np.float32)
            k = (np.clip((field - 0.55) * 6.0, 0.0, 1.0) * rng.uniform(0.4, 0.9))[..., None]
            img = img * (1 - k) + col * k
        elif kind == "grain":
            img = img + rng.normal(0.0, rng.uniform(4.0, 12.0), size=(h, w, 1)).astype(np.float32)
        else:
            count = int(rng.integers(8, 30) * w * h / (IMAGE_SIZE * IMAGE_SIZE))
            layers.append(_clutter_layer(rng, w, h, count))
    out = Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).convert("RGBA")
    for layer in layers:
        out.alpha_composite(layer)
    return out


# --------------------------------------------------------------------------- objects


def _render_object(rng: np.random.Generator, cls: str, extent: float) -> Image.Image:
    """RGBA object, tilted and maybe mirrored, cropped to its drawn pixels.

    `extent` is the longer side of the tilted unit box in output pixels.
    """
    draw, (lo, hi) = _CLASS_DRAW[cls]
    aspect = rng.uniform(lo, hi)
    tilt = rng.uniform(-MAX_TILT_DEG, MAX_TILT_DEG)
    mirror = bool(rng.random() < 0.5)  # mirroring keeps "up" up
    c, s = abs(math.cos(math.radians(tilt))), abs(math.sin(math.radians(tilt)))
    height = extent / max(aspect * c + s, aspect * s + c)
    pen = _Pen(rng, aspect, height, SUPERSAMPLE, tilt, mirror)
    draw(pen, rng)
    img = pen.img.reduce(SUPERSAMPLE)
    bbox = img.getchannel("A").point(lambda v: 255 if v > 8 else 0).getbbox()
    return img.crop(bbox) if bbox else img


# --------------------------------------------------------------------------- images


def _rng(*key: int) -> np.random.Generator:
    """Independent stream per image, so any subset can be rendered in any order or process."""
    return np.random.default_rng([SEED, *key])


def render_classification_image(split: str, cls: str, index: int) -> Image.Image:
    """The 64x64 RGB image `<split>/<cls>/<index>` of the demo set (pure function of its key)."""
    rng = _rng(0, list(CLASSIFICATION_COUNTS).index(split), DEMO_CLASSES.index(cls), index)
    canvas = _background(rng, IMAGE_SIZE, IMAGE_SIZE)
    obj = _render_object(rng, cls, rng.uniform(0.5, 0.92) * IMAGE_SIZE)
    x = int(rng.integers(0, max(0, IMAGE_SIZE - obj.width) + 1))
    y = int(rng.integers(0, max(0, IMAGE_SIZE - obj.height) + 1))
    canvas.alpha_composite(obj, (x, y))
    return canvas.convert("RGB")


@dataclass(frozen=True)
class VocObject:
    """One object of a detection image, as its VOC annotation states it."""

    name: str
    box: tuple[int, int, int, int]  # xmin, ymin, xmax, ymax, 1-based inclusive as in VOC
    truncated: bool
    difficult: bool


@dataclass(frozen=True)
class _Placed:
    cls: str
    layer: Image.Image  # RGBA, cropped to the drawn object
    x: int  # top-left corner in the image; may be negative (object hangs over the border)
    y: int


def _coverage(placed: Sequence[_Placed], w: int, h: int) -> list[tuple[np.ndarray, np.ndarray, float]]:
    """Per object, back to front: its alpha in the image frame, the part of it
    left visible by the objects drawn later, and the share of it outside the image."""
    frames = []
    for obj in placed:
        alpha = np.asarray(obj.layer.getchannel("A"), np.float32) / 255.0
        frame = np.zeros((h, w), np.float32)
        lh, lw = alpha.shape
        x0, y0, x1, y1 = max(obj.x, 0), max(obj.y, 0), min(obj.x + lw, w), min(obj.y + lh, h)
        if x1 > x0 and y1 > y0:
            frame[y0:y1, x0:x1] = alpha[y0 - obj.y:y1 - obj.y, x0 - obj.x:x1 - obj.x]
        outside = 1.0 - (frame > BOX_ALPHA).sum() / max(1, (alpha > BOX_ALPHA).sum())
        frames.append((frame, outside))
    out = []
    for i, (frame, outside) in enumerate(frames):
        visible = frame.copy()
        for later, _ in frames[i + 1:]:
            visible *= 1.0 - later
        out.append((frame, visible, outside))
    return out


def _layout_ok(coverage: Sequence[tuple[np.ndarray, np.ndarray, float]]) -> bool:
    """Every object keeps half of itself inside the image and a quarter of that in view."""
    for frame, visible, outside in coverage:
        seen = visible > BOX_ALPHA
        if outside >= 0.5 or seen.sum() < 0.25 * max(1, (frame > BOX_ALPHA).sum()):
            return False
        if seen.any(axis=0).sum() < 3 or seen.any(axis=1).sum() < 3:
            return False
    return True


def _voc_scene(index: int) -> tuple[Image.Image, list[_Placed]]:
    """Background (RGBA) and the objects placed on it, back to front, for detection image `index`."""
    rng = _rng(1, index)
    lo, hi = VOC_SIZE_RANGE
    w, h = (int(v) for v in rng.integers(lo, hi + 1, size=2))
    background = _background(rng, w, h)
    n = int(rng.choice([1, 2, 3, 4], p=[0.25, 0.3, 0.27, 0.18]))
    classes = [DEMO_CLASSES[int(i)] for i in rng.integers(len(DEMO_CLASSES), size=n)]
    # Log-uniform sizes: many medium objects, some tiny ("difficult") and some large.
    extents = np.exp(rng.uniform(math.log(13), math.log(0.75 * min(w, h)), size=n))
    layers = [_render_object(rng, c, float(e)) for c, e in zip(classes, extents)]
    # Random layouts until every object stays recognisable; a scene too crowded
    # for that loses its last object and tries again. Late attempts keep objects
    # inside the image, which always works for a single object.
    while True:
        for attempt in range(40):
            placed = []
            for cls, layer in zip(classes, layers):
                if rng.random() < (0.3 if attempt < 20 else 0.0):  # may hang over the border: truncated
                    x = int(rng.integers(-layer.width // 2, w - layer.width // 2 + 1))
                    y = int(rng.integers(-layer.height // 2, h - layer.height // 2 + 1))
                else:
                    x = int(rng.integers(0, max(0, w - layer.width) + 1))
                    y = int(rng.integers(0, max(0, h - layer.height) + 1))
                placed.append(_Placed(cls, layer, x, y))
            if _layout_ok(_coverage(placed, w, h)):
                return background, placed
        classes, layers = classes[:-1], layers[:-1]


def render_voc_image(index: int) -> tuple[Image.Image, list[VocObject]]:
    """Detection image number `index` (0-based) with its VOC annotations."""
    canvas, placed = _voc_scene(index)
    canvas = canvas.copy()
    objects = []
    for obj, (frame, visible, outside) in zip(placed, _coverage(placed, *canvas.size)):
        canvas.alpha_composite(obj.layer, (max(obj.x, 0), max(obj.y, 0)), (max(-obj.x, 0), max(-obj.y, 0)))
        # VOC boxes cover the visible part of an object, in 1-based inclusive pixel coordinates.
        seen = visible > BOX_ALPHA
        cols, rows = np.flatnonzero(seen.any(axis=0)), np.flatnonzero(seen.any(axis=1))
        box = (int(cols[0]) + 1, int(rows[0]) + 1, int(cols[-1]) + 1, int(rows[-1]) + 1)
        tiny = math.sqrt((box[2] - box[0] + 1) * (box[3] - box[1] + 1)) < DIFFICULT_MIN_SIDE
        occluded = seen.sum() < DIFFICULT_VISIBLE * (frame > BOX_ALPHA).sum()
        objects.append(VocObject(obj.cls, box, truncated=bool(outside > 0), difficult=bool(tiny or occluded)))
    return canvas.convert("RGB"), objects


def _voc_ids() -> dict[str, list[str]]:
    """Image ids per VOC split: detection image `index` is id `index + 1`, numbered on across train, val, test."""
    ids, start = {}, 1
    for split, count in VOC_COUNTS.items():
        ids[split] = [f"{i:06d}" for i in range(start, start + count)]
        start += count
    return ids
