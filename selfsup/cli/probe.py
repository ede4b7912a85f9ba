"""ssl-probe: what a frozen pretrained (or random) encoder's layers know, by several protocols.

    ssl-probe --checkpoint runs/rotation/last.pt --freeze all      # linear probes of conv1..conv5 in one pass
    ssl-probe --checkpoint runs/rotation/last.pt --freeze conv3
    ssl-probe --checkpoint random --freeze all                     # the random-initialisation row
    ssl-probe --checkpoint runs/rotation/last.pt --method knn      # weighted kNN on L2-normalised features
    ssl-probe --checkpoint runs/rotation/last.pt --shots 1,5,10    # low-shot linear probes, several draws
    ssl-probe --checkpoint runs/rotation/last.pt --method svm      # VOC07 linear SVMs on the demo VOC split, mAP
    ssl-probe --checkpoint runs/rotation/last.pt --method svm --data VOC_DIR
    ssl-probe ... --save-features feats/                           # pooled features + labels as .npy

Every choice (probe epoch, kNN k, SVM cost) is made on val (SVM: cross-validation on trainval);
test is evaluated once with the chosen model. Each run writes a JSON record that `ssl-report` reads.

The encoder is fed what its training fed it: whole images at the scale its task declares (the
training crop size for every built-in task; --image-size overrides), through the task's evaluation
input mapping (L, Sobel, one colour channel for context with dropped colours), and, with --bn-stats
train or auto (the default), BatchNorm statistics re-estimated on the probe's train split; the record's
protocol says which size and which statistics were used, and why.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import math
import sys
import time
from pathlib import Path
from typing import Any, Callable, ContextManager

import numpy as np
import torch

from selfsup.checkpoint import atomic_file, seed_everything
from selfsup.cli.common import (
    Parser, add_data_layout_option, add_trust_option, check_option_values, finite_float, int_list, user_errors_exit,
)
from selfsup.config import DataConfig, ModelConfig
from selfsup.data.loading import BadFileLog, CenterCrop, EpochBatchSampler, RandomCrop, eval_loader, train_loader
from selfsup.data.sources import DataError, ImageSource, IndexedSource, open_splits, stratified_subset
from selfsup.distributed import pick_device
from selfsup.epoch import autocast_context
from selfsup.errors import ConfigError
from selfsup.models import ARCHS, use_channels_last
from selfsup.models.base import check_input_size
from selfsup.outputs import check_output_dir, check_output_file
from selfsup.probes.bn import (
    BN_STATS, Statistics, bn_statistics, load_bn_statistics, loader_images, named_batchnorms, reestimate_bn_statistics,
)
from selfsup.probes.frozen import FrozenEncoder, load_frozen
from selfsup.probes.knn import DEFAULT_KS
from selfsup.probes.linear import (
    PROTOCOLS,
    FeatureSet,
    LinearHeads,
    ProbeProtocol,
    cached_batches,
    evaluate,
    extract_features,
    fix_batchnorm_statistics,
    head_dtype,
    streamed_batches,
    train_heads,
)
from selfsup.probes.lowshot import lowshot_linear, summarize
from selfsup.probes.pooling import PRESETS, build_pool
from selfsup.probes.records import check_selection, finish_record, new_record, write_record
from selfsup.pretext import TASKS

METHODS = ("linear", "knn", "svm")
# protocols --also runs on the linear probe's feature pass: kNN on its features, the linear probe and kNN on
# globally average-pooled ones (global-knn costs next to nothing; knn on ~9k dims costs more than the probe)
ALSO = ("knn", "global", "global-knn")
KNN_TEMPERATURE = 0.07
# --bn-stats auto chooses on a quick linear probe, not on the full one run twice: images per split and epochs
AUTO_IMAGES = 5000
AUTO_EPOCHS = 10


def name_list(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


def float_list(text: str) -> list[float]:
    try:
        values = [float(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of numbers") from None
    if not values or not all(math.isfinite(v) and v > 0 for v in values):
        raise argparse.ArgumentTypeError(f"{text!r}: give positive finite numbers, e.g. 0.01,0.1,1")
    return values


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="ssl-probe", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", required=True, help="an ssl-pretrain checkpoint (last.pt) or 'random'")
    parser.add_argument("--freeze", default="all", help="layer whose output is probed (e.g. conv3, res4), or 'all'")
    parser.add_argument("--method", default="linear", choices=METHODS,
                        help="linear: BatchNorm + linear classifier per layer; knn: weighted kNN vote; svm: one linear "
                             "SVM per class on a VOC-layout dataset (Goyal et al. 2019), mAP")
    parser.add_argument("--data", default=None,
                        help="labelled data (default: the checkpoint's pretraining data, else demo); for --method svm "
                             "a VOC-layout folder, or demo-voc (the default) for the demo set's VOC split")
    parser.add_argument("--data-root", default=None)
    add_data_layout_option(parser)
    parser.add_argument("--pool", default="auto", choices=PRESETS, help="feature pooling: auto (about 9k dims per layer), rotnet, deepcluster (the papers' grids), "
                             "or global (global average: one value per channel)")
    parser.add_argument("--protocol", default="common", choices=sorted(PROTOCOLS), help="optimiser preset (linear)")
    parser.add_argument("--epochs", type=int, help="override the protocol's epochs (milestones scale along)")
    parser.add_argument("--lr", type=finite_float, help="override the protocol's learning rate")
    parser.add_argument("--batch-size", type=int, help="override the protocol's batch size")
    parser.add_argument("--augment", action="store_true",
                        help="linear: random crops and flips for the train split (features are then computed every epoch)")
    parser.add_argument("--knn-k", type=int_list, default=list(DEFAULT_KS),
                        help=f"kNN: neighbour counts to choose from on the selection split (default {','.join(map(str, DEFAULT_KS))})")
    parser.add_argument("--knn-temperature", type=finite_float, default=KNN_TEMPERATURE,
                        help=f"kNN: vote weight exp(similarity / T) (default {KNN_TEMPERATURE}, Wu et al. 2018)")
    parser.add_argument("--svm-costs", type=float_list, default=None,
                        help="svm: costs to cross-validate per class (default: the benchmark's list)")
    parser.add_argument("--shots", type=int_list, default=None,
                        help="low-shot: labelled images per class (svm: positive images per class), e.g. 1,5,10")
    parser.add_argument("--draws", type=int, default=3, help="low-shot: random samples per shot count (mean +- std)")
    parser.add_argument("--train-images", type=int, default=None,
                        help="linear/kNN: train the probe on a stratified random subset of this many images of the "
                             "train split (drawn with --seed; val and test stay whole), for cheaper probes; the "
                             "record's splits say so")
    parser.add_argument("--also", type=name_list, default=[], metavar="PROTOCOLS",
                        help="linear probe with cached features: from the same feature pass, also run any of "
                             f"{', '.join(ALSO)} (knn: the kNN probe; global: the linear probe of globally "
                             "average-pooled features; global-knn: kNN on those) on the same splits, size and "
                             "BatchNorm statistics, each written as its own record beside --out (NAME.knn.json, "
                             "NAME.global.json, NAME.global-knn.json)")
    parser.add_argument("--selection-split", default="val",
                        help="split that chooses epochs and k: val (default); test is refused unless forced")
    parser.add_argument("--force-test-selection", action="store_true",
                        help="allow --selection-split test; the record and its tables are marked as test-selected")
    parser.add_argument("--save-features", default=None, metavar="DIR",
                        help="also write each split's pooled features per layer, labels and source indices as .npy")
    parser.add_argument("--max-cache-gb", type=finite_float, default=6.0,
                        help="cache pooled features in memory up to this size; above it they are streamed")
    parser.add_argument("--arch", default=ModelConfig.arch, choices=list(ARCHS), help="encoder for --checkpoint random")
    parser.add_argument("--width", type=finite_float, default=None, help="width multiplier for --checkpoint random")
    parser.add_argument("--input-like", default="rotation", choices=sorted(TASKS),
                        help="for --checkpoint random: feed the encoder as this task does (e.g. colorization: L only)")
    parser.add_argument("--image-size", type=int, default=None,
                        help=f"probe input size (default: the scale the checkpoint's task trained its encoder at, i.e. "
                             f"its eval_image_size of the training crop size; {DataConfig.image_size} for --checkpoint "
                             "random); the record says which size was used and why")
    parser.add_argument("--bn-stats", default="auto", choices=BN_STATS,
                        help="BatchNorm statistics of the frozen encoder: re-estimated on the probe's train split "
                             "(train), the checkpoint's, or auto: the better of the two on a quick linear probe "
                             f"scored on the selection split (up to {AUTO_IMAGES} images of each split, "
                             f"{AUTO_EPOCHS} epochs); auto is train for svm (no val split) and low-shot probes "
                             "(the quick probe would use more labels than the shots)")
    parser.add_argument("--precision", default="auto", choices=("auto", "fp32", "bf16"),
                        help="the frozen encoder's forward passes: auto = bf16 autocast on CUDA, fp32 on CPU; bf16 "
                             "on a CPU is about 1.6x faster and changes accuracies by about 0.1-0.3 points "
                             "(features are cached in bf16 either way)")
    parser.add_argument("--head-precision", default="auto", choices=("auto", "fp32", "bf16"),
                        help="the linear heads' matrix products (parameters stay fp32): auto = bf16 on CUDA and on "
                             "CPUs with AVX512-BF16 or AMX (about 3x faster head steps), fp32 elsewhere")
    parser.add_argument("--eval-crop", type=finite_float, default=None,
                        help="central fraction of the short side kept at evaluation (default 1.0 below 96 px, else 0.875)")
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=None, help="result JSON (default: next to the checkpoint)")
    add_trust_option(parser)
    return parser


def probe_layers(frozen: FrozenEncoder, freeze: str) -> list[str]:
    encoder = frozen.encoder
    if freeze == "all":
        return list(encoder.layer_names)
    if freeze not in encoder.layer_names and freeze not in encoder.aliases:
        allowed = ["all", *encoder.layer_names, *encoder.aliases]
        raise ConfigError(f"--freeze {freeze!r} is invalid for {encoder.arch}: allowed values are {', '.join(allowed)}")
    return [freeze]


def record_kind(args: argparse.Namespace) -> str:
    if args.method == "linear":
        return "lowshot_linear" if args.shots else "linear_probe"
    if args.method == "svm":
        return "lowshot_svm" if args.shots else "svm_voc07"
    return "knn"


def default_out(args: argparse.Namespace) -> Path:
    """``--out``, else the record's place: next to the checkpoint, or under runs/ for ``random``."""
    if args.out is not None:
        return Path(args.out)
    name = {"linear_probe": "probe", "lowshot_linear": "lowshot_linear", "knn": "knn", "svm_voc07": "svm",
            "lowshot_svm": "lowshot_svm"}[record_kind(args)]
    if args.checkpoint == "random":
        suffix = "" if args.input_like == "rotation" else f"-{args.input_like}-input"
        return Path("runs") / f"random-{args.arch}{suffix}" / f"{name}_{args.freeze}.json"
    return Path(args.checkpoint).parent / f"{name}_{args.freeze}.json"


