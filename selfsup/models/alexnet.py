"""AlexNet encoders with BatchNorm, as used by the classic pretext-task papers.

Every conv block is ``conv -> BatchNorm -> ReLU`` and its tap is the post-ReLU
output *before* any max-pool. The pools that follow conv1 and conv2 in the
original networks are placed at the start of the conv2 and conv3 stages, and the
pool after conv5 is left to the head / probe, so the conv5 tap is unpooled. The
linear-probe pooling presets rely on the resulting shapes.

Tap shapes (C x H x W) at width 1.0:

==========================  =========  ==========  ==========  ==========  ==========
arch (input)                conv1      conv2       conv3       conv4       conv5
==========================  =========  ==========  ==========  ==========  ==========
alexnet (224 px)            64x55x55   192x27x27   384x13x13   256x13x13   256x13x13
alexnet_deepcluster (224)   96x55x55   256x27x27   384x13x13   384x13x13   256x13x13
alexnet_jigsaw (64 px tile) 96x27x27   256x13x13   384x6x6     384x6x6     256x6x6
alexnet_small (32 px)       64x32x32   192x16x16   384x8x8     256x8x8     256x8x8
==========================  =========  ==========  ==========  ==========  ==========

``alexnet_small`` defaults to width 0.5 (32-96-192-128-128 channels).
"""
from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

from torch import nn

from .base import Encoder

__all__ = ["AlexNet", "alexnet", "alexnet_deepcluster", "alexnet_jigsaw", "alexnet_small"]

ALEXNET_LAYERS = ("conv1", "conv2", "conv3", "conv4", "conv5")  # every AlexNet variant's layer names


@dataclass(frozen=True)
class _Geometry:
    """Spatial hyper-parameters; channels come separately so width can scale them."""

    conv1_kernel: int
    conv1_stride: int
    conv1_padding: int
    conv2_kernel: int
    pool_kernel: int
    pool_padding: int


_IMAGENET = _Geometry(conv1_kernel=11, conv1_stride=4, conv1_padding=2, conv2_kernel=5, pool_kernel=3, pool_padding=0)
# Noroozi & Favaro's tile tower: stride-2 conv1 without padding on 64 px tiles.
_JIGSAW = _Geometry(conv1_kernel=11, conv1_stride=2, conv1_padding=0, conv2_kernel=5, pool_kernel=3, pool_padding=0)
# Stride-1 5x5 stem and padded pools keep 8x8 maps at conv3-5 for 32 px inputs.
_SMALL = _Geometry(conv1_kernel=5, conv1_stride=1, conv1_padding=2, conv2_kernel=5, pool_kernel=3, pool_padding=1)

_ROTNET_CHANNELS = (64, 192, 384, 256, 256)
_DEEPCLUSTER_CHANNELS = (96, 256, 384, 384, 256)


def _scale(channels: tuple[int, ...], width: float) -> tuple[int, ...]:
    if width <= 0:
        raise ValueError(f"width must be positive, got {width}")
    return tuple(max(1, round(c * width)) for c in channels)


def _conv_block(
    in_ch: int, out_ch: int, kernel: int, stride: int, padding: int, pool: nn.Module | None
) -> nn.Sequential:
    # Named children keep state_dict keys as conv2.0.weight (conv) / conv2.1.* (BN)
    # whether or not the stage starts with a pool (which has no parameters).
    layers: OrderedDict[str, nn.Module] = OrderedDict()
    if pool is not None:
        layers["pool"] = pool
    # The conv bias would be cancelled by the following BatchNorm's mean subtraction.
    layers["0"] = nn.Conv2d(in_ch, out_ch, kernel, stride=stride, padding=padding, bias=False)
    layers["1"] = nn.BatchNorm2d(out_ch)
    layers["2"] = nn.ReLU(inplace=True)
    return nn.Sequential(layers)


class AlexNet(Encoder):
    """BatchNorm AlexNet with taps ``conv1`` .. ``conv5`` (post-ReLU, pre-pool)."""

    # its max pools dominate a CPU step in the default layout (see use_channels_last)
    trains_faster_channels_last_on_cpu = True

    def __init__(self, arch: str, geometry: _Geometry, channels: tuple[int, ...], in_channels: int = 3) -> None:
        if in_channels < 1:
            raise ValueError(f"in_channels must be >= 1, got {in_channels}")
        g = geometry

        def pool() -> nn.Module:
            return nn.MaxPool2d(g.pool_kernel, stride=2, padding=g.pool_padding)

        c1, c2, c3, c4, c5 = channels
        stages = OrderedDict(
            conv1=_conv_block(in_channels, c1, g.conv1_kernel, g.conv1_stride, g.conv1_padding, None),
            conv2=_conv_block(c1, c2, g.conv2_kernel, 1, g.conv2_kernel // 2, pool()),
            conv3=_conv_block(c2, c3, 3, 1, 1, pool()),
            conv4=_conv_block(c3, c4, 3, 1, 1, None),
            conv5=_conv_block(c4, c5, 3, 1, 1, None),
        )
        super().__init__(arch, in_channels, stages, dict(zip(ALEXNET_LAYERS, channels)))
        self._init_weights()

    def _init_weights(self) -> None:
        # Same scheme as torchvision's ResNets, so all families start comparably.
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)


def alexnet(in_channels: int = 3, width: float = 1.0) -> AlexNet:
    """RotNet (Gidaris et al. 2018) BN AlexNet, 64-192-384-256-256, for 224 px inputs."""
    return AlexNet("alexnet", _IMAGENET, _scale(_ROTNET_CHANNELS, width), in_channels)


def alexnet_deepcluster(in_channels: int = 3, width: float = 1.0) -> AlexNet:
    """DeepCluster (Caron et al. 2018) ungrouped BN AlexNet, 96-256-384-384-256, for 224 px."""
    return AlexNet("alexnet_deepcluster", _IMAGENET, _scale(_DEEPCLUSTER_CHANNELS, width), in_channels)


def alexnet_jigsaw(in_channels: int = 3, width: float = 1.0) -> AlexNet:
    """Jigsaw (Noroozi & Favaro 2016) tile tower, ungrouped, for 64 px tiles.

    At 64 px: conv1 96x27x27, conv2 256x13x13, conv3 384x6x6, conv4 384x6x6,
    conv5 256x6x6 (a 3x3 s2 pool on conv5 then gives the paper's 3x3x256 = 2304-d fc6 input).
    """
    return AlexNet("alexnet_jigsaw", _JIGSAW, _scale(_DEEPCLUSTER_CHANNELS, width), in_channels)


def alexnet_small(in_channels: int = 3, width: float = 0.5) -> AlexNet:
    """RotNet-shaped AlexNet for 32-96 px images (CIFAR, the 32/64 px demos) on a CPU.

    At 32 px: conv1 Cx32x32, conv2 16x16, conv3-5 8x8; width 0.5 gives 32-96-192-128-128.
    """
    return AlexNet("alexnet_small", _SMALL, _scale(_ROTNET_CHANNELS, width), in_channels)
