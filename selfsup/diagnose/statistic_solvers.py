"""Trivial solvers that read image statistics (issue 16): global colour averages for counting, tiny pixels
and regional colour and edge statistics for rotation, the colour prior for colorization and colour histograms
for DeepCluster. What a solver is and how it is scored: :mod:`selfsup.diagnose.solvers`.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from selfsup.clustering import kmeans, nmi
from selfsup.diagnose.solvers import SolverResult, fit_split, gradient_magnitude, held_out_accuracy
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
from selfsup.pretext.counting import NUM_TILES as COUNT_TILES
from selfsup.pretext.counting import counting_loss
from selfsup.pretext.rotation import NUM_ROTATIONS, rotate_batch

# Share of the uniform distribution mixed into colorization's predicted distributions: a bin a predictor
# never names must cost a finite loss.
_UNIFORM_MIX = 1e-3


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
    return SolverResult(f"tiny pixels ({size}x{size})", "acc", held_out_accuracy(features, labels, fitted),
                        1 / NUM_ROTATIONS)


def region_statistics(images: Tensor) -> Tensor:
    """N x 4(C + 1): the mean colour and the mean gradient magnitude of the grey image in the top, bottom, left
    and right thirds of each image."""
    x = images.float()
    features = []
    for maps in (x, gradient_magnitude(x.mean(dim=1, keepdim=True))):
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
    accuracy = held_out_accuracy(region_statistics(rotated), labels, fitted)
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
