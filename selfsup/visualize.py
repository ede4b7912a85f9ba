"""Rendering a task's example inputs as one captioned PNG (what ``ssl-inspect`` writes)."""

from __future__ import annotations

import textwrap

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from selfsup.pretext.base import Examples


def _caption_font() -> ImageFont.ImageFont:
    # Pillow's bundled scalable font when FreeType is available; the bitmap fallback squeezes spaces.
    try:
        return ImageFont.load_default(size=11)
    except (TypeError, ImportError, OSError):
        return ImageFont.load_default()


def render_examples(examples: Examples, title: str, cell: int = 128) -> Image.Image:
    """A grid of the examples, each scaled to ``cell`` px (nearest neighbour, so pixels stay visible) and captioned."""
    font = _caption_font()
    images = examples.images.detach().float().clamp(0, 1).cpu()
    count, per_row = len(images), max(1, examples.per_row)
    rows = -(-count // per_row)
    wrap = max(8, cell // 6)
    caption_lines = [textwrap.wrap(c, wrap) or [""] for c in examples.captions]
    caption_height = 12 * max((len(lines) for lines in caption_lines), default=1) + 4
    header = 24
    canvas = Image.new("RGB", (per_row * (cell + 6) + 6, header + rows * (cell + caption_height + 6)), "white")
    draw = ImageDraw.Draw(canvas)
    draw.text((6, 6), title, fill="black", font=font)
    for i, image in enumerate(images):
        array = (image.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
        tile = Image.fromarray(array).resize((cell, cell), Image.NEAREST)
        x = 6 + (i % per_row) * (cell + 6)
        y = header + (i // per_row) * (cell + caption_height + 6)
        canvas.paste(tile, (x, y))
        for j, line in enumerate(caption_lines[i]):
            draw.text((x, y + cell + 2 + 12 * j), line, fill="black", font=font)
    return canvas
