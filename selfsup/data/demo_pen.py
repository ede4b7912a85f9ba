"""The pen that draws the demo data set's objects: colour palettes, fill textures and shapes in upright
object units (`selfsup.data.demo_draw` has one painter per class built on it).

Palettes are broad and overlapping on purpose, so that an image's mean colour says little about its class;
textures that mean "horizontal" (bands, planks, tiles) follow the object's tilt, not the canvas.
"""

from __future__ import annotations

import colorsys
import math
from collections.abc import Callable, Sequence

import numpy as np
from PIL import Image, ImageDraw

RGB = tuple[int, int, int]
Point = tuple[float, float]


# --------------------------------------------------------------------------- colours


def _hsv(h: float, s: float, v: float) -> RGB:
    r, g, b = colorsys.hsv_to_rgb(h % 1.0, min(max(s, 0.0), 1.0), min(max(v, 0.0), 1.0))
    return (round(r * 255), round(g * 255), round(b * 255))


def _color(
    rng: np.random.Generator,
    hue: tuple[float, float] = (0.0, 1.0),
    sat: tuple[float, float] = (0.45, 0.9),
    val: tuple[float, float] = (0.45, 0.95),
) -> RGB:
    return _hsv(rng.uniform(*hue), rng.uniform(*sat), rng.uniform(*val))


def _pick(rng: np.random.Generator, palettes: Sequence[Callable[[np.random.Generator], RGB]]) -> RGB:
    return palettes[int(rng.integers(len(palettes)))](rng)


def _shade(c: RGB, f: float) -> RGB:
    """f < 1 darkens towards black, f > 1 lightens towards white."""
    if f <= 1.0:
        return (round(c[0] * f), round(c[1] * f), round(c[2] * f))
    t = min(f - 1.0, 1.0)
    return (round(c[0] + (255 - c[0]) * t), round(c[1] + (255 - c[1]) * t), round(c[2] + (255 - c[2]) * t))


def _any_hue(rng: np.random.Generator) -> RGB:
    return _color(rng)


def _greyish(rng: np.random.Generator) -> RGB:
    return _color(rng, sat=(0.0, 0.15), val=(0.35, 0.95))


def _pastel(rng: np.random.Generator) -> RGB:
    return _color(rng, sat=(0.15, 0.4), val=(0.8, 1.0))


def _dark(rng: np.random.Generator) -> RGB:
    return _color(rng, sat=(0.1, 0.6), val=(0.15, 0.35))


def _brown(rng: np.random.Generator) -> RGB:
    return _color(rng, hue=(0.04, 0.1), sat=(0.45, 0.8), val=(0.25, 0.55))


def _green(rng: np.random.Generator) -> RGB:
    return _color(rng, hue=(0.2, 0.42), sat=(0.45, 0.9), val=(0.3, 0.8))


def _skin(rng: np.random.Generator) -> RGB:
    return _color(rng, hue=(0.04, 0.09), sat=(0.3, 0.65), val=(0.35, 0.97))


def _glass(rng: np.random.Generator) -> RGB:
    # Windows: mostly sky-blue reflections, sometimes lit from inside.
    if rng.random() < 0.7:
        return _color(rng, hue=(0.5, 0.62), sat=(0.2, 0.55), val=(0.75, 1.0))
    return _color(rng, hue=(0.1, 0.16), sat=(0.4, 0.8), val=(0.85, 1.0))


def _flame(rng: np.random.Generator) -> RGB:
    return _color(rng, hue=(0.02, 0.1), sat=(0.75, 1.0), val=(0.9, 1.0))


def _contrast(rng: np.random.Generator, c: RGB) -> RGB:
    """A second texture colour: a lighter/darker tone of c or an unrelated hue."""
    r = rng.random()
    if r < 0.4:
        return _shade(c, rng.uniform(0.45, 0.75))
    if r < 0.75:
        return _shade(c, rng.uniform(1.3, 1.7))
    return _any_hue(rng)


# --------------------------------------------------------------------------- textures


def _grid(w: int, h: int) -> tuple[np.ndarray, np.ndarray]:
    """Open (broadcastable) pixel row and column coordinates, as float32."""
    return np.arange(h, dtype=np.float32)[:, None], np.arange(w, dtype=np.float32)[None, :]


