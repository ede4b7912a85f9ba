"""The frozen encoder as every ssl-probe protocol sees it (:class:`ProbeContext`): the layers and their pools,
the BatchNorm statistics it holds (``--bn-stats``, with the quick linear probe that ``auto`` chooses by), and
its pooled features of each split, computed once and optionally saved as .npy."""

from __future__ import annotations

import contextlib
import dataclasses
import sys
import time
from pathlib import Path
from typing import Any, Callable, ContextManager

import numpy as np
import torch
from torch import nn

from selfsup.checkpoint import atomic_file
from selfsup.data.crops import CenterCrop
from selfsup.data.loading import BadFileLog, eval_loader
from selfsup.data.sources import DataError, ImageSource, IndexedSource
from selfsup.errors import ConfigError
from selfsup.probes.bn import (
    Statistics, bn_statistics, load_bn_statistics, loader_images, named_batchnorms, reestimate_bn_statistics,
)
from selfsup.probes.frozen import FrozenEncoder
from selfsup.probes.linear import (
    FeatureSet, LinearHeads, ProbeProtocol, cached_batches, extract_features, fix_batchnorm_statistics, train_heads,
)
from selfsup.probes.options import AUTO_EPOCHS, AUTO_IMAGES, ProbeOptions
from selfsup.probes.pooling import build_pool
from selfsup.probes.records import new_record


def probe_layers(frozen: FrozenEncoder, freeze: str) -> list[str]:
    """The layers ``--freeze`` names: every layer for "all", else the one given (a name or an alias)."""
    encoder = frozen.encoder
    if freeze == "all":
        return list(encoder.layer_names)
    if freeze not in encoder.layer_names and freeze not in encoder.aliases:
        allowed = ["all", *encoder.layer_names, *encoder.aliases]
        raise ConfigError(f"--freeze {freeze!r} is invalid for {encoder.arch}: allowed values are {', '.join(allowed)}")
    return [freeze]


def probe_pools(frozen: FrozenEncoder, layers: list[str],
                preset: str) -> tuple[dict[str, nn.Module], dict[str, int], dict[str, str]]:
    """Per layer: the pooling module of ``preset``, the pooled feature's dims and a description of the pooling."""
    shapes = frozen.encoder.feature_shapes(frozen.image_size)
    pools, dims, pooling = {}, {}, {}
    for layer in layers:
        canonical = frozen.encoder.canonical(layer)
        pools[layer], dims[layer], pooling[layer] = build_pool(preset, canonical, shapes[canonical])
    return pools, dims, pooling


