"""Rendering a task's example inputs as one captioned PNG (what ``ssl-inspect`` writes)."""

from __future__ import annotations

import textwrap

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont
from torch import Tensor

from selfsup.pretext.base import Examples, PretextTask


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


def _as_rgb(x: Tensor) -> Tensor:
    """Encoder inputs of any channel count as 3 channels to look at: 1 channel as grey, 2 (Sobel gradients)
    as red and green."""
    if x.shape[1] == 1:
        return x.expand(-1, 3, -1, -1)
    if x.shape[1] < 3:
        return torch.cat([x, x.new_zeros(x.shape[0], 3 - x.shape[1], *x.shape[2:])], dim=1)
    return x[:, :3]


def lens_examples(task: PretextTask, images: Tensor) -> Examples:
    """A row per image ([0, 1] RGB) of a task whose encoder has a lens: what the encoder is fed (the task's
    ``eval_input``, as probes feed it), what the lens makes of it, and where they differ.

    Input and output share one scale per image and channel, from their joint minimum to maximum, so what
    looks changed is changed (for ImageNet-normalised RGB this undoes the normalisation up to contrast). The
    difference, ``|output - input|`` summed over channels, is scaled to its own maximum, which its caption
    gives in encoder-input units beside the mean."""
    lens = task.encoder.lens
    if lens is None:
        raise ValueError("lens_examples needs a task whose encoder has a lens")
    with torch.no_grad():
        seen = task.eval_input(images).float()
        through = lens(seen).float()
    both = torch.cat([seen, through], dim=3)
    low = both.amin(dim=(2, 3), keepdim=True)
    span = (both.amax(dim=(2, 3), keepdim=True) - low).clamp_min(1e-8)
    change = (through - seen).abs().sum(dim=1, keepdim=True)
    peak = change.amax(dim=(2, 3), keepdim=True)
    shown = torch.stack([_as_rgb((seen - low) / span), _as_rgb((through - low) / span),
                         _as_rgb(change / peak.clamp_min(1e-8))], dim=1).flatten(0, 1)
    captions = []
    for i in range(len(images)):
        captions += ["input", "through the lens",
                     f"|difference|: max {float(peak[i]):.2f}, mean {float(change[i].mean()):.3f}"]
    return Examples(shown, captions, per_row=3)
