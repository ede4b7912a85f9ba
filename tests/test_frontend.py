"""Folding the task's input mapping into conv1: Sobel exactly (inside the border), L approximately."""

import math

import pytest
import torch
import torch.nn.functional as F

from selfsup.errors import ConfigError
from selfsup.models import build_encoder
from selfsup.pretext import new_task
from selfsup.models.normalization import IMAGENET_MEAN, normalize_rgb
from selfsup.pretext.context import normalize_per_patch
from selfsup.pretext.colorization import rgb_to_lab
from selfsup.pretext.deepcluster import sobel_input
from selfsup.transfer.frontend import fold_input_mapping, input_conv


def randomize_batchnorms(encoder, seed=0):
    """Non-trivial running statistics and affine parameters, so eval-mode BatchNorm is not the identity."""
    g = torch.Generator().manual_seed(seed)
    for m in encoder.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            n = m.num_features
            m.running_mean.copy_(torch.randn(n, generator=g) * 0.3)
            m.running_var.copy_(torch.rand(n, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(n, generator=g) + 0.5)
            m.bias.data.copy_(torch.randn(n, generator=g) * 0.1)
    return encoder.eval()


def conv1_tap(encoder, x):
    with torch.no_grad():
        return encoder.forward_taps(x, ["conv1"])["conv1"]


def smooth_images(n, size, seed=0):
    """Smooth random images around the ImageNet mean colour: mostly shading, some colour (photo-like)."""
    g = torch.Generator().manual_seed(seed)
    grey = F.interpolate(torch.randn(n, 1, 6, 6, generator=g), size=size, mode="bicubic", align_corners=False)
    colour = F.interpolate(torch.randn(n, 3, 6, 6, generator=g), size=size, mode="bicubic", align_corners=False)
    return (torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1) + 0.2 * grey + 0.06 * colour).clamp(0, 1)


@pytest.mark.parametrize("arch, size", [("alexnet_small", 33), ("resnet18_small", 33), ("alexnet_jigsaw", 64)])
def test_sobel_fold_gives_identical_activations_away_from_the_border(arch, size):
    torch.manual_seed(0)
    encoder = randomize_batchnorms(build_encoder(arch, in_channels=2, width=0.25))
    folded, description = fold_input_mapping(encoder, "deepcluster", {"sobel": True})
    _, conv = input_conv(encoder)
    _, rgb_conv = input_conv(folded)
    assert folded.in_channels == 3 and encoder.in_channels == 2  # the original is left alone
    assert rgb_conv.kernel_size == (conv.kernel_size[0] + 2,) * 2 and rgb_conv.padding == (conv.padding[0] + 1,) * 2
    assert rgb_conv.stride == conv.stride and description.startswith("sobel:")

    images = torch.rand(2, 3, size, size)
    original = conv1_tap(encoder, sobel_input(images))
    ours = conv1_tap(folded, normalize_rgb(images))
    assert ours.shape == original.shape
    ring = math.ceil(conv.padding[0] / conv.stride[0])
    inner = (slice(None), slice(None), slice(ring, ours.shape[-2] - ring), slice(ring, ours.shape[-1] - ring))
    torch.testing.assert_close(ours[inner], original[inner], atol=1e-4, rtol=1e-4)
    if ring:
        # The documented border: the original zero-pads the gradient maps, the fold the grey image.
        assert not torch.allclose(ours, original, atol=1e-3) and f"{ring}-output border" in description
    else:
        assert "exact everywhere" in description


def test_sobel_fold_keeps_the_rest_of_the_network():
    encoder = randomize_batchnorms(build_encoder("resnet18_small", in_channels=2, width=0.25))
    folded, _ = fold_input_mapping(encoder, "deepcluster", {"sobel": True})
    ours, theirs = folded.state_dict(), encoder.state_dict()
    changed = {key for key in theirs if key not in ours or not torch.equal(ours[key], theirs[key])}
    assert changed == {"conv1.0.weight"}


