"""ResNet encoders built from torchvision's blocks.

Taps: ``conv1`` (stem conv+BN+ReLU, before the max-pool) and ``res2`` .. ``res5``
(torchvision's ``layer1`` .. ``layer4``; the stem max-pool sits at the start of
``res2``). ``conv2`` .. ``conv5`` are accepted as aliases of ``res2`` .. ``res5``.

Tap shapes (C x H x W):

==========================  ==========  ==========  ==========  ==========  ==========
arch (input)                conv1       res2        res3        res4        res5
==========================  ==========  ==========  ==========  ==========  ==========
resnet18 (224 px)           64x112x112  64x56x56    128x28x28   256x14x14   512x7x7
resnet50 (224 px)           64x112x112  256x56x56   512x28x28   1024x14x14  2048x7x7
resnet18_small (32 px, w=1) 64x32x32    64x32x32    128x16x16   256x8x8     512x4x4
resnet50_small (32 px, w=1) 64x32x32    256x32x32   512x16x16   1024x8x8    2048x4x4
==========================  ==========  ==========  ==========  ==========  ==========

The ``*_small`` variants scale all channels by ``width`` (0.25 -> resnet18_small
16-16-32-64-128). Parameter names follow torchvision apart from the stage prefix,
so :meth:`ResNet.torchvision_state_dict` / :meth:`ResNet.load_torchvision_state_dict`
convert by renaming keys only.
"""
from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Mapping

import torch
import torchvision
from torch import Tensor, nn
from torchvision.models.resnet import BasicBlock, Bottleneck, conv1x1

from .base import Encoder

__all__ = ["ResNet", "resnet18", "resnet50", "resnet18_small", "resnet50_small"]

_ALIASES = {"conv2": "res2", "conv3": "res3", "conv4": "res4", "conv5": "res5"}

# Ours -> torchvision key prefixes. The stem Sequential holds (conv, bn, relu) and
# the stem max-pool (first child of res2) has no parameters or buffers.
_TO_TV = (("conv1.0.", "conv1."), ("conv1.1.", "bn1."), ("res2.", "layer1."), ("res3.", "layer2."),
          ("res4.", "layer3."), ("res5.", "layer4."))


def _rename(key: str, table: tuple[tuple[str, str], ...]) -> str:
    for src, dst in table:
        if key.startswith(src):
            return dst + key[len(src):]
    raise KeyError(f"unexpected ResNet state_dict key {key!r}")


class ResNet(Encoder):
    """Encoder over a ResNet stem and four residual stages."""

    def __init__(
        self,
        arch: str,
        stem: nn.Sequential,
        stem_pool: nn.Module | None,
        layers: tuple[nn.Sequential, nn.Sequential, nn.Sequential, nn.Sequential],
        in_channels: int,
    ) -> None:
        res2: nn.Module = layers[0]
        if stem_pool is not None:
            # Naming the pool keeps the blocks at res2.0, res2.1, ... like torchvision's layer1.N.
            res2 = nn.Sequential(OrderedDict([("pool", stem_pool), *((str(i), b) for i, b in enumerate(layers[0]))]))
        stages = OrderedDict(conv1=stem, res2=res2, res3=layers[1], res4=layers[2], res5=layers[3])
        channels = {"conv1": stem[0].out_channels}
        for name, layer in zip(("res2", "res3", "res4", "res5"), layers):
            last = layer[-1]
            channels[name] = (last.bn3 if isinstance(last, Bottleneck) else last.bn2).num_features
        super().__init__(arch, in_channels, stages, channels, _ALIASES)

    def torchvision_state_dict(self) -> OrderedDict[str, Tensor]:
        """This encoder's state with torchvision ResNet key names (no ``fc.*``).

        For ``resnet18``/``resnet50`` the result loads into
        ``torchvision.models.resnetXX(weights=None)`` with ``strict=False``, leaving only
        ``fc.weight``/``fc.bias`` missing.
        """
        return OrderedDict((_rename(k, _TO_TV), v) for k, v in self.state_dict().items())

    def load_torchvision_state_dict(self, state_dict: Mapping[str, Tensor], strict: bool = True) -> None:
        """Load a torchvision-layout ResNet state dict; ``fc.*`` entries are ignored."""
        from_tv = tuple((dst, src) for src, dst in _TO_TV)
        ours = OrderedDict((_rename(k, from_tv), v) for k, v in state_dict.items() if not k.startswith("fc."))
        self.load_state_dict(ours, strict=strict)


def _init_weights(module: nn.Module) -> None:
    # torchvision's ResNet.__init__ initialises this way; its blocks do not self-initialise.
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


