"""The cue ablations of ssl-diagnose on constructed inputs whose answer is known: each destroys its planted cue
(the solver of that cue falls to chance) and keeps what it is not about (issue 16)."""

import pytest
import torch
import torch.nn.functional as F

from selfsup.diagnose.ablations import (
    align_channels,
    border_width,
    equalise_colour_statistics,
    high_pass,
    low_pass,
    mask_borders,
)
from selfsup.diagnose.solvers import (
    channel_shifts,
    context_aberration_solver,
    context_border_solver,
    jigsaw_border_predict,
    jigsaw_border_solver,
)
from selfsup.diagnose.statistic_solvers import counting_colour_solver, rotation_region_solver
from selfsup.models import build_encoder
from selfsup.pretext import new_task
from selfsup.pretext.jigsaw import JigsawConfig, make_puzzles
from selfsup.pretext.permutations import hamming_permutations
from selfsup.pretext.rotation import rotate_batch
from test_diagnose_solvers import (
    aberrated,
    coloured_images,
    generator,
    noise_images,
    pairs,
    resampled,
    smooth_images,
    textures,
)


@pytest.fixture(scope="module")
def encoder():
    return build_encoder("alexnet_small", width=0.25)


# ----------------------------------------------------------------------------- borders (jigsaw and context)


def test_mask_borders_keeps_the_interior_and_fills_every_border_of_an_example_with_its_interiors_mean():
    tiles = torch.rand(5, 9, 3, 12, 12, generator=generator(1))
    masked = mask_borders(tiles, 2)
    assert torch.equal(masked[..., 2:-2, 2:-2], tiles[..., 2:-2, 2:-2])
    fill = tiles[..., 2:-2, 2:-2].mean(dim=(1, 3, 4))  # per puzzle and channel, over the 9 interiors
    ring = torch.ones(12, 12, dtype=torch.bool)
    ring[2:-2, 2:-2] = False
    border = masked[..., ring]  # 5 x 9 x 3 x ring pixels
    assert torch.allclose(border, fill[:, None, :, None].expand_as(border))
    with pytest.raises(ValueError, match="no interior"):
        mask_borders(tiles, 6)


def test_masking_the_borders_brings_the_jigsaw_border_solver_on_smooth_tiles_to_chance():
    permutations = torch.from_numpy(hamming_permutations(100, 0))
    tiles, labels = make_puzzles(smooth_images(150), permutations, JigsawConfig(num_permutations=100), generator())
    assert jigsaw_border_solver(tiles, labels, permutations).value == 1.0
    masked = mask_borders(tiles, border_width(tiles.shape[-1]))
    # every layout costs the same: the solver's choice no longer depends on the puzzle
    predicted = jigsaw_border_predict(masked, permutations)
    assert len(predicted.unique()) == 1
    assert jigsaw_border_solver(masked, labels, permutations).value <= 0.05


def test_masking_the_borders_brings_the_context_border_solver_on_a_smooth_image_to_chance(encoder):
    unguarded = new_task("context", encoder, {"color_mode": "none", "patch_norm": False, "downsample_prob": 0.0})
    centres, neighbours, labels = pairs(unguarded, smooth_images(300))
    assert context_border_solver(centres, neighbours, labels).value >= 0.95
    width = border_width(centres.shape[-1])
    both = mask_borders(torch.stack([centres, neighbours], dim=1), width)
    assert context_border_solver(both[:, 0], both[:, 1], labels).value < 0.2  # chance 1/8


# ----------------------------------------------------------------------------- colour channels


def test_align_channels_moves_a_planted_shift_back_onto_green_and_leaves_green_and_grey_alone():
    base = textures(40, 2, size=24)
    half = torch.cat([base, resampled(base, shift_x=1 / 24), base], dim=1)[..., 3:-3, 3:-3]
    assert channel_shifts(half)[:, 0, 1].mean() > 0.4
    aligned = align_channels(half)
    assert channel_shifts(aligned)[:, [0, 2]].abs().max() < 0.05
    assert torch.equal(aligned[:, 1], half[:, 1])
    grey = base.expand(-1, 3, -1, -1)[..., 3:-3, 3:-3]
    assert torch.allclose(align_channels(grey), grey, atol=1e-6)
    # any leading dimensions: jigsaw's N x 9 tiles
    assert torch.equal(align_channels(half.view(4, 10, 3, 18, 18)), aligned.view(4, 10, 3, 18, 18))


