"""Low-shot probes: the frozen-feature classifiers trained on k labelled images per class.

Each (k, draw) trains from scratch on its own random sample of the train split (the same sample for
every layer, so layers compare on the same images); selection still uses the full val split and the
reported number is test, as mean and standard deviation over the draws.
"""

from __future__ import annotations

import dataclasses
import statistics
from typing import Callable, Iterable, Sequence

import torch
from torch import Tensor, nn

from selfsup.probes.linear import FeatureSet, LinearHeads, ProbeProtocol, cached_batches, evaluate, train_heads
from selfsup.seeds import mix_seed

# a low-shot "epoch" is at least this many (repeated) images, so the protocol's epochs and lr
# milestones keep their meaning however few images there are
MIN_EPOCH_IMAGES = 1024


def sample_per_class(labels: Tensor, shots: int, seed: int) -> Tensor:
    """Rows holding ``shots`` images of every class (all of a class that has fewer), sorted."""
    gen = torch.Generator().manual_seed(seed)
    rows = []
    for cls in torch.unique(labels).tolist():
        members = torch.nonzero(labels == cls).flatten()
        rows.append(members[torch.randperm(len(members), generator=gen)[:shots]])
    return torch.cat(rows).sort().values


def summarize(values: Sequence[float]) -> dict[str, float | list[float]]:
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return {"mean": round(statistics.fmean(values), 2), "std": round(std, 2), "draws": [round(v, 2) for v in values]}


def lowshot_linear(train: FeatureSet, select_batches: Callable[[], Iterable], test_batches: Callable[[], Iterable],
                   pools: dict[str, nn.Module], dims: dict[str, int], num_classes: int, protocol: ProbeProtocol,
                   shots: Sequence[int], draws: int, seed: int, device: torch.device,
                   progress: Callable[[str], None] = print,
                   dtype: torch.dtype = torch.float32) -> dict[str, dict[str, dict]]:
    """``{layer: {str(k): {"test_top1": summary, "selection_top1": summary, "images": n}}}``; ``dtype`` is the
    heads' (see :class:`LinearHeads`)."""
    results: dict[str, dict[str, dict]] = {layer: {} for layer in dims}
    # every draw scores the selection split after every epoch: convert its bfloat16 cache to the heads' dtype once
    selection = [({layer: f.to(dtype) for layer, f in pooled.items()}, labels) for pooled, labels in select_batches()]
    for k in shots:
        test_runs: dict[str, list[float]] = {layer: [] for layer in dims}
        select_runs: dict[str, list[float]] = {layer: [] for layer in dims}
        for draw in range(draws):
            draw_seed = mix_seed("low-shot draw", seed, k, draw)
            sample = train.subset(sample_per_class(train.labels, k, draw_seed))
            sample_features = {layer: f.to(dtype) for layer, f in sample.features.items()}
            batch_size = min(protocol.batch_size, len(sample.labels))
            epoch_size = max(len(sample.labels), MIN_EPOCH_IMAGES)
            torch.manual_seed(draw_seed)
            heads = LinearHeads(pools, dims, num_classes, dtype).to(device)
            batches = cached_batches(sample_features, sample.labels, batch_size, device, shuffle_seed=draw_seed,
                                     epoch_size=epoch_size)
            best, _ = train_heads(heads, batches, lambda: selection, dataclasses.replace(protocol, batch_size=batch_size),
                                  steps_per_epoch=epoch_size // batch_size)
            for layer in dims:
                heads.heads[layer].load_state_dict(best[layer]["state"])
                select_runs[layer].append(best[layer]["top1"])
            for layer, scores in evaluate(heads, test_batches()).items():
                test_runs[layer].append(scores["top1"])
            progress(f"low-shot k={k} draw {draw + 1}/{draws}: test top-1 "
                     + " ".join(f"{layer} {test_runs[layer][-1]:.1f}" for layer in dims))
        for layer in dims:
            results[layer][str(k)] = {"test_top1": summarize(test_runs[layer]),
                                      "selection_top1": summarize(select_runs[layer]),
                                      "images": int(len(sample.labels))}
    return results
