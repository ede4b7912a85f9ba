"""ssl-probe's protocols on a single-label dataset with train/val/test splits: the linear probe (on cached or
streamed features), the low-shot linear probe and weighted kNN, with the ``--also`` protocols that share the
linear probe's feature pass."""

from __future__ import annotations

import dataclasses
import sys
from typing import Any, Callable, Iterable

import torch
from torch import Tensor

from selfsup.data.crops import RandomCrop
from selfsup.data.loading import EpochBatchSampler, eval_loader, train_loader
from selfsup.data.sources import DataError, Splits, open_splits, stratified_subset
from selfsup.errors import ConfigError
from selfsup.probes.context import ProbeContext, QuickProbe, save_features
from selfsup.probes.knn import knn_accuracy, select_k
from selfsup.probes.linear import (
    PROTOCOLS, FeatureSet, LinearHeads, ProbeProtocol, cached_batches, evaluate, fix_batchnorm_statistics,
    streamed_batches, train_heads,
)
from selfsup.probes.lowshot import lowshot_linear
from selfsup.probes.options import record_kind

# one pass over a split's batches of (features by layer, labels), as evaluation takes them
Batches = Callable[[], Iterable[tuple[dict[str, Tensor], Tensor]]]


def run_classification(context: ProbeContext, dims: dict[str, int]) -> dict[str, Any]:
    """Linear probe, low-shot linear probe or kNN on a single-label dataset with train/val/test splits."""
    options, frozen, device = context.options, context.frozen, context.device
    trained_on = frozen.record.get("data", {})
    data = options.data if options.data is not None else trained_on.get("spec") or "demo"
    if options.data is None:
        whose = "the checkpoint's pretraining data" if trained_on.get("spec") else "no pretraining data to default to"
        print(f"ssl-probe: no --data: probing on {data} ({whose}; --data chooses)", file=sys.stderr)
    if options.data_root is not None:
        data_root = options.data_root
    else:
        data_root = trained_on.get("root") if data == trained_on.get("spec") else None
    splits = open_splits(data, data_root, seed=options.seed, layout=options.data_layout)
    if splits.train is None or splits.val is None or splits.test is None:
        raise DataError(f"probes need labelled train/val/test splits; {data} has none ({'; '.join(splits.notes)})")
    if options.train_images is not None:
        splits.train = stratified_subset(splits.train, options.train_images, options.seed)
        splits.notes.append(f"the probes train on {len(splits.train):,} of those train images (--train-images: a "
                            f"stratified draw, seed {options.seed})")
    num_classes = len(splits.train.classes)
    protocol = PROTOCOLS[options.protocol]
    overrides = {k: v for k, v in (("epochs", options.epochs), ("lr", options.lr), ("batch_size", options.batch_size))
                 if v is not None}
    if options.epochs is not None:
        scale = options.epochs / protocol.epochs
        overrides["milestones"] = tuple(max(1, round(m * scale)) for m in protocol.milestones)
    protocol = dataclasses.replace(protocol, **overrides)
    split_info = {"train": splits.train.describe(), "val": splits.val.describe(), "test": splits.test.describe(),
                  "notes": splits.notes}
    kind = record_kind(options)
    n_images = len(splits.train) + len(splits.val) + len(splits.test)
    cache_gb = n_images * sum(dims.values()) * 2 / 2**30  # bfloat16
    cached = not options.augment and cache_gb <= options.max_cache_gb
    if not cached and (kind != "linear_probe" or options.save_features is not None):
        raise ConfigError(f"{kind} needs the features in memory ({cache_gb:.1f} GiB): raise --max-cache-gb or probe "
                          "fewer layers (--freeze LAYER)")
    print(f"ssl-probe: {kind} of {frozen.name} encoder {frozen.record['encoder']['arch']} at {frozen.image_size}px "
          f"({frozen.image_size_source}), layers {', '.join(dims)}; data {splits.train.describe()}; features "
          f"{'cached in memory' if cached else 'streamed'} ({cache_gb:.2f} GiB if cached)", file=sys.stderr)
    # a low-shot probe may use the labels of its shots only, and a quick probe would use many more
    quick = None if kind == "lowshot_linear" else QuickProbe(getattr(splits, options.selection_split), num_classes,
                                                             dims, protocol)
    context.set_bn_stats(splits.train, quick, "low-shot: no quick probe on more labels than the shots")

    if not cached:
        return streamed_linear_probe(context, splits, dims, num_classes, protocol, split_info, data)
    sets = {name: context.features(source, name)
            for name, source in (("train", splits.train), ("val", splits.val), ("test", splits.test))}
    global_sets = {name: features.renamed({f"{layer} global": layer for layer in context.global_pools})
                   for name, features in sets.items()}
    sets = {name: features.renamed({layer: layer for layer in dims}) for name, features in sets.items()}
    if options.save_features is not None:
        for name, features in sets.items():
            save_features(options.save_features, name, features)
    select = sets[options.selection_split]

    def batches(features: FeatureSet, batch_size: int = 256, seed: int | None = None):
        return cached_batches(features.features, features.labels, batch_size, device, shuffle_seed=seed)

    if kind == "knn":
        record = context.new_record(kind, data, split_info, {"name": "knn", "ks": options.knn_k,
                                    "temperature": options.knn_temperature}, options.selection_split)
        record["layers"] = knn_layers(sets["train"], select, sets["test"], sets["val"], num_classes, options.knn_k,
                                      options.knn_temperature)
        return record
    if kind == "lowshot_linear":
        record = context.new_record(kind, data, split_info, {**dataclasses.asdict(protocol), "shots": options.shots,
                                    "draws": options.draws, "head_precision": context.head_precision},
                                    options.selection_split)
        record["layers"] = lowshot_linear(sets["train"], batches(select), batches(sets["test"]), context.pools, dims,
                                          num_classes, protocol, options.shots, options.draws, options.seed, device,
                                          progress=lambda line: print(line, file=sys.stderr), dtype=context.head_dtype)
        return record

    def cached_linear_probe(feature_sets: dict[str, FeatureSet], pools: dict, layer_dims: dict[str, int]) -> dict:
        torch.manual_seed(options.seed)  # the heads start alike whatever ran before (--bn-stats auto, --also)
        heads = LinearHeads(pools, layer_dims, num_classes, context.head_dtype).to(device)
        # the features are fixed: their BatchNorm statistics are computed once, over the whole train split
        fix_batchnorm_statistics(heads, feature_sets["train"].features)
        train_batches = batches(feature_sets["train"], protocol.batch_size, seed=options.seed)
        steps = len(feature_sets["train"].labels) // protocol.batch_size
        record = context.new_record(kind, data, split_info, {**dataclasses.asdict(protocol),
                                    "batchnorm": FIXED_BATCHNORM, "head_precision": context.head_precision},
                                    options.selection_split)
        record.update(augment=False, features="cached", classes=num_classes)
        return linear_probe(record, heads, train_batches, batches(feature_sets[options.selection_split]),
                            batches(feature_sets["val"]), batches(feature_sets["test"]), protocol, steps,
                            fixed_batchnorm=True)

    record = cached_linear_probe(sets, context.pools, dims)
    for name, features, pooled in (("knn", sets, options.pool), ("global-knn", global_sets, "global")):
        if name in options.also:
            knn = context.new_record("knn", data, split_info, {
                "name": "knn", "ks": options.knn_k, "temperature": options.knn_temperature,
                "shared_pass": f"one forward pass with the linear probe run ({pooled} pooling), --also"},
                options.selection_split)
            knn["layers"] = knn_layers(features["train"], features[options.selection_split], features["test"],
                                       features["val"], num_classes, options.knn_k, options.knn_temperature)
            context.also_records[name] = knn
    if "global" in options.also:
        print("ssl-probe: --also global: linear probe of globally average-pooled features", file=sys.stderr)
        pooled = cached_linear_probe(global_sets, context.global_pools, context.global_dims)
        pooled["protocol"]["shared_pass"] = "one forward pass with the linear probe run, --also"
        context.also_records["global"] = pooled
    return record


