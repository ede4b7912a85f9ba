"""Re-estimating a frozen encoder's BatchNorm statistics on the data it is evaluated on.

An encoder's running statistics describe what its task fed it in training: small tiles or patches,
one colour channel, other data. Probed on whole images of another data set, every BatchNorm then
normalises with statistics of another distribution, and the error compounds layer after layer.
Re-estimating them on the probe's training split (no label is used, so no split is leaked) removes
that mismatch while keeping every learned weight.
"""

from __future__ import annotations

import contextlib
from typing import Callable, ContextManager, Iterable, Iterator

import torch
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm

from selfsup.data.images import unit_float

BN_STATS = ("train", "checkpoint", "auto")

Statistics = dict[str, tuple[Tensor, Tensor]]  # BatchNorm module name -> (running mean, running variance)


def named_batchnorms(module: nn.Module) -> list[tuple[str, _BatchNorm]]:
    """Every BatchNorm of ``module`` that keeps running statistics, by module name."""
    return [(name, m) for name, m in module.named_modules() if isinstance(m, _BatchNorm) and m.track_running_stats]


def bn_statistics(module: nn.Module) -> Statistics:
    """A copy of the running statistics of every BatchNorm of ``module`` (to switch between sets)."""
    return {name: (bn.running_mean.clone(), bn.running_var.clone()) for name, bn in named_batchnorms(module)}


@torch.no_grad()
def load_bn_statistics(module: nn.Module, stats: Statistics) -> None:
    for name, bn in named_batchnorms(module):
        mean, var = stats[name]
        bn.running_mean.copy_(mean)
        bn.running_var.copy_(var)


def loader_images(loader: Iterable, on_bad: Callable[[list[str]], None]) -> Iterator[Tensor]:
    """The float [0, 1] images of a loader of uint8 ``Batch``es, empty batches skipped; unreadable files are
    reported to ``on_bad``."""
    for batch in loader:
        on_bad(batch.bad_files)
        if batch.images.numel():
            yield unit_float(batch.images)


@torch.no_grad()
def reestimate_bn_statistics(encoder: nn.Module, input_fn: Callable[[Tensor], Tensor], batches: Iterable[Tensor],
                             device: torch.device, autocast: Callable[[], ContextManager] = contextlib.nullcontext) -> int:
    """Sets every BatchNorm's running mean and (unbiased) variance to those of its input over all images of
    ``batches`` (float [0, 1] RGB), fed through ``input_fn`` (the forward inside ``autocast()``), and returns
    how many images were used.

    The pass runs the BatchNorms in training mode, each normalising with its batch's statistics, so that a
    deeper BatchNorm sees inputs like those it saw in training; the rest of the encoder stays in eval mode.
    The moments are summed in float64 over every image, so the result does not depend on the batching
    (the cumulative average of ``momentum=None`` would weight a short last batch like a full one). The
    encoder is left in eval mode.
    """
    norms = named_batchnorms(encoder)
    sums: dict[str, list] = {name: [0, 0.0, 0.0] for name, _ in norms}  # count, sum, sum of squares per channel

    def accumulate(name: str):
        def hook(module: nn.Module, inputs: tuple[Tensor, ...]) -> None:
            x = inputs[0].detach().double()
            dims = [0, *range(2, x.dim())]
            entry = sums[name]
            entry[0] += x.numel() // x.shape[1]
            entry[1] = entry[1] + x.sum(dims)
            entry[2] = entry[2] + x.square().sum(dims)
        return hook

    handles = [bn.register_forward_pre_hook(accumulate(name)) for name, bn in norms]
    encoder.eval()
    for _, bn in norms:
        bn.train()
    images_seen = 0
    try:
        for images in batches:
            # training-mode BatchNorm cannot normalise a single value per channel (1x1 maps of one image)
            if len(images) < 2:
                continue
            with autocast():
                encoder(input_fn(images.to(device)))
            images_seen += len(images)
    finally:
        for handle in handles:
            handle.remove()
        encoder.eval()
    if images_seen == 0:
        return 0
    for name, bn in norms:
        count, total, squares = sums[name]
        mean = total / count
        var = (squares - count * mean.square()) / max(count - 1, 1)
        bn.running_mean.copy_(mean.to(bn.running_mean.dtype))
        bn.running_var.copy_(var.clamp_min(0).to(bn.running_var.dtype))
    return images_seen
