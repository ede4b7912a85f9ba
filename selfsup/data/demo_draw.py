"""One painter per class of the demo data set, and the classes in label order.

Constraints that shape the painters (see `selfsup.data.demo` for the data set itself):

* Rotation prediction must learn about *objects*: every class has a canonical
  upright pose (roof on top, wheels below, flame under a rocket...); the
  backgrounds they are placed on (`selfsup.data.demo_scenes`) carry no "up".
* Classes differ by shape and part structure, not colour: palettes
  (`selfsup.data.demo_pen`) are broad and overlapping so that the mean colour
  of an image says little about its class (a test checks this).
* Colours still follow the parts (green crowns, brown trunks, yellow flames,
  light-blue windows) so colorization has something predictable to learn.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np

from selfsup.data.demo_pen import (
    Point, _any_hue, _arc, _brown, _color, _contrast, _dark, _flame, _glass, _green, _greyish, _pastel, _Pen, _pick,
    _shade, _skin, _tex,
)

# The classes in label order; _CLASS_DRAW below has one painter for each.
DEMO_CLASSES: tuple[str, ...] = ("house", "tree", "car", "rocket", "mushroom", "sailboat", "person", "mug", "flower",
                                 "umbrella")


# --------------------------------------------------------------------------- the classes
# Each drawer receives a pen whose unit box is [0, aspect] x [0, 1] and draws the
# object upright. Aspect ranges live next to the drawers in _CLASS_DRAW.


def _draw_house(pen: _Pen, rng: np.random.Generator) -> None:
    a = pen.aspect
    wall_top = rng.uniform(0.4, 0.52)
    apex = rng.uniform(0.02, 0.12)
    wl, wr = rng.uniform(0.08, 0.14) * a, a - rng.uniform(0.08, 0.14) * a
    over = rng.uniform(0.02, 0.07)
    wall = _pick(rng, [_any_hue, _pastel, _brown, lambda r: _color(r, hue=(0.0, 0.05), val=(0.5, 0.8))])
    roof = _pick(rng, [
        lambda r: _color(r, hue=(0.98, 1.05), val=(0.4, 0.75)),
        _brown, _greyish, _dark, _any_hue,
    ])
    if rng.random() < 0.5:
        cx = wl + (wr - wl) * rng.uniform(0.62, 0.78)
        pen.rect(cx - 0.05, apex + 0.08, cx + 0.05, wall_top, _pick(rng, [_brown, _greyish]), "hstripes")
    pen.rect(wl, wall_top, wr, 0.98, wall, _tex(rng, ["flat", "hstripes", "dots", "gradient"], [0.45, 0.3, 0.1, 0.15]))
    if rng.random() < 0.65:
        roof_pts = [(wl - over, wall_top + 0.02), (a / 2, apex), (wr + over, wall_top + 0.02)]
    else:
        inset = rng.uniform(0.15, 0.3) * a
        roof_pts = [(wl - over, wall_top + 0.02), (wl + inset, apex), (wr - inset, apex), (wr + over, wall_top + 0.02)]
    pen.poly(roof_pts, roof, _tex(rng, ["hstripes", "flat", "gradient"], [0.5, 0.35, 0.15]))
    # Door always stands on the ground line: a strong "this is the bottom" cue.
    span = wr - wl
    slots = [wl + span * f for f in (0.2, 0.5, 0.8)]
    door_slot = int(rng.integers(3))
    dw, dh = 0.09 * span + 0.04, (0.98 - wall_top) * rng.uniform(0.5, 0.65)
    dx = slots[door_slot]
    door = _pick(rng, [_brown, _dark, _any_hue])
    pen.rect(dx - dw / 2, 0.98 - dh, dx + dw / 2, 0.98, door, radius=0.02 if rng.random() < 0.5 else 0.0)
    pen.ellipse(dx + dw * 0.25, 0.98 - dh * 0.45, 0.012, 0.012, (230, 200, 60), outline=False)
    glass = _glass(rng)
    ws = min(0.13, span * 0.16)
    wy = wall_top + (0.98 - wall_top) * rng.uniform(0.25, 0.4)
    for i, sx in enumerate(slots):
        if i != door_slot and rng.random() < 0.85:
            pen.rect(sx - ws / 2, wy - ws / 2, sx + ws / 2, wy + ws / 2, glass)
            bar = _shade(wall, 1.5)
            pen.stroke([(sx, wy - ws / 2), (sx, wy + ws / 2)], 0.012, bar, outline=False)
            pen.stroke([(sx - ws / 2, wy), (sx + ws / 2, wy)], 0.012, bar, outline=False)
    if rng.random() < 0.4 and len(roof_pts) == 3:
        gy = (apex + wall_top) / 2 + 0.04
        pen.ellipse(a / 2, gy, 0.045, 0.045, glass)


def _draw_tree(pen: _Pen, rng: np.random.Generator) -> None:
    a, cx = pen.aspect, pen.aspect / 2
    leaves = _green(rng) if rng.random() < 0.8 else _color(rng, hue=(0.0, 0.14), sat=(0.6, 0.95), val=(0.6, 0.95))
    trunk = _brown(rng)
    style = rng.random()
    if style < 0.35:  # conifer: stacked triangles
        tw = rng.uniform(0.06, 0.1)
        pen.rect(cx - tw / 2, 0.78, cx + tw / 2, 0.99, trunk, "flat")
        leaves = _shade(leaves, 0.8)
        n = int(rng.integers(2, 4))
        step = 0.75 / n
        for i in range(n):
            base = 0.82 - i * step * 0.85
            half = (a / 2 - 0.02) * (1.0 - 0.22 * i)
            pen.poly([(cx - half, base), (cx, base - step * 1.6), (cx + half, base)], leaves,
                     _tex(rng, ["flat", "dots", "gradient"], [0.5, 0.3, 0.2]))
    else:  # broadleaf: a cloud of circles on a trunk with a couple of branches
        tw = rng.uniform(0.08, 0.16)
        pen.poly([(cx - tw / 2, 0.5), (cx + tw / 2, 0.5), (cx + tw * 0.7, 0.99), (cx - tw * 0.7, 0.99)], trunk,
                 _tex(rng, ["flat", "stripes"], [0.7, 0.3]))
        pen.stroke([(cx, 0.62), (cx - 0.16, 0.42)], 0.035, trunk)
        pen.stroke([(cx, 0.58), (cx + 0.15, 0.4)], 0.035, trunk)
        r0 = min(0.28, a * 0.3)
        circles = [(cx, 0.33, r0)]
        for _ in range(int(rng.integers(3, 7))):
            ang = rng.uniform(0, 2 * math.pi)
            d = rng.uniform(0.4, 0.8) * r0
            r = r0 * rng.uniform(0.45, 0.7)
            x = min(max(cx + d * math.cos(ang), r), a - r)
            y = min(max(0.33 + 0.8 * d * math.sin(ang), r), 0.66 - r)
            circles.append((x, y, r))
        pen.blob(circles, leaves, _tex(rng, ["flat", "dots", "gradient"], [0.35, 0.45, 0.2]))
        if rng.random() < 0.3:
            fruit = _color(rng, hue=(0.95, 1.08), sat=(0.7, 1.0), val=(0.7, 1.0))
            for _ in range(int(rng.integers(3, 7))):
                ang, d = rng.uniform(0, 2 * math.pi), rng.uniform(0, 0.8) * r0
                pen.ellipse(cx + d * math.cos(ang), 0.33 + 0.8 * d * math.sin(ang), 0.03, 0.03, fruit)
    if rng.random() < 0.3:
        pen.ellipse(cx, 0.98, rng.uniform(0.2, 0.3), 0.04, _green(rng), outline=False)


def _draw_car(pen: _Pen, rng: np.random.Generator) -> None:
    a = pen.aspect
    body = _pick(rng, [_any_hue, _any_hue, _greyish, _dark])
    body_tex = _tex(rng, ["flat", "gradient", "hstripes", "dots"], [0.5, 0.25, 0.15, 0.1])
    glass = _glass(rng)
    style = rng.random()
    wheel_y, wheel_r = 0.8, rng.uniform(0.14, 0.19)
    if style < 0.55:  # sedan: low body with a cabin on top
        pen.poly([(0.26 * a, 0.46), (0.34 * a, 0.14), (0.68 * a, 0.14), (0.8 * a, 0.46)], body, body_tex)
        pen.rect(0.03 * a, 0.42, 0.97 * a, 0.8, body, body_tex, radius=0.08)
        pen.poly([(0.3 * a, 0.44), (0.36 * a, 0.2), (0.5 * a, 0.2), (0.5 * a, 0.44)], glass)
        pen.poly([(0.53 * a, 0.44), (0.53 * a, 0.2), (0.66 * a, 0.2), (0.75 * a, 0.44)], glass)
        wheels = [0.22 * a, 0.78 * a]
    elif style < 0.8:  # van: one tall box
        pen.rect(0.03 * a, 0.12, 0.97 * a, 0.8, body, body_tex, radius=0.1)
        for x0 in (0.1, 0.38, 0.66):
            pen.rect(x0 * a, 0.2, (x0 + 0.22) * a, 0.42, glass, radius=0.03)
        wheels = [0.22 * a, 0.78 * a]
    else:  # truck: cargo box behind a cab
        cargo = _pick(rng, [_any_hue, _greyish, _pastel])
        pen.rect(0.03 * a, 0.08, 0.64 * a, 0.76, cargo, _tex(rng, ["flat", "stripes", "hstripes"], [0.5, 0.25, 0.25]))
        pen.rect(0.64 * a, 0.3, 0.97 * a, 0.78, body, body_tex, radius=0.06)
        pen.rect(0.72 * a, 0.36, 0.92 * a, 0.52, glass, radius=0.02)
        wheels = [0.18 * a, 0.42 * a, 0.8 * a]
    tyre = _color(rng, sat=(0.0, 0.2), val=(0.08, 0.25))
    hub = _pick(rng, [_greyish, _any_hue])
    for wx in wheels:
        pen.ellipse(wx, wheel_y, wheel_r, wheel_r, tyre)
        pen.ellipse(wx, wheel_y, wheel_r * 0.45, wheel_r * 0.45, hub, outline=False)
    pen.ellipse(0.955 * a, 0.55, 0.03, 0.04, (255, 230, 120))
    pen.ellipse(0.045 * a, 0.55, 0.025, 0.04, (220, 40, 30))


def _draw_rocket(pen: _Pen, rng: np.random.Generator) -> None:
    a = pen.aspect
    cx = a / 2
    bw = min(0.16, a / 2 - 0.16)  # body half-width, leaving room for fins
    body = _pick(rng, [_greyish, _greyish, _pastel, _any_hue])
    accent = _pick(rng, [lambda r: _color(r, hue=(0.97, 1.03)), _any_hue, _dark])
    nose_y = rng.uniform(0.02, 0.06)
    shoulder = rng.uniform(0.2, 0.28)
    tail = rng.uniform(0.68, 0.74)
    fin_w = rng.uniform(0.1, 0.15)
    for s in (-1, 1):
        pen.poly([(cx + s * bw, tail - 0.24), (cx + s * (bw + fin_w), tail - 0.02), (cx + s * (bw + fin_w), tail + 0.08),
                  (cx + s * bw, tail)], accent, _tex(rng, ["flat", "gradient"], [0.7, 0.3]))
    pen.rect(cx - bw, shoulder - 0.01, cx + bw, tail, body,
             _tex(rng, ["flat", "hstripes", "gradient", "stripes"], [0.4, 0.25, 0.2, 0.15]))
    nose = _arc(cx, shoulder, bw, shoulder - nose_y, 180, 360, 16)
    pen.poly(nose, accent, _tex(rng, ["flat", "gradient"], [0.7, 0.3]))
    pen.ellipse(cx, shoulder + (tail - shoulder) * 0.3, bw * 0.55, bw * 0.55, _glass(rng))
    pen.poly([(cx - bw * 0.6, tail), (cx + bw * 0.6, tail), (cx + bw * 0.8, tail + 0.06), (cx - bw * 0.8, tail + 0.06)],
             _greyish(rng))
    # Flame hangs below the nozzle: a ragged teardrop, orange outside, yellow inside.
    top, length = tail + 0.06, rng.uniform(0.2, 0.26)
    outer = [(cx - bw * 0.75, top)]
    for i in range(1, 5):
        t = i / 5
        outer.append((cx - bw * 0.75 * (1 - t) - rng.uniform(0, 0.03), top + length * t * 0.9))
    outer.append((cx, top + length))
    for i in range(4, 0, -1):
        t = i / 5
        outer.append((cx + bw * 0.75 * (1 - t) + rng.uniform(0, 0.03), top + length * t * 0.9))
    outer.append((cx + bw * 0.75, top))
    pen.poly(outer, _flame(rng), outline=False)
    pen.poly([(cx - bw * 0.4, top), (cx, top + length * 0.6), (cx + bw * 0.4, top)],
             _color(rng, hue=(0.12, 0.17), sat=(0.4, 0.8), val=(0.95, 1.0)), outline=False)


def _draw_mushroom(pen: _Pen, rng: np.random.Generator) -> None:
    a, cx = pen.aspect, pen.aspect / 2
    cap_y = rng.uniform(0.42, 0.55)
    rx = a / 2 - 0.03
    ry = cap_y - rng.uniform(0.04, 0.15)
    sw = rng.uniform(0.1, 0.17)
    cream = lambda r: _color(r, hue=(0.08, 0.14), sat=(0.05, 0.35), val=(0.75, 1.0))  # noqa: E731
    stem = _pick(rng, [cream, cream, cream, _pastel])
    pen.poly([(cx - sw, cap_y - 0.02), (cx + sw, cap_y - 0.02), (cx + sw * 1.25, 0.93), (cx + sw * 0.9, 0.99),
              (cx - sw * 0.9, 0.99), (cx - sw * 1.25, 0.93)], stem, _tex(rng, ["flat", "gradient"], [0.7, 0.3]))
    if rng.random() < 0.4:
        pen.ellipse(cx, cap_y + 0.12, sw * 1.15, 0.025, _shade(stem, 0.85))  # ring on the stem
    cap = _pick(rng, [
        lambda r: _color(r, hue=(0.97, 1.03), sat=(0.7, 1.0), val=(0.6, 0.95)),
        _brown, lambda r: _color(r, hue=(0.06, 0.12), sat=(0.4, 0.8), val=(0.6, 0.9)), _any_hue,
    ])
    if rng.random() < 0.7:
        top = _arc(cx, cap_y, rx, ry, 180, 360, 24)
    else:  # conical cap
        top = [(cx - rx, cap_y), (cx - rx * 0.45, cap_y - ry * 0.7), (cx, cap_y - ry), (cx + rx * 0.45, cap_y - ry * 0.7),
               (cx + rx, cap_y)]
    rim = _arc(cx, cap_y, rx, rng.uniform(0.03, 0.07), 0, 180, 12)  # slightly bulging underside
    pen.poly(top + rim[1:-1], cap, _tex(rng, ["dots", "flat", "gradient"], [0.45, 0.35, 0.2]))


def _draw_sailboat(pen: _Pen, rng: np.random.Generator) -> None:
    a = pen.aspect
    mx = rng.uniform(0.42, 0.52) * a
    hull = _pick(rng, [_brown, _any_hue, _dark, _pastel])
    sail = _pick(rng, [_pastel, _pastel, lambda r: _color(r, sat=(0.0, 0.08), val=(0.85, 1.0)), _any_hue])
    deck = rng.uniform(0.72, 0.78)
    pen.stroke([(mx, deck), (mx, 0.04)], 0.025, _brown(rng))
    pen.poly([(mx + 0.02, 0.07), (mx + 0.02, deck - 0.05), (mx + rng.uniform(0.34, 0.44) * a, deck - 0.05)], sail,
             _tex(rng, ["flat", "stripes", "gradient"], [0.55, 0.25, 0.2]))
    if rng.random() < 0.75:
        pen.poly([(mx - 0.02, 0.14), (mx - 0.02, deck - 0.06), (mx - rng.uniform(0.28, 0.38) * a, deck - 0.06)],
                 _shade(sail, rng.uniform(0.85, 1.2)), _tex(rng, ["flat", "gradient"], [0.7, 0.3]))
    if rng.random() < 0.5:
        pen.poly([(mx, 0.03), (mx + 0.12, 0.06), (mx, 0.09)], _any_hue(rng), outline=False)
    if rng.random() < 0.35:
        pen.rect(mx - 0.12, deck - 0.07, mx + 0.08, deck + 0.01, _pastel(rng))
    # Hull wider at the deck than at the keel: the boat floats, it is not a bowl.
    pen.poly([(0.02 * a, deck), (0.98 * a, deck), (0.8 * a, 0.97), (0.22 * a, 0.97)], hull,
             _tex(rng, ["flat", "hstripes", "gradient"], [0.5, 0.3, 0.2]))
    if rng.random() < 0.5:
        pen.stroke([(0.06 * a, deck + 0.05), (0.94 * a, deck + 0.05)], 0.025, _shade(hull, 1.6), outline=False)


def _draw_person(pen: _Pen, rng: np.random.Generator) -> None:
    a, cx = pen.aspect, pen.aspect / 2
    skin = _skin(rng)
    shirt = _pick(rng, [_any_hue, _pastel, _dark])
    pants = _pick(rng, [lambda r: _color(r, hue=(0.55, 0.65), sat=(0.3, 0.7), val=(0.3, 0.6)), _dark, _brown, _any_hue])
    head_r = rng.uniform(0.075, 0.095)
    head_y = head_r + 0.02
    sh = min(0.14, a / 2 - 0.1)  # half shoulder width
    neck, waist = head_y + head_r + 0.01, rng.uniform(0.52, 0.58)
    limb = rng.uniform(0.06, 0.08)
    if rng.random() < 0.3:  # dress: one trapezoid from shoulders to knees, bare lower legs
        hem = rng.uniform(0.72, 0.8)
        for s in (-1, 1):
            pen.stroke([(cx + s * 0.05, hem - 0.02), (cx + s * 0.06, 0.93)], limb * 0.7, skin)
        pen.poly([(cx - sh * 0.8, neck), (cx + sh * 0.8, neck), (cx + sh * 1.5, hem), (cx - sh * 1.5, hem)], shirt,
                 _tex(rng, ["flat", "dots", "stripes"], [0.5, 0.3, 0.2]))
    else:
        stride = rng.uniform(0.0, 0.08)
        for s in (-1, 1):
            pen.stroke([(cx + s * 0.055, waist - 0.02), (cx + s * (0.06 + stride), 0.93)], limb, pants)
        pen.poly([(cx - sh, neck), (cx + sh, neck), (cx + sh * 0.8, waist), (cx - sh * 0.8, waist)], shirt,
                 _tex(rng, ["flat", "hstripes", "stripes", "dots"], [0.5, 0.2, 0.15, 0.15]))
    shoe = _dark(rng)
    for s in (-1, 1):
        pen.ellipse(cx + s * 0.08, 0.955, 0.055, 0.03, shoe)
    pose = rng.random()
    for s in (-1, 1):
        if pose < 0.5:  # arms hanging
            hand = (cx + s * (sh + 0.05), waist + 0.02)
        elif pose < 0.8:  # arms spread
            hand = (cx + s * (a / 2 - 0.04), neck + rng.uniform(0.1, 0.25))
        else:  # one arm waving
            hand = (cx + s * (a / 2 - 0.05), neck - 0.05) if s > 0 else (cx + s * (sh + 0.05), waist)
        elbow = ((cx + s * sh + hand[0]) / 2 + s * 0.02, (neck + 0.04 + hand[1]) / 2 + 0.02)
        pen.stroke([(cx + s * sh * 0.85, neck + 0.04), elbow, hand], limb * 0.8, shirt)
        pen.ellipse(hand[0], hand[1], limb * 0.55, limb * 0.55, skin)
    pen.ellipse(cx, head_y, head_r, head_r, skin)
    hair = _pick(rng, [_dark, _brown, lambda r: _color(r, hue=(0.1, 0.15), sat=(0.5, 0.8), val=(0.7, 0.95))])
    if rng.random() < 0.25:  # hat
        pen.rect(cx - head_r * 1.5, head_y - head_r * 0.6, cx + head_r * 1.5, head_y - head_r * 0.35, hair)
        pen.rect(cx - head_r * 0.85, head_y - head_r * 1.55, cx + head_r * 0.85, head_y - head_r * 0.5, hair)
    elif rng.random() < 0.7:
        pen.poly(_arc(cx, head_y, head_r * 1.05, head_r * 1.1, 180, 360, 12), hair)


def _draw_mug(pen: _Pen, rng: np.random.Generator) -> None:
    a = pen.aspect
    body = _pick(rng, [_any_hue, _pastel, _greyish, _dark])
    x0, x1 = 0.06 * a, 0.72 * a
    top, bottom = rng.uniform(0.28, 0.38), 0.95
    taper = rng.uniform(0.0, 0.08) if rng.random() < 0.4 else 0.0  # teacups narrow towards the foot
    handle_cy = top + (bottom - top) * rng.uniform(0.35, 0.5)
    hr = (bottom - top) * rng.uniform(0.25, 0.33)
    hw = max(0.04, hr * 0.35)
    pen.ring(x1 - 0.02, handle_cy, hr + 0.02, hr, hw, body)
    if rng.random() < 0.3:
        pen.ellipse((x0 + x1) / 2, bottom + 0.01, (x1 - x0) * 0.75, 0.035, _pick(rng, [_pastel, _greyish, _any_hue]))
    pen.poly([(x0, top), (x1, top), (x1 - taper, bottom), (x0 + taper, bottom)], body,
             _tex(rng, ["flat", "stripes", "dots", "hstripes", "gradient"], [0.3, 0.2, 0.2, 0.15, 0.15]))
    pen.ellipse((x0 + x1) / 2, top, (x1 - x0) / 2, 0.05, _shade(body, 1.3))
    drink = _pick(rng, [_brown, _dark, lambda r: _color(r, hue=(0.07, 0.11), sat=(0.3, 0.6), val=(0.6, 0.85))])
    pen.ellipse((x0 + x1) / 2, top + 0.008, (x1 - x0) / 2 - 0.04, 0.032, drink, outline=False)
    if rng.random() < 0.65:  # steam rises: another up cue that is part of the object
        steam = _color(rng, sat=(0.0, 0.1), val=(0.8, 1.0))
        for i in range(int(rng.integers(2, 4))):
            sx = x0 + (x1 - x0) * (0.3 + 0.2 * i)
            wig = rng.uniform(0.02, 0.04)
            pen.stroke([(sx, top - 0.06), (sx + wig, top - 0.12), (sx - wig, top - 0.19), (sx, top - 0.25)], 0.025,
                       steam, outline=False)


def _draw_flower(pen: _Pen, rng: np.random.Generator) -> None:
    a, cx = pen.aspect, pen.aspect / 2
    stem = _green(rng)
    bloom_y = rng.uniform(0.2, 0.26)
    bloom_x = cx + rng.uniform(-0.04, 0.04)
    potted = rng.random() < 0.4
    ground = 0.74 if potted else 0.98
    bend = rng.uniform(-0.06, 0.06)
    pen.stroke([(cx, ground), (cx + bend, (ground + bloom_y) / 2), (bloom_x, bloom_y)], 0.035, stem)
    for i in range(int(rng.integers(1, 3))):
        s = 1 if i == 0 else -1
        ly = ground - rng.uniform(0.12, 0.25)
        tip = (cx + s * rng.uniform(0.18, 0.26), ly - rng.uniform(0.08, 0.16))
        mid = ((cx + tip[0]) / 2, (ly + tip[1]) / 2)
        nx, ny = -(tip[1] - ly) * 0.35, (tip[0] - cx) * 0.35
        pen.poly([(cx, ly), (mid[0] + nx, mid[1] + ny), tip, (mid[0] - nx, mid[1] - ny)], _shade(stem, 1.1))
    petal = _pick(rng, [lambda r: _color(r, hue=(0.45, 1.15), sat=(0.5, 1.0), val=(0.7, 1.0)), _pastel, _any_hue])
    petal_tex = _tex(rng, ["flat", "gradient", "dots"], [0.6, 0.3, 0.1])
    if rng.random() < 0.3:  # tulip: a cup with three points
        w, h = rng.uniform(0.13, 0.17), rng.uniform(0.14, 0.2)
        pen.poly([(bloom_x - w, bloom_y - h * 0.6), (bloom_x - w * 0.5, bloom_y - h * 0.2), (bloom_x, bloom_y - h),
                  (bloom_x + w * 0.5, bloom_y - h * 0.2), (bloom_x + w, bloom_y - h * 0.6)]
                 + _arc(bloom_x, bloom_y - h * 0.6, w, h * 0.9, 0, 180, 12)[1:-1], petal, petal_tex)
    else:
        n = int(rng.integers(5, 10))
        ring = min(0.13, a / 2 - 0.09)
        pr = ring * rng.uniform(0.55, 0.75)
        phase = rng.uniform(0, 2 * math.pi)
        for i in range(n):
            t = phase + 2 * math.pi * i / n
            pen.ellipse(bloom_x + ring * math.cos(t), bloom_y + ring * math.sin(t), pr, pr, petal, petal_tex)
        heart = _pick(rng, [lambda r: _color(r, hue=(0.11, 0.16), sat=(0.7, 1.0), val=(0.8, 1.0)), _brown])
        pen.ellipse(bloom_x, bloom_y, ring * 0.6, ring * 0.6, heart, _tex(rng, ["flat", "dots"], [0.5, 0.5]))
    if potted:
        pot = _pick(rng, [lambda r: _color(r, hue=(0.03, 0.08), sat=(0.5, 0.8), val=(0.55, 0.85)), _any_hue])
        pen.poly([(cx - 0.2, 0.72), (cx + 0.2, 0.72), (cx + 0.15, 0.98), (cx - 0.15, 0.98)], pot,
                 _tex(rng, ["flat", "hstripes", "dots"], [0.6, 0.2, 0.2]))
        pen.rect(cx - 0.23, 0.7, cx + 0.23, 0.77, _shade(pot, 0.85))


def _draw_umbrella(pen: _Pen, rng: np.random.Generator) -> None:
    a, cx = pen.aspect, pen.aspect / 2
    rx = a / 2 - 0.02
    rim_y, apex_y = rng.uniform(0.4, 0.48), rng.uniform(0.07, 0.12)
    c1 = _pick(rng, [_any_hue, _any_hue, _dark, _pastel])
    c2 = _contrast(rng, c1) if rng.random() < 0.6 else c1
    shaft = _pick(rng, [_dark, _brown, _greyish])
    pen.stroke([(cx, apex_y - 0.07), (cx, apex_y)], 0.025, shaft)
    # Handle: straight shaft ending in a J hook.
    hook_r = rng.uniform(0.06, 0.09)
    hook_y = rng.uniform(0.82, 0.88)
    pen.stroke([(cx, rim_y)] + [(cx, hook_y)] + _arc(cx - hook_r, hook_y, hook_r, hook_r, 0, 180, 10)[1:], 0.03, shaft)
    n = int(rng.integers(4, 8))
    tips = [(cx - rx + 2 * rx * i / n, rim_y) for i in range(n + 1)]
    depth = rng.uniform(0.03, 0.06)
    scallops: list[Point] = []
    for (x0, y0), (x1, _) in zip(reversed(tips[1:]), reversed(tips[:-1])):
        scallops += [(x0 + (x1 - x0) * t, y0 - depth * math.sin(math.pi * t)) for t in (0.0, 0.25, 0.5, 0.75)]
    dome = _arc(cx, rim_y, rx, rim_y - apex_y, 180, 360, 24)
    pen.poly(dome + scallops[1:], c1, _tex(rng, ["flat", "gradient", "dots"], [0.6, 0.25, 0.15]))
    if c2 != c1:  # alternate panels: wedges from the apex to neighbouring tips
        for i in range(1, n - 1, 2):
            (x0, y0), (x1, _) = tips[i], tips[i + 1]
            edge = [(x0 + (x1 - x0) * t, y0 - depth * math.sin(math.pi * t)) for t in (0.0, 0.25, 0.5, 0.75, 1.0)]
            pen.poly([(cx, apex_y + 0.01)] + edge, c2, outline=False)
    for x, y in tips[1:-1]:
        pen.stroke([(cx, apex_y + 0.01), (x, y)], 0.008, _shade(c1, 0.45), outline=False)


_CLASS_DRAW: dict[str, tuple[Callable[[_Pen, np.random.Generator], None], tuple[float, float]]] = {
    # class: (drawer, aspect range width/height)
    "house": (_draw_house, (0.95, 1.35)),
    "tree": (_draw_tree, (0.6, 0.9)),
    "car": (_draw_car, (1.6, 2.1)),
    "rocket": (_draw_rocket, (0.62, 0.78)),
    "mushroom": (_draw_mushroom, (0.8, 1.25)),
    "sailboat": (_draw_sailboat, (0.85, 1.15)),
    "person": (_draw_person, (0.5, 0.62)),
    "mug": (_draw_mug, (1.0, 1.3)),
    "flower": (_draw_flower, (0.55, 0.8)),
    "umbrella": (_draw_umbrella, (0.8, 1.1)),
}
assert tuple(_CLASS_DRAW) == DEMO_CLASSES