@dataclasses.dataclass
class ProbeContext:
    """What every protocol of a run shares: its options, the frozen encoder (on ``device``) and its pools, the
    evaluation view, the log of unreadable files, the BatchNorm statistics in use and the features computed."""

    options: ProbeOptions
    frozen: FrozenEncoder
    device: torch.device
    pools: dict[str, nn.Module]  # layer -> its pooling (--pool)
    eval_view: CenterCrop
    bad: BadFileLog
    bn_states: dict[str, Statistics]  # "checkpoint" (and "train" once re-estimated) -> BatchNorm statistics
    bn_record: dict[str, Any] = dataclasses.field(default_factory=dict)
    # --also global or global-knn: layer -> global average pool, and its dims (channels)
    global_pools: dict[str, nn.Module] = dataclasses.field(default_factory=dict)
    global_dims: dict[str, int] = dataclasses.field(default_factory=dict)
    autocast: Callable[[], ContextManager] = contextlib.nullcontext  # around the encoder's forward passes
    head_dtype: torch.dtype = torch.float32  # of the linear heads' products (--head-precision)
    statistics_in_use: str = "checkpoint"  # which of bn_states the encoder holds now
    # features already computed, by (source, statistics): --bn-stats auto's quick probe on a whole split computes
    # what the probe that follows needs (the same encoder, statistics and images give the same features)
    computed: dict[tuple[int, str], tuple[ImageSource, FeatureSet]] = dataclasses.field(default_factory=dict)
    also_records: dict[str, dict[str, Any]] = dataclasses.field(default_factory=dict)  # --also name -> record

    @property
    def head_precision(self) -> str:
        """The heads' precision as the record names it."""
        return "bf16" if self.head_dtype == torch.bfloat16 else "fp32"

    def use_bn_stats(self, which: str, train: ImageSource) -> None:
        """Puts the checkpoint's BatchNorm statistics, or those re-estimated on ``train`` (computed once), in
        the frozen encoder."""
        encoder = self.frozen.encoder
        self.statistics_in_use = which
        if which in self.bn_states:
            load_bn_statistics(encoder, self.bn_states[which])
            return
        loader = eval_loader(train, self.eval_view, batch_size=256, workers=self.options.workers)
        images = loader_images(loader, self.bad.add)
        print(f"ssl-probe: re-estimating BatchNorm statistics on {train.describe()}", file=sys.stderr)
        if reestimate_bn_statistics(encoder, self.frozen.input_fn, images, self.device, self.autocast) == 0:
            raise DataError("no readable image in the train split to re-estimate BatchNorm statistics on")
        self.bn_states[which] = bn_statistics(encoder)

    def set_bn_stats(self, train: ImageSource, quick: QuickProbe | None, why_no_quick_probe: str = "") -> None:
        """Applies --bn-stats before any feature is computed and keeps what was done for the record.
        ``auto`` chooses with ``quick``; where no quick probe is honest (``None``) it re-estimates: that
        uses the train split's images, never its labels."""
        option = self.options.bn_stats
        if not named_batchnorms(self.frozen.encoder):
            self.bn_record = {"option": option, "used": "checkpoint", "reason": "the encoder has no BatchNorm"}
            return
        if option != "auto":
            self.use_bn_stats(option, train)
            self.bn_record = {"option": option, "used": option, "reason": "--bn-stats"}
            return
        if quick is None:
            self.use_bn_stats("train", train)
            self.bn_record = {"option": option, "used": "train",
                              "reason": f"{why_no_quick_probe}: re-estimated on the train split's images"}
            return
        scores, sizes = quick_bn_scores(self, train, quick)
        # a tie keeps the checkpoint's statistics: re-estimation must earn its place
        used = "train" if scores["train"] > scores["checkpoint"] else "checkpoint"
        self.use_bn_stats(used, train)
        self.computed = {key: value for key, value in self.computed.items() if key[1] == used}
        self.bn_record = {"option": option, "used": used,
                          "reason": f"higher best-layer {self.options.selection_split} top-1 of a quick linear probe",
                          f"{self.options.selection_split}_top1": scores, "quick_probe": sizes}

    def features(self, source: ImageSource, split: str, keep: bool = False) -> FeatureSet:
        """Pooled features of ``source``, with the global pools' (--also global) as "LAYER global" from the same
        forward passes; ``keep``: remember them for a later call on the same source with the same statistics."""
        key = (id(source), self.statistics_in_use)
        if key in self.computed:
            return self.computed[key][1]
        pools, taps = dict(self.pools), {}
        for layer, pool in self.global_pools.items():
            pools[f"{layer} global"], taps[f"{layer} global"] = pool, layer
        loader = eval_loader(source, self.eval_view, batch_size=256, workers=self.options.workers)
        features = extract_features(self.frozen.encoder, self.frozen.input_fn, pools, loader, self.device, split,
                                    self.bad.add, taps, self.autocast)
        if keep:
            self.computed[key] = (source, features)
        return features

    def new_record(self, kind: str, data: str, splits: dict[str, Any], protocol: dict[str, Any],
                   selection_split: str) -> dict[str, Any]:
        """A new record of ``kind`` that names the encoder, its checkpoint and its pretraining."""
        return new_record(kind, **self.frozen.provenance(), data=data, splits=splits, protocol=protocol,
                          selection_split=selection_split, force_test_selection=self.options.force_test_selection)


@dataclasses.dataclass(frozen=True)
class QuickProbe:
    """What --bn-stats auto's quick linear probe needs besides the train split."""

    select: ImageSource  # the selection split
    num_classes: int
    dims: dict[str, int]
    protocol: ProbeProtocol