def _adapt_input_conv(weight: Tensor, in_channels: int) -> Tensor:
    """Map RGB stem filters to ``in_channels`` inputs keeping the response scale (as timm does)."""
    if in_channels == 1:
        return weight.sum(dim=1, keepdim=True)
    repeats = math.ceil(in_channels / weight.shape[1])
    return weight.repeat(1, repeats, 1, 1)[:, :in_channels] * (weight.shape[1] / in_channels)


def _imagenet_resnet(arch: str, in_channels: int, pretrained: bool) -> ResNet:
    if in_channels < 1:
        raise ValueError(f"in_channels must be >= 1, got {in_channels}")
    tv = getattr(torchvision.models, arch)(weights=None)
    if pretrained:
        # The classic supervised baseline of the pretext-task literature (V1, not the newer V2 recipe).
        weights = torchvision.models.get_model_weights(arch).IMAGENET1K_V1
        # Looked up on torch.hub at call time so tests can intercept it.
        tv.load_state_dict(torch.hub.load_state_dict_from_url(weights.url, progress=True, check_hash=True))
    if in_channels != 3:
        old = tv.conv1
        tv.conv1 = nn.Conv2d(in_channels, old.out_channels, old.kernel_size, old.stride, old.padding, bias=False)
        if pretrained:
            with torch.no_grad():
                tv.conv1.weight.copy_(_adapt_input_conv(old.weight, in_channels))
        else:
            _init_weights(tv.conv1)
    stem = nn.Sequential(tv.conv1, tv.bn1, tv.relu)
    return ResNet(arch, stem, tv.maxpool, (tv.layer1, tv.layer2, tv.layer3, tv.layer4), in_channels)


def _make_layer(
    block: type[BasicBlock | Bottleneck], inplanes: int, planes: int, blocks: int, stride: int
) -> nn.Sequential:
    # Mirrors torchvision's ResNet._make_layer (projection shortcut on shape change), which
    # is a method tied to the fixed 64-channel ImageNet widths.
    downsample = None
    if stride != 1 or inplanes != planes * block.expansion:
        out = planes * block.expansion
        downsample = nn.Sequential(conv1x1(inplanes, out, stride), nn.BatchNorm2d(out))
    layers = [block(inplanes, planes, stride, downsample)]
    layers += [block(planes * block.expansion, planes) for _ in range(1, blocks)]
    return nn.Sequential(*layers)


def _small_resnet(
    arch: str, block: type[BasicBlock | Bottleneck], depths: tuple[int, ...], in_channels: int, width: float
) -> ResNet:
    if in_channels < 1:
        raise ValueError(f"in_channels must be >= 1, got {in_channels}")
    if width <= 0:
        raise ValueError(f"width must be positive, got {width}")
    base = max(1, round(64 * width))
    # 3x3 stride-1 stem without max-pool: 32 px inputs keep a 4x4 map at res5.
    stem = nn.Sequential(
        nn.Conv2d(in_channels, base, 3, stride=1, padding=1, bias=False), nn.BatchNorm2d(base), nn.ReLU(inplace=True)
    )
    layers = []
    inplanes = base
    for i, depth in enumerate(depths):
        planes = base * 2**i
        layers.append(_make_layer(block, inplanes, planes, depth, stride=1 if i == 0 else 2))
        inplanes = planes * block.expansion
    encoder = ResNet(arch, stem, None, tuple(layers), in_channels)
    _init_weights(encoder)
    return encoder


def resnet18(in_channels: int = 3, pretrained: bool = False) -> ResNet:
    """torchvision ResNet-18 (ImageNet stem). ``pretrained`` downloads torchvision's ImageNet weights."""
    return _imagenet_resnet("resnet18", in_channels, pretrained)


def resnet50(in_channels: int = 3, pretrained: bool = False) -> ResNet:
    """torchvision ResNet-50 (ImageNet stem). ``pretrained`` downloads torchvision's ImageNet weights."""
    return _imagenet_resnet("resnet50", in_channels, pretrained)


def resnet18_small(in_channels: int = 3, width: float = 1.0) -> ResNet:
    """ResNet-18 with a CIFAR stem (3x3 s1 conv, no max-pool) for 32-96 px images."""
    return _small_resnet("resnet18_small", BasicBlock, (2, 2, 2, 2), in_channels, width)


def resnet50_small(in_channels: int = 3, width: float = 1.0) -> ResNet:
    """ResNet-50 with a CIFAR stem (3x3 s1 conv, no max-pool) for 32-96 px images."""
    return _small_resnet("resnet50_small", Bottleneck, (3, 4, 6, 3), in_channels, width)
