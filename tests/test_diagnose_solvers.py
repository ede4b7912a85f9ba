"""The trivial solvers of ssl-diagnose on constructed inputs whose answer is known: a planted cue is found, noise
is not (issue 16)."""

import pytest
import torch
import torch.nn.functional as F

from selfsup.diagnose.solvers import (
    channel_shifts,
    context_aberration_solver,
    context_border_solver,
    jigsaw_border_predict,
    jigsaw_border_solver,
)
from selfsup.diagnose.statistic_solvers import (
    colorization_prior_solvers,
    colour_counts,
    colour_histograms,
    counting_colour_solver,
    deepcluster_histogram_solver,
    fit_count_scale,
    rotation_pixel_solver,
    rotation_region_solver,
)
from selfsup.models import build_encoder
from selfsup.pretext import new_task
from selfsup.pretext.colorization import ColorizationConfig
from selfsup.pretext.counting import NUM_TILES, counting_loss
from selfsup.pretext.jigsaw import JigsawConfig, make_puzzles
from selfsup.pretext.permutations import hamming_permutations

SIZE = 64


def generator(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def smooth_images(count: int, size: int = SIZE) -> torch.Tensor:
    """One smooth picture, repeated: red grows to the right, green downwards, blue a slow 2-D sinusoid."""
    y, x = torch.meshgrid(torch.linspace(0, 1, size), torch.linspace(0, 1, size), indexing="ij")
    picture = torch.stack([x, y, 0.5 + 0.25 * torch.sin(3 * x + 2 * y)])
    return picture.expand(count, 3, size, size).clone()


def noise_images(count: int, seed: int, size: int = SIZE) -> torch.Tensor:
    return torch.rand(count, 3, size, size, generator=generator(seed))


def textures(count: int, seed: int, size: int = SIZE) -> torch.Tensor:
    """Grey random textures with features a few pixels wide, N x 1 x size x size."""
    coarse = torch.rand(count, 1, size // 3, size // 3, generator=generator(seed))
    return F.interpolate(coarse, size=(size, size), mode="bilinear", align_corners=False)


def resampled(images: torch.Tensor, zoom: float = 0.0, shift_x: float = 0.0) -> torch.Tensor:
    """``images`` sampled at ``(1 + zoom) p + shift_x`` (normalised coordinates): magnified about the centre and
    moved to the left."""
    theta = torch.tensor([[1 + zoom, 0.0, shift_x], [0.0, 1 + zoom, 0.0]]).expand(len(images), 2, 3)
    grid = F.affine_grid(theta, list(images.shape), align_corners=False)
    return F.grid_sample(images, grid, align_corners=False, padding_mode="border")


def aberrated(count: int, seed: int, zoom: float) -> torch.Tensor:
    """Grey textures whose green channel is magnified by ``1 + zoom`` about the image centre: lateral chromatic
    aberration, a green-against-magenta shift that grows with the distance from the centre."""
    base = textures(count, seed)
    return torch.cat([base, resampled(base, zoom=zoom), base], dim=1)


@pytest.fixture(scope="module")
def encoder():
    return build_encoder("alexnet_small", width=0.25)


@pytest.fixture(scope="module")
def permutations() -> torch.Tensor:
    return torch.from_numpy(hamming_permutations(100, 0))


# ----------------------------------------------------------------------------- jigsaw


def test_jigsaw_border_solver_puts_smooth_gradient_tiles_back_perfectly_despite_the_gaps(permutations):
    # The task's default puzzles (gaps, per-channel jitter, 30% grayscale), before per-tile normalisation.
    tiles, labels = make_puzzles(smooth_images(150), permutations, JigsawConfig(num_permutations=100), generator())
    assert torch.equal(jigsaw_border_predict(tiles, permutations), labels)
    result = jigsaw_border_solver(tiles, labels, permutations)
    assert (result.metric, result.value, result.chance) == ("acc", 1.0, 0.01)


def test_jigsaw_border_solver_is_at_chance_on_noise_tiles(permutations):
    tiles, labels = make_puzzles(noise_images(300, 1), permutations, JigsawConfig(num_permutations=100), generator())
    assert jigsaw_border_solver(tiles, labels, permutations).value < 0.05


# ----------------------------------------------------------------------------- context


def pairs(task, images: torch.Tensor, seed: int = 0):
    """The task's own pairs: centres, neighbours and labels."""
    patches, positions = task.make_pairs(images, generator(seed))
    centres, neighbours = patches.chunk(2)
    return centres, neighbours, positions.labels


def test_context_border_solver_locates_patches_of_a_smooth_image_and_not_of_noise(encoder):
    unguarded = new_task("context", encoder, {"color_mode": "none", "patch_norm": False, "downsample_prob": 0.0})
    result = context_border_solver(*pairs(unguarded, smooth_images(300)))
    assert result.value >= 0.95 and result.chance == 1 / 8
    assert context_border_solver(*pairs(unguarded, noise_images(300, 1))).value < 0.25


def test_channel_shifts_measure_a_planted_shift_against_green_to_a_fraction_of_a_pixel():
    base = textures(40, 2, size=24)
    # red = blue = base, green = base moved down 1 px and left 2 px: red is green moved up 1 and right 2.
    whole = torch.cat([base, base.roll((1, -2), dims=(2, 3)), base], dim=1)[..., 3:-3, 3:-3]
    shifts = channel_shifts(whole)
    assert (shifts[:, 0] - torch.tensor([-1.0, 2.0])).abs().max() < 0.15
    assert torch.equal(shifts[:, 0], shifts[:, 2]) and shifts[:, 1].abs().max() < 0.15
    # Half a pixel: green sampled half a pixel to the right of red; the parabola finds what integers cannot.
    half = torch.cat([base, resampled(base, shift_x=1 / 24), base], dim=1)[..., 3:-3, 3:-3]
    mean_dx = float(channel_shifts(half)[:, 0, 1].mean())
    assert abs(mean_dx - 0.5) < 0.15


def test_context_aberration_solver_reads_a_planted_chromatic_aberration_and_nothing_else(encoder):
    task = new_task("context", encoder, {"color_mode": "none", "downsample_prob": 0.0})
    result = context_aberration_solver(*pairs(task, aberrated(400, 3, zoom=0.05)))
    assert result.value > 0.8 and result.chance == 1 / 8
    assert context_aberration_solver(*pairs(task, aberrated(400, 3, zoom=0.0))).value < 0.25
    assert context_aberration_solver(*pairs(task, noise_images(400, 4))).value < 0.25
    # Context's default colour dropping replaces two channels by noise: the cue is gone.
    guarded = new_task("context", encoder, {})
    assert context_aberration_solver(*pairs(guarded, aberrated(400, 3, zoom=0.05))).value < 0.25


# ----------------------------------------------------------------------------- counting


def coloured_images(count: int, seed: int, size: int = 32) -> torch.Tensor:
    """A random colour per image over a faint texture: colour statistics tell the images apart."""
    gen = generator(seed)
    colour = torch.rand(count, 3, 1, 1, generator=gen)
    shade = F.interpolate(torch.rand(count, 1, size // 4, size // 4, generator=gen), size=(size, size),
                          mode="bilinear", align_corners=False)
    return colour * (0.6 + 0.4 * shade)


def test_counting_colour_solver_counts_coloured_images_and_fails_on_shuffled_tiles(encoder):
    task = new_task("counting", encoder, {})
    n = 200
    views = task.make_inputs(coloured_images(n, 5), generator()).images
    result = counting_colour_solver(views, task.cfg.margin)
    assert result.metric == "count_acc" and result.chance == 0.5
    assert result.value >= 0.95 and result.extra["loss"] < 1.0 < result.extra["collapse_loss"] == task.cfg.margin
    # Control: every image's tiles come from another image, so the downsampled image no longer adds up.
    other = torch.randperm(n, generator=generator(6))
    tiles = views[n:].view(NUM_TILES, n, *views.shape[1:])[:, other].flatten(0, 1)
    control = counting_colour_solver(torch.cat([views[:n], tiles]), task.cfg.margin)
    assert control.value <= 0.6 and control.extra["loss"] > 5 * result.extra["loss"]


def test_colour_counts_are_four_times_larger_for_the_downsampled_view():
    n = 3
    views = torch.full((5 * n, 3, 4, 4), 0.5)
    counts = colour_counts(views)
    assert torch.allclose(counts[:n], torch.tensor([2.0, 2.0, 2.0, 1.0, 1.0, 1.0]).expand(n, 6))
    assert torch.allclose(counts[n:], torch.tensor([0.5, 0.5, 0.5, 0.25, 0.25, 0.25]).expand(4 * n, 6))


def test_fit_count_scale_finds_the_scale_of_least_counting_loss():
    gen = generator(7)
    # Tiles that add up to their own image's counts, give or take: a positive scale pays.
    down = torch.rand(60, 6, generator=gen)
    tiles_sum = down + 0.2 * torch.randn(60, 6, generator=gen)
    margin = 10.0

    def loss(scale: float) -> float:
        return float(counting_loss(scale * down, scale * tiles_sum, scale * down.roll(1, dims=0), margin)["loss"])

    best = fit_count_scale(down, tiles_sum, margin)
    grid = torch.linspace(0, 20, 4001).tolist()
    assert loss(best) <= min(loss(scale) for scale in grid) + 1e-4
    assert best > 0
    # Counts closer to the other image's than to the own: no scale beats collapsing to 0.
    assert fit_count_scale(down, down.roll(1, dims=0) + 0.01, margin) == 0.0


# ----------------------------------------------------------------------------- rotation


def top_band_images(count: int, seed: int, size: int = 32) -> torch.Tensor:
    """Dim noise under a bright band across the top: a light sky."""
    images = 0.5 * torch.rand(count, 3, size, size, generator=generator(seed))
    images[:, :, : size // 4] = 1.0
    return images


@pytest.mark.parametrize("solver", [rotation_pixel_solver, rotation_region_solver])
def test_rotation_solvers_read_a_bright_top_band_and_are_at_chance_on_noise(solver):
    result = solver(top_band_images(100, 8))
    assert result.value >= 0.95 and result.chance == 0.25
    assert solver(noise_images(120, 9, size=32)).value < 0.4


# ----------------------------------------------------------------------------- colorization


def test_colorization_per_image_mean_beats_the_global_prior_on_flat_colour_images():
    flat = torch.rand(200, 3, 1, 1, generator=generator(10)).expand(200, 3, 32, 32)
    prior, image_mean = colorization_prior_solvers(flat, ColorizationConfig())
    assert (prior.metric, image_mean.metric) == ("acc", "acc")
    assert image_mean.value >= 0.99 and prior.value <= 0.2
    assert image_mean.extra["loss"] < prior.extra["loss"] / 2


# ----------------------------------------------------------------------------- DeepCluster


def test_colour_histograms_count_each_pixel_in_its_colour_cell():
    images = torch.zeros(2, 3, 4, 4)
    images[1, 0] = 1.0  # pure red: cell (3, 0, 0) of a 4-level histogram
    images[1, :, :2] = 0.4  # top half grey 0.4: cell (1, 1, 1)
    histograms = colour_histograms(images, bins=4)
    assert histograms.shape == (2, 64) and torch.allclose(histograms.sum(dim=1), torch.ones(2))
    assert histograms[0, 0] == 1.0
    assert histograms[1, 3 * 16] == 0.5 and histograms[1, 16 + 4 + 1] == 0.5


def test_deepcluster_histogram_solver_finds_flat_colour_groups_and_not_random_labels():
    groups = torch.arange(200) % 4
    palette = torch.rand(4, 3, generator=generator(11))
    noise = 0.05 * torch.randn(200, 3, 32, 32, generator=generator(12))
    images = (palette[groups].view(200, 3, 1, 1) + noise).clamp(0, 1)
    result = deepcluster_histogram_solver(images, groups)
    assert result.metric == "nmi" and result.value > 0.95 and result.chance < 0.1
    unknown = groups.clone()
    unknown[::3] = -1  # left out, as the task's unknown labels are
    assert deepcluster_histogram_solver(images, unknown, num_clusters=4).value > 0.95
    assert deepcluster_histogram_solver(images, torch.randint(0, 4, (200,), generator=generator(13))).value < 0.1
