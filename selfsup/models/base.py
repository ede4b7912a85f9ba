"""Encoder interface shared by every backbone family.

An encoder is an ordered chain of stages, one per *tap*: the output of stage
``i`` is the feature map a probe or pretext head may read under that stage's
name. Stages are registered directly on the encoder under their tap names so
that ``state_dict`` keys read like ``conv1.0.weight`` or ``res2.0.conv1.weight``.
"""
from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm

from selfsup.errors import CheckpointError, ConfigError
from selfsup.models.lens import Lens

__all__ = ["Encoder", "check_input_size", "freeze_layers", "load_weights", "use_channels_last"]


class Encoder(nn.Module):
    """A backbone exposing named intermediate feature maps ("taps").

    Args:
        arch: Name the encoder was built with (recorded for checkpoints/logs).
        in_channels: Number of input image channels.
        stages: Stage modules keyed by canonical tap name, in forward order.
        channels: Output channels of each stage, keyed like ``stages``.
        aliases: Extra accepted tap names, mapping alias -> canonical name.

    ``lens``: None, or the :class:`~selfsup.models.lens.Lens` a pretraining with ``lens.enabled`` put in front
    of the first stage; every forward pass goes through it, so probes see what pretraining saw.

    ``trains_faster_channels_last_on_cpu``: whether a training step on a CPU is faster in the channels_last
    memory format (see `use_channels_last`); each family sets what was measured for it.
    """

    trains_faster_channels_last_on_cpu: bool = False

    def __init__(
        self,
        arch: str,
        in_channels: int,
        stages: Mapping[str, nn.Module],
        channels: Mapping[str, int],
        aliases: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__()
        if set(channels) != set(stages):
            raise ValueError(f"channels keys {sorted(channels)} do not match stages {list(stages)}")
        aliases = dict(aliases or {})
        for alias, target in aliases.items():
            if target not in stages or alias in stages:
                raise ValueError(f"bad alias {alias!r} -> {target!r} for stages {list(stages)}")
        self.arch = arch
        self.in_channels = in_channels
        self.layer_names: tuple[str, ...] = tuple(stages)
        self.aliases: dict[str, str] = aliases
        self._channels = {name: int(channels[name]) for name in self.layer_names}
        # Number of leading stages fixed by freeze_through (0 = none).
        self._num_frozen = 0
        for name, stage in stages.items():
            self.add_module(name, stage)
        self.lens: Lens | None
        self.register_module("lens", None)

    def canonical(self, name: str) -> str:
        """Resolve ``name`` (canonical or alias) to its canonical tap name."""
        if name in self._channels:
            return name
        if name in self.aliases:
            return self.aliases[name]
        valid = list(self.layer_names) + [f"{a} (= {c})" for a, c in self.aliases.items()]
        raise ValueError(f"unknown layer {name!r} for {self.arch}; valid names: {', '.join(valid)}")

    def forward(self, x: Tensor) -> Tensor:
        """Return the unpooled feature map of the last tap."""
        if self.lens is not None:
            x = self.lens(x)
        for name in self.layer_names:
            x = getattr(self, name)(x)
        return x

    def forward_taps(self, x: Tensor, taps: Sequence[str]) -> dict[str, Tensor]:
        """Run one forward pass and return ``{tap: feature map}`` for each requested tap.

        Keys are spelled as the caller spelled them (aliases included). Stages after
        the deepest requested tap are not computed, so probing ``conv2`` of a deep
        network costs only the first two stages.
        """
        if isinstance(taps, str):
            raise TypeError("taps must be a sequence of layer names, not a single string")
        if not taps:
            raise ValueError("forward_taps needs at least one layer name")
        resolved = {tap: self.canonical(tap) for tap in taps}
        last = max(self.layer_names.index(c) for c in resolved.values())
        features: dict[str, Tensor] = {}
        if self.lens is not None:
            x = self.lens(x)
        for name in self.layer_names[: last + 1]:
            x = getattr(self, name)(x)
            features[name] = x
        return {tap: features[c] for tap, c in resolved.items()}

    def out_channels(self, name: str) -> int:
        """Channels of the feature map at tap ``name``."""
        return self._channels[self.canonical(name)]

    def feature_shapes(self, image_size: int) -> dict[str, tuple[int, int, int]]:
        """``(C, H, W)`` of every canonical tap for a square ``image_size`` input.

        Computed by a dummy forward in eval mode so BatchNorm running stats are not
        touched; the previous train/eval mode is restored afterwards.
        """
        ref = next(self.parameters())
        x = torch.zeros(1, self.in_channels, image_size, image_size, device=ref.device, dtype=ref.dtype)
        was_training = self.training
        self.eval()
        try:
            with torch.no_grad():
                feats = self.forward_taps(x, self.layer_names)
        finally:
            self.train(was_training)
        return {name: tuple(f.shape[1:]) for name, f in feats.items()}

    def freeze_through(self, name: str) -> None:
        """Freeze every stage up to and including ``name``.

        Frozen parameters get ``requires_grad=False`` and frozen BatchNorms stay in
        eval mode across later ``.train()`` calls, so their running statistics are
        not updated by pretext training. Freezing is cumulative: a later call with a
        shallower name does not unfreeze anything. A lens, in front of the first stage, is frozen with it.
        """
        depth = self.layer_names.index(self.canonical(name)) + 1
        self._num_frozen = max(self._num_frozen, depth)
        if self.lens is not None:
            self.lens.requires_grad_(False)
        for stage in self.layer_names[: self._num_frozen]:
            for p in getattr(self, stage).parameters():
                p.requires_grad_(False)
        self.train(self.training)

    def train(self, mode: bool = True) -> Encoder:
        super().train(mode)
        for stage in self.layer_names[: self._num_frozen]:
            for m in getattr(self, stage).modules():
                if isinstance(m, _BatchNorm):
                    m.eval()
        return self


def freeze_layers(encoder: Encoder, freeze: str) -> None:
    """Keeps the stages up to ``freeze`` fixed (``none``: everything trains)."""
    if freeze == "none":
        return
    try:
        encoder.canonical(freeze)
    except ValueError:
        allowed = ["none", *encoder.layer_names, *encoder.aliases]
        raise ConfigError(f"--freeze {freeze!r} is invalid for {encoder.arch}: allowed values are "
                          f"{', '.join(allowed)}") from None
    encoder.freeze_through(freeze)


# What torch says when a conv or pool window is larger than its (padded) input.
_TOO_SMALL = ("Output size is too small", "Kernel size can't be greater than actual input size")


def check_input_size(encoder: Encoder, image_size: int, option: str) -> None:
    """ConfigError naming ``option`` when a square ``image_size`` input shrinks to nothing before the
    encoder's last layer (torch reports that as a RuntimeError deep in the forward pass)."""
    try:
        encoder.feature_shapes(image_size)
    except RuntimeError as exc:
        if not any(text in str(exc) for text in _TOO_SMALL):
            raise
        raise ConfigError(f"{option} {image_size} is too small for {encoder.arch}: its layers shrink the input to "
                          "nothing; give a larger size") from None


# How torch's load_state_dict reports a tensor of the wrong shape, and what such a file is.
_SIZE_MISMATCH = re.compile(r"size mismatch for (\S+): copying a param with shape torch\.Size\(\[([\d, ]*)\]\) from "
                            r"checkpoint, the shape in current model is torch\.Size\(\[([\d, ]*)\]\)")
_DAMAGED = "the file is damaged or of another architecture"


def _shape(text: str) -> str:
    return "x".join(part.strip() for part in text.split(",") if part.strip()) or "a scalar"


def load_weights(module: nn.Module, weights: Any, source: str, key_prefix: str = "") -> None:
    """Loads ``weights`` into ``module`` strictly. A file of another architecture, or a damaged one, is a
    CheckpointError (one line) naming ``source`` (e.g. ``checkpoint PATH``) and the first entry that is
    missing, unexpected or of the wrong shape, as the file spells it (``key_prefix`` + the module's key)."""
    if not isinstance(weights, Mapping):
        raise CheckpointError(f"{source} holds a {type(weights).__name__} where the weights should be, not a "
                              "state dict")
    try:
        # strict=False returns the missing and unexpected keys instead of one long message; a wrong
        # shape or a value that is no tensor still raises
        result = module.load_state_dict(weights, strict=False)
    except RuntimeError as exc:
        found = _SIZE_MISMATCH.search(str(exc))
        if found:
            key, theirs, ours = found.groups()
            detail = f"{key_prefix}{key} is {_shape(theirs)} in the file but {_shape(ours)} in the model"
        else:
            detail = next((line.strip() for line in str(exc).splitlines()[1:] if line.strip()), str(exc))
        raise CheckpointError(f"{source} does not fit the model it describes: {detail}; {_DAMAGED}") from None
    missing, unexpected = result.missing_keys, result.unexpected_keys
    if missing:
        more = f" (nor {len(missing) - 1} other entries)" if len(missing) > 1 else ""
        raise CheckpointError(f"{source} does not fit the model it describes: it has no {key_prefix}{missing[0]}"
                              f"{more}; {_DAMAGED}")
    if unexpected:
        more = f" (and {len(unexpected) - 1} more)" if len(unexpected) > 1 else ""
        raise CheckpointError(f"{source} does not fit the model it describes: it has an unexpected entry "
                              f"{key_prefix}{unexpected[0]}{more}; {_DAMAGED}")


def use_channels_last(encoder: Encoder, device: torch.device, *, training: bool) -> bool:
    """Whether ``encoder`` runs faster in the channels_last memory format on ``device``: on CUDA always (bf16
    convolutions); on a CPU for inference always (max pooling is about 10x faster there, and convolutions no
    slower), for training when the encoder says so (an AlexNet step at 32 px: 1.36x faster at bf16; a ResNet-18
    step: 7% slower; 2 cores, torch 2.14)."""
    if device.type == "cuda" or not training:
        return True
    return encoder.trains_faster_channels_last_on_cpu
