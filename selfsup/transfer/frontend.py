"""Folding a task's fixed input mapping into conv1, so that every encoder takes ImageNet-normalised RGB.

Detection frameworks and model zoos feed their backbones ``normalize_rgb(x)``: [0, 1] RGB minus the
ImageNet mean, over the ImageNet std. Most pretext tasks train on exactly that; for the others:

* **Sobel** (``SOBEL``, DeepCluster's front-end; 2 channels). Grey is the mean of the normalised channels
  and the two Sobel filters are fixed 3x3 convolutions (padding 1): all linear, so conv1 composed with
  them is one conv on normalised RGB whose kernel is 2 larger and padding 1 larger (same stride; conv1's
  bias, if any, and the BatchNorm after it are unchanged). It is exact except at the outputs whose conv1
  window overlaps conv1's own zero padding: there the original reads zero-padded *gradient* maps while the
  folded conv reads the gradients of zero-padded grey, which are not zero. That is a border
  ``ceil(padding / stride)`` outputs wide (none for a conv1 without padding).
* **Lab L** (``LIGHTNESS``, colorization's; 1 channel, ``(L - 50) / 50``: the declared ``pixel_map``). L
  is nonlinear in sRGB (a gamma, then the cube root of luminance), so no conv on RGB reproduces it. It is
  replaced by its first-order Taylor expansion at the ImageNet mean colour: the luminance direction
  (0.2126, 0.7152, 0.0722 in linear light) scaled to the local slope of L, i.e. weights
  0.106 / 0.323 / 0.028 on the normalised R / G / B and a constant -0.015 (L = 49.3 at the mean colour). It
  is exact at that colour; per pixel, against the exact ``(L - 50) / 50`` (which spans -1..1 with a spread
  of about 0.5 on photos):

  ==============================================  =====  =====  =====  ===========
  pixels (sampled)                                RMSE   p99    max    correlation
  ==============================================  =====  =====  =====  ===========
  CIFAR-10 test, 1000 images x 200 px             0.034  0.085  0.43   0.998
  fruits_voc photos, 300 images x 2000 px         0.088  0.30   0.54   0.993
  the RGB cube, 33^3 grid                         0.14   0.44   0.57   0.973
  ==============================================  =====  =====  =====  ===========

  The error is largest for saturated colours, because sRGB's gamma acts per channel before luminance
  mixes them (pure red: L = 53, linearised 26). After a random conv1, the relative error of its output
  is 7% on CIFAR-10, 17% on the fruit photos and 5% on smooth random images around the ImageNet mean
  (correlation 0.99-0.999). Least squares over photo pixels would halve the fruits error but tie the fold
  to one data set; fine-tuning absorbs what is left.
  conv1's single filter is spread over R, G, B with those weights, and the constant goes into the running
  mean of the BatchNorm after conv1: exact in eval mode (a train-mode BatchNorm cancels a constant
  anyway), and conv1 stays bias-free as the torchvision layout requires. At the border the folded conv's
  zero padding stands for the mean colour, 0.015 below the original padding (L = 50): an extra
  ``0.015 x`` (sum of the filter taps that fall in the padding) there.
* **Per-image standardisation** (``PER_IMAGE``: jigsaw, context with ``patch_norm``) of every image on its
  own statistics, which no fixed conv can do; ImageNet mean/std is the dataset-level version of that
  standardisation, so their weights are kept as they are (not exact: per-image contrast is no longer
  equalised).
* **One kept channel** (``KEPT_CHANNEL``: context with ``color_mode=drop``). What is folded is the task's
  *evaluation* mapping (``eval_input``, what probes and fine-tuning feed it): the green channel (the
  declared ``kept_channel``) kept, the other two set to the kept channel's per-image mean. With
  ``patch_norm`` that mean is 0 (the channel is standardised), so the mapping is "standardised green, two
  zero channels": conv1's red and blue taps are zeroed, which is exact, and the standardisation is
  approximated by ImageNet mean/std as above (not exact). Without ``patch_norm`` the two channels carry
  each image's mean normalised green, a global average that no conv expresses: folding is refused
  (one-line ConfigError) and ``--frontend exact`` feeds the exact mapping.
"""

from __future__ import annotations

import copy
import math
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from selfsup.config import from_dict
from selfsup.errors import ConfigError
from selfsup.models import Encoder
from selfsup.models.normalization import IMAGENET_MEAN, IMAGENET_STD
from selfsup.pretext import TASKS
from selfsup.pretext.base import KEPT_CHANNEL, LIGHTNESS, PER_IMAGE, RGB, SOBEL, SOBEL_X, InputMapping