def check_args(args: argparse.Namespace) -> None:
    """ConfigError (one line) for an option value or combination that cannot work, before any work."""
    check_option_values(args, paths=("checkpoint", "data", "data_root", "save_features", "out"),
                        at_least=(("epochs", 1), ("batch_size", 2), ("draws", 1), ("image_size", 1), ("workers", 0),
                                  ("train_images", 2)),
                        positive=("lr", "width", "knn_temperature"),
                        reasons={"batch_size": " (the probe's BatchNorm needs two images)"})
    if args.max_cache_gb < 0:
        raise ConfigError(f"--max-cache-gb {args.max_cache_gb:g} is invalid: must be at least 0")
    if args.eval_crop is not None and not 0 < args.eval_crop <= 1:
        raise ConfigError(f"--eval-crop {args.eval_crop:g} is invalid: must be a fraction in (0, 1]")
    if args.method == "svm":
        if args.selection_split != "val":
            raise ConfigError("--selection-split does not apply to --method svm: its costs are chosen by 3-fold "
                              "cross-validation on trainval, and test is used once")
    else:
        check_selection(args.selection_split, args.force_test_selection)
    if args.augment and (args.method != "linear" or args.shots or args.save_features is not None):
        raise ConfigError("--augment recomputes features every epoch: it only applies to the plain linear probe "
                          "(not with --method knn/svm, --shots or --save-features)")
    if args.train_images is not None and (args.method == "svm" or args.shots):
        raise ConfigError("--train-images applies to the linear and kNN probes, not to --method svm or --shots "
                          "(which draw their own training images)")
    unknown = [name for name in args.also if name not in ALSO]
    if unknown:
        raise ConfigError(f"--also {','.join(args.also)} is invalid: {', '.join(unknown)} is not one of {', '.join(ALSO)}")
    if args.also and (args.method != "linear" or args.shots or args.augment):
        raise ConfigError("--also reuses the linear probe's cached features: it applies to --method linear without "
                          "--shots or --augment")
    if {"global", "global-knn"} & set(args.also) and args.pool == "global":
        raise ConfigError("--also global or global-knn with --pool global would run the same probe twice")
    if args.shots and args.method == "knn":
        raise ConfigError("--shots applies to --method linear and svm, not knn")


