"""ssl-diagnose's library side: how much of a pretext task its trivial solvers solve (issue 16).

:func:`diagnose` builds the pretext inputs a task's ``forward`` builds (the run's task options, crops and
seeds) for images held out of pretraining, runs that task's trivial solvers (:mod:`selfsup.diagnose.solvers`)
on them and, given a checkpoint, scores the trained network on exactly the inputs each solver is scored on.
A solver near the network says the task can be solved from that low-level cue in these settings. Given a
checkpoint, the network is also scored on the same inputs with each cue destroyed (the record's
``ablations``, :mod:`selfsup.diagnose.ablations`), beside the cue's solver before and after: the ablation
is shown to remove the cue, and a large drop of the network says it relies on it.

The images come from the data's test split: it is the only split no pretraining reads (CIFAR's and a single
folder's val splits are carved out of what pretraining reads). The fitted solvers fit on the first half of
them and are scored on the second; the images are shuffled first, so both halves are random draws.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from threadpoolctl import threadpool_limits
from torch import Tensor

from selfsup.checkpoint import atomic_file, load_checkpoint
from selfsup.config import PretrainConfig, from_dict, merge
from selfsup.data.loading import CenterCrop, RandomCrop, TransformedDataset, collate, sample_seed
from selfsup.data.sources import ImageSource, IndexedSource, Splits, open_splits, stratified_subset
from selfsup.diagnose.ablations import (
    LOW_PASS_FRACTION,
    align_channels,
    border_width,
    equalise_colour_statistics,
    high_pass,
    low_pass,
    mask_borders,
)
from selfsup.diagnose.solvers import (
    SolverResult,
    colorization_prior_solvers,
    context_aberration_solver,
    context_border_solver,
    counting_colour_solver,
    deepcluster_histogram_solver,
    fit_split,
    jigsaw_border_solver,
    rotation_pixel_solver,
    rotation_region_solver,
)
from selfsup.errors import CheckpointError, ConfigError, DataError
from selfsup.models import build_encoder
from selfsup.outputs import check_output_file
from selfsup.presets import load_preset
from selfsup.pretext import TASKS, PretextTask, check_pretrain_record, load_task, new_task
from selfsup.pretext.base import Examples
from selfsup.clustering import nmi
from selfsup.pretext.colorization import non_gray, rgb_to_lab
from selfsup.pretext.counting import NUM_TILES as COUNT_TILES
from selfsup.pretext.counting import counting_loss
from selfsup.pretext.jigsaw import layout_tiles, make_puzzles, unshuffle_tiles
from selfsup.pretext.rotation import NUM_ROTATIONS, rotate_batch
from selfsup.probes.records import finish_record, write_record
from selfsup.visualize import render_examples

DIAGNOSED_TASKS = ("rotation", "jigsaw", "context", "counting", "colorization", "deepcluster")
# Tasks with cue ablations: the cues of colorization (colour priors) and DeepCluster (colour histograms) are
# not something an input can be cleaned of without removing what the task predicts.
ABLATED_TASKS = ("rotation", "jigsaw", "context", "counting")
# Examples shown in the --png grid, one row each.
PREVIEW_EXAMPLES = 4
DEFAULT_IMAGES = 400
# Fitted solvers fit on this share of the images and are scored on the rest (as is the network beside them).
FIT_FRACTION = 0.5
# Fewest images worth a diagnosis: each half of a fitted solver needs a few, counting needs pairs.
MIN_IMAGES = 8
# Images (or puzzles, pairs, views) per forward pass of a checkpoint's network: bounds the memory of
# activations at the paper's image sizes; in eval mode BatchNorm uses its running statistics, so the
# chunking changes nothing.
NETWORK_CHUNK = 64

Progress = Callable[[str], None]


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


def _silent(_: str) -> None:
    """The default progress callback: a library call says nothing unless asked."""


@dataclass
class _Subject:
    """The task to diagnose and where its settings came from."""

    task: PretextTask
    cfg: PretrainConfig  # the run's config: data, crops and seeds
    image_size: int
    trained: bool
    splits: Splits
    data: str  # the data spec read


def _checkpoint_subject(checkpoint: str, task_name: str | None, data: str | None, data_root: str | None,
                        layout: str | None, trust: bool, progress: Progress) -> _Subject:
    progress(f"loading checkpoint {checkpoint}")
    state = load_checkpoint(checkpoint, trust=trust)
    check_pretrain_record(state, checkpoint)
    name = state["task"]["name"]
    if task_name is not None and task_name != name:
        raise CheckpointError(f"--checkpoint {checkpoint} is a {name} checkpoint; --task {task_name} needs a "
                              f"{task_name} one (or leave --task out)")
    if name not in DIAGNOSED_TASKS:
        raise CheckpointError(f"--checkpoint {checkpoint} is a {name} checkpoint; ssl-diagnose has trivial solvers "
                              f"for {', '.join(DIAGNOSED_TASKS)} only")
    try:
        cfg = from_dict(PretrainConfig, state.get("config"))
    except (ValueError, TypeError) as exc:  # ConfigError included: the values came from the file
        raise CheckpointError(f"checkpoint {checkpoint} has a config this version cannot read: {exc}") from exc
    task = load_task(checkpoint, state=state)
    return _Subject(task, cfg, state.get("image_size", cfg.data.image_size), True, *_open(cfg, data, data_root, layout))


def _preset_subject(task_name: str, data: str | None, data_root: str | None, layout: str | None,
                    progress: Progress) -> _Subject:
    """The task as ``ssl-pretrain --task NAME`` would start it: the demo preset, a fresh encoder (whose weights
    no solver reads: the task is built for the methods that make its inputs)."""
    cfg = from_dict(PretrainConfig, merge(load_preset("demo", task_name), {"task": task_name}))
    splits, spec = _open(cfg, data, data_root, layout)
    task_cls = TASKS[task_name]
    # Data-dependent defaults (DeepCluster's k) are resolved from the pretraining split, as a run resolves them.
    task_cfg = task_cls.fit_to_data(from_dict(task_cls.Config, cfg.pretext, prefix="pretext."), len(splits.pretrain))
    progress(f"building task {task_name} with the demo preset's options (no checkpoint: no network column)")
    encoder = build_encoder(cfg.model.arch, in_channels=task_cls.encoder_channels(task_cfg), width=cfg.model.width)
    task = new_task(task_name, encoder, dataclasses.asdict(task_cfg))
    return _Subject(task.eval(), cfg, cfg.data.image_size, False, splits, spec)


def _open(cfg: PretrainConfig, data: str | None, data_root: str | None, layout: str | None) -> tuple[Splits, str]:
    """The splits of ``data`` (default: the run's data) and its spec."""
    spec = data or cfg.data.data
    # The run's split seed, not --seed: a folder's test split is carved with it, and it must be the one the
    # run held out.
    splits = open_splits(spec, data_root if data_root is not None else cfg.data.data_root,
                         val_fraction=cfg.data.val_fraction, seed=cfg.train.seed, layout=layout or cfg.data.layout)
    return splits, spec


def _held_out_images(subject: _Subject, count: int, seed: int, progress: Progress) -> tuple[Tensor, Tensor, dict]:
    """Up to ``count`` test images ([0, 1] RGB, shuffled), their labels and what was read, cropped as the
    task's training crops them: random-resized crops for the steps, centre crops for DeepCluster, whose
    clustering pass (what its classes are) sees centre crops."""
    test = subject.splits.test
    if test is None:
        raise DataError(f"{subject.data} has no test split: ssl-diagnose "
                        "needs images held out of pretraining (class sub-folders, or a data set with a test split)")
    data = subject.cfg.data
    if subject.task.name == "deepcluster":
        view: CenterCrop | RandomCrop = CenterCrop(subject.image_size, jpeg_draft=data.jpeg_draft)
        view_text = f"centre crops of {subject.image_size} px (as DeepCluster's clustering pass)"
    else:
        view = RandomCrop(subject.image_size, scale=(data.crop_scale_min, 1.0), hflip=data.hflip,
                          jpeg_draft=data.jpeg_draft)
        view_text = (f"random-resized crops of {subject.image_size} px, area {data.crop_scale_min:g}-1"
                     f"{', flips' if data.hflip else ''} (as training)")
    source: ImageSource = stratified_subset(test, count, seed)
    # A stratified subset is ordered by class: shuffled, the fitted half and the scored half hold every class.
    order = np.random.default_rng(seed).permutation(len(source))
    source = IndexedSource(source, order, f"{source.describe()}, shuffled")
    progress(f"loading {len(source)} held-out images ({test.describe()}): {view_text}")
    dataset = TransformedDataset(source, view, replace_bad=False)
    batch = collate([dataset[(i, sample_seed(seed, 0, i))] for i in range(len(dataset))])
    if len(batch.images) < MIN_IMAGES:
        raise DataError(f"ssl-diagnose needs at least {MIN_IMAGES} readable held-out images; the test split of "
                        f"{subject.data} gave {len(batch.images)}")
    described = {"split": "test", "source": test.describe(), "view": view_text,
                 "unreadable_skipped": len(batch.bad_files)}
    return batch.images.float() / 255, batch.labels, described


# ----------------------------------------------------------------------------- ablations and previews


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
class _Diagnosis:
    """What one task's diagnosis gives: solver rows, ablations (with a checkpoint) and the preview of its inputs."""

    rows: list[Row]
    ablations: list[Ablation]
    preview: Examples | None  # None for the tasks without ablations


# An ablation as the task functions list it: its name, the cue it destroys, and the function on the inputs.
AblationSpec = tuple[str, str, Callable[[Tensor], Tensor]]


def _preview(columns: list[tuple[str, Tensor]]) -> Examples:
    """Examples with a row per example and a column per (caption, N x 3 x H x W panels) entry."""
    panels = torch.stack([panel for _, panel in columns], dim=1).flatten(0, 1)
    count = len(columns[0][1])
    captions = [f"example {i + 1}: {caption}" for i in range(count) for caption, _ in columns]
    return Examples(panels.float(), captions, per_row=len(columns))


def _rotation_preview(images: Tensor, ablations: Sequence[AblationSpec]) -> Examples:
    shown = images[:PREVIEW_EXAMPLES]
    return _preview([("original", shown), *((name, ablate(shown)) for name, _, ablate in ablations)])


def _jigsaw_preview(task: PretextTask, fed: Tensor, labels: Tensor, size: int,
                    ablations: Sequence[AblationSpec]) -> Examples:
    shown, shown_labels = fed[:PREVIEW_EXAMPLES], labels[:PREVIEW_EXAMPLES]

    def laid_out(tiles: Tensor) -> Tensor:
        # standardised tiles at +-2.5 std around mid-grey (as ssl-inspect shows them), put back in cell order
        visible = unshuffle_tiles((0.5 + tiles / 5).clamp(0, 1), task.permutations, shown_labels)
        return torch.stack([layout_tiles(puzzle, size) for puzzle in visible])

    return _preview([("tiles as fed, in cell order", laid_out(shown)),
                     *((name, laid_out(ablate(shown))) for name, _, ablate in ablations)])


def _context_preview(patches: Tensor, ablations: Sequence[AblationSpec]) -> Examples:
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


def _counting_preview(views: Tensor, ablated: Tensor, name: str) -> Examples:
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


def _rotation(task: PretextTask, images: Tensor, trained: bool, seed: int, progress: Progress) -> _Diagnosis:
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
    preview = _rotation_preview(images, ablations)
    return _Diagnosis(rows, done, preview)


def _jigsaw(task: PretextTask, images: Tensor, trained: bool, seed: int, progress: Progress) -> _Diagnosis:
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
    preview = _jigsaw_preview(task, fed, labels, images.shape[-1], ablations)
    return _Diagnosis(rows, done, preview)


def _context(task: PretextTask, images: Tensor, trained: bool, seed: int, progress: Progress) -> _Diagnosis:
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
    preview = _context_preview(patches, ablations)
    return _Diagnosis(rows, done, preview)


def _counting(task: PretextTask, images: Tensor, trained: bool, seed: int, progress: Progress) -> _Diagnosis:
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
    preview = _counting_preview(views, ablated, name)
    return _Diagnosis(rows, done, preview)


def _colorization(task: PretextTask, images: Tensor, trained: bool, seed: int, progress: Progress) -> _Diagnosis:
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
    return _Diagnosis([_row(prior, "constant distribution, fitted on the other half", n - split, network, weights_note),
                       _row(image_mean, "oracle: each image's own mean colour", n - split, network, weights_note)],
                      [], None)


def _deepcluster(task: PretextTask, images: Tensor, labels: Tensor, trained: bool, seed: int,
                 progress: Progress) -> _Diagnosis:
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
    return _Diagnosis(rows, [], None)


# ----------------------------------------------------------------------------- the diagnosis


def diagnose(task_name: str | None = None, *, checkpoint: str | None = None, data: str | None = None,
             data_root: str | None = None, layout: str | None = None, images: int = DEFAULT_IMAGES,
             seed: int | None = None, json_path: str | None = None, png_path: str | None = None,
             trust_checkpoint: bool = False, progress: Progress = _silent) -> dict[str, Any]:
    """The diagnosis record of ``task_name`` (or of ``checkpoint``'s task), written to ``json_path`` when given.

    Without ``checkpoint`` the task is the one ``ssl-pretrain --task NAME`` starts (the demo preset) and only
    the solvers are scored; with it, the checkpoint's task options, crops and weights, its network beside
    every solver, and the network again on the inputs with each cue ablated (:mod:`selfsup.diagnose.ablations`;
    the record's ``ablations``). ``png_path`` gets a grid of a few examples' inputs, intact and ablated.
    ``data`` defaults to the run's; ``seed`` (default the run's ``train.seed``) draws the images, their crops
    and the task's random inputs. ``progress`` is told each stage, one line at a time.
    """
    started = time.perf_counter()
    if task_name is not None and task_name not in DIAGNOSED_TASKS:
        raise ConfigError(f"--task {task_name} is invalid: ssl-diagnose has trivial solvers for "
                          f"{', '.join(DIAGNOSED_TASKS)}")
    if task_name is None and checkpoint is None:
        raise ConfigError(f"give --task (one of {', '.join(DIAGNOSED_TASKS)}) or --checkpoint")
    if images < MIN_IMAGES:
        raise ConfigError(f"--images {images} is invalid: must be at least {MIN_IMAGES}")
    if json_path is not None:
        check_output_file(json_path, "--json")
    if png_path is not None:
        if Path(png_path).suffix.lower() != ".png":
            raise ConfigError(f"--png {png_path} is invalid: give a file name ending in .png")
        check_output_file(png_path, "--png")
    if task_name is not None and png_path is not None:
        _check_png_task(task_name)
    if checkpoint is not None:
        subject = _checkpoint_subject(checkpoint, task_name, data, data_root, layout, trust_checkpoint, progress)
    else:
        subject = _preset_subject(str(task_name), data, data_root, layout, progress)
    task = subject.task.eval()
    if png_path is not None:
        _check_png_task(task.name)
    seed = subject.cfg.train.seed if seed is None else seed
    pixels, labels, described = _held_out_images(subject, images, seed, progress)
    # scikit-learn's BLAS and OpenMP pools take every core whatever torch was told (--threads): hold them to it.
    with torch.no_grad(), threadpool_limits(torch.get_num_threads()):
        if task.name == "deepcluster":
            found = _deepcluster(task, pixels, labels, subject.trained, seed, progress)
        else:
            solve = {"rotation": _rotation, "jigsaw": _jigsaw, "context": _context, "counting": _counting,
                     "colorization": _colorization}[task.name]
            found = solve(task, pixels, subject.trained, seed, progress)
    record = {
        "kind": "diagnose",
        "task": task.name,
        "options": dataclasses.asdict(task.cfg),
        "checkpoint": checkpoint,
        "encoder": {"arch": subject.cfg.model.arch, "width": subject.cfg.model.width},
        "data": {"spec": subject.data, **described},
        "image_size": subject.image_size,
        "images": len(pixels),
        "seed": seed,
        "fit_fraction": FIT_FRACTION,
        "rows": [dataclasses.asdict(row) for row in found.rows],
        "ablations": [dataclasses.asdict(ablation) for ablation in found.ablations],
    }
    if png_path is not None and found.preview is not None:
        title = f"ssl-diagnose {task.name}: inputs intact and with each cue ablated"
        with atomic_file(png_path) as handle:
            render_examples(found.preview, title).save(handle, format="PNG")
        record["png"] = png_path
    finish_record(record, started=started, device=torch.device("cpu"))
    if json_path is not None:
        write_record(record, json_path)
    return record


def _check_png_task(name: str) -> None:
    if name not in ABLATED_TASKS:
        raise ConfigError(f"--png shows the inputs with each cue ablated; {name} has no cue ablations (they exist for "
                          f"{', '.join(ABLATED_TASKS)})")
