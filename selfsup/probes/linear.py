"""Frozen-layer linear probes (Zhang et al. protocol): pooled features of a frozen encoder, a
non-affine BatchNorm and a linear classifier per layer, all layers trained in one pass over the data.

Model selection (the epoch whose head is kept) uses the val split only; test is evaluated once,
with the selected heads.
"""

from __future__ import annotations

import contextlib
import copy
import math
import sys
import time
from dataclasses import dataclass
from typing import Callable, ContextManager, Iterable, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm import tqdm

from selfsup.data.images import unit_float
from selfsup.data.loading import Batch
from selfsup.data.sources import DataError
from selfsup.models import Encoder
from selfsup.provenance import cpu_multiplies_bf16
from selfsup.seeds import mix_seed


@dataclass(frozen=True)
class ProbeProtocol:
    name: str
    epochs: int
    batch_size: int
    lr: float
    milestones: tuple[int, ...]
    gamma: float
    nesterov: bool
    momentum: float = 0.9
    weight_decay: float = 5e-4


PROTOCOLS = {
    # the common protocol of the colorization/jigsaw/DeepCluster papers
    "common": ProbeProtocol("common", epochs=30, batch_size=192, lr=0.01, milestones=(10, 20), gamma=0.1, nesterov=False),
    # RotNet's: Nesterov, steps at 5/15/25 of 35 epochs (its code divides the lr by 5 at each step)
    "rotnet": ProbeProtocol("rotnet", epochs=35, batch_size=192, lr=0.01, milestones=(5, 15, 25), gamma=0.2, nesterov=True),
}


class LinearHeads(nn.Module):
    """One pooling + BatchNorm(affine=False) + Linear head per probed layer.

    A BatchNorm in eval mode is a fixed standardisation, so it is folded into its Linear layer for the forward
    pass: ``W((x - mean) / std) + b = (W / std) x + (b - W mean / std)``, the same function and the same
    gradients for W and b, without a pass over the batch of features (a head step on cached features of every
    AlexNet layer takes about half the time).

    ``dtype`` is the precision of the Linear's products (see :func:`head_dtype`); parameters, BatchNorm
    statistics and logits stay float32, as in mixed-precision training."""

    def __init__(self, pools: dict[str, nn.Module], dims: dict[str, int], num_classes: int,
                 dtype: torch.dtype = torch.float32) -> None:
        super().__init__()
        self.dtype = dtype
        self.pools = nn.ModuleDict(pools)
        self.heads = nn.ModuleDict(
            {layer: nn.Sequential(nn.BatchNorm1d(dim, affine=False), nn.Linear(dim, num_classes)) for layer, dim in dims.items()}
        )

    def forward(self, pooled: dict[str, Tensor]) -> dict[str, Tensor]:
        return {layer: self._head(head, pooled[layer]) for layer, head in self.heads.items()}

    def _head(self, head: nn.Sequential, features: Tensor) -> Tensor:
        norm, linear = head
        if norm.training:
            features, weight, bias = norm(features.float()), linear.weight, linear.bias
        else:
            scale = torch.rsqrt(norm.running_var + norm.eps)
            weight, bias = linear.weight * scale, linear.bias + linear.weight @ (-norm.running_mean * scale)
        return F.linear(features.to(self.dtype), weight.to(self.dtype), bias.to(self.dtype)).float()


def head_dtype(precision: str, device: torch.device) -> torch.dtype:
    """The dtype of the probe heads' matrix products for ``--head-precision``: ``auto`` is bfloat16 where the
    device multiplies bfloat16 matrices in hardware (CUDA; CPUs with AVX512-BF16 or AMX), float32 elsewhere.

    A head step reads a batch of cached features two times (forward, weight gradient) and does little
    arithmetic on each value: its time is memory traffic, which bfloat16 halves, and the features are cached in
    bfloat16 anyway, so the products see the same values. On a 2-core AMX CPU a step on every AlexNet layer's
    features is about 3x faster (see ``experiments/results/bench_probe.md``)."""
    if precision == "fp32":
        return torch.float32
    if precision == "bf16":
        return torch.bfloat16
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float32
    return torch.bfloat16 if device.type == "cpu" and cpu_multiplies_bf16() else torch.float32


@dataclass
class FeatureSet:
    """Pooled features of one split per layer (CPU, bfloat16), with labels and source indices."""

    features: dict[str, Tensor]
    labels: Tensor
    indices: Tensor

    def subset(self, rows: Tensor) -> FeatureSet:
        return FeatureSet({layer: f[rows] for layer, f in self.features.items()}, self.labels[rows], self.indices[rows])

    def renamed(self, names: Mapping[str, str]) -> FeatureSet:
        """The features of the keys of ``names`` only, each under its new name."""
        return FeatureSet({new: self.features[old] for old, new in names.items()}, self.labels, self.indices)