def check_outputs(args: argparse.Namespace) -> None:
    """OutputError (one line) when --out or --save-features cannot be written, before any work. The
    default record place is checked once the checkpoint is known to exist: a mistyped checkpoint path
    must not create folders."""
    if args.out is not None:
        check_output_file(args.out, "--out")
    if args.save_features is not None:
        check_output_dir(args.save_features, "--save-features")


def probe_pools(frozen: FrozenEncoder, layers: list[str], preset: str):
    shapes = frozen.encoder.feature_shapes(frozen.image_size)
    pools, dims, pooling = {}, {}, {}
    for layer in layers:
        canonical = frozen.encoder.canonical(layer)
        pools[layer], dims[layer], pooling[layer] = build_pool(preset, canonical, shapes[canonical])
    return pools, dims, pooling


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


def run(args: argparse.Namespace) -> dict[str, Any]:
    started = time.perf_counter()
    check_args(args)
    check_outputs(args)
    device = pick_device(args.device)
    seed_everything(args.seed)
    frozen = load_frozen(args.checkpoint, arch=args.arch, width=args.width, image_size=args.image_size, seed=args.seed,
                         input_task=args.input_like, trust=args.trust_checkpoint)
    if args.out is None:
        check_output_file(default_out(args), "the default --out")
    layers = probe_layers(frozen, args.freeze)
    check_input_size(frozen.encoder, frozen.image_size, "--image-size")
    frozen.encoder.to(device).eval()
    if use_channels_last(frozen.encoder, device, training=False):
        frozen.encoder.to(memory_format=torch.channels_last)
    pools, dims, pooling = probe_pools(frozen, layers, args.pool)
    global_pools, global_dims, global_pooling = probe_pools(frozen, layers, "global") if {"global", "global-knn"} & set(args.also) else ({}, {}, {})
    for pool in (*pools.values(), *global_pools.values()):
        pool.to(device)
    eval_crop = (1.0 if frozen.image_size < 96 else 0.875) if args.eval_crop is None else args.eval_crop
    context = ProbeContext(args, frozen, device, pools, CenterCrop(frozen.image_size, eval_crop), BadFileLog(),
                           {"checkpoint": bn_statistics(frozen.encoder)}, global_pools=global_pools, global_dims=global_dims,
                           autocast=lambda: autocast_context(args.precision, device),
                           head_dtype=head_dtype(args.head_precision, device))
    if args.method == "svm":
        record = run_svm(context)
    else:
        record = run_classification(context, dims)
    out = default_out(args)
    written = [(record, dims, pooling, args.pool, out)]
    for name, extra in context.also_records.items():
        pooled_globally = name.startswith("global")
        extra_dims, extra_pooling, preset = (global_dims, global_pooling, "global") if pooled_globally else (dims, pooling, args.pool)
        written.append((extra, extra_dims, extra_pooling, preset, out.with_name(f"{out.stem}.{name}{out.suffix}")))
    for entry in written:
        path = finish_probe_record(context, *entry, eval_crop=eval_crop, started=started)
        print(format_table(entry[0]))
        print(f"record written to {path}")
    selection = record["selection_split"] + (" (FORCED: test-selected)" if record["forced_test_selection"] else "")
    print(f"\nselection on {selection}, reported on {record['reported_split']}; {context.bad.count} unreadable files "
          f"skipped; {record['wall_time_s']} s")
    return record


