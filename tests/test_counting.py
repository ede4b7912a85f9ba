import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from selfsup.config import ConfigError, PretrainConfig, from_dict
from selfsup.diagnose.statistic_solvers import counting_colour_solver
from selfsup.models import build_encoder
from selfsup.pretext import TASKS, check_pretrain_config, new_task
from selfsup.models.normalization import IMAGENET_MEAN, IMAGENET_STD, normalize_rgb
from selfsup.pretext.counting import (
    FILTERS,
    CountingConfig,
    CountingTask,
    counting_loss,
    downsample_2x,
    filter_bank,
    normalize_views,
    photometric_jitter,
    tile_2x2,
)

MARGIN = 10.0


def small_task(**options) -> CountingTask:
    torch.manual_seed(0)
    return new_task("counting", build_encoder("alexnet_small", width=0.25), {"feature_dim": 64, **options})


def area_downsample(images: torch.Tensor) -> torch.Tensor:
    return downsample_2x(images, filter_bank(["area"]).expand(images.shape[0], -1))


def dot_images(dot_counts: list[int], size: int = 16) -> torch.Tensor:
    """Images of unit dots, each alone in its own aligned 2x2 cell, so area downsampling keeps every dot."""
    images = torch.zeros(len(dot_counts), 3, size, size)
    cells_per_side = size // 2
    for i, count in enumerate(dot_counts):
        for k in range(count):
            cell = k * 7 % cells_per_side**2  # 7 is prime to the cell count: distinct cells, spread over the tiles
            row, col = divmod(cell, cells_per_side)
            images[i, :, 2 * row + k % 2, 2 * col + (k // 2) % 2] = 1.0
    return images


def dot_count(images: torch.Tensor) -> torch.Tensor:
    """An additive, scale-invariant phi: the number of lit pixels per channel."""
    return (images > 0).float().sum(dim=(2, 3))


def phi_terms(images: torch.Tensor, phi) -> tuple[torch.Tensor, torch.Tensor]:
    n = images.shape[0]
    return phi(area_downsample(images)), phi(tile_2x2(images)).view(4, n, -1).sum(dim=0)


# ------------------------------------------------------------------------- the loss


def test_loss_is_zero_for_an_additive_counting_phi():
    images = dot_images([2, 5, 9])
    phi_down, phi_tiles = phi_terms(images, dot_count)
    assert torch.equal(phi_down, torch.tensor([[2.0] * 3, [5.0] * 3, [9.0] * 3]))  # D x keeps every dot
    assert torch.equal(phi_tiles, phi_down)  # and the tiles' counts add up
    out = counting_loss(phi_down, phi_tiles, phi_down.roll(1, dims=0), MARGIN)
    assert float(out["loss_count"]) == 0.0
    assert float(out["loss_contrast"]) == 0.0  # counts of neighbours differ by >= 3 per channel: 27 > M
    assert float(out["loss"]) == 0.0
    assert float(out["count_acc"]) == 1.0


def test_loss_of_the_collapsed_phi_is_the_margin():
    zeros = torch.zeros(5, 7)
    out = counting_loss(zeros, zeros, zeros, MARGIN)
    assert float(out["loss_count"]) == 0.0
    assert float(out["loss_contrast"]) == MARGIN
    assert float(out["loss"]) == MARGIN
    assert float(out["count_acc"]) == 0.0  # ties do not count as right


def test_contrastive_term_is_a_hinge_on_the_squared_distance():
    tiles = torch.zeros(2, 3)
    other = torch.tensor([[1.0, 1.0, 1.0], [3.0, 0.0, 0.0]])  # squared distances 3 and 9
    out = counting_loss(tiles, tiles, other, MARGIN)
    assert float(out["loss_contrast"]) == pytest.approx(((10 - 3) + (10 - 9)) / 2)


def test_contrastive_term_pushes_a_near_zero_phi_away_from_collapse():
    torch.manual_seed(0)
    phi_down = (1e-3 * torch.rand(8, 16)).requires_grad_()
    phi_tiles = (1e-3 * torch.rand(8, 16)).requires_grad_()
    # near phi = 0 the gradient is proportional to phi (a saddle), hence the large step
    optimizer = torch.optim.SGD([phi_down, phi_tiles], lr=1.0)
    start_norm = float(phi_down.detach().norm())
    first = None
    for _ in range(40):
        out = counting_loss(phi_down, phi_tiles, phi_down.roll(1, dims=0), MARGIN)
        first = first if first is not None else float(out["loss"].detach())
        optimizer.zero_grad()
        out["loss"].backward()
        assert phi_down.grad.abs().sum() > 0
        optimizer.step()
    assert first == pytest.approx(MARGIN, abs=1e-3)
    assert float(out["loss"].detach()) < 0.01 * first
    assert float(phi_down.detach().norm()) > 100 * start_norm


def test_training_the_network_from_a_near_zero_head_raises_the_counts():
    task = small_task()
    with torch.no_grad():
        task.head.counter.weight.mul_(1e-2)
        task.head.counter.bias.fill_(1e-3)
    images = torch.rand(8, 3, 16, 16)
    labels = torch.full((8,), -1)
    optimizer = torch.optim.SGD(task.parameters(), lr=0.1, momentum=0.9)
    norms = []
    for _ in range(8):
        with torch.no_grad():
            norms.append(float(task.counting_features(images).norm(dim=1).mean()))
        loss = task(images, labels)["loss"]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    # the escape is slow (the gradient at phi ~ 0 is proportional to phi) but every step goes up
    assert all(later > earlier for earlier, later in zip(norms, norms[1:]))
    assert norms[-1] > 1.1 * norms[0]


# ------------------------------------------------------------------------- tiles and downsampling


def test_the_four_tiles_reassemble_the_image_and_match_the_downsampled_size():
    images = torch.rand(3, 3, 12, 12)
    tiles = tile_2x2(images).view(4, 3, 3, 6, 6)
    top = torch.cat([tiles[0], tiles[1]], dim=-1)
    bottom = torch.cat([tiles[2], tiles[3]], dim=-1)
    assert torch.equal(torch.cat([top, bottom], dim=-2), images)
    for name in FILTERS:
        down = downsample_2x(images, filter_bank([name]).expand(3, -1))
        assert down.shape == tiles[0].shape


def test_downsampling_filters_match_pil_and_torch_antialiasing_inside_the_image():
    torch.manual_seed(0)
    images = torch.rand(2, 3, 32, 32, dtype=torch.float64)
    inner = (..., slice(3, -3), slice(3, -3))  # borders differ: reflection here, renormalised kernels there

    def ours(name: str) -> torch.Tensor:
        return downsample_2x(images, filter_bank([name], dtype=torch.float64).expand(2, -1))

    torch.testing.assert_close(ours("area"), F.avg_pool2d(images, 2))  # exact everywhere
    for name in ("bilinear", "bicubic"):
        reference = F.interpolate(images, scale_factor=0.5, mode=name, antialias=True)
        torch.testing.assert_close(ours(name)[inner], reference[inner])
    lanczos = np.stack([
        np.stack([np.asarray(Image.fromarray(channel.numpy().astype(np.float32)).resize((16, 16), Image.LANCZOS))
                  for channel in image])
        for image in images
    ])
    torch.testing.assert_close(ours("lanczos")[inner], torch.from_numpy(lanczos).double()[inner], atol=1e-5, rtol=0)


def test_filter_choice_follows_the_generator_and_differs_across_images():
    task = small_task()
    images = torch.rand(32, 3, 16, 16)
    first = task.make_inputs(images, torch.Generator().manual_seed(0))
    again = task.make_inputs(images, torch.Generator().manual_seed(0))
    other = task.make_inputs(images, torch.Generator().manual_seed(1))
    assert torch.equal(first.filters, again.filters) and torch.equal(first.images, again.images)
    assert not torch.equal(first.filters, other.filters)
    assert len(first.filters.unique()) == len(FILTERS)  # 32 draws among 4 filters
    # image i is downsampled with its own filter
    kernels = filter_bank(task.cfg.filters)
    jittered = photometric_jitter(images, task.cfg.color_jitter, task.cfg.grayscale_prob, torch.Generator().manual_seed(0))
    for i in (0, 1, 2):
        expected = downsample_2x(jittered[i : i + 1], kernels[first.filters[i]][None])
        torch.testing.assert_close(first.images[i : i + 1], expected)


# ------------------------------------------------------------------------- anti-shortcut guards


def test_shortcut_guards_are_on_by_default():
    cfg = CountingConfig()
    assert len(set(cfg.filters)) >= 4
    assert cfg.color_jitter > 0 and cfg.grayscale_prob > 0
    assert (cfg.feature_dim, cfg.margin) == (1000, 10.0)


def test_photometric_jitter_is_identity_when_off_and_grays_when_asked():
    images = torch.rand(4, 3, 8, 8)
    gen = torch.Generator().manual_seed(0)
    assert torch.equal(photometric_jitter(images, 0.0, 0.0, gen), images)
    gray = photometric_jitter(images, 0.0, 1.0, gen)
    assert torch.equal(gray[:, 0], gray[:, 1]) and torch.equal(gray[:, 1], gray[:, 2])
    jittered = photometric_jitter(images, 0.4, 0.0, gen)
    assert jittered.min() >= 0 and jittered.max() <= 1 and not torch.equal(jittered, images)


def coloured_images(n: int = 40, size: int = 16) -> torch.Tensor:
    """Textured images whose colour and contrast differ from image to image: the colour shortcut's material."""
    torch.manual_seed(1)
    base = torch.rand(n, 3, 1, 1) * 0.6 + 0.2
    contrast = torch.rand(n, 3, 1, 1) * 0.3 + 0.02
    return (base + contrast * (torch.rand(n, 3, size, size) - 0.5)).clamp(0, 1)


def fed_views(view_norm: bool, images: torch.Tensor) -> torch.Tensor:
    return small_task(view_norm=view_norm).make_inputs(images, torch.Generator().manual_seed(0)).images


def test_view_norm_is_off_by_default_and_validated():
    assert CountingConfig().view_norm is False
    with pytest.raises(ConfigError, match="pretext.view_norm"):
        from_dict(CountingConfig, {"view_norm": "sometimes"}, prefix="pretext.")


def test_view_norm_gives_every_view_the_same_colour_statistics_and_keeps_its_pattern():
    images = coloured_images()
    plain, normalised = fed_views(False, images), fed_views(True, images)  # same generator: same jitter and filters
    assert normalised.shape == plain.shape == (5 * len(images), 3, 8, 8)
    mean = torch.tensor(IMAGENET_MEAN).expand(len(plain), 3)
    std = torch.tensor(IMAGENET_STD).expand(len(plain), 3)
    torch.testing.assert_close(normalised.mean(dim=(2, 3)), mean, atol=1e-5, rtol=0)
    # the colour jitter clamps a few channels flat (at 0 or 1): those stay flat, at the mean
    plain_std = plain.std(dim=(2, 3), unbiased=False)
    flat = plain_std < 1e-5
    assert 0 < int(flat.sum()) < flat.numel() // 10
    expected_std = torch.where(flat, 0.0, std)
    torch.testing.assert_close(normalised.std(dim=(2, 3), unbiased=False), expected_std, atol=1e-5, rtol=0)
    # what the encoder sees is each view standardised on its own statistics: the pattern is the plain view's
    fed = normalize_rgb(normalised)
    centred = plain - plain.mean(dim=(2, 3), keepdim=True)
    standard = torch.where(flat[..., None, None], 0.0, centred / plain_std.clamp_min(1e-5)[..., None, None])
    torch.testing.assert_close(fed, standard, atol=1e-4, rtol=0)


def test_colour_solver_counts_on_plain_views_and_collapses_on_normalised_ones():
    images = coloured_images()
    plain = counting_colour_solver(fed_views(False, images), MARGIN)
    assert plain.value > 0.9  # the shortcut: colour averages alone count these images
    normalised = counting_colour_solver(fed_views(True, images), MARGIN)
    # nothing left to rank pairs on: every distance ties (count_acc 0, no better than chance) at the collapse loss
    assert normalised.value <= normalised.chance
    assert normalised.extra["loss"] == pytest.approx(MARGIN, abs=1e-3)


def test_normalize_views_leaves_a_flat_channel_flat_at_the_imagenet_mean():
    views = torch.rand(2, 3, 8, 8)
    views[0, 1] = 0.9
    out = normalize_views(views)
    assert torch.equal(out[0, 1], torch.full((8, 8), IMAGENET_MEAN[1]))
    assert float(out[1, 1].std(unbiased=False)) == pytest.approx(IMAGENET_STD[1], abs=1e-5)


# ------------------------------------------------------------------------- the task


def test_task_is_registered_and_config_is_validated():
    assert TASKS["counting"] is CountingTask
    with pytest.raises(ConfigError, match="pretext.filters"):
        from_dict(CountingConfig, {"filters": ["nearest"]}, prefix="pretext.")
    with pytest.raises(ConfigError, match="pretext.filters"):
        from_dict(CountingConfig, {"filters": []}, prefix="pretext.")
    with pytest.raises(ConfigError, match="pretext.margin"):
        from_dict(CountingConfig, {"margin": 0}, prefix="pretext.")


@pytest.mark.parametrize("size", [31, 33, 14, 8])
def test_check_image_size_rejects_odd_or_too_small_crops(size):
    with pytest.raises(ConfigError, match=f"data.image_size = {size} is invalid: counting needs"):
        CountingTask.check_image_size(CountingConfig(), size)
    with pytest.raises(ConfigError, match="data.image_size"):
        check_pretrain_config(from_dict(PretrainConfig, {"task": "counting", "data": {"image_size": size}}))


@pytest.mark.parametrize("size", [16, 32, 64, 228])
def test_check_image_size_accepts_even_crops(size):
    CountingTask.check_image_size(CountingConfig(), size)


def test_forward_gives_finite_terms_and_a_few_steps_lower_the_loss():
    task = small_task()
    images = torch.rand(8, 3, 16, 16)
    labels = torch.full((8,), -1)
    optimizer = torch.optim.SGD(task.parameters(), lr=0.01, momentum=0.9)
    losses = []
    for _ in range(8):
        out = task(images, labels)  # generator None: the same inputs every step
        losses.append(float(out["loss"].detach()))
        optimizer.zero_grad()
        out["loss"].backward()
        optimizer.step()
    assert set(out) == {"loss", "loss_count", "loss_contrast", "count_acc"}
    assert all(np.isfinite(losses))
    assert float(out["loss"].detach()) == pytest.approx(float(out["loss_count"] + out["loss_contrast"]))
    assert min(losses[-3:]) < 0.8 * losses[0]


def test_forward_rejects_a_single_image_batch():
    with pytest.raises(ValueError, match="at least 2 images"):
        small_task()(torch.rand(1, 3, 16, 16), torch.full((1,), -1))


def test_example_images_show_the_downsampled_image_and_its_tiles():
    task = small_task(color_jitter=0.0, grayscale_prob=0.0).eval()
    images = torch.rand(3, 3, 16, 16)
    shown = task.example_images(images, torch.Generator().manual_seed(0))
    assert shown.per_row == 5 and shown.images.shape == (15, 3, 8, 8) and len(shown.captions) == 15
    rows = shown.images.view(3, 5, 3, 8, 8)
    for i in range(3):
        top = torch.cat([rows[i, 1], rows[i, 2]], dim=-1)
        bottom = torch.cat([rows[i, 3], rows[i, 4]], dim=-1)
        assert torch.equal(torch.cat([top, bottom], dim=-2), images[i])
    assert shown.captions[0].startswith("Dx (") and "tiles sum" in shown.captions[0] and "other image" in shown.captions[0]
    assert shown.captions[1].startswith("tile 1 count")