def test_aligning_the_channels_takes_most_of_a_planted_chromatic_aberration_from_the_context_solver(encoder):
    task = new_task("context", encoder, {"color_mode": "none", "downsample_prob": 0.0})
    centres, neighbours, labels = pairs(task, aberrated(400, 3, zoom=0.05))
    before = context_aberration_solver(centres, neighbours, labels).value
    after = context_aberration_solver(align_channels(centres), align_channels(neighbours), labels).value
    # the shift is removed; the magnification inside a patch that a zoom also makes is not (chance 1/8)
    assert before > 0.8 and after < 0.5


# ----------------------------------------------------------------------------- counting


def test_equalising_colour_statistics_brings_the_counting_colour_solver_to_chance(encoder):
    task = new_task("counting", encoder, {})
    views = task.make_inputs(coloured_images(200, 5), generator()).images
    assert counting_colour_solver(views, task.cfg.margin).value >= 0.95
    equalised = equalise_colour_statistics(views)
    mean, std = equalised.mean(dim=(2, 3)), equalised.std(dim=(2, 3), correction=0)
    # some channels were clamped flat by the task's colour jitter: they take their view's grey pattern
    textured = views.std(dim=(2, 3)) > 1e-4
    assert 0.95 < textured.float().mean() < 1 and textured.any(dim=1).all()
    assert torch.allclose(mean, mean[:1].expand_as(mean), atol=1e-5)
    assert torch.allclose(std, std[:1].expand_as(std), atol=1e-5)
    result = counting_colour_solver(equalised, task.cfg.margin)
    # nothing tells an image's tiles from another's: no scale beats collapsing (loss = margin)
    assert result.value <= 0.6 and result.extra["loss"] == pytest.approx(task.cfg.margin, rel=1e-3)
    # the pattern inside each view is kept: standardised, it is the same
    def standardised(x):
        return (x - x.mean(dim=(2, 3), keepdim=True)) / x.std(dim=(2, 3), keepdim=True)
    kept = textured.all(dim=1)
    assert torch.allclose(standardised(equalised[kept]), standardised(views[kept]), atol=1e-3)


# ----------------------------------------------------------------------------- rotation


def checker_band_images(count: int, seed: int, size: int = 32) -> torch.Tensor:
    """Grey low-frequency textures with a fine checkerboard (period 2 px, mean 0) across the top 4 rows: an
    orientation cue in the high frequencies alone."""
    images = 0.3 + 0.4 * F.interpolate(torch.rand(count, 3, 4, 4, generator=generator(seed)), size=(size, size),
                                       mode="bilinear", align_corners=False)
    y, x = torch.meshgrid(torch.arange(4), torch.arange(size), indexing="ij")
    images[:, :, :4] += 0.2 * (2 * ((y + x) % 2) - 1)
    return images


def test_low_pass_removes_a_planted_high_frequency_rotation_cue_that_high_pass_keeps():
    images = checker_band_images(200, 14)
    assert rotation_region_solver(images).value >= 0.95
    assert rotation_region_solver(low_pass(images)).value < 0.4  # chance 1/4
    assert rotation_region_solver(high_pass(images)).value >= 0.95


def test_low_and_high_pass_add_up_to_the_image_over_its_mean_and_commute_with_rotation():
    images = noise_images(6, 15, size=32)
    mean = images.mean(dim=(2, 3), keepdim=True)
    assert torch.allclose(low_pass(images) + high_pass(images), images + mean, atol=1e-6)
    rotated, _ = rotate_batch(images)
    assert torch.allclose(low_pass(rotated), rotate_batch(low_pass(images))[0], atol=1e-6)