def finish_probe_record(context: ProbeContext, record: dict[str, Any], dims: dict[str, int], pooling: dict[str, str],
                        pool_preset: str, out: Path, *, eval_crop: float, started: float) -> Path:
    """Adds what every probe record says (size, BatchNorm statistics, dims and pooling per layer, command,
    commit, machine) and writes it to ``out``."""
    args, frozen = context.args, context.frozen
    record["protocol"].update(seed=args.seed, probe_image_size=frozen.image_size,
                              probe_image_size_source=frozen.image_size_source,
                              bn_stats=context.bn_record, precision=args.precision)
    for layer, entry in record["layers"].items():
        record["layers"][layer] = {"dims": dims[layer], "pooling": pooling[layer], **entry}
    record.update(image_size=frozen.image_size, eval_crop=eval_crop, pool_preset=pool_preset,
                  bad_files_skipped=context.bad.count)
    if args.save_features is not None:
        record["saved_features"] = str(Path(args.save_features))
    finish_record(record, started=started, device=context.device)
    return write_record(record, out)


@dataclasses.dataclass
class ProbeContext:
    args: argparse.Namespace
    frozen: FrozenEncoder
    device: torch.device
    pools: dict
    eval_view: CenterCrop
    bad: BadFileLog
    bn_states: dict[str, Statistics]  # "checkpoint" (and "train" once re-estimated) -> BatchNorm statistics
    bn_record: dict[str, Any] = dataclasses.field(default_factory=dict)
    global_pools: dict = dataclasses.field(default_factory=dict)  # --also global: layer -> global average pool
    global_dims: dict[str, int] = dataclasses.field(default_factory=dict)  # --also global: layer -> channels
    autocast: Callable[[], ContextManager] = contextlib.nullcontext  # around the encoder's forward passes
    head_dtype: torch.dtype = torch.float32  # of the linear heads' products (--head-precision)
    statistics_in_use: str = "checkpoint"  # which of bn_states the encoder holds now
    # features already computed, by (source, statistics): --bn-stats auto's quick probe on a whole split computes
    # what the probe that follows needs (the same encoder, statistics and images give the same features)
    computed: dict[tuple[int, str], tuple[ImageSource, FeatureSet]] = dataclasses.field(default_factory=dict)
    also_records: dict[str, dict[str, Any]] = dataclasses.field(default_factory=dict)  # --also name -> record

    @property
    def head_precision(self) -> str:
        return "bf16" if self.head_dtype == torch.bfloat16 else "fp32"

    def use_bn_stats(self, which: str, train: ImageSource) -> None:
        """Puts the checkpoint's BatchNorm statistics, or those re-estimated on ``train`` (computed once), in
        the frozen encoder."""
        encoder = self.frozen.encoder
        self.statistics_in_use = which
        if which in self.bn_states:
            load_bn_statistics(encoder, self.bn_states[which])
            return
        loader = eval_loader(train, self.eval_view, batch_size=256, workers=self.args.workers)
        images = loader_images(loader, self.bad.add)
        print(f"ssl-probe: re-estimating BatchNorm statistics on {train.describe()}", file=sys.stderr)
        if reestimate_bn_statistics(encoder, self.frozen.input_fn, images, self.device, self.autocast) == 0:
            raise DataError("no readable image in the train split to re-estimate BatchNorm statistics on")
        self.bn_states[which] = bn_statistics(encoder)

    def set_bn_stats(self, train: ImageSource, quick: QuickProbe | None, why_no_quick_probe: str = "") -> None:
        """Applies --bn-stats before any feature is computed and keeps what was done for the record.
        ``auto`` chooses with ``quick``; where no quick probe is honest (``None``) it re-estimates: that
        uses the train split's images, never its labels."""
        option = self.args.bn_stats
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
                          "reason": f"higher best-layer {self.args.selection_split} top-1 of a quick linear probe",
                          f"{self.args.selection_split}_top1": scores, "quick_probe": sizes}

    def features(self, source: ImageSource, split: str, keep: bool = False) -> FeatureSet:
        """Pooled features of ``source``, with the global pools' (--also global) as "LAYER global" from the same
        forward passes; ``keep``: remember them for a later call on the same source with the same statistics."""
        key = (id(source), self.statistics_in_use)
        if key in self.computed:
            return self.computed[key][1]
        pools, taps = dict(self.pools), {}
        for layer, pool in self.global_pools.items():
            pools[f"{layer} global"], taps[f"{layer} global"] = pool, layer
        loader = eval_loader(source, self.eval_view, batch_size=256, workers=self.args.workers)
        features = extract_features(self.frozen.encoder, self.frozen.input_fn, pools, loader, self.device, split,
                                    self.bad.add, taps, self.autocast)
        if keep:
            self.computed[key] = (source, features)
        return features

    def new_record(self, kind: str, data: str, splits: dict[str, Any], protocol: dict[str, Any],
                   selection_split: str) -> dict[str, Any]:
        frozen = self.frozen
        return new_record(kind, method=frozen.name, checkpoint=frozen.checkpoint, encoder=frozen.record["encoder"],
                          pretraining={k: v for k, v in frozen.record.items() if k != "encoder"}, data=data,
                          splits=splits, protocol=protocol, selection_split=selection_split,
                          force_test_selection=self.args.force_test_selection)


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
    args, device = context.args, context.device
    rng = np.random.default_rng(args.seed)

    def part(source: ImageSource, name: str) -> ImageSource:
        if len(source) <= AUTO_IMAGES:
            return source
        return IndexedSource(source, np.sort(rng.choice(len(source), AUTO_IMAGES, replace=False)), f"{name} sample")

    quick_train, quick_select = part(train, "train"), part(probe.select, args.selection_split)
    protocol = probe.protocol
    epochs = min(protocol.epochs, AUTO_EPOCHS)
    # kNN accepts a train split smaller than a probe batch: the quick probe then takes it in one batch
    milestones = tuple(max(1, round(m * epochs / protocol.epochs)) for m in protocol.milestones)
    quick = dataclasses.replace(protocol, epochs=epochs, batch_size=min(protocol.batch_size, len(quick_train)),
                                milestones=milestones)
    if quick.batch_size < 2:
        raise DataError(f"--bn-stats auto needs at least two train images; {train.describe()} has fewer")
    steps = len(quick_train) // quick.batch_size
    scores = {}
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        for which in ("checkpoint", "train"):
            context.use_bn_stats(which, train)
            # a whole split's features serve the probe that follows if these statistics are chosen
            fit_set = context.features(quick_train, f"train ({which} BatchNorm statistics)",
                                       keep=quick_train is train).renamed({layer: layer for layer in probe.dims})
            score_set = context.features(quick_select, f"{args.selection_split} ({which} BatchNorm statistics)",
                                         keep=quick_select is probe.select).renamed({layer: layer for layer in probe.dims})
            heads = LinearHeads(context.pools, probe.dims, probe.num_classes, context.head_dtype).to(device)
            fix_batchnorm_statistics(heads, fit_set.features)
            best, _ = train_heads(heads, cached_batches(fit_set.features, fit_set.labels, quick.batch_size, device,
                                                        shuffle_seed=args.seed),
                                  cached_batches(score_set.features, score_set.labels, 256, device), quick, steps,
                                  fixed_batchnorm=True)
            scores[which] = round(max(entry["top1"] for entry in best.values()), 2)
    print(f"ssl-probe: --bn-stats auto: best-layer {args.selection_split} top-1 {scores['checkpoint']} with the "
          f"checkpoint's statistics, {scores['train']} re-estimated", file=sys.stderr)
    return scores, {"train_images": len(quick_train), "selection_images": len(quick_select), "epochs": epochs}