def streamed_linear_probe(context: ProbeContext, splits: Splits, dims: dict[str, int], num_classes: int,
                          protocol: ProbeProtocol, split_info: dict[str, Any], data: str) -> dict[str, Any]:
    """The linear probe on features computed anew every epoch: they do not fit in memory, or --augment."""
    options, frozen, device = context.options, context.frozen, context.device
    heads = LinearHeads(context.pools, dims, num_classes, context.head_dtype).to(device)
    streams = {}
    for name, source in (("val", splits.val), ("test", splits.test)):
        loader = eval_loader(source, context.eval_view, batch_size=256, workers=options.workers)
        streams[name] = streamed_batches(frozen.encoder, frozen.input_fn, heads, loader, device, context.bad.add,
                                         context.autocast)
    view = RandomCrop(frozen.image_size) if options.augment else context.eval_view
    sampler = EpochBatchSampler(len(splits.train), protocol.batch_size, seed=options.seed)
    loader = train_loader(splits.train, view, sampler, workers=options.workers, pin_memory=device.type == "cuda")
    train_batches = streamed_batches(frozen.encoder, frozen.input_fn, heads, loader, device, context.bad.add,
                                     context.autocast)
    record = context.new_record("linear_probe", data, split_info, {**dataclasses.asdict(protocol),
                                "batchnorm": "per batch (streamed features)",
                                "head_precision": context.head_precision}, options.selection_split)
    record.update(augment=options.augment, features="streamed", classes=num_classes)
    return linear_probe(record, heads, train_batches, streams[options.selection_split], streams["val"], streams["test"],
                        protocol, sampler.steps_per_epoch)


