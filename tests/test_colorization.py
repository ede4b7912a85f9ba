import warnings

import numpy as np
import pytest
import torch
from skimage.color import lab2rgb, rgb2lab

from selfsup.checkpoint import load_checkpoint
from selfsup.cli.pretrain import main as pretrain_main
from selfsup.config import ConfigError, PretrainConfig, from_dict
from selfsup.models import build_encoder
from selfsup.pretext import check_pretrain_config, new_task
from selfsup.pretext.colorization import (
    ColorizationTask,
    annealed_mean,
    bin_accuracy,
    colorization_loss,
    gamut_bins,
    lab_to_rgb,
    non_gray,
    prior_kernel,
    quantize_ab,
    rebalance_weights,
    rgb_to_lab,
    smoothed_prior,
    soft_encode,
)
from selfsup.probes.frozen import load_frozen

# Counted by gamut_bins' procedure (nearest grid point of every sRGB colour's ab, grid 10); the
# paper's released set has 313 bins, some of them outside the sRGB gamut (see the module docstring).
DERIVED_BIN_COUNT = 262

EDGE_COLOURS = [
    (0, 0, 0), (1, 1, 1), (1, 0, 0), (0, 1, 0), (0, 0, 1), (0, 1, 1), (1, 0, 1), (1, 1, 0),
    (0.5, 0.5, 0.5), (0.04045, 0.04045, 0.04045), (0.0405, 0.0, 0.0), (1 / 255, 0, 0), (1, 1, 254 / 255),
]


def colours_as_image(colours: np.ndarray) -> torch.Tensor:
    """K x 3 colours -> a 3 x K x 1 image tensor (channels at dim -3, as the conversions expect)."""
    return torch.from_numpy(colours.astype(np.float32)).t()[:, :, None]


def test_rgb_to_lab_matches_scikit_image_on_random_and_edge_colours():
    rng = np.random.default_rng(0)
    colours = np.concatenate([rng.random((4000, 3)), np.array(EDGE_COLOURS)])
    ours = rgb_to_lab(colours_as_image(colours))[:, :, 0].t().double().numpy()
    reference = rgb2lab(colours[:, None, :])[:, 0, :]
    assert np.abs(ours - reference).max() < 1e-3  # Lab units, float32 on our side