def run_classification(context: ProbeContext, dims: dict[str, int]) -> dict[str, Any]:
    """Linear probe, low-shot linear probe or kNN on a single-label dataset with train/val/test splits."""
    args, frozen, device = context.args, context.frozen, context.device
    trained_on = frozen.record.get("data", {})
    data = args.data if args.data is not None else trained_on.get("spec") or "demo"
    if args.data is None:
        whose = "the checkpoint's pretraining data" if trained_on.get("spec") else "no pretraining data to default to"
        print(f"ssl-probe: no --data: probing on {data} ({whose}; --data chooses)", file=sys.stderr)
    if args.data_root is not None:
        data_root = args.data_root
    else:
        data_root = trained_on.get("root") if data == trained_on.get("spec") else None
    splits = open_splits(data, data_root, seed=args.seed, layout=args.data_layout)
    if splits.train is None or splits.val is None or splits.test is None:
        raise DataError(f"probes need labelled train/val/test splits; {data} has none ({'; '.join(splits.notes)})")
    if args.train_images is not None:
        splits.train = stratified_subset(splits.train, args.train_images, args.seed)
        splits.notes.append(f"the probes train on {len(splits.train):,} of those train images (--train-images: a "
                            f"stratified draw, seed {args.seed})")
    num_classes = len(splits.train.classes)
    protocol = PROTOCOLS[args.protocol]
    overrides = {k: v for k, v in (("epochs", args.epochs), ("lr", args.lr), ("batch_size", args.batch_size))
                 if v is not None}
    if args.epochs is not None:
        scale = args.epochs / protocol.epochs
        overrides["milestones"] = tuple(max(1, round(m * scale)) for m in protocol.milestones)
    protocol = dataclasses.replace(protocol, **overrides)
    split_info = {"train": splits.train.describe(), "val": splits.val.describe(), "test": splits.test.describe(),
                  "notes": splits.notes}
    kind = record_kind(args)
    n_images = len(splits.train) + len(splits.val) + len(splits.test)
    cache_gb = n_images * sum(dims.values()) * 2 / 2**30  # bfloat16
    cached = not args.augment and cache_gb <= args.max_cache_gb
    if not cached and (kind != "linear_probe" or args.save_features is not None):
        raise ConfigError(f"{kind} needs the features in memory ({cache_gb:.1f} GiB): raise --max-cache-gb or probe "
                          "fewer layers (--freeze LAYER)")
    print(f"ssl-probe: {kind} of {frozen.name} encoder {frozen.record['encoder']['arch']} at {frozen.image_size}px "
          f"({frozen.image_size_source}), layers {', '.join(dims)}; data {splits.train.describe()}; features "
          f"{'cached in memory' if cached else 'streamed'} ({cache_gb:.2f} GiB if cached)", file=sys.stderr)
    # a low-shot probe may use the labels of its shots only, and a quick probe would use many more
    quick = None if kind == "lowshot_linear" else QuickProbe(getattr(splits, args.selection_split), num_classes, dims,
                                                             protocol)
    context.set_bn_stats(splits.train, quick, "low-shot: no quick probe on more labels than the shots")

    if not cached:
        return streamed_linear_probe(context, splits, dims, num_classes, protocol, split_info, data)
    sets = {name: context.features(source, name)
            for name, source in (("train", splits.train), ("val", splits.val), ("test", splits.test))}
    global_sets = {name: features.renamed({f"{layer} global": layer for layer in context.global_pools})
                   for name, features in sets.items()}
    sets = {name: features.renamed({layer: layer for layer in dims}) for name, features in sets.items()}
    if args.save_features is not None:
        for name, features in sets.items():
            save_features(args.save_features, name, features)
    select = sets[args.selection_split]

    def batches(features: FeatureSet, batch_size: int = 256, seed: int | None = None):
        return cached_batches(features.features, features.labels, batch_size, device, shuffle_seed=seed)

    if kind == "knn":
        record = context.new_record(kind, data, split_info, {"name": "knn", "ks": args.knn_k,
                                    "temperature": args.knn_temperature}, args.selection_split)
        record["layers"] = knn_layers(sets["train"], select, sets["test"], sets["val"], num_classes, args)
        return record
    if kind == "lowshot_linear":
        record = context.new_record(kind, data, split_info, {**dataclasses.asdict(protocol), "shots": args.shots,
                                    "draws": args.draws, "head_precision": context.head_precision}, args.selection_split)
        record["layers"] = lowshot_linear(sets["train"], batches(select), batches(sets["test"]), context.pools, dims,
                                          num_classes, protocol, args.shots, args.draws, args.seed, device,
                                          progress=lambda line: print(line, file=sys.stderr), dtype=context.head_dtype)
        return record
    def cached_linear_probe(feature_sets: dict[str, FeatureSet], pools: dict, layer_dims: dict[str, int]) -> dict:
        torch.manual_seed(args.seed)  # the heads start alike whatever ran before (--bn-stats auto, --also)
        heads = LinearHeads(pools, layer_dims, num_classes, context.head_dtype).to(device)
        # the features are fixed: their BatchNorm statistics are computed once, over the whole train split
        fix_batchnorm_statistics(heads, feature_sets["train"].features)
        train_batches = batches(feature_sets["train"], protocol.batch_size, seed=args.seed)
        steps = len(feature_sets["train"].labels) // protocol.batch_size
        record = context.new_record(kind, data, split_info, {**dataclasses.asdict(protocol),
                                    "batchnorm": FIXED_BATCHNORM, "head_precision": context.head_precision},
                                    args.selection_split)
        record.update(augment=False, features="cached")
        return linear_probe(record, heads, train_batches, batches(feature_sets[args.selection_split]),
                            batches(feature_sets["val"]), batches(feature_sets["test"]), protocol, steps,
                            fixed_batchnorm=True)

    record = cached_linear_probe(sets, context.pools, dims)
    for name, features, pooled in (("knn", sets, args.pool), ("global-knn", global_sets, "global")):
        if name in args.also:
            knn = context.new_record("knn", data, split_info, {
                "name": "knn", "ks": args.knn_k, "temperature": args.knn_temperature,
                "shared_pass": f"one forward pass with the linear probe run ({pooled} pooling), --also"},
                args.selection_split)
            knn["layers"] = knn_layers(features["train"], features[args.selection_split], features["test"],
                                       features["val"], num_classes, args)
            context.also_records[name] = knn
    if "global" in args.also:
        print("ssl-probe: --also global: linear probe of globally average-pooled features", file=sys.stderr)
        pooled = cached_linear_probe(global_sets, context.global_pools, context.global_dims)
        pooled["protocol"]["shared_pass"] = "one forward pass with the linear probe run, --also"
        context.also_records["global"] = pooled
    return record


