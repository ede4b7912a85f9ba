import pytest
import torch

from selfsup.config import ConfigError, PretrainConfig, from_dict
from selfsup.models import build_encoder
from selfsup.pretext import check_pretrain_config, new_task
from selfsup.pretext.context import (
    DIRECTION_NAMES,
    NEIGHBOUR_STEPS,
    ContextConfig,
    ContextTask,
    PatchGeometry,
    crop_patches,
    down_up_sample,
    downsample_sizes,
    drop_colors,
    normalize_per_patch,
    patch_geometry,
    project_out_green_magenta,
    sample_pair_positions,
)

# The documented label table: (row, col) step of the neighbour, rows growing downwards.
EXPECTED_STEPS = {
    0: ((-1, -1), "top-left"), 1: ((-1, 0), "top"), 2: ((-1, 1), "top-right"), 3: ((0, -1), "left"),
    4: ((0, 1), "right"), 5: ((1, -1), "bottom-left"), 6: ((1, 0), "bottom"), 7: ((1, 1), "bottom-right"),
}
DEFAULT_RATIOS = (ContextConfig.gap_ratio, ContextConfig.jitter_ratio)


def sampled_pairs(geometry: PatchGeometry, count: int = 4000, seed: int = 0):
    return sample_pair_positions(count, geometry, torch.Generator().manual_seed(seed), torch.device("cpu"))


def smooth_patches(count: int, size: int, seed: int = 0) -> torch.Tensor:
    """Random low-frequency RGB patches in [0, 1] with clearly different channels."""
    gen = torch.Generator().manual_seed(seed)
    coarse = torch.rand(count, 3, 4, 4, generator=gen)
    return torch.nn.functional.interpolate(coarse, size=(size, size), mode="bilinear", align_corners=False)


def test_paper_geometry_comes_out_at_398_px_and_demo_geometry_at_64_px():
    assert patch_geometry(398, 0, *DEFAULT_RATIOS) == PatchGeometry(patch=96, gap=48, jitter=7, slack=0)
    assert patch_geometry(64, 0, *DEFAULT_RATIOS) == PatchGeometry(patch=15, gap=8, jitter=1, slack=1)
    for size in range(34, 420, 7):
        g = patch_geometry(size, 0, *DEFAULT_RATIOS)
        assert 0 <= g.slack and g.extent + g.slack == size
        assert 2 * g.jitter <= g.gap  # jittered patches never overlap
        # the largest patch that fits: one pixel more would not
        assert patch_geometry(size, g.patch + 1, *DEFAULT_RATIOS).slack < 0


@pytest.mark.parametrize("size", [34, 64, 398])
def test_each_label_puts_the_neighbour_in_its_direction_before_and_after_jitter(size):
    assert {k: (NEIGHBOUR_STEPS[k], DIRECTION_NAMES[k]) for k in range(8)} == EXPECTED_STEPS
    g = patch_geometry(size, 0, *DEFAULT_RATIOS)
    unjittered = sampled_pairs(PatchGeometry(g.patch, g.gap, 0, g.slack))
    jittered = sampled_pairs(g)
    for pairs, jitter in ((unjittered, 0), (jittered, g.jitter)):
        assert set(pairs.labels.tolist()) == set(range(8))
        # top-left corners differ by the same vector as the patch centres (equal patch sizes)
        delta = pairs.neighbour - pairs.centre
        for label, ((row, col), _) in EXPECTED_STEPS.items():
            d = delta[pairs.labels == label]
            step = torch.tensor([row, col])
            if jitter == 0:
                assert torch.equal(d, (g.stride * step).expand_as(d))
            assert torch.equal(torch.round(d / g.stride).long(), step.expand_as(d))
            for axis in range(2):
                if step[axis] == 0:  # boxes overlap on this axis: no doubt it is the same row/column
                    assert d[:, axis].abs().max() <= 2 * jitter < g.patch
                else:  # boxes are separated on this axis, on the labelled side
                    assert (d[:, axis] * step[axis]).min() >= g.patch + g.gap - 2 * jitter > g.patch


@pytest.mark.parametrize("size", [34, 64, 100, 225, 398, 500])
def test_patches_stay_inside_the_crop_apart_by_the_gap_with_bounded_jitter(size):
    g = patch_geometry(size, 0, *DEFAULT_RATIOS)
    pairs = sampled_pairs(g)
    for corners in (pairs.centre, pairs.neighbour):
        assert corners.min() >= 0 and corners.max() + g.patch <= size
    # separation on the labelled axis: boxes never touch closer than gap - 2 * jitter
    steps = torch.tensor(NEIGHBOUR_STEPS)[pairs.labels]
    delta = pairs.neighbour - pairs.centre
    separation = torch.where(steps != 0, (delta * steps).abs() - g.patch, torch.full_like(delta, size))
    assert separation.min(dim=1).values.min() >= g.gap - 2 * g.jitter > 0
    # each patch's jitter stays within [-J, J] and uses that whole range
    offset = delta - g.stride * steps
    assert offset.abs().max() <= 2 * g.jitter
    if g.slack == 0:
        centre_jitter = pairs.centre - (g.jitter + g.stride)
        assert centre_jitter.min() == -g.jitter and centre_jitter.max() == g.jitter