# cached features are fixed, so the heads' BatchNorm is a fixed standardisation: computed once, not per batch
FIXED_BATCHNORM = "statistics of the whole train split, computed once (the features are fixed)"


def linear_probe(record: dict[str, Any], heads: LinearHeads, train_batches: Callable[[int], object],
                 select_batches: Batches, val_batches: Batches, test_batches: Batches, protocol: ProbeProtocol,
                 steps_per_epoch: int,
                 fixed_batchnorm: bool = False) -> dict[str, Any]:
    """Trains ``heads``, keeps each layer's best epoch on the selection split, and fills ``record`` with their
    val and test scores and the training history."""
    if steps_per_epoch == 0:
        raise DataError(f"train split has fewer images than one batch ({protocol.batch_size}); use --batch-size")
    best, history = train_heads(heads, train_batches, select_batches, protocol, steps_per_epoch,
                                progress=lambda line: print(f"ssl-probe: {line}", file=sys.stderr, flush=True),
                                fixed_batchnorm=fixed_batchnorm)
    for layer in heads.heads:
        heads.heads[layer].load_state_dict(best[layer]["state"])
    val_scores = evaluate(heads, val_batches())
    test_scores = evaluate(heads, test_batches())
    record["layers"] = {
        layer: {
            "best_epoch": best[layer]["epoch"],
            "val_top1": round(val_scores[layer]["top1"], 2),
            "val_top5": round(val_scores[layer]["top5"], 2),
            "test_top1": round(test_scores[layer]["top1"], 2),
            "test_top5": round(test_scores[layer]["top5"], 2),
        }
        for layer in heads.heads
    }
    record["history"] = history
    return record


def knn_layers(train: FeatureSet, select: FeatureSet, test: FeatureSet, val: FeatureSet, num_classes: int,
               ks: list[int], temperature: float) -> dict[str, dict[str, Any]]:
    """Weighted kNN per layer: k chosen among ``ks`` on ``select``, then val and test scored with it; a warning
    when the largest k offered wins at every layer."""
    results = {}
    for layer in train.features:
        best_k, by_k = select_k(train.features[layer].float(), train.labels, select.features[layer].float(),
                                select.labels, num_classes, ks, temperature)

        def scores(query: FeatureSet) -> dict[str, float]:
            return knn_accuracy(train.features[layer].float(), train.labels, query.features[layer].float(),
                                query.labels, num_classes, k=best_k, temperature=temperature)

        val_scores, test_scores = scores(val), scores(test)
        results[layer] = {"k": best_k, "temperature": temperature,
                          "selection_top1_by_k": {str(k): round(v, 2) for k, v in by_k.items()},
                          "val_top1": round(val_scores["top1"], 2), "val_top5": round(val_scores["top5"], 2),
                          "test_top1": round(test_scores["top1"], 2), "test_top5": round(test_scores["top5"], 2)}
        print(f"knn {layer}: k={best_k} val {val_scores['top1']:.2f} test {test_scores['top1']:.2f}", file=sys.stderr)
    largest = max(ks)
    if len(ks) > 1 and all(entry["k"] == largest for entry in results.values()):
        print(f"ssl-probe: warning: kNN chose the largest k offered ({largest}) at every layer; a larger k may do "
              f"better: offer one with --knn-k (e.g. --knn-k {','.join(map(str, ks))},{2 * largest})",
              file=sys.stderr)
    return results