def streamed_linear_probe(context: ProbeContext, splits, dims, num_classes, protocol, split_info, data) -> dict[str, Any]:
    args, frozen, device = context.args, context.frozen, context.device
    heads = LinearHeads(context.pools, dims, num_classes, context.head_dtype).to(device)
    streams = {}
    for name, source in (("val", splits.val), ("test", splits.test)):
        loader = eval_loader(source, context.eval_view, batch_size=256, workers=args.workers)
        streams[name] = streamed_batches(frozen.encoder, frozen.input_fn, heads, loader, device, context.bad.add,
                                         context.autocast)
    view = RandomCrop(frozen.image_size) if args.augment else context.eval_view
    sampler = EpochBatchSampler(len(splits.train), protocol.batch_size, seed=args.seed)
    loader = train_loader(splits.train, view, sampler, workers=args.workers, pin_memory=device.type == "cuda")
    train_batches = streamed_batches(frozen.encoder, frozen.input_fn, heads, loader, device, context.bad.add,
                                     context.autocast)
    record = context.new_record("linear_probe", data, split_info, {**dataclasses.asdict(protocol),
                                "batchnorm": "per batch (streamed features)",
                                "head_precision": context.head_precision}, args.selection_split)
    record.update(augment=args.augment, features="streamed")
    return linear_probe(record, heads, train_batches, streams[args.selection_split], streams["val"], streams["test"],
                        protocol, sampler.steps_per_epoch)


