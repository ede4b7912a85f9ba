"""Cue ablations: the pretext inputs with one low-level cue destroyed and everything else kept (issue 16).

A trained network scored on ablated inputs beside the same inputs intact tells how much it relies on the cue
(a large drop: it does). Each ablation is a pure function, tensors in and tensors out, on the inputs a task's
``forward`` builds, laid out as the task lays them out:

* jigsaw and context: :func:`mask_borders` (the tiles' or patches' outer pixels replaced by the mean colour
  of their interiors: nothing left to match across the gap) and :func:`align_channels` (red and blue moved onto green: chromatic
  aberration, and jigsaw's own per-channel jitter, undone);
* counting: :func:`equalise_colour_statistics` (every view's per-channel mean and std set to the batch's:
  global colour statistics no longer add up from the tiles to the downsampled image);
* rotation: :func:`low_pass` (the image reduced to its low frequencies) and :func:`high_pass` (its
  complement: the fine detail alone, over the image's mean colour).

Every function works on any leading dimensions (``... x C x H x W``): jigsaw's N x 9 tiles as well as
context's patches and counting's views.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from selfsup.diagnose.solvers import channel_shifts

# Lateral chromatic aberration moves red and blue against green: green is the channel the others are moved onto.
GREEN = 1
# Outer share of a tile's (patch's) side that mask_borders replaces: the border solvers read the outermost
# pixel only, a network can follow a line some pixels in (6 px of the paper's 64 px jigsaw tiles).
BORDER_FRACTION = 0.1
# Side of a rotation image after low_pass, as a share of its side: 8 x 8 of a 32 px image keeps the layout
# (a light sky, a dark ground) that the tiny-pixels solver reads and drops edges and texture.
LOW_PASS_FRACTION = 0.25
# Measure-and-move rounds of align_channels: a planted aberration's shift left after 1, 2, 3 rounds is about
# 1/3, 1/10 and 1/30 of it (tests/test_diagnose_ablations.py).
ALIGN_ROUNDS = 3


def border_width(side: int, fraction: float = BORDER_FRACTION) -> int:
    """Pixels masked on each side of a ``side`` px tile: ``fraction`` of it, at least 1, leaving an interior."""
    return max(1, min(round(fraction * side), (side - 1) // 2))


def mask_borders(tiles: Tensor, width: int) -> Tensor:
    """``tiles`` (N x ... x C x H x W) with the outer ``width`` pixels of every side set to one colour per
    example: the mean, per channel, of the interiors of all its tiles (jigsaw's N x 9 puzzles: the puzzle's
    9 tiles; context's N x 2 pairs: both patches; N x C x H x W: each tile alone). The interiors are unchanged.

    The fill comes from the interiors only, so nothing of the removed pixels survives, and it is one colour
    for every border of an example: facing borders match equally well whichever tiles are placed side by
    side (a fill per tile would leave the tiles' mean colours to match). On per-tile standardised inputs the
    fill is about 0.
    """
    height, side = tiles.shape[-2:]
    if tiles.dim() < 4:
        raise ValueError(f"tiles must be N x ... x C x H x W, got {tuple(tiles.shape)}")
    if width < 1 or 2 * width >= min(height, side):
        raise ValueError(f"a border of {width} px leaves no interior in {height}x{side} px tiles")
    interior = tiles[..., width:-width, width:-width]
    per_example = (*range(1, tiles.dim() - 3), -2, -1)  # every dimension but the example's and the channel's
    fill = interior.float().mean(dim=per_example, keepdim=True).to(tiles.dtype)
    out = fill.expand_as(tiles).clone()
    out[..., width:-width, width:-width] = interior
    return out


def _shifted(flat: Tensor, shifts: Tensor) -> Tensor:
    """Every channel of ``flat`` (n x C x H x W) sampled at (y + dy, x + dx) for its ``shifts`` (n x C x 2),
    bilinearly, edge pixels repeated."""
    count, height, width = flat.shape[0] * flat.shape[1], *flat.shape[-2:]
    # With align_corners False a pixel is 2 / side in normalised coordinates.
    theta = torch.zeros(count, 2, 3, device=flat.device)
    theta[:, 0, 0] = theta[:, 1, 1] = 1
    theta[:, 0, 2] = 2 * shifts[..., 1].flatten() / width
    theta[:, 1, 2] = 2 * shifts[..., 0].flatten() / height
    grid = F.affine_grid(theta, [count, 1, height, width], align_corners=False)
    moved = F.grid_sample(flat.reshape(count, 1, height, width), grid, mode="bilinear", padding_mode="border",
                          align_corners=False)
    return moved.view_as(flat)


def align_channels(tiles: Tensor, max_shift: int = 2, reference: int = GREEN, rounds: int = ALIGN_ROUNDS) -> Tensor:
    """``tiles`` (... x C x H x W) with every channel moved onto the ``reference`` channel by its
    :func:`~selfsup.diagnose.solvers.channel_shifts`, to sub-pixel precision, so that the channels' edges line
    up: lateral chromatic aberration (its shift; the magnification it also makes inside a tile stays), and
    jigsaw's per-channel jitter, removed.

    The parabola refinement of ``channel_shifts`` underestimates a fraction of a pixel (it is pulled towards
    whole pixels), so one move leaves a residual correlated with the shift: the shift left after each move is
    measured again and added, for ``rounds`` moves, each made from the original tile (one interpolation). The
    reference channel is returned unchanged, and so is a tile with a single channel or equal channels
    (grayscale: its shifts are 0).
    """
    shape = tiles.shape
    if len(shape) < 3 or shape[-3] < 2:
        return tiles
    flat = tiles.reshape(-1, *shape[-3:]).float()
    total = torch.zeros(*flat.shape[:2], 2, device=flat.device)
    # The parabola reads a fraction of a pixel between equal channels too (an asymmetric texture bends it):
    # a channel equal to the reference (grayscale) is not moved.
    still = (flat == flat[:, reference : reference + 1]).flatten(2).all(dim=2)
    moved = flat
    for _ in range(rounds):
        # c(y, x) = ref(y - dy, x - dx), so sampling c at (y + dy, x + dx) gives ref(y, x)
        total += channel_shifts(moved, max_shift, reference)
        total[still] = 0
        moved = _shifted(flat, total)
    # a zero shift still goes through the interpolation's rounding: the reference is copied as it was
    moved[:, reference] = flat[:, reference]
    return moved.view(shape).to(tiles.dtype)


def equalise_colour_statistics(views: Tensor, eps: float = 1e-6) -> Tensor:
    """``views`` (N x C x H x W) with each view's per-channel mean and std replaced by the batch's (the mean
    over views of each channel's per-view mean and of its per-view std); the pattern inside a view is kept.

    For counting's views (the downsampled images, then their tiles) no colour statistic tells an image's
    tiles from another's any more. A flat channel (one the task's colour jitter clamped to 0 or 1) has no
    pattern to scale: it takes the pattern of the view's grey image, else its std would still tell the view
    apart; a view flat in every channel becomes the batch's mean colour. Values may leave [0, 1]: clamping
    them would bring per-view differences back.
    """
    x = views.float()
    centred = x - x.mean(dim=(-2, -1), keepdim=True)
    std = centred.square().mean(dim=(-2, -1), keepdim=True).sqrt()
    grey = centred.mean(dim=-3, keepdim=True)
    grey_std = grey.square().mean(dim=(-2, -1), keepdim=True).sqrt()
    flat = std <= eps
    pattern = torch.where(flat, grey / grey_std.clamp_min(eps), centred / std.clamp_min(eps))
    # the targets are the statistics of the views as they were, flat channels included
    target_mean, target_std = x.mean(dim=(-2, -1), keepdim=True).mean(dim=0), std.mean(dim=0)
    return (pattern * target_std + target_mean).to(views.dtype)


def low_pass(images: Tensor, fraction: float = LOW_PASS_FRACTION) -> Tensor:
    """``images`` (N x C x H x W) box-downsampled to ``fraction`` of their side and bilinearly upsampled back:
    the layout and colours stay, edges and texture go.

    Both steps are symmetric under 90-degree rotations (when ``fraction`` times the side is a whole number of
    pixels), so the four rotations of a low-passed image are the low-passed rotations.
    """
    height, width = images.shape[-2:]
    small = (max(1, round(fraction * height)), max(1, round(fraction * width)))
    x = images.float()
    out = F.interpolate(F.adaptive_avg_pool2d(x, small), size=(height, width), mode="bilinear", align_corners=False)
    return out.to(images.dtype)


def high_pass(images: Tensor, fraction: float = LOW_PASS_FRACTION) -> Tensor:
    """What :func:`low_pass` removes, over each image's mean colour: ``x - low_pass(x) + mean(x)`` per channel.

    The fine detail (edges, texture) is kept at its place; the layout of light and colour is gone.
    """
    x = images.float()
    return (x - low_pass(x, fraction) + x.mean(dim=(-2, -1), keepdim=True)).to(images.dtype)


# An ablation as the task functions list it: its name, the cue it destroys, and the function on the inputs.
AblationSpec = tuple[str, str, Callable[[Tensor], Tensor]]