def quick_bn_scores(context: ProbeContext, train: ImageSource,
                    probe: QuickProbe) -> tuple[dict[str, float], dict[str, Any]]:
    """Best-layer top-1 on (up to AUTO_IMAGES of) the selection split of linear heads trained for up to
    AUTO_EPOCHS on (up to AUTO_IMAGES of) ``train``, with the checkpoint's and with re-estimated BatchNorm
    statistics.

    The full probe run twice would double its cost; this one costs a re-estimation pass over the train
    split (needed by ``train`` anyway) and features of at most 2 x AUTO_IMAGES images per choice. Its random
    draws are made on forked generators, so the probe that follows is the one ``--bn-stats <chosen>`` runs.
    """
    options, device = context.options, context.device
    rng = np.random.default_rng(options.seed)

    def part(source: ImageSource, name: str) -> ImageSource:
        if len(source) <= AUTO_IMAGES:
            return source
        return IndexedSource(source, np.sort(rng.choice(len(source), AUTO_IMAGES, replace=False)), f"{name} sample")

    quick_train, quick_select = part(train, "train"), part(probe.select, options.selection_split)
    protocol = probe.protocol
    epochs = min(protocol.epochs, AUTO_EPOCHS)
    # kNN accepts a train split smaller than a probe batch: the quick probe then takes it in one batch
    milestones = tuple(max(1, round(m * epochs / protocol.epochs)) for m in protocol.milestones)
    quick = dataclasses.replace(protocol, epochs=epochs, batch_size=min(protocol.batch_size, len(quick_train)),
                                milestones=milestones)
    if quick.batch_size < 2:
        raise DataError(f"--bn-stats auto needs at least two train images; {train.describe()} has fewer")
    steps = len(quick_train) // quick.batch_size
    scores, head_seconds = {}, 0.0
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        for which in ("checkpoint", "train"):
            context.use_bn_stats(which, train)
            # a whole split's features serve the probe that follows if these statistics are chosen
            fit_set = context.features(quick_train, f"train ({which} BatchNorm statistics)",
                                       keep=quick_train is train).renamed({layer: layer for layer in probe.dims})
            score_set = context.features(quick_select, f"{options.selection_split} ({which} BatchNorm statistics)",
                                         keep=quick_select is probe.select)
            score_set = score_set.renamed({layer: layer for layer in probe.dims})
            heads = LinearHeads(context.pools, probe.dims, probe.num_classes, context.head_dtype).to(device)
            fix_batchnorm_statistics(heads, fit_set.features)
            started = time.perf_counter()
            best, _ = train_heads(heads, cached_batches(fit_set.features, fit_set.labels, quick.batch_size, device,
                                                        shuffle_seed=options.seed),
                                  cached_batches(score_set.features, score_set.labels, 256, device), quick, steps,
                                  fixed_batchnorm=True)
            head_seconds += time.perf_counter() - started
            scores[which] = round(max(entry["top1"] for entry in best.values()), 2)
    print(f"ssl-probe: --bn-stats auto: best-layer {options.selection_split} top-1 {scores['checkpoint']} with the "
          f"checkpoint's statistics, {scores['train']} re-estimated", file=sys.stderr)
    return scores, {"train_images": len(quick_train), "selection_images": len(quick_select), "epochs": epochs,
                    "head_epochs_s": round(head_seconds, 4)}


def save_features(folder: str, split: str, features: FeatureSet, labels: np.ndarray | None = None) -> None:
    """``{split}_{layer}.npy`` (float32 rows), ``{split}_labels.npy`` (class index, or the VOC N x C
    matrix of 1/0/-1) and ``{split}_indices.npy`` (row -> image index in the split)."""
    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    arrays = {f"{split}_{layer}": rows.float().numpy() for layer, rows in features.features.items()}
    arrays[f"{split}_labels"] = features.labels.numpy() if labels is None else labels
    arrays[f"{split}_indices"] = features.indices.numpy()
    for name, array in arrays.items():
        with atomic_file(out / f"{name}.npy") as handle:
            np.save(handle, array)