def _texture(rng: np.random.Generator, w: int, h: int, c: RGB, kind: str, scale: float, tilt: float) -> Image.Image:
    """An RGB fill of size (w, h). scale = canvas px per output px, so pattern
    periods are defined in output pixels and survive the downsampling; tilt
    (radians) is the object's, so "horizontal" bands follow the object."""
    base = np.asarray(c, np.float32)
    ys, xs = _grid(w, h)
    ys, xs = ys / scale, xs / scale
    theta = rng.uniform(0.0, math.pi)
    u = xs * math.cos(theta) + ys * math.sin(theta)
    if kind == "flat":
        # A gentle shading ramp in a random direction keeps flat parts from looking pasted on.
        span = max(1.0, float(np.ptp(u)))
        t = (u - u.min()) / span - 0.5
        out = base[None, None, :] * (1.0 + rng.uniform(0.1, 0.25) * t[..., None])
    else:
        c2 = np.asarray(_contrast(rng, c), np.float32)
        if kind == "gradient":
            span = max(1.0, float(np.ptp(u)))
            t = ((u - u.min()) / span)[..., None]
        elif kind == "stripes":
            period = rng.uniform(2.5, 6.0)
            t = ((u / period) % 1.0 < rng.uniform(0.3, 0.6))[..., None].astype(np.float32)
        elif kind == "hstripes":
            # Horizontal bands (tiles, planks, bricks): tied to the object's own upright frame.
            period = rng.uniform(2.0, 4.5)
            up = xs * math.sin(tilt) + ys * math.cos(tilt)
            t = ((up / period) % 1.0 < 0.35)[..., None].astype(np.float32)
        elif kind == "dots":
            period = rng.uniform(3.0, 6.0)
            radius = rng.uniform(0.2, 0.35) * period
            v = ys * math.cos(theta) - xs * math.sin(theta)
            du = (u / period) % 1.0 - 0.5
            dv = (v / period) % 1.0 - 0.5
            t = ((du * du + dv * dv) * period * period < radius * radius)[..., None].astype(np.float32)
        else:
            raise ValueError(f"unknown texture {kind!r}")
        out = base[None, None, :] * (1.0 - t) + c2[None, None, :] * t
    return Image.fromarray(np.clip(out, 0, 255).astype(np.uint8))


# --------------------------------------------------------------------------- object pen