def test_rgb_tasks_get_an_unchanged_copy():
    encoder = build_encoder("resnet18_small", width=0.25)
    for task, options in [("rotation", {}), ("deepcluster", {"sobel": False}), ("context", {"patch_norm": False, "color_mode": "project"})]:
        folded, description = fold_input_mapping(encoder, task, options)
        assert description == "none" and folded is not encoder
        assert all(torch.equal(a, b) for a, b in zip(folded.state_dict().values(), encoder.state_dict().values()))


def test_per_image_standardisation_is_kept_and_said_to_be_inexact():
    encoder = build_encoder("alexnet_small", width=0.25)
    folded, description = fold_input_mapping(encoder, "jigsaw", {})
    assert description.startswith("none") and "not exact" in description
    assert torch.equal(input_conv(folded)[1].weight, input_conv(encoder)[1].weight)


@pytest.mark.parametrize("arch, width", [("alexnet_small", 0.5), ("resnet18", None)])
def test_lightness_fold_stays_close_to_the_exact_l_input(arch, width):
    torch.manual_seed(0)
    encoder = randomize_batchnorms(build_encoder(arch, in_channels=1, width=width))
    folded, description = fold_input_mapping(encoder, "colorization", {})
    assert folded.in_channels == 3 and "linear approximation" in description
    assert input_conv(folded)[1].bias is None  # the constant went into the BatchNorm (torchvision layout)

    images = smooth_images(4, 64)
    original = conv1_tap(encoder, (rgb_to_lab(images)[:, :1] - 50) / 50)
    ours = conv1_tap(folded, normalize_rgb(images))
    # Documented in frontend.py: about 5% relative error on such images (7% CIFAR-10, 17% saturated photos).
    relative = ((ours - original).norm() / original.norm()).item()
    correlation = torch.corrcoef(torch.stack([ours.flatten(), original.flatten()]))[0, 1].item()
    assert relative < 0.08 and correlation > 0.995

    # Exact at the expansion point, the ImageNet mean colour, away from the padded border.
    flat = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1).expand(1, 3, 40, 40)
    original = conv1_tap(encoder, (rgb_to_lab(flat)[:, :1] - 50) / 50)
    ours = conv1_tap(folded, normalize_rgb(flat))
    torch.testing.assert_close(ours[..., 4:-4, 4:-4], original[..., 4:-4, 4:-4], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("task, channels", [("rotation", 1), ("rotation", 4), ("colorization", 3), ("deepcluster", 3)])
def test_wrong_channel_count_is_a_one_line_error_naming_task_and_channels(task, channels):
    encoder = build_encoder("alexnet_small", in_channels=channels, width=0.25)
    with pytest.raises(ValueError) as info:
        fold_input_mapping(encoder, task, {})
    message = str(info.value)
    assert "\n" not in message and task in message and f"takes {channels} channels" in message


def test_unknown_task_is_refused():
    with pytest.raises(ValueError, match="unknown task 'nope'"):
        fold_input_mapping(build_encoder("alexnet_small", width=0.25), "nope", {})


def test_context_colour_drop_folds_its_evaluation_mapping_the_kept_green_channel():
    torch.manual_seed(0)
    encoder = build_encoder("alexnet_small", width=0.25)
    task = new_task("context", encoder, {}).eval()
    assert task.cfg.color_mode == "drop" and task.cfg.patch_norm
    folded, description = fold_input_mapping(encoder, "context", {})
    assert description.startswith("green only") and "not exact" in description
    images = smooth_images(3, 40)
    # The folded conv1 on per-image standardised RGB is the original conv1 on the evaluation mapping (green
    # standardised, red and blue zero): only the standardisation is left to approximate (by ImageNet mean/std).
    ours = input_conv(folded)[1](normalize_per_patch(images))
    theirs = input_conv(encoder)[1](task.eval_input(images))
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=1e-5)
    # ... and not on what training fed it (encoder_input: all three standardised channels)
    assert not torch.allclose(ours, input_conv(encoder)[1](task.encoder_input(images)), atol=1e-3)


def test_context_colour_drop_without_patch_norm_cannot_be_folded():
    with pytest.raises(ConfigError) as info:
        fold_input_mapping(build_encoder("alexnet_small", width=0.25), "context", {"patch_norm": False})
    message = str(info.value)
    assert "\n" not in message and "--frontend exact" in message
