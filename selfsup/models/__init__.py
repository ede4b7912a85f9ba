"""Backbone encoders and their factory.

Nothing here touches the network unless ``pretrained=True`` is passed for an
ImageNet ResNet.
"""
from __future__ import annotations

import inspect
from collections.abc import Callable

from selfsup.errors import ConfigError

from .alexnet import ALEXNET_LAYERS, alexnet, alexnet_deepcluster, alexnet_jigsaw, alexnet_small
from .base import Encoder, use_channels_last
from .resnet import resnet18, resnet18_small, resnet50, resnet50_small

__all__ = ["ALEXNET_LAYERS", "Encoder", "ARCHS", "build_encoder", "check_arch", "use_channels_last"]

ARCHS: dict[str, Callable[..., Encoder]] = {
    "alexnet": alexnet,
    "alexnet_deepcluster": alexnet_deepcluster,
    "alexnet_jigsaw": alexnet_jigsaw,
    "alexnet_small": alexnet_small,
    "resnet18": resnet18,
    "resnet50": resnet50,
    "resnet18_small": resnet18_small,
    "resnet50_small": resnet50_small,
}


def check_arch(arch: str, field: str = "model.arch") -> None:
    """A ConfigError naming ``field`` unless ``arch`` is the name of an architecture."""
    if arch not in ARCHS:
        raise ConfigError(f"{field} = {arch!r} is invalid: allowed values are {', '.join(ARCHS)}")


def build_encoder(arch: str, *, in_channels: int = 3, width: float | None = None, pretrained: bool = False) -> Encoder:
    """Build the encoder named ``arch``; an unknown ``arch`` or an option it does not take is a ConfigError.

    ``width=None`` keeps the architecture's default width. ``width`` is accepted by the
    AlexNets and the ``*_small`` ResNets; ``pretrained`` only by ``resnet18``/``resnet50``
    (it downloads torchvision's ImageNet weights).
    """
    if arch not in ARCHS:
        raise ConfigError(f"unknown arch {arch!r}; available: {', '.join(ARCHS)}")
    constructor = ARCHS[arch]
    params = inspect.signature(constructor).parameters
    kwargs: dict[str, object] = {"in_channels": in_channels}
    if width is not None:
        if "width" not in params:
            with_width = [a for a, fn in ARCHS.items() if "width" in inspect.signature(fn).parameters]
            raise ConfigError(f"width {width} (--width, model.width) is invalid for arch {arch!r}, whose width is "
                              f"fixed; a width is taken by: {', '.join(with_width)}")
        kwargs["width"] = width
    if pretrained:
        if "pretrained" not in params:
            with_weights = [a for a, fn in ARCHS.items() if "pretrained" in inspect.signature(fn).parameters]
            raise ConfigError(f"no pretrained weights for arch {arch!r}; available for: {', '.join(with_weights)}")
        kwargs["pretrained"] = True
    return constructor(**kwargs)
