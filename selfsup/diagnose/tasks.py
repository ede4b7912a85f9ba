"""Each task's diagnosis: its trivial solvers on the task's own inputs, and given a trained network, that
network scored on exactly the inputs each solver is scored on, intact and with each cue ablated.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor

from selfsup.clustering import nmi
from selfsup.diagnose.ablations import (
    LOW_PASS_FRACTION,
    AblationSpec,
    align_channels,
    border_width,
    equalise_colour_statistics,
    high_pass,
    low_pass,
    mask_borders,
)
from selfsup.diagnose.previews import context_preview, counting_preview, jigsaw_preview, rotation_preview
from selfsup.diagnose.solvers import (
    SolverResult,
    context_aberration_solver,
    context_border_solver,
    fit_split,
    jigsaw_border_solver,
)
from selfsup.diagnose.statistic_solvers import (
    colorization_prior_solvers,
    counting_colour_solver,
    deepcluster_histogram_solver,
    rotation_pixel_solver,
    rotation_region_solver,
)
from selfsup.diagnose.subjects import Progress
from selfsup.errors import DataError
from selfsup.pretext import PretextTask
from selfsup.pretext.base import Examples
from selfsup.pretext.colorization import non_gray, rgb_to_lab
from selfsup.pretext.counting import NUM_TILES as COUNT_TILES
from selfsup.pretext.counting import counting_loss
from selfsup.pretext.jigsaw import make_puzzles
from selfsup.pretext.rotation import NUM_ROTATIONS, rotate_batch

# Fitted solvers fit on this share of the images and are scored on the rest (as is the network beside them).
FIT_FRACTION = 0.5
# Images (or puzzles, pairs, views) per forward pass of a checkpoint's network: bounds the memory of
# activations at the paper's image sizes; in eval mode BatchNorm uses its running statistics, so the
# chunking changes nothing.
NETWORK_CHUNK = 64


@dataclass(frozen=True)
class Row:
    """One solver's line of the diagnosis: its ``value`` of ``metric`` beside ``chance`` and beside the
    ``network``'s value on the same ``scored`` inputs (None without a checkpoint)."""

    solver: str
    cue: str
    metric: str
    value: float
    chance: float | None
    scored: int
    network: float | None = None
    extra: dict[str, float] = field(default_factory=dict)  # e.g. the solver's loss
    network_extra: dict[str, float] = field(default_factory=dict)  # e.g. the network's loss
    note: str = ""


def _row(result: SolverResult, solver: str, scored: int, network: dict[str, float] | None = None,
         note: str = "") -> Row:
    """A :class:`Row` of ``result``; ``network`` holds the network's measures, ``result.metric`` among them."""
    network = dict(network or {})
    value = network.pop(result.metric, None)
    return Row(solver, result.name, result.metric, result.value, result.chance, scored, value, dict(result.extra),
               network, note)


# ----------------------------------------------------------------------------- ablations


@dataclass(frozen=True)
class Ablation:
    """One cue ablation on a trained network: its ``metric`` on the ``scored`` inputs intact and with the cue
    destroyed, beside the trivial solver of that cue on the same inputs before and after (None where no
    solver reads the cue, and where the ablation does not apply: then ``note`` says why)."""

    name: str
    cue: str
    metric: str
    chance: float | None
    scored: int
    network_before: float | None
    network_after: float | None
    network_extra: dict[str, float] = field(default_factory=dict)  # the losses before and after
    solver: str | None = None
    solver_before: float | None = None
    solver_after: float | None = None
    note: str = ""


def _ablation(name: str, cue: str, before: dict[str, float], after: dict[str, float], scored: int,
              solver_before: SolverResult | None, solver_after: SolverResult | None, note: str) -> Ablation:
    # counting's measure is count_acc, every other task's acc; both come with the loss
    metric = "count_acc" if "count_acc" in before else "acc"
    return Ablation(name, cue, metric, solver_before.chance if solver_before else None, scored, before[metric],
                    after[metric], {"loss_before": before["loss"], "loss_after": after["loss"]},
                    solver_before.name if solver_before else None, solver_before.value if solver_before else None,
                    solver_after.value if solver_after else None, note)


def _not_applicable(name: str, cue: str, note: str) -> Ablation:
    return Ablation(name, cue, "acc", None, 0, None, None, note=note)


@dataclass
class Diagnosis:
    """What one task's diagnosis gives: solver rows, ablations (with a checkpoint) and the preview of its inputs."""

    rows: list[Row]
    ablations: list[Ablation]
    preview: Examples | None  # None for the tasks without ablations


