"""The --png preview of ssl-diagnose: a few examples of a task's inputs, intact and with each cue ablated,
one column per version.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from selfsup.diagnose.ablations import AblationSpec
from selfsup.pretext import PretextTask
from selfsup.pretext.base import Examples
from selfsup.pretext.counting import NUM_TILES as COUNT_TILES
from selfsup.pretext.jigsaw import layout_tiles, unshuffle_tiles

# Examples shown in the --png grid, one row each.
PREVIEW_EXAMPLES = 4


def _preview(columns: list[tuple[str, Tensor]]) -> Examples:
    """Examples with a row per example and a column per (caption, N x 3 x H x W panels) entry."""
    panels = torch.stack([panel for _, panel in columns], dim=1).flatten(0, 1)
    count = len(columns[0][1])
    captions = [f"example {i + 1}: {caption}" for i in range(count) for caption, _ in columns]
    return Examples(panels.float(), captions, per_row=len(columns))


def rotation_preview(images: Tensor, ablations: Sequence[AblationSpec]) -> Examples:
    shown = images[:PREVIEW_EXAMPLES]
    return _preview([("original", shown), *((name, ablate(shown)) for name, _, ablate in ablations)])


def jigsaw_preview(task: PretextTask, fed: Tensor, labels: Tensor, size: int,
                    ablations: Sequence[AblationSpec]) -> Examples:
    shown, shown_labels = fed[:PREVIEW_EXAMPLES], labels[:PREVIEW_EXAMPLES]

    def laid_out(tiles: Tensor) -> Tensor:
        # standardised tiles at +-2.5 std around mid-grey (as ssl-inspect shows them), put back in cell order
        visible = unshuffle_tiles((0.5 + tiles / 5).clamp(0, 1), task.permutations, shown_labels)
        return torch.stack([layout_tiles(puzzle, size) for puzzle in visible])

    return _preview([("tiles as fed, in cell order", laid_out(shown)),
                     *((name, laid_out(ablate(shown))) for name, _, ablate in ablations)])


def context_preview(patches: Tensor, ablations: Sequence[AblationSpec]) -> Examples:
    count = min(PREVIEW_EXAMPLES, len(patches) // 2)
    centres, neighbours = patches.chunk(2)
    shown = torch.cat([centres[:count], neighbours[:count]])

    # each patch stretched to [0, 1] by its intact range (as ssl-inspect shows it), its ablations by the same
    low, high = shown.amin(dim=(1, 2, 3), keepdim=True), shown.amax(dim=(1, 2, 3), keepdim=True)

    def side_by_side(both: Tensor) -> Tensor:
        # centre left and neighbour right on a square white panel
        stretched = ((both - low) / (high - low).clamp_min(1e-6)).clamp(0, 1)
        side = stretched.shape[-1]
        panel = torch.ones(count, stretched.shape[1], 2 * side + 2, 2 * side + 2)
        top = (side + 2) // 2
        first, second = stretched.chunk(2)
        panel[..., top : top + side, :side] = first
        panel[..., top : top + side, side + 2 :] = second
        return panel

    return _preview([("centre | neighbour as fed", side_by_side(shown)),
                     *((name, side_by_side(ablate(shown))) for name, _, ablate in ablations)])


def counting_preview(views: Tensor, ablated: Tensor, name: str) -> Examples:
    n = len(views) // (COUNT_TILES + 1)
    count = min(PREVIEW_EXAMPLES, n)

    def pictures(inputs: Tensor) -> tuple[Tensor, Tensor]:
        """D x (nearest-upsampled to the tiles' joint size) and the four tiles put back together."""
        down = F.interpolate(inputs[:count], scale_factor=2, mode="nearest")
        tiles = inputs[n:].view(COUNT_TILES, n, *inputs.shape[1:])[:, :count]
        rows = [torch.cat([tiles[2 * r], tiles[2 * r + 1]], dim=-1) for r in range(2)]
        return down, torch.cat(rows, dim=-2)

    down, tiles = pictures(views)
    down_after, tiles_after = pictures(ablated)
    return _preview([("D x", down), ("its 4 tiles", tiles), (f"D x, {name}", down_after),
                     (f"tiles, {name}", tiles_after)])