def encode(encoder: Encoder, input_fn: Callable[[Tensor], Tensor], pools: Mapping[str, nn.Module], batch: Batch,
           device: torch.device, taps: Mapping[str, str] | None = None,
           autocast: Callable[[], ContextManager] = contextlib.nullcontext) -> dict[str, Tensor]:
    """Pooled features of ``batch`` per name of ``pools``; ``taps`` maps a name to the encoder layer it pools
    (by default the name is the layer), so that several poolings of one layer come from one forward pass.
    ``autocast()`` wraps the encoder's forward (e.g. bf16); pooling runs in float32."""
    taps = taps or {}
    images = unit_float(batch.images.to(device, non_blocking=True))
    with torch.no_grad():
        with autocast():
            maps = encoder.forward_taps(input_fn(images), list(dict.fromkeys(taps.get(name, name) for name in pools)))
        return {name: pool(maps[taps.get(name, name)].float()) for name, pool in pools.items()}


@torch.no_grad()
def extract_features(encoder: Encoder, input_fn: Callable[[Tensor], Tensor], pools: Mapping[str, nn.Module], loader,
                     device: torch.device, desc: str, on_bad: Callable[[list[str]], None],
                     taps: Mapping[str, str] | None = None,
                     autocast: Callable[[], ContextManager] = contextlib.nullcontext) -> FeatureSet:
    """Pooled features of every image of ``loader`` for every name of ``pools`` (see `encode`), on the CPU.

    Stored as bfloat16 to halve the memory of the cache: about three significant digits, which
    is plenty for features that the probe's BatchNorm rescales (or kNN/SVM L2-normalise) anyway.
    Unreadable images are skipped (and counted by ``on_bad``): ``indices`` says which source
    image each row is.
    """
    chunks: dict[str, list[Tensor]] = {name: [] for name in pools}
    labels: list[Tensor] = []
    indices: list[Tensor] = []
    # in a log file (no terminal) a line every 30 s, not every 0.1 s
    interval = 0.5 if sys.stderr.isatty() else 30.0
    for batch in tqdm(loader, desc=desc, unit="batch", leave=False, mininterval=interval):
        on_bad(batch.bad_files)
        if batch.images.numel() == 0:
            continue
        for name, features in encode(encoder, input_fn, pools, batch, device, taps, autocast).items():
            chunks[name].append(features.to(torch.bfloat16).cpu())
        labels.append(batch.labels)
        indices.append(batch.indices)
    if not labels:
        raise DataError(f"no readable image in the {desc} split")
    return FeatureSet({name: torch.cat(parts) for name, parts in chunks.items()}, torch.cat(labels), torch.cat(indices))


def feature_statistics(features: Tensor, chunk: int = 256) -> tuple[Tensor, Tensor]:
    """Per-dimension mean and (population) variance of ``features`` (rows = images), in float32, so that a large
    bfloat16 cache is never converted whole.

    The rows are shifted by the first row before summing (the shifted-data algorithm: no cancellation when the
    mean is large against the spread); each chunk's sums are float32 (a chunk of 256 rows fits the CPU's cache,
    2.5x faster than summing float64 rows) and the running totals float64."""
    shift = features[0].float()
    total = torch.zeros(features.shape[1], dtype=torch.float64)
    squares = torch.zeros_like(total)
    for rows in features.split(chunk):
        centred = rows.float() - shift
        total += centred.sum(dim=0)
        squares += centred.square().sum(dim=0)
    mean = total / len(features)
    return (mean + shift).float(), (squares / len(features) - mean.square()).clamp_min(0).float()


def fix_batchnorm_statistics(heads: LinearHeads, features: Mapping[str, Tensor]) -> None:
    """Sets every head's BatchNorm to the mean and variance of its layer's training ``features`` (rows = images):
    with them fixed (see :func:`train_heads`), the BatchNorm is the same standardisation at every step and at
    test time, and a step computes no batch statistics (nor their backward pass)."""
    for layer, rows in features.items():
        mean, var = feature_statistics(rows)
        norm = heads.heads[layer][0]
        norm.running_mean.copy_(mean)
        norm.running_var.copy_(var)


def topk_correct(logits: Tensor, labels: Tensor, ks: Sequence[int] = (1, 5)) -> list[int]:
    top = logits.topk(min(max(ks), logits.shape[1]), dim=1).indices
    hits = top == labels[:, None]
    return [int(hits[:, :k].any(dim=1).sum()) for k in ks]


@torch.no_grad()
def evaluate(heads: LinearHeads, batches: Iterable[tuple[dict[str, Tensor], Tensor]]) -> dict[str, dict[str, float]]:
    """Top-1/top-5 (percent) of every head over ``(pooled_features_by_layer, labels)`` batches."""
    heads.eval()
    correct = {layer: [0, 0] for layer in heads.heads}
    total = 0
    for pooled, target in batches:
        for layer, logits in heads(pooled).items():
            top1, top5 = topk_correct(logits, target)
            correct[layer][0] += top1
            correct[layer][1] += top5
        total += len(target)
    n = max(total, 1)
    return {layer: {"top1": 100.0 * c[0] / n, "top5": 100.0 * c[1] / n} for layer, c in correct.items()}