# ----------------------------------------------------------------------------- networks on the pretext inputs


def _classified(logits: Tensor, targets: Tensor) -> tuple[Tensor, Tensor]:
    """Per-example correctness and cross-entropy."""
    logits = logits.float()
    return (logits.argmax(dim=1) == targets).float(), F.cross_entropy(logits, targets, reduction="none")


def _mean_scores(correct: Tensor, loss: Tensor) -> dict[str, float]:
    return {"acc": float(correct.mean()), "loss": float(loss.mean())}


def _chunks(count: int) -> list[slice]:
    return [slice(start, min(start + NETWORK_CHUNK, count)) for start in range(0, count, NETWORK_CHUNK)]


# ----------------------------------------------------------------------------- the six tasks


def _rotation_network(task: PretextTask, images: Tensor, split: int) -> dict[str, float]:
    """Rotation accuracy and loss of the network over the four rotations of ``images[split:]``."""
    correct, loss = [], []
    for part in _chunks(len(images) - split):
        rotated, targets = rotate_batch(task.encoder_input(images[split:][part]))
        c, l = _classified(task.head(task.encoder(rotated)), targets)
        # rotation-major: row k * m + i is image i rotated by k; per image, the mean over its rotations
        correct.append(c.view(NUM_ROTATIONS, -1).mean(dim=0))
        loss.append(l.view(NUM_ROTATIONS, -1).mean(dim=0))
    return _mean_scores(torch.cat(correct), torch.cat(loss))


def diagnose_rotation(task: PretextTask, images: Tensor, trained: bool, seed: int, progress: Progress) -> Diagnosis:
    n = len(images)
    split = fit_split(n, FIT_FRACTION)
    network = None
    if trained:
        progress("scoring the network on the four rotations of every image")
        network = _rotation_network(task, images, split)
    progress("solver: logistic regression on 8x8 downsampled pixels")
    pixels = rotation_pixel_solver(images, train_fraction=FIT_FRACTION)
    progress("solver: logistic regression on region colour and edge statistics")
    regions = rotation_region_solver(images, train_fraction=FIT_FRACTION)
    rows = [_row(pixels, "logistic regression, fitted on the other half", n - split, network),
            _row(regions, "logistic regression, fitted on the other half", n - split, network)]
    side = max(1, round(LOW_PASS_FRACTION * images.shape[-1]))
    ablations: tuple[AblationSpec, ...] = (
        (f"low-pass ({side}x{side} px, upsampled)", "edges and texture", low_pass),
        ("high-pass (image less its low-pass, over its mean colour)", "layout of light and colour", high_pass),
    )
    done = []
    for name, cue, ablate in ablations if trained else ():
        progress(f"ablation: {name}")
        ablated = ablate(images)
        after = rotation_region_solver(ablated, train_fraction=FIT_FRACTION)
        done.append(_ablation(name, cue, network, _rotation_network(task, ablated, split), n - split,
                              regions, after, "network on the four rotations of the scored half"))
    preview = rotation_preview(images, ablations)
    return Diagnosis(rows, done, preview)


def diagnose_jigsaw(task: PretextTask, images: Tensor, trained: bool, seed: int, progress: Progress) -> Diagnosis:
    progress("building puzzles as the task does (its permutation set, gaps, colour jitter, grayscale)")
    raw, labels = make_puzzles(images, task.permutations, task.cfg, torch.Generator().manual_seed(seed))
    fed = task.encoder_input(raw)  # per-tile standardisation: what JigsawTask.puzzles feeds the network
    n = len(images)

    def scored(tiles: Tensor) -> dict[str, float]:
        out = [_classified(task.logits(tiles[part]), labels[part]) for part in _chunks(n)]
        return _mean_scores(torch.cat([c for c, _ in out]), torch.cat([l for _, l in out]))

    network = None
    if trained:
        progress("scoring the network on the puzzles")
        network = scored(fed)
    progress("solver: border matching on the raw tiles")
    on_raw = jigsaw_border_solver(raw, labels, task.permutations)
    progress("solver: border matching on the standardised tiles")
    on_fed = jigsaw_border_solver(fed, labels, task.permutations)
    rows = [_row(on_raw, "border matching, no fit", n, network,
                 "raw tiles, before per-tile standardisation (the cue in the image)"),
            _row(on_fed, "border matching, no fit", n, network,
                 "standardised tiles, as the network is fed them (the cue left after the guard)")]
    width = border_width(fed.shape[-1])
    ablations: tuple[AblationSpec, ...] = (
        (f"tile borders masked ({width} px)", "edge continuity", lambda tiles: mask_borders(tiles, width)),
        ("colour channels aligned to green", "chromatic aberration (and the task's channel jitter)",
         align_channels),
    )
    done = []
    for name, cue, ablate in ablations if trained else ():
        progress(f"ablation: {name}")
        ablated = ablate(fed)
        # only the borders have a jigsaw solver; it reads the tiles as fed
        solver = None if ablate is align_channels else jigsaw_border_solver(ablated, labels, task.permutations)
        done.append(_ablation(name, cue, network, scored(ablated), n, on_fed if solver else None, solver,
                              "standardised tiles, as fed"))
    preview = jigsaw_preview(task, fed, labels, images.shape[-1], ablations)
    return Diagnosis(rows, done, preview)