# cached features are fixed, so the heads' BatchNorm is a fixed standardisation: computed once, not per batch
FIXED_BATCHNORM = "statistics of the whole train split, computed once (the features are fixed)"


def linear_probe(record: dict[str, Any], heads: LinearHeads, train_batches, select_batches, val_batches, test_batches,
                 protocol, steps_per_epoch: int, fixed_batchnorm: bool = False) -> dict[str, Any]:
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
               args: argparse.Namespace) -> dict[str, dict[str, Any]]:
    from selfsup.probes.knn import knn_accuracy, select_k

    results = {}
    for layer in train.features:
        best_k, by_k = select_k(train.features[layer].float(), train.labels, select.features[layer].float(),
                                select.labels, num_classes, args.knn_k, args.knn_temperature)

        def scores(query: FeatureSet) -> dict[str, float]:
            return knn_accuracy(train.features[layer].float(), train.labels, query.features[layer].float(),
                                query.labels, num_classes, k=best_k, temperature=args.knn_temperature)

        val_scores, test_scores = scores(val), scores(test)
        results[layer] = {"k": best_k, "temperature": args.knn_temperature,
                          "selection_top1_by_k": {str(k): round(v, 2) for k, v in by_k.items()},
                          "val_top1": round(val_scores["top1"], 2), "val_top5": round(val_scores["top5"], 2),
                          "test_top1": round(test_scores["top1"], 2), "test_top5": round(test_scores["top5"], 2)}
        print(f"knn {layer}: k={best_k} val {val_scores['top1']:.2f} test {test_scores['top1']:.2f}", file=sys.stderr)
    largest = max(args.knn_k)
    if len(args.knn_k) > 1 and all(entry["k"] == largest for entry in results.values()):
        print(f"ssl-probe: warning: kNN chose the largest k offered ({largest}) at every layer; a larger k may do "
              f"better: offer one with --knn-k (e.g. --knn-k {','.join(map(str, args.knn_k))},{2 * largest})",
              file=sys.stderr)
    return results