__all__ = ["INPUT", "fold_input_mapping", "input_conv", "lightness_affine", "replace_input_conv", "task_input"]

INPUT = "ImageNet-normalised RGB: [0, 1] RGB minus mean (0.485, 0.456, 0.406), over std (0.229, 0.224, 0.225)"

# The input mappings tasks declare (PretextTask.input_kind), and their channel counts.
_CHANNELS = {RGB: 3, PER_IMAGE: 3, SOBEL: 2, LIGHTNESS: 1, KEPT_CHANNEL: 3}
_CHANNEL_NAMES = ("red", "green", "blue")


def task_input(task_name: str, task_options: dict) -> InputMapping:
    """Which input mapping ``task_name`` with ``task_options`` feeds its encoder at evaluation (the task's
    ``eval_input``, what probes and fine-tuning feed it), as the task declares it (``PretextTask.input_mapping``).
    ConfigError (one line) for a mapping that no conv on RGB expresses even approximately."""
    if task_name not in TASKS:
        raise ValueError(f"unknown task {task_name!r}; known tasks: {', '.join(TASKS)}")
    task_cls = TASKS[task_name]
    return task_cls.input_mapping(from_dict(task_cls.Config, task_options, prefix="pretext."))


def input_conv(encoder: Encoder) -> tuple[str, nn.Conv2d]:
    """Qualified name and module of the conv that reads the encoder's input (the first one)."""
    return next((name, m) for name, m in encoder.named_modules() if isinstance(m, nn.Conv2d))


def replace_input_conv(encoder: Encoder, conv: nn.Conv2d) -> None:
    """Puts ``conv`` in place of the encoder's input conv and records its input channels."""
    encoder.set_submodule(input_conv(encoder)[0], conv)
    encoder.in_channels = conv.in_channels


def fold_input_mapping(encoder: Encoder, task_name: str, task_options: dict) -> tuple[Encoder, str]:
    """A deep copy of ``encoder`` whose conv1 takes ImageNet-normalised RGB (``normalize_rgb(x)``) in
    place of what ``task_name`` fed it, and a one-line description of what was folded ("none" for RGB
    tasks). ``encoder`` itself is left untouched. ConfigError for an encoder behind a lens."""
    if encoder.lens is not None:
        # the lens is a network of its own between the input mapping and conv1: no conv can absorb it
        raise ConfigError(f"this {encoder.arch} was pretrained behind a lens (lens.enabled), which cannot be folded "
                          "into conv1: ssl-detect --frontend exact keeps it in front of the encoder; ssl-export "
                          "writes plain backbones only")
    mapping = task_input(task_name, task_options)
    channels = _CHANNELS[mapping.kind]
    if encoder.in_channels != channels:
        raise ValueError(
            f"task {task_name} trains encoders on {channels}-channel input ({mapping.kind}), but this "
            f"{encoder.arch} takes {encoder.in_channels} channels; foldable: 3 (RGB), 2 (Sobel), 1 (Lab L)")
    folded = copy.deepcopy(encoder)
    if mapping.kind == RGB:
        return folded, "none"
    if mapping.kind == PER_IMAGE:
        return folded, "none: per-image standardisation replaced by ImageNet mean/std, its dataset-level version (not exact)"
    if mapping.kind == KEPT_CHANNEL:
        name, conv = input_conv(folded)
        with torch.no_grad():
            dropped = [c for c in range(conv.in_channels) if c != mapping.kept_channel]
            conv.weight[:, dropped] = 0
        kept = _CHANNEL_NAMES[mapping.kept_channel]
        others = "/".join(_CHANNEL_NAMES[c] for c in dropped)
        return folded, (f"{kept} only: {name}'s {others} taps zeroed (exact: colour-drop evaluation feeds them zero), "
                        f"per-image standardisation replaced by ImageNet mean/std, its dataset-level version (not exact)")
    name, conv = input_conv(folded)
    if conv.groups != 1 or conv.dilation != (1, 1) or conv.padding_mode != "zeros" or isinstance(conv.padding, str):
        raise ValueError(f"{encoder.arch}'s input conv {name} is grouped, dilated or not zero-padded; it cannot be folded")
    if mapping.kind == SOBEL:
        new, description = _fold_sobel(conv)
    else:
        new, description = _fold_lightness(conv, _batchnorm_after(folded, name), mapping.pixel_map)
    replace_input_conv(folded, new)
    return folded, description