def test_lab_round_trip_and_lab_to_rgb_match_scikit_image():
    rng = np.random.default_rng(1)
    colours = np.concatenate([rng.random((4000, 3)), np.array(EDGE_COLOURS)])
    image = colours_as_image(colours)
    assert (lab_to_rgb(rgb_to_lab(image)) - image).abs().max() < 1e-4
    # arbitrary Lab, mostly out of gamut: the clipping (negative Z, then RGB to [0, 1]) agrees too
    lab = np.stack([rng.uniform(0, 100, 4000), rng.uniform(-128, 127, 4000), rng.uniform(-128, 127, 4000)], axis=1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        reference = lab2rgb(lab[:, None, :])[:, 0, :]
    ours = lab_to_rgb(colours_as_image(lab))[:, :, 0].t().double().numpy()
    assert np.abs(ours - reference).max() < 1e-4


def test_batched_conversion_keeps_shape_and_dtype():
    images = torch.rand(2, 3, 5, 7)
    assert rgb_to_lab(images).shape == (2, 3, 5, 7) and rgb_to_lab(images).dtype == torch.float32
    assert rgb_to_lab(images.double()).dtype == torch.float64


def test_derived_gamut_bins_hold_every_srgb_colour():
    bins = gamut_bins()
    assert bins.shape == (DERIVED_BIN_COUNT, 2)
    assert torch.equal(bins, torch.round(bins / 10) * 10)  # grid points
    kept = set(map(tuple, quantize_ab(bins, 10.0).tolist()))
    # a 32^3 lattice of the cube, every 8-bit colour of its six faces, and random colours
    lattice = torch.stack(torch.meshgrid(*[torch.linspace(0, 1, 32)] * 3, indexing="ij")).reshape(3, -1, 1)
    values = torch.arange(256) / 255
    u, v = torch.meshgrid(values, values, indexing="ij")
    faces = []
    for fixed in range(3):
        for value in (0.0, 1.0):
            channels = [u, v]
            channels.insert(fixed, torch.full_like(u, value))
            faces.append(torch.stack(channels).reshape(3, -1, 1))
    random = torch.rand(3, 200_000, 1, generator=torch.Generator().manual_seed(0))
    colours = torch.cat([lattice, *faces, random], dim=1)
    cells = quantize_ab(rgb_to_lab(colours)[1:, :, 0].t(), 10.0)
    assert set(map(tuple, torch.unique(cells, dim=0).tolist())) <= kept


def test_soft_targets_sum_to_one_with_five_entries_most_on_the_nearest_bin():
    bins = gamut_bins()
    ab = rgb_to_lab(torch.rand(3, 3, 6, 6, generator=torch.Generator().manual_seed(0)))[:, 1:]
    indices, weights = soft_encode(ab, bins, neighbours=5, sigma=5.0)
    assert indices.shape == weights.shape == (3, 5, 6, 6)
    dense = torch.zeros(3, len(bins), 6, 6).scatter_(1, indices, weights)
    assert torch.allclose(dense.sum(dim=1), torch.ones(3, 6, 6), atol=1e-6)
    assert ((dense > 0).sum(dim=1) == 5).all()
    nearest = ((ab[:, None] - bins[None, :, :, None, None]) ** 2).sum(dim=2).argmin(dim=1)
    assert torch.equal(dense.argmax(dim=1), nearest) and torch.equal(indices[:, 0], nearest)
    # a colour on a bin centre: its four grid neighbours at distance 10 get exp(-2) each
    centre = bins[100].view(1, 2, 1, 1)
    _, at_centre = soft_encode(centre, bins)
    assert float(at_centre[0, 0]) == pytest.approx(1 / (1 + 4 * np.exp(-2.0)), rel=1e-5)


def test_rebalancing_weights_have_unit_mean_under_the_prior_and_favour_rare_bins():
    bins = gamut_bins()
    counts = torch.zeros(len(bins), dtype=torch.long)
    counts[:50] = torch.arange(1, 51) * 1000  # increasingly common bins
    prior = smoothed_prior(counts, prior_kernel(bins, 5.0))
    assert float(prior.sum()) == pytest.approx(1.0, abs=1e-6) and bool((prior >= 0).all())
    weights = rebalance_weights(prior, 0.5)
    assert float((prior * weights).sum()) == pytest.approx(1.0, abs=1e-5)
    order = prior.argsort()
    assert bool((weights[order][1:] <= weights[order][:-1]).all())  # rarer -> larger
    assert float(weights[prior.argmin()]) > float(weights[prior.argmax()])
    # no counts yet: uniform prior, all weights 1; lambda = 1: no rebalancing
    empty = smoothed_prior(torch.zeros(len(bins), dtype=torch.long), prior_kernel(bins, 5.0))
    assert torch.allclose(rebalance_weights(empty, 0.5), torch.ones(len(bins)), atol=1e-5)
    assert torch.allclose(rebalance_weights(prior, 1.0), torch.ones(len(bins)), atol=1e-5)


def test_annealed_mean_goes_from_the_mean_at_t1_to_the_mode_as_t_falls():
    bins = gamut_bins()
    logits = torch.randn(2, len(bins), 3, 3, generator=torch.Generator().manual_seed(0))
    logits.scatter_add_(1, logits.argmax(dim=1, keepdim=True), torch.ones(2, 1, 3, 3))  # a clear mode
    probs = torch.softmax(logits, dim=1)
    mean = torch.einsum("nqhw,qc->nchw", probs, bins)
    assert torch.allclose(annealed_mean(probs, bins, 1.0), mean, atol=1e-3)
    mode = bins[probs.argmax(dim=1)].permute(0, 3, 1, 2)
    assert torch.allclose(annealed_mean(probs, bins, 0.01), mode, atol=1e-2)
    # the paper's T = 0.38 sits in between: closer to the mode than the mean is
    halfway = annealed_mean(probs, bins, 0.38)
    assert float((halfway - mode).abs().mean()) < float((mean - mode).abs().mean())


def test_gray_images_are_masked_out_of_the_loss():
    bins = gamut_bins()
    colour = torch.rand(2, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    gray = colour.mean(dim=1, keepdim=True).expand(2, 3, 8, 8)
    ab = rgb_to_lab(torch.cat([colour, gray]))[:, 1:]
    assert non_gray(ab, 5.0).tolist() == [True, True, False, False]
    indices, soft = soft_encode(ab, bins)
    weights = torch.rand(len(bins)) + 0.5
    logits = torch.randn(4, len(bins), 8, 8, requires_grad=True)
    valid = non_gray(ab, 5.0)
    loss = colorization_loss(logits, indices, soft, weights, valid)
    colour_only = colorization_loss(logits[:2], indices[:2], soft[:2], weights, valid[:2])
    assert float(loss.detach()) == pytest.approx(float(colour_only.detach()), rel=1e-6)
    loss.backward()
    assert float(logits.grad[2:].abs().sum()) == 0.0 and float(logits.grad[:2].abs().sum()) > 0
    assert float(bin_accuracy(logits.detach(), indices[:, 0], torch.zeros(4, dtype=torch.bool))) == 0.0
    # an all-gray batch gives a zero (finite) loss
    none = colorization_loss(logits, indices, soft, weights, torch.zeros(4, dtype=torch.bool))
    assert float(none.detach()) == 0.0


def colourful_batch(n: int = 4, size: int = 16) -> torch.Tensor:
    """Blobs of a few saturated colours on a bright background: learnable from L alone."""
    gen = torch.Generator().manual_seed(0)
    palette = torch.tensor([[0.9, 0.1, 0.1], [0.1, 0.7, 0.1], [0.1, 0.2, 0.9], [0.9, 0.9, 0.2]])
    images = torch.full((n, 3, size, size), 0.95)
    for i in range(n):
        for c, colour in enumerate(palette):
            top, left = torch.randint(0, size - 6, (2,), generator=gen).tolist()
            images[i, :, top:top + 6, left:left + 6] = colour.view(3, 1, 1) * (0.6 + 0.1 * c)
    return images


def small_task(**options) -> ColorizationTask:
    torch.manual_seed(0)
    return new_task("colorization", build_encoder("alexnet_small", in_channels=1, width=0.25),
                      {"head_hidden": 32, **options})


def test_forward_gives_finite_loss_and_a_few_steps_on_a_fixed_batch_lower_it():
    task = small_task()
    images = colourful_batch()
    labels = torch.full((4,), -1)
    optimizer = torch.optim.SGD(task.parameters(), lr=0.05, momentum=0.9)
    losses = []
    for _ in range(15):
        out = task(images, labels)
        assert set(out) == {"loss", "acc"} and torch.isfinite(out["loss"])
        losses.append(float(out["loss"].detach()))
        optimizer.zero_grad()
        out["loss"].backward()
        optimizer.step()
    assert losses[-1] < 0.7 * losses[0]


def test_prior_is_counted_online_for_the_first_images_only_and_only_in_training():
    task = small_task(prior_images=6)
    images, labels = colourful_batch(4), torch.full((4,), -1)
    task.eval()
    with torch.no_grad():
        task(images, labels)
    assert int(task.prior_images_seen) == 0 and int(task.prior_counts.sum()) == 0
    task.train()
    task(images, labels)
    assert int(task.prior_images_seen) == 4 and int(task.prior_counts.sum()) == 4 * 4 * 4  # 4x4 target maps
    task(images, labels)
    task(images, labels)  # window of 6 images is closed after the second batch
    assert int(task.prior_images_seen) == 8 and int(task.prior_counts.sum()) == 2 * 4 * 4 * 4
    weights = task.bin_weights()
    prior = smoothed_prior(task.prior_counts, task.prior_kernel)
    assert float((prior * weights).sum()) == pytest.approx(1.0, abs=1e-5)
    assert {"prior_counts", "prior_images_seen", "bins"} <= set(task.state_dict())


def test_example_images_show_input_target_prediction_and_truth():
    task = small_task().eval()
    with torch.no_grad():
        examples = task.example_images(torch.cat([colourful_batch(3), torch.full((1, 3, 16, 16), 0.5)]))
    assert examples.images.shape == (16, 3, 16, 16) and examples.per_row == 4 and len(examples.captions) == 16
    assert float(examples.images.min()) >= 0 and float(examples.images.max()) <= 1
    l_input = examples.images[0]
    assert torch.allclose(l_input[0], l_input[1], atol=1e-3) and torch.allclose(l_input[1], l_input[2], atol=1e-3)
    assert "L only" in examples.captions[0] and "annealed mean" in examples.captions[2]
    assert "gray image" in examples.captions[13]


def test_check_image_size_rejects_crops_smaller_than_a_2x2_target_map():
    with pytest.raises(ConfigError, match="data.image_size = 12 is invalid: colorization needs at least .* 16 px"):
        check_pretrain_config(from_dict(PretrainConfig, {"task": "colorization", "data": {"image_size": 12},
                                                         "pretext": {"target_downsample": 8}}))
    check_pretrain_config(from_dict(PretrainConfig, {"task": "colorization", "data": {"image_size": 8}}))
    with pytest.raises(ConfigError, match="pretext.rebalance_lambda"):
        check_pretrain_config(from_dict(PretrainConfig, {"task": "colorization", "pretext": {"rebalance_lambda": 0}}))


def test_probe_of_a_colorization_checkpoint_feeds_the_l_channel(tiny_folder, tmp_path):
    assert pretrain_main(["--task", "colorization", "--data", str(tiny_folder), "--epochs", "1", "--batch-size", "8",
                          "--workers", "0", "--image-size", "16", "--width", "0.25", "--out", str(tmp_path)]) == 0
    state = load_checkpoint(tmp_path / "last.pt")
    assert state["encoder"]["in_channels"] == 1 and int(state["model"]["prior_counts"].sum()) > 0
    frozen = load_frozen(str(tmp_path / "last.pt"), arch="alexnet_small", width=None, image_size=16, seed=0)
    images = torch.rand(2, 3, 16, 16)
    inputs = frozen.input_fn(images)
    assert inputs.shape == (2, 1, 16, 16)
    assert torch.allclose(inputs, (rgb_to_lab(images)[:, :1] - 50) / 50)
    assert frozen.encoder.forward_taps(inputs, ["conv5"])["conv5"].shape[0] == 2