def run_svm(context: ProbeContext) -> dict[str, Any]:
    """Goyal et al.'s VOC07 protocol: SVMs on trainval (costs by 3-fold CV), mAP on test, difficult ignored."""
    from selfsup.data.voc import open_voc, resolve_voc_root
    from selfsup.probes.metrics import mean_average_precision
    from selfsup.probes.svm import DEFAULT_COSTS, low_shot_indices, train_voc_svms

    args = context.args
    data = "demo-voc" if args.data is None else args.data
    root = resolve_voc_root("demo" if data in ("demo", "demo-voc") else data, args.data_root)
    trainval, test = open_voc(root, "trainval"), open_voc(root, "test")
    context.set_bn_stats(trainval, None, "svm: no val split to choose on")
    classes = list(trainval.classes)
    costs = list(DEFAULT_COSTS) if args.svm_costs is None else args.svm_costs
    print(f"ssl-probe: {record_kind(args)} of {context.frozen.name} on {root} ({len(trainval)} trainval / "
          f"{len(test)} test images, {len(classes)} classes), layers {', '.join(context.pools)}", file=sys.stderr)
    sets = {"trainval": context.features(trainval, "trainval"), "test": context.features(test, "test")}
    labels = {"trainval": trainval.image_labels()[sets["trainval"].indices.numpy()],
              "test": test.image_labels()[sets["test"].indices.numpy()]}
    if args.save_features is not None:
        for name, features in sets.items():
            save_features(args.save_features, name, features, labels[name])
    kind = record_kind(args)
    protocol = {"name": "voc07_svm", "costs": costs, "folds": 3, "features": "L2-normalised",
                "mAP": "test_mAP: VOC07 11-point; test_mAP_area: area under the precision envelope (Goyal et al.'s benchmark)",
                **({"shots": args.shots, "draws": args.draws} if args.shots else {})}
    record = context.new_record(kind, data, {"trainval": trainval.describe(), "test": test.describe(),
                                             "root": str(root), "classes": classes}, protocol, "trainval-cv")

    def fit_and_score(layer: str, rows: np.ndarray | None):
        train_x = sets["trainval"].features[layer].float().numpy()
        train_y = labels["trainval"]
        if rows is not None:
            train_x, train_y = train_x[rows], train_y[rows]
        svms = train_voc_svms(train_x, train_y, costs=costs, seed=args.seed)
        scores = svms.decision_function(sets["test"].features[layer].float().numpy())
        # test_mAP is the VOC07 11-point AP, like ssl-finetune's and ssl-detect's; Goyal et al.'s benchmark
        # reports the area under the precision envelope, kept beside it as test_mAP_area
        per_class, mean_ap = mean_average_precision(scores, labels["test"], method="voc07")
        _, mean_ap_area = mean_average_precision(scores, labels["test"], method="area")
        return svms, per_class, mean_ap, mean_ap_area

    results: dict[str, dict[str, Any]] = {}
    for layer in context.pools:
        if not args.shots:
            svms, per_class, mean_ap, mean_ap_area = fit_and_score(layer, None)
            chosen_cv = [float(np.nanmax(row)) for row, cost in zip(svms.cv_ap, svms.chosen_costs)
                         if cost is not None and not np.all(np.isnan(row))]
            results[layer] = {"test_mAP": percent(mean_ap), "test_mAP_area": percent(mean_ap_area),
                              "cv_mAP": percent(float(np.mean(chosen_cv))) if chosen_cv else None,
                              "test_AP": {cls: percent(ap) for cls, ap in zip(classes, per_class)},
                              "cost": {cls: cost for cls, cost in zip(classes, svms.chosen_costs)}}
            print(f"svm {layer}: mAP {results[layer]['test_mAP']}", file=sys.stderr)
            continue
        results[layer] = {}
        for k in args.shots:
            runs = [fit_and_score(layer, low_shot_indices(labels["trainval"], k, seed=args.seed * 7919 + k * 131 + draw))[2]
                    for draw in range(args.draws)]
            scored = [percent(v) for v in runs if v == v]
            if not scored:
                raise DataError(f"{root}: no class has both positive and negative images, so no SVM can be scored")
            results[layer][str(k)] = {"test_mAP": summarize(scored)}
            print(f"low-shot svm {layer} k={k}: mAP {results[layer][str(k)]['test_mAP']['mean']}", file=sys.stderr)
    record["layers"] = results
    return record


def percent(value: float) -> float | None:
    return None if value != value else round(100.0 * value, 2)  # NaN (no positives) -> null in JSON


def format_table(record: dict[str, Any]) -> str:
    kind = record["kind"]
    title = f"{kind}: {record['method']} ({record['encoder']['arch']}), data {record['data']}"
    rows = [title]
    for layer, r in record["layers"].items():
        if kind in ("linear_probe", "knn"):
            chosen = f"epoch {r['best_epoch']}" if kind == "linear_probe" else f"k {r['k']}"
            rows.append(f"{layer:<7}{r['dims']:>7}  {r['pooling']:<22}{chosen:>10}  val@1 {r['val_top1']:6.2f}  "
                        f"test@1 {r['test_top1']:6.2f}  test@5 {r['test_top5']:6.2f}")
        elif kind == "svm_voc07":
            per_class = "  ".join(f"{cls} {ap if ap is not None else 'n/a'}" for cls, ap in r["test_AP"].items())
            rows.append(f"{layer:<7}{r['dims']:>7}  mAP {r['test_mAP']}  (area {r['test_mAP_area']})  {per_class}")
        else:
            metric = "test_top1" if kind == "lowshot_linear" else "test_mAP"
            shots = "  ".join(f"k={k}: {v[metric]['mean']:.2f}+-{v[metric]['std']:.2f}"
                              for k, v in r.items() if isinstance(v, dict) and metric in v)
            rows.append(f"{layer:<7}{r['dims']:>7}  {shots}")
    return "\n".join(rows)


@user_errors_exit
def main(argv: list[str] | None = None) -> int:
    run(build_parser().parse_args(argv))
    return 0


if __name__ == "__main__":
    sys.exit(main())