def diagnose_context(task: PretextTask, images: Tensor, trained: bool, seed: int, progress: Progress) -> Diagnosis:
    progress("building patch pairs as the task does (gap, jitter, resampling, colour guard, normalisation)")
    patches, pairs = task.make_pairs(images, torch.Generator().manual_seed(seed))
    centres, neighbours = patches.chunk(2)
    labels = pairs.labels
    n = len(images)
    split = fit_split(n, FIT_FRACTION)

    def scored(both: Tensor) -> tuple[dict[str, float], dict[str, float]]:
        """The network's measures on every pair and on the scored half."""
        first, second = both.chunk(2)
        out = [_classified(task.classify(torch.cat([first[part], second[part]])), labels[part]) for part in _chunks(n)]
        correct, loss = torch.cat([c for c, _ in out]), torch.cat([l for _, l in out])
        return _mean_scores(correct, loss), _mean_scores(correct[split:], loss[split:])

    on_all = on_scored = None
    if trained:
        progress("scoring the network on the pairs")
        on_all, on_scored = scored(patches)
    progress("solver: border matching between the two patches")
    borders = context_border_solver(centres, neighbours, labels)
    progress("solver: logistic regression on colour-channel shifts")
    aberration = context_aberration_solver(centres, neighbours, labels, train_fraction=FIT_FRACTION)
    guard = f"colour_mode {task.cfg.color_mode}"
    rows = [_row(borders, "border matching, no fit", n, on_all, "patches as fed"),
            _row(aberration, "logistic regression, fitted on the other half", n - split, on_scored,
                 f"patches as fed ({guard})")]
    width = border_width(patches.shape[-1])

    def masked(both: Tensor) -> Tensor:
        # the pair is one example: one fill colour for both patches' borders
        return mask_borders(torch.stack(both.chunk(2), dim=1), width).transpose(0, 1).flatten(0, 1)

    ablations: list[AblationSpec] = [
        (f"patch borders masked ({width} px)", "edge continuity", masked)]
    # Colour dropping keeps one channel and replaces the others by noise: there is no aberration to align.
    if task.cfg.color_mode != "drop":
        ablations.append(("colour channels aligned to green", "chromatic aberration", align_channels))
    done = []
    for name, cue, ablate in ablations if trained else ():
        progress(f"ablation: {name}")
        ablated = ablate(patches)
        first, second = ablated.chunk(2)
        if ablate is masked:
            after = context_border_solver(first, second, labels)
            done.append(_ablation(name, cue, on_all, scored(ablated)[0], n, borders, after, "patches as fed"))
        else:
            after = context_aberration_solver(first, second, labels, train_fraction=FIT_FRACTION)
            done.append(_ablation(name, cue, on_scored, scored(ablated)[1], n - split, aberration, after,
                                  f"patches as fed ({guard})"))
    if trained and task.cfg.color_mode == "drop":
        done.append(_not_applicable("colour channels aligned to green", "chromatic aberration",
                                    "not applicable: colour_mode drop keeps one channel per patch (the others are "
                                    "noise), so no aberration is left to align"))
    preview = context_preview(patches, ablations)
    return Diagnosis(rows, done, preview)


