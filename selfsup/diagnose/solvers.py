"""Trivial solvers of the pretext tasks: how much of each task a low-level cue solves without learning (issue 16).

Every solver is a pure function of the pretext inputs and targets a task's ``forward`` builds, laid out as
the task lays them out, and measures one shortcut the papers guarded against by hand:

* jigsaw: matching tile borders (:func:`jigsaw_border_solver`);
* context: edge continuity between the two patches (:func:`context_border_solver`) and chromatic aberration,
  the shift between colour channels that grows towards the image's borders (:func:`context_aberration_solver`);

and, reading image statistics (:mod:`selfsup.diagnose.statistic_solvers`):

* counting: global colour averages, times 4 for the downsampled image (:func:`counting_colour_solver`);
* rotation: tiny downsampled pixels (:func:`rotation_pixel_solver`) and colour and edge statistics by image
  region (:func:`rotation_region_solver`);
* colorization: the per-image mean colour against the global colour prior (:func:`colorization_prior_solvers`);
* DeepCluster: k-means on colour histograms against the clusters (:func:`deepcluster_histogram_solver`).

Nothing is learned beyond a closed-form or scikit-learn fit. Where there is a fit, it uses the first
``train_fraction`` of the images and the score is measured on the rest; the inputs are random draws of the
task, so the first part is as good a sample as any. A solver near the network's pretext accuracy says the
task can be solved without semantics in these settings.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from torch import Tensor

from selfsup.pretext.context import NEIGHBOUR_STEPS, NUM_POSITIONS
from selfsup.pretext.jigsaw import GRID, NUM_TILES

# Puzzles scored at once: bounds the N x P x 12 border costs of 1000 permutations to ~12 MB.
_CHUNK = 256
# Patches whose channel shifts are searched at once: ~80 MB of shifted windows for the paper's 96 px patches.
_SHIFT_CHUNK = 32
# Lateral chromatic aberration moves green against red and blue (magenta): channel shifts are measured from it.
_GREEN = 1
# Cells of the 3x3 grid (row-major) that are neighbours: (left, right) and (top, bottom) pairs.
_HORIZONTAL = tuple((cell, cell + 1) for cell in range(NUM_TILES) if cell % GRID < GRID - 1)
_VERTICAL = tuple((cell, cell + GRID) for cell in range(NUM_TILES - GRID))
# For a step of -1, 0 or +1 rows (or columns) to the neighbour: the rows (columns) of the centre patch that face
# it and those of the neighbour that face back; 0 keeps every row, so diagonal neighbours compare corner pixels.
_FACING = {
    -1: (slice(0, 1), slice(-1, None)),
    0: (slice(None), slice(None)),
    1: (slice(-1, None), slice(0, 1)),
}


@dataclass(frozen=True)
class SolverResult:
    """One trivial solver's score: ``value`` of the task's ``metric`` on the held-out pretext inputs.

    ``chance`` is what guessing scores (None where no chance level applies: colorization's baseline is the
    global-prior solver); ``extra`` holds the task's other measures, such as its loss.
    """

    name: str
    metric: str
    value: float
    chance: float | None
    extra: dict[str, float] = field(default_factory=dict)


def fit_split(count: int, train_fraction: float) -> int:
    """Images ``[0, split)`` fit a solver and ``[split, count)`` score it; both parts are non-empty. Public so that
    a network can be scored on exactly the images a fitted solver is scored on."""
    if count < 2:
        raise ValueError(f"a fitted solver needs at least 2 images (one to fit, one to score), got {count}")
    if not 0 < train_fraction < 1:
        raise ValueError(f"train_fraction must lie in (0, 1), got {train_fraction}")
    return min(count - 1, max(1, round(count * train_fraction)))


def held_out_accuracy(features: Tensor, labels: Tensor, fitted: Tensor) -> float:
    """Accuracy on the rows outside ``fitted`` of a logistic regression on standardised features fitted on the
    rows inside it."""
    x, y, mask = features.double().cpu().numpy(), labels.cpu().numpy(), fitted.cpu().numpy()
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))
    model.fit(x[mask], y[mask])
    return float(model.score(x[~mask], y[~mask]))


def gradient_magnitude(images: Tensor) -> Tensor:
    """N x C x H x W -> N x C x (H-1) x (W-1): length of the forward-difference gradient of every channel."""
    dy = images[..., 1:, :-1] - images[..., :-1, :-1]
    dx = images[..., :-1, 1:] - images[..., :-1, :-1]
    return (dy.square() + dx.square()).sqrt()


def _edge_distances(first: Tensor, second: Tensor) -> Tensor:
    """N x K x C x L edges of ``first`` and of ``second`` -> N x K x K mean squared differences, ``[n, i, j]``
    between edge ``i`` of ``first`` and edge ``j`` of ``second``."""
    a, b = first.flatten(2), second.flatten(2)
    # The direct difference, not the matmul expansion: equal edges must cost 0, not a rounding residue.
    return torch.cdist(a, b, compute_mode="donot_use_mm_for_euclid_dist").square() / a.shape[-1]


# ----------------------------------------------------------------------------- jigsaw


def jigsaw_border_predict(tiles: Tensor, permutations: Tensor) -> Tensor:
    """The permutation index (into ``permutations``) whose layout makes the tiles' borders match best.

    ``tiles`` are shuffled puzzles as jigsaw builds them, N x 9 x C x t x t: position ``i`` holds the tile of
    cell ``permutations[label, i]`` (raw from ``make_puzzles``, or per-tile normalised as the network is fed
    them by ``JigsawTask.puzzles``). A permutation is scored by the sum, over the 12 pairs of neighbouring cells,
    of the mean squared difference between the facing edges of the tiles it puts there: the gaps between
    tiles guard against exactly this cue, so what is left of it is what this solver measures. (Per-tile
    normalisation is a guard too: it maps every tile of a linear gradient to the same ramp.)
    """
    if tiles.dim() != 5 or tiles.shape[1] != NUM_TILES:
        raise ValueError(f"jigsaw tiles must be N x {NUM_TILES} x C x t x t, got {tuple(tiles.shape)}")
    x = tiles.float()
    # For every permutation, the position that holds each cell's tile.
    position = permutations.to(x.device).long().argsort(dim=1)
    left, right = (position[:, [pair[k] for pair in _HORIZONTAL]] for k in (0, 1))
    top, bottom = (position[:, [pair[k] for pair in _VERTICAL]] for k in (0, 1))
    horizontal = _edge_distances(x[..., :, -1], x[..., :, 0])  # [n, i, j]: right edge of tile i, left edge of j
    vertical = _edge_distances(x[..., -1, :], x[..., 0, :])  # [n, i, j]: bottom edge of tile i, top edge of j
    predicted = [
        (h[:, left, right].sum(dim=-1) + v[:, top, bottom].sum(dim=-1)).argmin(dim=1)
        for h, v in zip(horizontal.split(_CHUNK), vertical.split(_CHUNK))
    ]
    return torch.cat(predicted)


def jigsaw_border_solver(tiles: Tensor, labels: Tensor, permutations: Tensor) -> SolverResult:
    """Jigsaw accuracy of :func:`jigsaw_border_predict` (tile-border cue; no fit), beside chance 1/P."""
    predicted = jigsaw_border_predict(tiles, permutations)
    accuracy = (predicted == labels.to(predicted.device)).float().mean()
    return SolverResult("tile borders", "acc", float(accuracy), 1 / len(permutations))


# ----------------------------------------------------------------------------- context


def context_border_predict(centres: Tensor, neighbours: Tensor) -> Tensor:
    """The position label (context's 8 classes) whose facing borders of the two patches match best.

    ``centres`` and ``neighbours`` (N x C x P x P each) are the two halves of what ``ContextTask.make_pairs``
    stacks. For each candidate position the centre's side facing it is compared with the neighbour's side
    facing back (a whole row or column for the four straight neighbours, the corner pixels for the diagonal
    ones) by mean squared difference: edge continuity across the gap, the cue gap and jitter guard against.
    """
    costs = []
    for row_step, col_step in NEIGHBOUR_STEPS:
        (centre_rows, neighbour_rows), (centre_cols, neighbour_cols) = _FACING[row_step], _FACING[col_step]
        mine = centres[..., centre_rows, centre_cols].float()
        theirs = neighbours[..., neighbour_rows, neighbour_cols].float()
        costs.append((mine - theirs).square().flatten(1).mean(dim=1))
    return torch.stack(costs, dim=1).argmin(dim=1)


def context_border_solver(centres: Tensor, neighbours: Tensor, labels: Tensor) -> SolverResult:
    """Context accuracy of :func:`context_border_predict` (edge continuity; no fit), beside chance 1/8."""
    predicted = context_border_predict(centres, neighbours)
    accuracy = (predicted == labels.to(predicted.device)).float().mean()
    return SolverResult("patch borders", "acc", float(accuracy), 1 / NUM_POSITIONS)


def _unit(windows: Tensor) -> Tensor:
    """Each window (last two dims) less its mean, scaled to unit norm: dot products become correlations."""
    centred = windows - windows.mean(dim=(-2, -1), keepdim=True)
    return centred / torch.linalg.vector_norm(centred, dim=(-2, -1), keepdim=True).clamp_min(1e-12)


def _parabola_peak(below: Tensor, peak: Tensor, above: Tensor) -> Tensor:
    """Offset of the vertex of the parabola through (-1, below), (0, peak), (1, above): within +-0.5 when
    ``peak`` is the largest of the three, 0 where the three do not bend down."""
    curvature = below - 2 * peak + above
    offset = 0.5 * (below - above) / curvature.where(curvature < 0, torch.ones_like(curvature))
    return offset.where(curvature < 0, torch.zeros_like(offset))


def channel_shifts(patches: Tensor, max_shift: int = 2, reference: int = _GREEN) -> Tensor:
    """Sub-pixel displacement (dy, dx) of every colour channel of each patch against the ``reference`` channel.

    N x C x H x W -> N x C x 2 (the reference's own row is about 0): the integer shift within ``max_shift``
    pixels that maximises the normalised cross-correlation of the channels' gradient magnitudes (edges line up
    across channels where intensities do not), refined by a parabola through the peak and its neighbours.
    Channel ``c`` equal to the reference moved by (dy, dx), ``c(y, x) = ref(y - dy, x - dx)``, gives (dy, dx).
    Lateral chromatic aberration shifts green against red and blue in proportion to the distance from the
    lens axis, so these shifts tell where in the photograph a patch was cut (Doersch et al.'s shortcut).
    """
    side = 2 * max_shift + 1
    height, width = patches.shape[-2] - 1 - 2 * max_shift, patches.shape[-1] - 1 - 2 * max_shift
    if height < 2 or width < 2:
        raise ValueError(f"patches of {tuple(patches.shape[-2:])} px are too small for shifts of {max_shift} px")
    shifts = []
    for chunk in patches.float().split(_SHIFT_CHUNK):
        edges = gradient_magnitude(chunk)
        ref = _unit(edges[:, reference : reference + 1, max_shift : max_shift + height, max_shift : max_shift + width])
        windows = _unit(edges.unfold(2, height, 1).unfold(3, width, 1))  # n x C x side x side x height x width
        corr = (windows * ref[:, :, None, None]).sum(dim=(-2, -1))  # n x C x side x side
        best = corr.flatten(2).argmax(dim=2)
        row, col = best // side, best % side
        n = torch.arange(len(chunk), device=chunk.device).view(-1, 1)
        c = torch.arange(chunk.shape[1], device=chunk.device).view(1, -1)
        peak = corr[n, c, row, col]

        def refined(index: Tensor, step_row: int, step_col: int) -> Tensor:
            # At the border of the search window the peak has one neighbour only: keep the integer shift there.
            inside = (index > 0) & (index < side - 1)
            below = corr[n, c, (row - step_row).clamp(0, side - 1), (col - step_col).clamp(0, side - 1)]
            above = corr[n, c, (row + step_row).clamp(0, side - 1), (col + step_col).clamp(0, side - 1)]
            return index - max_shift + _parabola_peak(below, peak, above).where(inside, torch.zeros_like(peak))

        shifts.append(torch.stack([refined(row, 1, 0), refined(col, 0, 1)], dim=-1))
    return torch.cat(shifts)


def context_aberration_solver(
    centres: Tensor, neighbours: Tensor, labels: Tensor, max_shift: int = 2, train_fraction: float = 0.5,
) -> SolverResult:
    """Context accuracy of a logistic regression on the two patches' colour-channel shifts (chromatic aberration).

    Inputs as for :func:`context_border_predict`; the features are the :func:`channel_shifts` of the non-green
    channels of both patches: the shift grows away from the lens axis, so the difference of the two points
    from the centre patch towards its neighbour. Fitted on the first ``train_fraction`` of the pairs, scored on the rest; chance 1/8.
    Colour dropping (context's default) replaces two channels by noise and should bring this to chance.
    """
    if centres.shape[1] < 2:
        raise ValueError("the chromatic-aberration cue needs colour patches (at least 2 channels)")
    others = [c for c in range(centres.shape[1]) if c != _GREEN]
    features = torch.cat([channel_shifts(p, max_shift)[:, others].flatten(1) for p in (centres, neighbours)], dim=1)
    fitted = torch.arange(len(labels)) < fit_split(len(labels), train_fraction)
    accuracy = held_out_accuracy(features, labels, fitted)
    return SolverResult("chromatic aberration", "acc", accuracy, 1 / NUM_POSITIONS)
