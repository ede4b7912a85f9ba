"""Data-dependent rescaling of a network's layers: the *within-layer* step of Krähenbühl, Doersch,
Donahue & Darrell, "Data-dependent Initializations of Convolutional Neural Networks" (ICLR 2016).

What is implemented: the network's *units* are visited in forward order; for each, the pre-activation
output is measured per channel over a fixed batch of training images (mean mu_c and standard deviation
sigma_c over images and positions), then the unit is rescaled so that this output has, per channel, mean
``target_mean`` (default 0) and standard deviation 1 on that batch. Units measured later see the
already-rescaled earlier ones, as in the paper. After the pass every unit's output, measured again on
the same batch, has exactly those statistics (up to float rounding); the test suite checks this.

A unit is a ``Conv2d``/``Linear`` layer, with the normalisation that directly follows it if any:

* layer alone (it must have a bias): output z = W x + b; ``W_c <- W_c / sigma_c``,
  ``b_c <- (b_c - mu_c) / sigma_c + target_mean`` (the paper's rule);
* layer -> norm (``torchvision.ops.FrozenBatchNorm2d``, or a BatchNorm measured in eval mode): the norm
  is a fixed per-channel affine ``y = a z + (beta - a m)`` with ``a = gamma / sqrt(var + eps)``. The
  *layer's* weights (and bias) are divided by sigma_c as above, and the norm's ``beta`` takes the shift,
  ``beta_c <- (beta_c - a_c m_c - mu_c) / sigma_c + target_mean + a_c m_c``. Scaling the weights rather
  than ``gamma`` keeps the gradient scale the paper intends: through a fixed identity-like norm (a random
  encoder's) it is exactly the paper's rescaling; multiplying ``gamma`` by a large 1/sigma instead
  multiplies the step of every weight behind it (a random AlexNet diverged at lr 0.02).

A BatchNorm that trains in train mode renormalises every batch and undoes the scaling: rescale networks
whose norms are frozen. Channels whose output is constant on the batch (sigma_c below ``eps``, e.g. a dead
ReLU upstream) are only shifted, not scaled, so their weights do not blow up.

Not implemented: the paper's *between-layer* step (equalising the rate at which weights change across
layers, the ``-cs`` gradient-ratio calibration of its code) and its PCA/k-means initialisations of random
weights. In residual blocks each branch's last unit is standardised like any other, which changes the
balance between the branch and the identity path.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm
from torchvision.ops.misc import FrozenBatchNorm2d

__all__ = ["Unit", "UnitStats", "rescalable_units", "measure_outputs", "rescale_within_layer"]

NORMS = (_BatchNorm, FrozenBatchNorm2d)
LAYERS = (nn.Conv2d, nn.Linear)


@dataclass
class Unit:
    """A conv/linear layer and the norm right after it (None if none); ``name`` is the layer's."""

    name: str
    layer: nn.Conv2d | nn.Linear
    norm: nn.Module | None

    @property
    def output(self) -> nn.Module:
        """The module whose output is the unit's pre-activation."""
        return self.norm if self.norm is not None else self.layer


@dataclass
class UnitStats:
    """Per-channel output statistics of one unit on the rescaling batch, before it was rescaled."""

    name: str
    mean: Tensor
    std: Tensor


def rescalable_units(module: nn.Module) -> list[Unit]:
    """The units of ``module`` in registration order (the forward order of Sequential-built encoders):
    every conv/linear followed by an affine norm with running statistics, and every biased conv/linear
    followed by no norm."""
    named = [(name, m) for name, m in module.named_modules() if isinstance(m, NORMS + LAYERS)]
    units = []
    for position, (name, m) in enumerate(named):
        if not isinstance(m, LAYERS):
            continue
        following = named[position + 1][1] if position + 1 < len(named) else None
        if isinstance(following, NORMS):
            if following.weight is not None and following.running_mean is not None:
                units.append(Unit(name, m, following))
        elif m.bias is not None:
            units.append(Unit(name, m, None))
    return units


def _channel_stats(output: Tensor) -> tuple[Tensor, Tensor]:
    # channels are dimension 1 for conv maps (N x C x H x W) and linear outputs (N x C)
    values = output.detach().double().transpose(0, 1).reshape(output.shape[1], -1)
    return values.mean(dim=1), values.std(dim=1, unbiased=False)


@torch.no_grad()
def measure_outputs(units: Sequence[Unit], run: Callable[[], object]) -> dict[str, tuple[Tensor, Tensor]]:
    """Per-channel (mean, std) of each unit's pre-activation output during one call of ``run`` (a
    forward pass), keyed by unit name."""
    captured: dict[str, tuple[Tensor, Tensor]] = {}
    hooks = [unit.output.register_forward_hook(
        lambda _module, _inputs, out, name=unit.name: captured.__setitem__(name, _channel_stats(out)))
        for unit in units]
    try:
        run()
    finally:
        for hook in hooks:
            hook.remove()
    missing = [unit.name for unit in units if unit.name not in captured]
    if missing:
        raise ValueError(f"the rescaling forward pass never reached {', '.join(missing)}")
    return captured


def _rescale(unit: Unit, mean: Tensor, std: Tensor, target_mean: float, eps: float) -> None:
    scale = torch.where(std > eps, std, torch.ones_like(std))
    layer = unit.layer
    shape = (-1,) + (1,) * (layer.weight.dim() - 1)
    layer.weight.copy_((layer.weight.double() / scale.view(shape)).to(layer.weight.dtype))
    if unit.norm is None:
        layer.bias.copy_(((layer.bias.double() - mean) / scale + target_mean).to(layer.bias.dtype))
        return
    if layer.bias is not None:
        layer.bias.copy_((layer.bias.double() / scale).to(layer.bias.dtype))
    norm = unit.norm
    gain = norm.weight.double() / torch.sqrt(norm.running_var.double() + norm.eps)
    centre = gain * norm.running_mean.double()
    norm.bias.copy_(((norm.bias.double() - centre - mean) / scale + target_mean + centre).to(norm.bias.dtype))


@torch.no_grad()
def rescale_within_layer(model: nn.Module, units: Sequence[Unit], run: Callable[[], object], *,
                         target_mean: float = 0.0, eps: float = 1e-5) -> list[UnitStats]:
    """Rescales ``units`` (of ``model``, in forward order) as the module docstring says, measuring each on
    a fresh call of ``run`` (a forward pass of ``model`` on the rescaling batch) with ``model`` in eval
    mode; modes are restored afterwards. Returns each unit's statistics before its rescaling."""
    for unit in units:
        if unit.norm is None and unit.layer.bias is None:
            raise ValueError(f"unit {unit.name} has neither a bias nor a norm to shift its mean")
    modes = {m: m.training for m in model.modules()}
    model.eval()
    before = []
    try:
        for unit in units:
            mean, std = measure_outputs([unit], run)[unit.name]
            before.append(UnitStats(unit.name, mean.float(), std.float()))
            _rescale(unit, mean, std, target_mean, eps)
    finally:
        for module, training in modes.items():
            module.training = training
    return before