def test_crop_patches_cuts_the_boxes_at_the_given_corners():
    images = torch.rand(3, 3, 20, 20)
    corners = torch.tensor([[0, 0], [5, 11], [12, 3]])
    patches = crop_patches(images, corners, 8)
    for i, (y, x) in enumerate(corners.tolist()):
        assert torch.equal(patches[i], images[i, :, y:y + 8, x:x + 8])


def test_anti_shortcut_guards_are_on_by_default():
    task = new_task("context", build_encoder("alexnet_small", width=0.25), {})
    for cfg in (ContextConfig(), task.cfg):
        assert cfg.color_mode in ("drop", "project")
        assert cfg.color_mode == "drop"
        assert cfg.downsample_prob > 0 and cfg.downsample_min_scale < 0.2
        assert cfg.patch_norm
        assert cfg.gap_ratio == 0.5 and cfg.jitter_ratio == pytest.approx(7 / 96)


def test_color_dropping_keeps_exactly_one_normalised_channel_and_noises_the_others():
    torch.manual_seed(0)
    assert new_task("context", build_encoder("alexnet_small", width=0.25), {}).cfg.drop_noise_std == 0.01  # paper
    # noise of unit std (relative to the kept channel) makes the checks below sharp
    task = new_task("context", build_encoder("alexnet_small", width=0.25),
                      {"downsample_prob": 0.0, "drop_noise_std": 1.0})
    patches = smooth_patches(64, 16)
    fed = task.prepare_patches(patches, torch.Generator().manual_seed(1))
    normalised = normalize_per_patch(patches)
    equal = (fed - normalised).abs().amax(dim=(2, 3)) < 1e-5  # N x 3
    assert (equal.sum(dim=1) == 1).all()
    assert (equal.sum(dim=0) > 5).all()  # the kept channel is drawn at random
    noise = fed.flatten(2)[~equal]  # the two other channels of every patch
    assert torch.allclose(noise.std(dim=1), torch.ones(len(noise)), atol=0.25)  # matching (unit) std
    # ... and unrelated to any original channel of their patch
    sources = normalised.flatten(2).repeat_interleave(2, dim=0)  # two noise channels per patch
    correlation = torch.einsum("np,ncp->nc", normalize_per_patch(noise[:, None, :, None])[:, 0, :, 0], sources)
    assert (correlation / noise.shape[1]).abs().max() < 0.3

    # the plain function reports the channel it kept and scales the noise to it
    _, kept = drop_colors(normalised, 0.01, torch.Generator().manual_seed(2))
    quiet, kept_again = drop_colors(normalised, 0.01, torch.Generator().manual_seed(2))
    assert torch.equal(kept, kept_again)
    dropped = torch.ones(64, 3, dtype=torch.bool)
    dropped[torch.arange(64), kept] = False
    assert quiet.std(dim=(2, 3))[dropped].max() < 0.02


def test_projection_removes_the_green_magenta_axis_and_keeps_grey():
    patches = smooth_patches(8, 12)
    projected = project_out_green_magenta(patches)
    green_magenta = projected[:, 1] * 2 - projected[:, 0] - projected[:, 2]
    assert green_magenta.abs().max() < 1e-5
    grey = torch.rand(4, 1, 12, 12).expand(-1, 3, -1, -1)
    assert torch.allclose(project_out_green_magenta(grey), grey, atol=1e-6)


def test_per_patch_normalisation_gives_zero_mean_unit_std_per_channel():
    patches = smooth_patches(16, 15) * 0.3 + 0.5
    for fed in (
        normalize_per_patch(patches),
        new_task("context", build_encoder("alexnet_small", width=0.25), {"drop_noise_std": 1.0})
        .prepare_patches(patches, torch.Generator().manual_seed(0)),
    ):
        assert fed.mean(dim=(2, 3)).abs().max() < 0.3  # noise channels: sample mean of ~225 normals
        assert torch.allclose(fed.std(dim=(2, 3), unbiased=False), torch.ones(16, 3), atol=0.25)


def test_down_up_sampling_removes_high_frequencies():
    assert downsample_sizes(96, 10 / 96, 4) == [10, 18, 31, 55]  # the paper's ~100 pixels at the low end
    assert downsample_sizes(15, 10 / 96, 4)[0] == 2
    assert downsample_sizes(15, 1.0, 4) == []
    side = 16
    checker = ((torch.arange(side)[:, None] + torch.arange(side)[None, :]) % 2).float()
    patches = checker.expand(32, 3, side, side).clone()

    def checker_energy(x: torch.Tensor) -> torch.Tensor:
        return ((x - x.mean(dim=(2, 3), keepdim=True)) * (2 * checker - 1)).mean(dim=(1, 2, 3)).abs()

    sizes = downsample_sizes(side, 10 / 96, 4)
    always = down_up_sample(patches, 1.0, sizes, torch.Generator().manual_seed(0))
    assert (checker_energy(always) < 0.1 * checker_energy(patches)).all()
    assert torch.equal(down_up_sample(patches, 0.0, sizes, torch.Generator()), patches)
    half = down_up_sample(patches, 0.5, sizes, torch.Generator().manual_seed(0))
    changed = (half != patches).flatten(1).any(dim=1)
    assert 4 <= int(changed.sum()) <= 28


