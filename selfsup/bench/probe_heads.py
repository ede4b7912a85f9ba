"""The probe's head step against its memory-traffic floor, and the encoder's forward pass to its last layer against
the pass to one layer: what ``ssl-bench probe`` sets beside its ``--freeze all`` / one-layer ratio, so that a
reader can tell how much of it any head kernel could win, and which part no head can.

A head step on cached features does little arithmetic per value (10 or so classes): its time is the traffic of
the batch's features, which it reads at least three times: gathering its rows from the cache, the forward
product and the weight-gradient product. :func:`measure_head_steps` times that floor (the three operations
alone, no autograd, no optimiser) against the step as :func:`selfsup.probes.linear.train_heads` takes it, on
random features of each run's layer widths, the runs alternated in one process.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Mapping

import torch
import torch.nn.functional as F
from torch import nn

from selfsup.models import use_channels_last
from selfsup.probes.frozen import load_frozen
from selfsup.probes.linear import LinearHeads, cached_batches, fix_batchnorm_statistics


@dataclass
class HeadSteps:
    """ms per step of one run's heads, and of the three passes over its batch that no step can skip."""

    step_ms: float
    floor_ms: float


class _Run:
    """Heads on random cached features of ``dims`` (layer -> width), trained as train_heads trains them."""

    def __init__(self, dims: Mapping[str, int], num_classes: int, batch_size: int, rows: int,
                 dtype: torch.dtype, seed: int) -> None:
        gen = torch.Generator().manual_seed(seed)
        self.features = {layer: torch.randn(rows, width, generator=gen).to(torch.bfloat16) for layer, width in dims.items()}
        labels = torch.randint(num_classes, (rows,), generator=gen)
        self.heads = LinearHeads({layer: nn.Identity() for layer in dims}, dict(dims), num_classes, dtype)
        fix_batchnorm_statistics(self.heads, self.features)
        self.heads.train()
        for head in self.heads.heads.values():
            head[0].eval()  # fixed statistics, as --bn-stats gives them to every probe
        self.optimizer = torch.optim.SGD(self.heads.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
        self.batches = cached_batches(self.features, labels, batch_size, torch.device("cpu"), shuffle_seed=seed)
        # the floor's batches: other rows at each step, as the steps' (a batch read again would be in the cache)
        self.floor_batches = torch.randperm(rows, generator=gen)[: rows - rows % batch_size].view(-1, batch_size)
        self.dtype = dtype
        self.weights = {layer: head[1].weight.detach().to(dtype) for layer, head in self.heads.heads.items()}
        self.logit_grads = torch.randn(batch_size, num_classes, generator=gen).to(dtype)

    def steps(self) -> int:
        """One epoch of head steps; the number of steps."""
        count = 0
        for pooled, labels in self.batches(0):
            loss = sum(F.cross_entropy(logits, labels) for logits in self.heads(pooled).values())
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
            count += 1
        return count

    @torch.no_grad()
    def floor(self, step: int) -> None:
        """The three passes of a step over its batch: gather, forward product, weight-gradient product."""
        index = self.floor_batches[step % len(self.floor_batches)]
        for layer, cache in self.features.items():
            batch = cache.index_select(0, index).to(self.dtype)
            F.linear(batch, self.weights[layer])
            self.logit_grads.t() @ batch


def measure_head_steps(runs: Mapping[str, Mapping[str, int]], *, num_classes: int, batch_size: int,
                       dtype: torch.dtype, rows: int = 2048, rounds: int = 3, seed: int = 0) -> dict[str, HeadSteps]:
    """For each run (name -> its layers' widths): ms per head step and per floor of a step, measured on
    ``rows`` random cached rows, the runs and the two sides alternated over ``rounds`` (after one untimed)."""
    made = {name: _Run(dims, num_classes, batch_size, rows, dtype, seed) for name, dims in runs.items()}
    step_s, floor_s, steps = dict.fromkeys(runs, 0.0), dict.fromkeys(runs, 0.0), dict.fromkeys(runs, 0)
    for round_ in range(rounds + 1):
        for name, run in made.items():
            started = time.perf_counter()
            count = run.steps()
            middle = time.perf_counter()
            for step in range(count):
                run.floor(step)
            if round_:  # round 0 warms up
                step_s[name] += middle - started
                floor_s[name] += time.perf_counter() - middle
                steps[name] += count
    return {name: HeadSteps(1000 * step_s[name] / steps[name], 1000 * floor_s[name] / steps[name]) for name in runs}


def forward_ratio(checkpoint: str, arch: str, layer: str, image_size: int, batch_size: int = 256,
                  rounds: int = 3) -> float:
    """The encoder's forward pass to its last layer against the pass to ``layer`` alone (it stops there), on a
    batch at the probe's image size, on the CPU, alternated: the ratio a probe of every layer cannot go below
    however fast its heads, since each probe passes its splits through the encoder the same number of times."""
    frozen = load_frozen(checkpoint, arch=arch, width=None, image_size=image_size, seed=0)
    encoder = frozen.encoder.eval()
    device = torch.device("cpu")
    images = torch.rand(batch_size, frozen.encoder.in_channels, image_size, image_size)
    if use_channels_last(encoder, device, training=False):
        encoder.to(memory_format=torch.channels_last)
        images = images.contiguous(memory_format=torch.channels_last)
    seconds = {"all": 0.0, "one": 0.0}
    with torch.no_grad():
        for round_ in range(rounds + 1):  # round 0 warms up
            for side, taps in (("all", list(encoder.layer_names)), ("one", [layer])):
                started = time.perf_counter()
                encoder.forward_taps(images, taps)
                if round_:
                    seconds[side] += time.perf_counter() - started
    return seconds["all"] / seconds["one"]
