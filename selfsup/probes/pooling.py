"""Pooling of a frozen layer's feature map to about 9k dimensions before the linear classifier.

Presets: ``rotnet`` — adaptive max-pool to a per-layer grid (Gidaris et al. 2018);
``deepcluster`` — fixed average-pool kernels for AlexNet at 224 px (Caron et al. 2018, VISSL);
``auto`` — any encoder: adaptive average-pool to the largest s x s grid with C*s*s <= 9216.
"""

from __future__ import annotations

import math

from torch import nn

from selfsup.errors import ConfigError
from selfsup.models import ALEXNET_LAYERS

TARGET_DIM = 9216
ROTNET_GRID = {"conv1": 12, "conv2": 7, "conv3": 5, "conv4": 6, "conv5": 6}
# (kernel, stride, padding) of the DeepCluster/VISSL average pools on the 224 px AlexNet maps
DEEPCLUSTER_AVGPOOL = {"conv1": (19, 4, 0), "conv2": (12, 3, 0), "conv3": (9, 1, 0), "conv4": (9, 1, 0), "conv5": (8, 1, 0)}
PRESETS = ("auto", "rotnet", "deepcluster", "global")


def auto_grid(channels: int, height: int, width: int, target: int = TARGET_DIM) -> int:
    side = max(1, math.isqrt(target // channels) if channels <= target else 1)
    return max(1, min(side, height, width))


def _out_side(size: int, kernel: int, stride: int, padding: int) -> int:
    return (size + 2 * padding - kernel) // stride + 1


def build_pool(preset: str, layer: str, shape: tuple[int, int, int]) -> tuple[nn.Module, int, str]:
    """Returns (pooling module ending in Flatten, output dimension, human description); ConfigError
    (``--pool``) when ``preset`` is unknown or does not fit the layer."""
    channels, height, width = shape
    if preset in ("rotnet", "deepcluster") and layer not in ALEXNET_LAYERS:
        raise ConfigError(f"--pool {preset} is invalid for layer {layer}: it is defined for AlexNet layers conv1..conv5; "
                          "use --pool auto")
    if preset == "rotnet":
        side = ROTNET_GRID[layer]
        return nn.Sequential(nn.AdaptiveMaxPool2d(side), nn.Flatten()), channels * side * side, f"adaptive max {side}x{side}"
    if preset == "deepcluster":
        kernel, stride, padding = DEEPCLUSTER_AVGPOOL[layer]
        if min(height, width) + 2 * padding < kernel:
            raise ConfigError(
                f"--pool deepcluster is invalid here: it needs the 224 px AlexNet maps, and {layer} is {height}x{width}; "
                "use --pool auto"
            )
        out_h, out_w = _out_side(height, kernel, stride, padding), _out_side(width, kernel, stride, padding)
        module = nn.Sequential(nn.AvgPool2d(kernel, stride, padding), nn.Flatten())
        return module, channels * out_h * out_w, f"avg k{kernel} s{stride} p{padding}"
    if preset == "global":
        # one value per channel: the low-dimensional probe, which a wide random layer cannot win by size alone
        return nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten()), channels, "global avg 1x1"
    if preset != "auto":
        raise ConfigError(f"--pool {preset} is invalid: allowed values are {', '.join(PRESETS)}")
    side = auto_grid(channels, height, width)
    return nn.Sequential(nn.AdaptiveAvgPool2d(side), nn.Flatten()), channels * side * side, f"adaptive avg {side}x{side}"