def _rgb_conv(conv: nn.Conv2d, kernel_size: tuple[int, int], padding: tuple[int, int]) -> nn.Conv2d:
    """A 3-input-channel conv like ``conv`` (outputs, stride, bias copied) with the given geometry."""
    rgb = nn.Conv2d(3, conv.out_channels, kernel_size, conv.stride, padding, bias=conv.bias is not None,
                    device=conv.weight.device, dtype=conv.weight.dtype)
    if conv.bias is not None:
        with torch.no_grad():
            rgb.bias.copy_(conv.bias)
    return rgb


def _fold_sobel(conv: nn.Conv2d) -> tuple[nn.Conv2d, str]:
    sobel_x = conv.weight.new_tensor(SOBEL_X)
    sobel = torch.stack([sobel_x, sobel_x.t()]).unsqueeze(1)  # 2 x 1 x 3 x 3: the x-gradient, then the y-gradient
    with torch.no_grad():
        # A transposed conv of the filters (as a batch) with the Sobel kernels is their full convolution:
        # the kernel of "conv1 after Sobel" as a filter on grey, (k + 2) x (k + 2).
        on_grey = F.conv_transpose2d(conv.weight, sobel)
    kernel = tuple(on_grey.shape[-2:])
    padding = (conv.padding[0] + 1, conv.padding[1] + 1)
    folded = _rgb_conv(conv, kernel, padding)
    with torch.no_grad():
        folded.weight.copy_(on_grey.expand(-1, 3, -1, -1) / 3)  # grey = mean of the normalised channels
    ring = max(math.ceil(p / s) for p, s in zip(conv.padding, conv.stride))
    where = "exact everywhere" if ring == 0 else f"exact away from a {ring}-output border, where conv1 zero-pads the Sobel maps"
    k = conv.kernel_size
    return folded, (f"sobel: grey + Sobel composed into conv1 ({k[0]}x{k[1]} -> {kernel[0]}x{kernel[1]}, padding "
                    f"{conv.padding[0]} -> {padding[0]}; {where})")


def lightness_affine(pixel_map: Callable[[Tensor], Tensor]) -> tuple[Tensor, float]:
    """``(weights, constant)`` with ``pixel_map(x) ~= constant + weights . normalize_rgb(x)`` per pixel, for a
    one-channel ``pixel_map`` of [0, 1] RGB (a LIGHTNESS mapping's: ``(L - 50) / 50``): the first-order Taylor
    expansion at the ImageNet mean colour (float64)."""
    with torch.enable_grad():
        mean = torch.tensor(IMAGENET_MEAN, dtype=torch.float64, requires_grad=True)
        value = pixel_map(mean.view(1, 3, 1, 1))[0, 0, 0, 0]
        (slope,) = torch.autograd.grad(value, mean)
    # x = mean + std * z, so the slope along normalised z is the RGB slope times std.
    return slope * torch.tensor(IMAGENET_STD, dtype=torch.float64), value.item()


def _batchnorm_after(encoder: Encoder, conv_name: str) -> nn.BatchNorm2d:
    parent_name, _, child = conv_name.rpartition(".")
    siblings = list(encoder.get_submodule(parent_name).named_children())
    index = [name for name, _ in siblings].index(child)
    following = siblings[index + 1][1] if index + 1 < len(siblings) else None
    if not isinstance(following, nn.BatchNorm2d) or following.running_mean is None:
        raise ValueError(f"{encoder.arch}'s input conv {conv_name} is not followed by a BatchNorm with running "
                         f"statistics, which the L fold needs for its constant term")
    return following


def _fold_lightness(conv: nn.Conv2d, norm: nn.BatchNorm2d,
                    pixel_map: Callable[[Tensor], Tensor]) -> tuple[nn.Conv2d, str]:
    weights, constant = lightness_affine(pixel_map)
    folded = _rgb_conv(conv, conv.kernel_size, conv.padding)
    with torch.no_grad():
        folded.weight.copy_(conv.weight * weights.to(conv.weight).view(1, 3, 1, 1))
        # conv(constant everywhere) = constant x filter sum; BN(y + c) with mean mu is BN(y) with mean mu - c.
        norm.running_mean.sub_(constant * conv.weight.sum(dim=(1, 2, 3)).to(norm.running_mean))
    r, g, b = weights.tolist()
    return folded, (f"lab-L: (L - 50) / 50 linearised at the ImageNet mean colour, conv1 spread over normalised "
                    f"R/G/B x {r:.3f}/{g:.3f}/{b:.3f}, constant {constant:+.4f} into bn (linear approximation, max "
                    f"error 0.54 and RMSE 0.03-0.09 per pixel on photos, against an input spanning -1..1)")