@pytest.mark.parametrize("side", [15, 96])
def test_resampling_only_the_chosen_patches_gives_the_tensors_of_resampling_all_and_masking(side):
    patches = torch.rand(40, 3, side, side)
    sizes = downsample_sizes(side, 10 / 96, 4)
    chosen_only = down_up_sample(patches, 0.5, sizes, torch.Generator().manual_seed(5), by_mask=False)
    masked = down_up_sample(patches, 0.5, sizes, torch.Generator().manual_seed(5), by_mask=True)
    assert torch.equal(chosen_only, masked)
    assert torch.equal(down_up_sample(patches, 0.5, sizes, torch.Generator().manual_seed(5)), chosen_only)  # CPU
    assert not torch.equal(chosen_only, patches)


def test_normalize_per_patch_equals_the_plain_formula():
    patches = torch.rand(6, 3, 15, 15) * 0.3
    patches[0, 2] = 0.7  # a flat channel stays at zero (the variance floor)
    mean = patches.mean(dim=(2, 3), keepdim=True)
    var = patches.var(dim=(2, 3), keepdim=True, unbiased=False)
    torch.testing.assert_close(normalize_per_patch(patches), (patches - mean) / torch.sqrt(var + 1e-4),
                               rtol=0, atol=1e-5)
    assert torch.equal(normalize_per_patch(patches)[0, 2], torch.zeros(15, 15))


def test_forward_gives_finite_loss_and_accuracy_and_learns_a_fixed_batch():
    torch.manual_seed(0)
    task = new_task("context", build_encoder("alexnet_small", width=0.25), {"fc6_dim": 32, "fc7_dim": 32})
    images = smooth_patches(16, 34, seed=3)
    labels = torch.full((16,), -1)
    out = task(images, labels)  # no generator: falls back to a default one
    assert set(out) == {"loss", "acc"} and torch.isfinite(out["loss"]) and 0 <= float(out["acc"]) <= 1
    optimizer = torch.optim.SGD(task.parameters(), lr=0.05, momentum=0.9)
    losses = []
    for _ in range(15):
        out = task(images, labels, torch.Generator().manual_seed(7))  # the same pairs every step
        losses.append(float(out["loss"].detach()))
        optimizer.zero_grad()
        out["loss"].backward()
        optimizer.step()
    assert losses[-1] < 0.5 * losses[0]


def test_pairs_of_uint8_crops_equal_those_of_the_crops_in_unit_floats():
    task = new_task("context", build_encoder("alexnet_small", in_channels=3, width=0.25), {})
    crops = torch.randint(0, 256, (4, 3, 64, 64), dtype=torch.uint8)
    from_uint8, pairs = task.make_pairs(crops, torch.Generator().manual_seed(5))
    from_float, float_pairs = task.make_pairs(crops.float() / 255, torch.Generator().manual_seed(5))
    assert torch.equal(pairs.labels, float_pairs.labels) and torch.equal(pairs.centre, float_pairs.centre)
    torch.testing.assert_close(from_uint8, from_float, rtol=0, atol=1e-5)
    assert task.takes_uint8


def test_example_images_show_crops_with_boxes_and_the_fed_pairs():
    task = new_task("context", build_encoder("alexnet_small", width=0.25), {"fc6_dim": 16, "fc7_dim": 16}).eval()
    with torch.no_grad():
        shown = task.example_images(torch.rand(6, 3, 40, 40), torch.Generator().manual_seed(0))
    assert shown.images.shape == (8, 3, 40, 40) and len(shown.captions) == 8
    assert shown.images.min() >= 0 and shown.images.max() <= 1
    assert any(name in shown.captions[0] for name in DIRECTION_NAMES)


def test_tiny_crops_and_inconsistent_geometry_are_rejected():
    for size in (20, 32):
        with pytest.raises(ConfigError, match=f"data.image_size = {size} is invalid: context needs"):
            check_pretrain_config(from_dict(PretrainConfig, {"task": "context", "data": {"image_size": size}}))
    for size in (34, 64):
        ContextTask.check_image_size(ContextConfig(), size)
    with pytest.raises(ConfigError, match="image_size >= 398"):
        ContextTask.check_image_size(ContextConfig(patch_size=96), 255)
    with pytest.raises(ConfigError, match="pretext.jitter_ratio"):
        from_dict(ContextConfig, {"gap_ratio": 0.1, "jitter_ratio": 0.1})
    with pytest.raises(ConfigError, match="pretext.patch_size"):
        from_dict(ContextConfig, {"patch_size": 4})
    with pytest.raises(ConfigError, match="pretext.color_mode"):
        from_dict(ContextConfig, {"color_mode": "grey"}, prefix="pretext.")