def diagnose_counting(task: PretextTask, images: Tensor, trained: bool, seed: int, progress: Progress) -> Diagnosis:
    progress("building D x and the 2x2 tiles as the task does (colour jitter, grayscale, random filters)")
    views = task.make_inputs(images, torch.Generator().manual_seed(seed)).images
    n = len(images)
    split = fit_split(n, FIT_FRACTION)

    def scored(inputs: Tensor) -> dict[str, float]:
        phi = torch.cat([task.counting_features(inputs[part]) for part in _chunks(len(inputs))])
        down = phi[:n][split:]
        tiles_sum = phi[n:].view(COUNT_TILES, n, -1).sum(dim=0)[split:]
        # the contrastive image is the previous scored one, as for the solver
        out = counting_loss(down, tiles_sum, down.roll(1, dims=0), task.cfg.margin)
        return {key: float(out[key]) for key in ("count_acc", "loss", "loss_count", "loss_contrast")}

    network = None
    if trained:
        progress("scoring the network's counting vectors")
        network = scored(views)
    progress("solver: colour averages with a fitted scale")
    colours = counting_colour_solver(views, task.cfg.margin, train_fraction=FIT_FRACTION)
    rows = [_row(colours, "closed-form scale, fitted on the other half", n - split, network,
                 f"collapse loss {task.cfg.margin:g}")]
    name, cue = "colour statistics equalised across views", "global colour statistics"
    # every view's statistics become those of all the views: computed once, for the network and the preview
    ablated = equalise_colour_statistics(views)
    done = []
    if trained:
        progress(f"ablation: {name}")
        after = counting_colour_solver(ablated, task.cfg.margin, train_fraction=FIT_FRACTION)
        done.append(_ablation(name, cue, network, scored(ablated), n - split, colours, after,
                              "every view's per-channel mean and std set to the batch's"))
    preview = counting_preview(views, ablated, name)
    return Diagnosis(rows, done, preview)


def diagnose_colorization(task: PretextTask, images: Tensor, trained: bool, seed: int, progress: Progress) -> Diagnosis:
    n = len(images)
    split = fit_split(n, FIT_FRACTION)
    network = None
    weights = None
    if trained:
        progress("scoring the network on the lightness images")
        # The checkpoint's own rebalancing weights for the solvers too: every loss is the task's loss.
        weights = task.bin_weights()
        hits = losses = valid_total = 0.0
        size = images.shape[-1] // task.cfg.target_downsample
        for part in _chunks(n - split):
            chunk = images[split:][part]
            out = task(chunk, torch.full((len(chunk),), -1))
            ab = F.adaptive_avg_pool2d(rgb_to_lab(chunk)[:, 1:], size)
            valid = float(non_gray(ab, task.cfg.gray_threshold).sum())
            # both are means over the chunk's valid (non-gray) images, every image with as many pixels
            hits += float(out["acc"]) * valid
            losses += float(out["loss"]) * valid
            valid_total += valid
        network = {"acc": hits / max(valid_total, 1), "loss": losses / max(valid_total, 1)}
    progress("solvers: the global ab prior and the per-image mean ab")
    prior, image_mean = colorization_prior_solvers(images, task.cfg, FIT_FRACTION, weights)
    weights_note = "the checkpoint's rebalancing weights" if trained else "rebalancing weights counted on the other half"
    # no ablation: colour priors are what the task predicts, not a cue in its input
    return Diagnosis([_row(prior, "constant distribution, fitted on the other half", n - split, network, weights_note),
                       _row(image_mean, "oracle: each image's own mean colour", n - split, network, weights_note)],
                      [], None)


def diagnose_deepcluster(task: PretextTask, images: Tensor, labels: Tensor, trained: bool, seed: int,
                 progress: Progress) -> Diagnosis:
    rows = []
    predicted = None
    if trained:
        progress("assigning the images to the network's clusters (its classifier over the clusters)")
        predicted = torch.cat([task.top(task.cluster_features(images[part])).argmax(dim=1)
                               for part in _chunks(len(images))])
    known = labels >= 0
    if bool(known.any()):
        progress("solver: k-means on colour histograms, against the labels")
        result = deepcluster_histogram_solver(images[known], labels[known], seed=seed)
        network = None if predicted is None else {"nmi": nmi(predicted[known].numpy(), labels[known].numpy())}
        rows.append(_row(result, "k-means, k = number of classes", int(known.sum()), network,
                         "NMI with the labels; network: NMI of its clusters with the labels"))
    if predicted is not None:
        progress("solver: k-means on colour histograms, against the network's clusters")
        result = deepcluster_histogram_solver(images, predicted, seed=seed)
        rows.append(_row(result, "k-means, k = the network's clusters in use", len(images), None,
                         "NMI with the network's cluster assignment"))
    if not rows:
        raise DataError("the deepcluster diagnosis compares colour clusters with labels or with a checkpoint's "
                        "clusters: give labelled data or --checkpoint")
    return Diagnosis(rows, [], None)