class _Pen:
    """Draws one object on a supersampled RGBA canvas.

    Drawers work in upright object units: y runs 0 (top) .. 1 (bottom), x runs
    0 .. aspect, so circles stay round whatever the aspect ratio. The pen maps
    those units through the instance's mirror and tilt itself, so tilting costs
    no image resampling and edges stay crisp.
    """

    def __init__(
        self, rng: np.random.Generator, aspect: float, height_px: float, scale: int, tilt_deg: float, mirror: bool,
    ):
        self.rng = rng
        self.scale = scale
        self.unit = height_px * scale
        self.aspect = aspect
        self.mirror = mirror
        self.tilt = math.radians(tilt_deg)
        self._cos, self._sin = math.cos(self.tilt), math.sin(self.tilt)
        c, s = abs(self._cos), abs(self._sin)
        # Padding so outlines and hooks that poke slightly out of the unit box survive.
        pad = 0.15 * self.unit
        size = (math.ceil(self.unit * (aspect * c + s) + 2 * pad), math.ceil(self.unit * (aspect * s + c) + 2 * pad))
        self._centre = (size[0] / 2, size[1] / 2)
        self.img = Image.new("RGBA", size, (0, 0, 0, 0))
        self.draw = ImageDraw.Draw(self.img)
        self.line = max(1, round(0.9 * scale))  # outline width: about one output pixel

    def _xy(self, pts: Sequence[Point]) -> list[Point]:
        half, u, cos, sin = self.aspect / 2, self.unit, self._cos, self._sin
        cx, cy = self._centre
        out = []
        for x, y in pts:
            dx = ((half - x) if self.mirror else (x - half)) * u
            dy = (y - 0.5) * u
            # Counter-clockwise on screen (y down) for positive tilt, like Image.rotate.
            out.append((cx + dx * cos + dy * sin, cy - dx * sin + dy * cos))
        return out

    def _fill(self, paint: Callable[[ImageDraw.ImageDraw, object], None], color: RGB, tex: str | None) -> None:
        if tex is None:
            paint(self.draw, color)
            return
        mask = Image.new("L", self.img.size, 0)
        paint(ImageDraw.Draw(mask), 255)
        box = mask.getbbox()
        if box is not None:
            fill = _texture(self.rng, box[2] - box[0], box[3] - box[1], color, tex, self.scale, self.tilt)
            self.img.paste(fill, box[:2], mask.crop(box))

    def poly(self, pts: Sequence[Point], color: RGB, tex: str | None = None, outline: bool = True) -> None:
        xy = self._xy(pts)
        self._fill(lambda d, f: d.polygon(xy, fill=f), color, tex)
        if outline:
            self.draw.polygon(xy, outline=_shade(color, 0.4), width=self.line)

    def rect(
        self, x0: float, y0: float, x1: float, y1: float, color: RGB,
        tex: str | None = None, radius: float = 0.0, outline: bool = True,
    ) -> None:
        if radius <= 0:
            pts = [(x0, y0), (x1, y0), (x1, y1), (x0, y1)]
        else:
            r = min(radius, (x1 - x0) / 2, (y1 - y0) / 2)
            pts = (_arc(x1 - r, y0 + r, r, r, 270, 360, 4) + _arc(x1 - r, y1 - r, r, r, 0, 90, 4)
                   + _arc(x0 + r, y1 - r, r, r, 90, 180, 4) + _arc(x0 + r, y0 + r, r, r, 180, 270, 4))
        self.poly(pts, color, tex, outline)

    def ellipse(
        self, cx: float, cy: float, rx: float, ry: float, color: RGB,
        tex: str | None = None, outline: bool = True,
    ) -> None:
        self.poly(_arc(cx, cy, rx, ry, 0, 360, 28)[:-1], color, tex, outline)

    def blob(self, circles: Sequence[tuple[float, float, float]], color: RGB, tex: str | None = None) -> None:
        """Union of circles with one outline around the union (tree crowns, clouds)."""
        dark = _shade(color, 0.4)
        grow = self.line / self.unit
        for cx, cy, r in circles:
            self.draw.polygon(self._xy(_arc(cx, cy, r + grow, r + grow, 0, 360, 28)), fill=dark)
        shapes = [self._xy(_arc(cx, cy, r, r, 0, 360, 28)) for cx, cy, r in circles]

        def paint(d: ImageDraw.ImageDraw, f: object) -> None:
            for xy in shapes:
                d.polygon(xy, fill=f)

        self._fill(paint, color, tex)

    def ring(self, cx: float, cy: float, rx: float, ry: float, width: float, color: RGB) -> None:
        """An elliptical band of the given thickness, outlined on both sides (mug handles)."""
        xy = self._xy(_arc(cx, cy, rx, ry, 0, 360, 28))
        w = max(1, round(width * self.unit))
        self.draw.line(xy, fill=_shade(color, 0.4), width=w + 2 * self.line, joint="curve")
        self.draw.line(xy, fill=color, width=w, joint="curve")

    def stroke(self, pts: Sequence[Point], width: float, color: RGB, outline: bool = True) -> None:
        """A thick polyline with round caps (limbs, masts, stems)."""
        xy = self._xy(pts)
        w = max(1.0, width * self.unit)
        layers = [(_shade(color, 0.4), w + 2 * self.line), (color, w)] if outline else [(color, w)]
        for c, lw in layers:
            self.draw.line(xy, fill=c, width=round(lw), joint="curve")
            r = lw / 2
            for x, y in (xy[0], xy[-1]):
                self.draw.ellipse([x - r, y - r, x + r, y + r], fill=c)


def _arc(cx: float, cy: float, rx: float, ry: float, a0: float, a1: float, n: int = 24) -> list[Point]:
    """Points on an ellipse from angle a0 to a1 (degrees, 0 = +x, 90 = down)."""
    out = []
    for i in range(n + 1):
        t = math.radians(a0 + (a1 - a0) * i / n)
        out.append((cx + rx * math.cos(t), cy + ry * math.sin(t)))
    return out


def _tex(rng: np.random.Generator, kinds: Sequence[str], p: Sequence[float]) -> str:
    return str(rng.choice(kinds, p=p))
