"""Trivial solvers of the pretext tasks: how much of each task a low-level cue solves without learning (issue 16).

Every solver is a pure function of the pretext inputs and targets a task's ``forward`` builds, laid out as
the task lays them out, and measures one shortcut the papers guarded against by hand:

* jigsaw: matching tile borders (:func:`jigsaw_border_solver`);
* context: edge continuity between the two patches (:func:`context_border_solver`) and chromatic aberration,
  the shift between colour channels that grows towards the image's borders (:func:`context_aberration_solver`);
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

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from torch import Tensor

from selfsup.clustering import kmeans, nmi
from selfsup.pretext.colorization import (
    ColorizationConfig,
    bin_accuracy,
    colorization_loss,
    gamut_bins,
    non_gray,
    prior_kernel,
    rebalance_weights,
    rgb_to_lab,
    smoothed_prior,
    soft_encode,
)
from selfsup.pretext.context import NEIGHBOUR_STEPS, NUM_POSITIONS
from selfsup.pretext.counting import NUM_TILES as COUNT_TILES
from selfsup.pretext.counting import counting_loss
from selfsup.pretext.jigsaw import GRID, NUM_TILES
from selfsup.pretext.rotation import NUM_ROTATIONS, rotate_batch

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
# Share of the uniform distribution mixed into colorization's predicted distributions: a bin a predictor
# never names must cost a finite loss.
_UNIFORM_MIX = 1e-3


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


def _held_out_accuracy(features: Tensor, labels: Tensor, fitted: Tensor) -> float:
    """Accuracy on the rows outside ``fitted`` of a logistic regression on standardised features fitted on the
    rows inside it."""
    x, y, mask = features.double().cpu().numpy(), labels.cpu().numpy(), fitted.cpu().numpy()
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))
    model.fit(x[mask], y[mask])
    return float(model.score(x[~mask], y[~mask]))


def _gradient_magnitude(images: Tensor) -> Tensor:
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
        edges = _gradient_magnitude(chunk)
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
    accuracy = _held_out_accuracy(features, labels, fitted)
    return SolverResult("chromatic aberration", "acc", accuracy, 1 / NUM_POSITIONS)


# ----------------------------------------------------------------------------- counting


def colour_counts(views: Tensor) -> Tensor:
    """Counting vectors made of colour averages alone: (5N) x 2C for counting's 5N views.

    ``views`` are ``CountingInputs.images``: D x for the N images, then their four tiles, tile-major. Each view
    counts the per-channel mean and mean square of its pixels, times 4 for D x: a pixel of D x covers four
    of x, so in pixels of the original image its colour sums are the four tiles' together. Additive over
    tiles by construction, these counts meet counting's equation without seeing anything but colour.
    """
    n = _count_images(views)
    x = views.float()
    stats = torch.cat([x.mean(dim=(2, 3)), x.square().mean(dim=(2, 3))], dim=1)
    scale = torch.ones(len(views), 1, device=x.device)
    scale[:n] = COUNT_TILES
    return stats * scale


def _count_images(views: Tensor) -> int:
    if len(views) % (COUNT_TILES + 1) or len(views) < 2 * (COUNT_TILES + 1):
        raise ValueError(f"counting views come {COUNT_TILES + 1} per image (D x, then the tiles) for at least "
                         f"2 images, got {len(views)} views")
    return len(views) // (COUNT_TILES + 1)


def fit_count_scale(down: Tensor, tiles_sum: Tensor, margin: float) -> float:
    """The factor ``s`` of counting vectors that minimises counting's loss on these images, exactly.

    ``counting_loss(s D, s T, s D.roll(1), margin)`` for counts D of the downsampled images and T of the
    tiles' sums is, in ``u = s^2``, ``u mean(d_own) + mean(relu(margin - u d_other))``: convex and piecewise
    linear, so its minimum lies at ``u = 0`` or at a kink ``u = margin / d_other_i``, all evaluated at once.
    """
    d_own = (down - tiles_sum).square().sum(dim=1).double()
    d_other = (down.roll(1, dims=0) - tiles_sum).square().sum(dim=1).double()
    count = len(d_own)
    others = d_other[d_other > 0].sort(descending=True).values
    kinks = margin / others
    # At kink k the hinge is open for exactly the images with a smaller d_other: those after k in this order,
    # and those with d_other = 0, whose hinge no scale closes.
    after = others.sum() - others.cumsum(dim=0)
    open_terms = torch.arange(count - 1, count - 1 - len(others), -1, dtype=torch.float64, device=others.device)
    losses = kinks * d_own.mean() + (open_terms * margin - kinks * after) / count
    if not len(losses) or float(losses.min()) >= margin:
        return 0.0
    return float(kinks[losses.argmin()].sqrt())


def counting_colour_solver(views: Tensor, margin: float, train_fraction: float = 0.5) -> SolverResult:
    """Counting accuracy and loss (counting's own ``counting_loss``) of :func:`colour_counts` (global colour
    statistics), scaled by :func:`fit_count_scale` on the first ``train_fraction`` of the images and scored on
    the rest, the contrastive image being the previous scored one as in the task. Chance 0.5; a collapsed
    phi has loss ``margin``.
    """
    n = _count_images(views)
    phi = colour_counts(views)
    down, tiles_sum = phi[:n], phi[n:].view(COUNT_TILES, n, -1).sum(dim=0)
    split = fit_split(n, train_fraction)
    scale = fit_count_scale(down[:split], tiles_sum[:split], margin)
    scored_down = scale * down[split:]
    out = counting_loss(scored_down, scale * tiles_sum[split:], scored_down.roll(1, dims=0), margin)
    extra = {key: float(out[key]) for key in ("loss", "loss_count", "loss_contrast")}
    return SolverResult("colour averages", "count_acc", float(out["count_acc"]), 0.5,
                        {**extra, "collapse_loss": float(margin), "scale": scale})


# ----------------------------------------------------------------------------- rotation


def _rotation_split(images: Tensor, train_fraction: float) -> tuple[Tensor, Tensor, Tensor]:
    """The task's four rotations of ``images``, their labels, and which rows come from the fitted images:
    every rotation of an image falls on the same side, so a solver is scored on images it has never seen."""
    rotated, labels = rotate_batch(images.float())
    n = len(images)
    fitted = torch.arange(NUM_ROTATIONS * n, device=rotated.device) % n < fit_split(n, train_fraction)
    return rotated, labels, fitted


def rotation_pixel_solver(images: Tensor, size: int = 8, train_fraction: float = 0.5) -> SolverResult:
    """Rotation accuracy of a logistic regression on the pixels of each rotated image box-downsampled to
    ``size x size``: low-frequency layout such as a light sky above a dark ground.

    ``images`` are the [0, 1] RGB batch the task's ``forward`` receives; its ``rotate_batch`` makes the four
    rotations. Fitted on the first ``train_fraction`` of the images, scored on the rest; chance 1/4.
    """
    rotated, labels, fitted = _rotation_split(images, train_fraction)
    features = F.adaptive_avg_pool2d(rotated, size).flatten(1)
    return SolverResult(f"tiny pixels ({size}x{size})", "acc", _held_out_accuracy(features, labels, fitted),
                        1 / NUM_ROTATIONS)


def region_statistics(images: Tensor) -> Tensor:
    """N x 4(C + 1): the mean colour and the mean gradient magnitude of the grey image in the top, bottom, left
    and right thirds of each image."""
    x = images.float()
    features = []
    for maps in (x, _gradient_magnitude(x.mean(dim=1, keepdim=True))):
        height, width = maps.shape[-2:]
        third_h, third_w = max(1, height // 3), max(1, width // 3)
        regions = (maps[..., :third_h, :], maps[..., height - third_h :, :],
                   maps[..., :, :third_w], maps[..., :, width - third_w :])
        features += [region.mean(dim=(2, 3)) for region in regions]
    return torch.cat(features, dim=1)


def rotation_region_solver(images: Tensor, train_fraction: float = 0.5) -> SolverResult:
    """Rotation accuracy of a logistic regression on :func:`region_statistics` of each rotated image: colour
    and edge density by region (bright sky, textured ground), no layout finer than thirds.

    Inputs, fit and chance as for :func:`rotation_pixel_solver`.
    """
    rotated, labels, fitted = _rotation_split(images, train_fraction)
    accuracy = _held_out_accuracy(region_statistics(rotated), labels, fitted)
    return SolverResult("region colour and edge statistics", "acc", accuracy, 1 / NUM_ROTATIONS)


# ----------------------------------------------------------------------------- colorization


def colorization_prior_solvers(
    images: Tensor, cfg: ColorizationConfig, train_fraction: float = 0.5, weights: Tensor | None = None,
) -> tuple[SolverResult, SolverResult]:
    """Colorization's bin accuracy and rebalanced loss for two predictors that ignore the lightness image:
    the global colour prior, and the image's own mean colour (an oracle of per-image colour priors).

    ``images`` are the [0, 1] RGB batch the task's ``forward`` receives; targets are built as the task builds
    them (its Lab conversion, ab map at 1/``target_downsample``, soft encoding over its in-gamut bins, gray
    images left out) and the rebalancing weights are those the task counts from the first ``train_fraction``
    of the images, unless ``weights`` gives them (a trained task's ``bin_weights()``: then the losses are the
    task's own loss, comparable with its network's). The global prior predicts, at every pixel, the constant distribution that minimises the
    task's weighted loss on those images; the per-image mean predicts the image's mean ab, soft-encoded as the
    task encodes a target. Both are scored on the remaining images. The gap between the two is what a
    network gains from knowing an image's colour cast without knowing its content.
    """
    bins = gamut_bins(cfg.grid_size).to(images.device)
    size = (images.shape[-2] // cfg.target_downsample, images.shape[-1] // cfg.target_downsample)
    ab = F.adaptive_avg_pool2d(rgb_to_lab(images)[:, 1:], size)
    indices, soft = soft_encode(ab, bins, cfg.soft_neighbours, cfg.soft_sigma)
    nearest, valid = indices[:, 0], non_gray(ab, cfg.gray_threshold)
    split = fit_split(len(images), train_fraction)
    if not valid[split:].any():
        raise ValueError("colorization scores only coloured (non-gray) images, and the scored part has none")

    if weights is None:
        counted = valid[:split].view(-1, 1, 1).expand_as(nearest[:split]).long()
        counts = torch.zeros(len(bins), dtype=torch.long, device=bins.device)
        counts.scatter_add_(0, nearest[:split].flatten(), counted.flatten())
        weights = rebalance_weights(smoothed_prior(counts, prior_kernel(bins, cfg.prior_sigma)), cfg.rebalance_lambda)
    elif weights.shape != (len(bins),):
        raise ValueError(f"colorization weights must be one per ab bin ({len(bins)}), got {tuple(weights.shape)}")
    # The weighted loss is smallest for the soft targets' mean, each pixel weighted as the loss weighs it.
    pixel_weights = weights[nearest[:split]] * valid[:split].view(-1, 1, 1)
    mass = torch.zeros(len(bins), dtype=soft.dtype, device=bins.device)
    mass.scatter_add_(0, indices[:split].flatten(), (soft[:split] * pixel_weights[:, None]).flatten())
    if mass.sum() <= 0:
        raise ValueError("the global colour prior needs a coloured (non-gray) image among the fitted ones")
    global_prior = (mass / mass.sum()).view(1, -1, 1, 1)

    scored = slice(split, None)
    mean_indices, mean_soft = soft_encode(ab[scored].mean(dim=(2, 3), keepdim=True), bins, cfg.soft_neighbours,
                                          cfg.soft_sigma)
    image_mean = torch.zeros(len(mean_soft), len(bins), 1, 1, dtype=soft.dtype, device=bins.device)
    image_mean.scatter_(1, mean_indices, mean_soft)

    def result(name: str, distribution: Tensor) -> SolverResult:
        probs = (1 - _UNIFORM_MIX) * distribution + _UNIFORM_MIX / len(bins)
        logits = probs.log().expand(len(mean_soft), -1, *size)
        loss = colorization_loss(logits, indices[scored], soft[scored], weights, valid[scored])
        accuracy = bin_accuracy(logits, nearest[scored], valid[scored])
        return SolverResult(name, "acc", float(accuracy), None, {"loss": float(loss)})

    return result("global ab prior", global_prior), result("per-image mean ab", image_mean)


# ----------------------------------------------------------------------------- DeepCluster


def colour_histograms(images: Tensor, bins: int = 4) -> Tensor:
    """N x bins^3: the joint RGB histogram of each [0, 1] image, ``bins`` levels a channel, summing to 1."""
    levels = (images.float().clamp(0, 1) * bins).long().clamp_max(bins - 1)
    codes = ((levels[:, 0] * bins + levels[:, 1]) * bins + levels[:, 2]).flatten(1)
    counts = torch.zeros(len(images), bins**3, device=images.device).scatter_add_(
        1, codes, torch.ones_like(codes, dtype=torch.float32))
    return counts / codes.shape[1]


def deepcluster_histogram_solver(
    images: Tensor, assignment: Tensor | np.ndarray, num_clusters: int | None = None, bins: int = 4,
    seed: int = 0, backend: str = "sklearn",
) -> SolverResult:
    """NMI between k-means clusters of the images' :func:`colour_histograms` and ``assignment`` (the network's
    clusters, or labels; negative entries unknown and left out): how far colour alone explains them, the cue
    DeepCluster's Sobel front-end removes.

    ``num_clusters`` defaults to the number of distinct known entries of ``assignment``. The project's
    :func:`~selfsup.clustering.kmeans` with k-means++ seeding; scikit-learn by default, whose
    k-means++ needs no recent faiss. ``chance`` is the NMI of the same clusters with ``assignment`` shuffled
    (NMI is biased above 0 for finitely many samples).
    """
    target = np.asarray(torch.as_tensor(assignment).cpu())
    k = num_clusters if num_clusters is not None else len(np.unique(target[target >= 0]))
    clusters = kmeans(colour_histograms(images, bins).cpu().numpy(), k, seed=seed, backend=backend,
                      init="k-means++").assignment
    shuffled = np.random.default_rng(seed).permutation(target)
    return SolverResult("colour-histogram k-means", "nmi", nmi(clusters, target), nmi(clusters, shuffled))