def train_heads(
    heads: LinearHeads,
    train_batches: Callable[[int], object],
    select_batches: Callable[[], Iterable[tuple[dict[str, Tensor], Tensor]]],
    protocol: ProbeProtocol,
    steps_per_epoch: int,
    progress: Callable[[str], None] | None = None,
    fixed_batchnorm: bool = False,
) -> tuple[dict[str, dict], list[dict]]:
    """Trains all heads together; keeps, per layer, the head of the epoch with the best top-1 on
    ``select_batches`` (the val split unless the user forced test selection).

    ``train_batches(epoch)`` yields ``(pooled_features_by_layer, labels)`` on ``device``; ``progress`` gets a
    line per epoch (loss, selection top-1 per layer, seconds). ``fixed_batchnorm``: the heads' BatchNorms keep
    their running statistics (set by :func:`fix_batchnorm_statistics`) instead of normalising each batch by
    its own.
    Returns the best state and epoch per layer, and the per-epoch selection history.
    """
    params = [p for head in heads.heads.values() for p in head.parameters()]
    optimizer = torch.optim.SGD(params, lr=protocol.lr, momentum=protocol.momentum, nesterov=protocol.nesterov,
                                weight_decay=protocol.weight_decay)
    scheduler = torch.optim.lr_scheduler.MultiStepLR(
        optimizer, [m * steps_per_epoch for m in protocol.milestones], gamma=protocol.gamma
    )
    best = {layer: {"top1": -1.0, "epoch": 0, "state": None} for layer in heads.heads}
    history = []
    for epoch in range(protocol.epochs):
        heads.train()
        if fixed_batchnorm:
            for head in heads.heads.values():
                head[0].eval()
        started, seen, loss_sum = time.perf_counter(), 0, 0.0
        for pooled, labels in train_batches(epoch):
            logits = heads(pooled)
            loss = sum(F.cross_entropy(out, labels) for out in logits.values())
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            seen += len(labels)
            loss_sum += float(loss.detach()) * len(labels)
        selection_scores = evaluate(heads, select_batches())
        history.append({"epoch": epoch + 1, "train_loss_sum_of_heads": loss_sum / max(seen, 1),
                        "selection_top1": {layer: s["top1"] for layer, s in selection_scores.items()},
                        "seconds": round(time.perf_counter() - started, 2)})
        for layer, scores in selection_scores.items():
            if scores["top1"] > best[layer]["top1"]:
                best[layer] = {"top1": scores["top1"], "epoch": epoch + 1,
                               "state": copy.deepcopy(heads.heads[layer].state_dict())}
        if progress is not None:
            entry = history[-1]
            shown = "  ".join(f"{layer} {top1:.2f}" for layer, top1 in entry["selection_top1"].items())
            progress(f"head epoch {epoch + 1}/{protocol.epochs}: loss {entry['train_loss_sum_of_heads']:.4f}, "
                     f"selection top-1 {shown} ({entry['seconds']:.1f} s)")
    return best, history


def cached_batches(features: dict[str, Tensor], labels: Tensor, batch_size: int, device: torch.device,
                   shuffle_seed: int | None = None, epoch_size: int | None = None):
    """Batches of in-memory features; shuffled per epoch (dropping the last partial batch) when a seed is given.

    ``epoch_size`` (shuffled only) makes an epoch that many samples, cycling through fresh
    permutations: low-shot probes train a few dozen images for as many steps as a full probe epoch.
    """
    count = len(labels)

    def batches(epoch: int = 0):
        if shuffle_seed is None:
            order, stop = torch.arange(count), count
        else:
            gen = torch.Generator().manual_seed(mix_seed("probe shuffle", shuffle_seed, epoch))
            size = epoch_size or count
            order = torch.cat([torch.randperm(count, generator=gen) for _ in range(math.ceil(size / count))])[:size]
            stop = size - batch_size + 1
        for start in range(0, max(stop, 0), batch_size):
            index = order[start : start + batch_size]
            # in their cache's dtype: the heads convert them to the dtype of their products. index_select, not
            # f[index]: on CPU it gathers the rows of a bfloat16 cache about 3.5x faster (same tensor)
            yield ({layer: f.index_select(0, index).to(device) for layer, f in features.items()},
                   labels.index_select(0, index).to(device))

    return batches


def streamed_batches(encoder: Encoder, input_fn: Callable[[Tensor], Tensor], heads: LinearHeads, loader,
                     device: torch.device, on_bad: Callable[[list[str]], None],
                     autocast: Callable[[], ContextManager] = contextlib.nullcontext):
    """Batches pooled on the fly from a loader (used when features are augmented or too big to cache)."""

    def batches(epoch: int = 0):
        sampler = getattr(loader, "batch_sampler", None)
        if hasattr(sampler, "set_epoch"):
            sampler.set_epoch(epoch)
        for batch in loader:
            on_bad(batch.bad_files)
            if batch.images.numel():
                yield encode(encoder, input_fn, heads.pools, batch, device, autocast=autocast), batch.labels.to(device)

    return batches
