"""Configuration as dataclasses, filled from defaults < YAML file < command-line overrides.

Every field may carry validation metadata (``choices``, ``min``, ``max``, ``gt``); an invalid value
raises :class:`ConfigError` at start-up naming the field, the value and what is allowed.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from selfsup.errors import ConfigError


def option(default: Any, help: str = "", **rules: Any) -> Any:
    """A dataclass field with a help text and validation rules (choices/min/max/gt)."""
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: type(default)(default), metadata={"help": help, **rules})
    return field(default=default, metadata={"help": help, **rules})


def _strip_optional(tp: Any) -> tuple[Any, bool]:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return args[0], True
    return tp, False


def _coerce(name: str, value: Any, tp: Any) -> Any:
    """Converts YAML/CLI values (often strings) to the field's declared type."""
    tp, optional = _strip_optional(tp)
    if value is None or (optional and isinstance(value, str) and value.lower() in ("none", "null", "")):
        if optional:
            return None
        raise ConfigError(f"{name} = None is invalid: a value is required")
    origin = typing.get_origin(tp)
    try:
        if tp is bool:
            if isinstance(value, bool):
                return value
            text = str(value).lower()
            if text in ("1", "true", "yes", "on"):
                return True
            if text in ("0", "false", "no", "off"):
                return False
            raise ValueError
        if tp is int:
            if isinstance(value, float) and not value.is_integer():
                raise ValueError
            return int(value)
        if tp is float:
            number = float(value)
            if not math.isfinite(number):  # nan passes every range rule: each comparison with it is false
                raise ConfigError(f"{name} = {value!r} is invalid: must be a finite number")
            return number
        if tp is str:
            return str(value)
        if origin is list:
            (item_tp,) = typing.get_args(tp)
            if isinstance(value, str):
                value = [v for v in value.replace("[", "").replace("]", "").split(",") if v.strip()]
            return [_coerce(name, v, item_tp) for v in value]
        if origin is dict or tp is dict:
            if not isinstance(value, dict):
                raise ValueError
            return dict(value)
    except ConfigError:
        raise
    except (TypeError, ValueError):
        raise ConfigError(f"{name} = {value!r} is invalid: expected {getattr(tp, '__name__', tp)}") from None
    return value


def _check_rules(name: str, value: Any, meta: typing.Mapping[str, Any], shown: Any) -> None:
    """Checks ``value`` against the field's rules; messages quote ``shown``, the value as the user wrote it."""
    if value is None:
        return
    choices = meta.get("choices")
    if choices is not None and value not in choices:
        raise ConfigError(f"{name} = {shown!r} is invalid: allowed values are {', '.join(map(str, choices))}")
    items = value if isinstance(value, list) else [value]
    for item in items:
        if "min" in meta and item < meta["min"]:
            raise ConfigError(f"{name} = {shown!r} is invalid: must be >= {meta['min']}")
        if "max" in meta and item > meta["max"]:
            raise ConfigError(f"{name} = {shown!r} is invalid: must be <= {meta['max']}")
        if "gt" in meta and item <= meta["gt"]:
            raise ConfigError(f"{name} = {shown!r} is invalid: must be > {meta['gt']}")


def from_dict(cls: type, values: dict[str, Any] | None, prefix: str = "") -> Any:
    """Builds dataclass ``cls`` from nested ``values``; unknown keys and bad values raise ConfigError."""
    values = dict(values or {})
    hints = typing.get_type_hints(cls)
    known = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - set(known))
    if unknown:
        raise ConfigError(
            f"unknown config field {prefix}{unknown[0]!s}; valid fields of {prefix or 'the config'} are: "
            f"{', '.join(known)}"
        )
    kwargs = {}
    for name, f in known.items():
        full = f"{prefix}{name}"
        tp = hints[name]
        if dataclasses.is_dataclass(tp):
            sub = values.get(name, {})
            if dataclasses.is_dataclass(sub):
                sub = dataclasses.asdict(sub)
            if not isinstance(sub, dict):
                raise ConfigError(f"{full} = {sub!r} is invalid: expected a mapping of {tp.__name__} fields")
            kwargs[name] = from_dict(tp, sub, prefix=f"{full}.")
            continue
        if name in values:
            value = _coerce(full, values[name], tp)
        elif f.default is not dataclasses.MISSING:
            value = f.default
        else:
            value = f.default_factory()  # type: ignore[misc]
        _check_rules(full, value, f.metadata, values.get(name, value))
        kwargs[name] = value
    obj = cls(**kwargs)
    validate = getattr(obj, "validate", None)
    if validate is not None:
        validate()
    return obj


def to_dict(obj: Any) -> dict[str, Any]:
    return dataclasses.asdict(obj)


# Fields a resumed run may change without --accept-config-changes: they say how long to train, where and
# how often to write, how many loader processes to use and the memory layout of activations. None changes
# what the steps already taken computed; the budgets (train.epochs, train.max_steps, train.max_minutes) refit the lr schedule from the
# resumed step on, which is how a run that ended by its budget is extended.
RESUMABLE_CHANGES = frozenset({
    "train.epochs", "train.max_steps", "train.max_minutes", "train.resume", "train.accept_config_changes",
    "train.out", "train.checkpoint_every", "train.keep_every", "train.log_every", "data.workers", "data.data_root",
    "model.channels_last",
})
# Fields no resumed run may change: the checkpoint's weights, heads and epoch position depend on them.
FIXED_ON_RESUME = ("task", "model.", "pretext.", "lens.", "train.batch_size")


def config_differences(old: dict[str, Any], new: dict[str, Any], prefix: str = "") -> list[tuple[str, Any, Any]]:
    """``(dotted field, old value, new value)`` for every field where two nested config dicts differ."""
    differences = []
    for key in sorted(set(old) | set(new), key=str):
        dotted = f"{prefix}{key}"
        before, after = old.get(key), new.get(key)
        if isinstance(before, dict) and isinstance(after, dict):
            differences += config_differences(before, after, f"{dotted}.")
        elif before != after:
            differences.append((dotted, before, after))
    return differences


def dotted_default(cls: type, dotted: str) -> Any:
    """The default of the field ``dotted`` (e.g. ``optim.lr``) of the config dataclass ``cls``."""
    head, _, rest = dotted.partition(".")
    field_ = {f.name: f for f in dataclasses.fields(cls)}[head]
    value = field_.default if field_.default is not dataclasses.MISSING else field_.default_factory()
    return dotted_default(type(value), rest) if rest else value


def set_dotted(tree: dict[str, Any], dotted: str, value: Any) -> None:
    """Sets ``tree['a']['b'] = value`` for ``dotted == 'a.b'``, creating levels as needed."""
    *parents, leaf = dotted.split(".")
    node = tree
    for part in parents:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"cannot set {dotted}: {part} is not a section")
    node[leaf] = value


def merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = value
    return out


def load_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        loaded = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {path} is not valid YAML: {str(exc).splitlines()[0]}") from None
    if not isinstance(loaded, dict):
        raise ConfigError(f"config file {path} must hold a mapping at top level")
    return loaded


def parse_overrides(pairs: list[str]) -> dict[str, Any]:
    """Turns ``["optim.lr=0.1", "pretext.head_hidden=0"]`` into a nested dict (values parsed as YAML)."""
    tree: dict[str, Any] = {}
    for pair in pairs:
        if "=" not in pair:
            raise ConfigError(f"override {pair!r} is invalid: expected KEY=VALUE, e.g. optim.lr=0.05")
        key, raw = pair.split("=", 1)
        try:
            value = yaml.safe_load(raw) if raw else ""
        except yaml.YAMLError:
            value = raw
        set_dotted(tree, key.strip(), value)
    return tree


# --------------------------------------------------------------------------------------------
# The configuration shared by every pretext run. Run-level budgets default to the demo preset
# (minutes on a laptop CPU); paper presets live as YAML files under experiments/.


@dataclass
class DataConfig:
    data: str = option("demo", "'demo', 'cifar10', 'cifar100', 'stl10' or a folder of images")
    data_root: str | None = option(None, "cache/download root for demo and torchvision datasets")
    image_size: int = option(32, "side of the square crop fed to the network", min=8)
    crop_scale_min: float = option(0.5, "random-resized-crop minimum area fraction", gt=0.0, max=1.0)
    hflip: bool = option(True, "random horizontal flips")
    workers: int = option(-1, "data loading worker processes per training process; -1 = auto (every core but one "
                              "on CUDA, at most 8; one on a CPU of up to 7 cores: see selfsup.data.loading.auto_workers)",
                          min=-1)
    jpeg_draft: bool = option(True, "decode JPEGs at 1/2, 1/4 or 1/8 scale when every crop keeps its full resolution "
                                    "there (faster; pixels then differ from a full decode by the resampling only)")
    gpu_decode: bool | None = option(None, "decode JPEGs and crop them on the GPU (nvJPEG); None = on CUDA when the "
                                           "training images are files that no decoded cache holds")
    decoded_cache_gb: float = option(2.0, "decode the training images once into a memory-mapped uint8 file under "
                                          "~/.cache/selfsup/decoded (see selfsup.data.decoded), reused by later epochs "
                                          "and runs, when they take at most this many GB decoded (a folder of images "
                                          "only; 0 = off)", min=0.0)
    val_fraction: float = option(0.1, "fraction of train held out as val when the data has no val split", min=0.0, max=0.5)
    layout: str = option("auto", "how a folder of images is read: auto, flat (unlabelled images at its top level) "
                                 "or classes (one sub-folder per class)", choices=("auto", "flat", "classes"))


@dataclass
class ModelConfig:
    arch: str = option("alexnet_small", "encoder architecture (see selfsup.models.ARCHS)")
    width: float | None = option(None, "channel-width multiplier (None = the architecture's default)", gt=0.0)
    channels_last: bool | None = option(None, "train in the channels_last memory format; None = where measured "
                                               "faster: on CUDA, and on CPUs for AlexNets (see "
                                               "selfsup.models.use_channels_last)")


@dataclass
class OptimConfig:
    optimizer: str = option("sgd", choices=("sgd", "nesterov", "adam", "adamw"))
    lr: float = option(0.05, "peak learning rate for the global batch", gt=0.0)
    momentum: float = option(0.9, min=0.0, max=1.0)
    weight_decay: float = option(5e-4, min=0.0)
    schedule: str = option("cosine", choices=("constant", "step", "cosine"))
    warmup_epochs: float = option(0.0, "linear warm-up length in epochs", min=0.0)
    milestones: list[float] = option([], "epochs at which a step schedule multiplies the lr by gamma", min=0.0)
    gamma: float = option(0.1, gt=0.0, max=1.0)
    grad_clip: float = option(0.0, "max gradient norm; 0 disables clipping", min=0.0)


@dataclass
class TrainConfig:
    epochs: int = option(4, min=1)
    max_steps: int = option(0, "step budget: end the run after this many optimiser steps in all if that comes "
                               "before the epochs; the lr schedule ends there (0 = none)", min=0)
    max_minutes: float = option(0.0, "time budget: end the run after this many minutes of training in all "
                                     "(resumes included) if that comes first; the lr schedule follows the time "
                                     "spent, so runs are not exactly reproducible (0 = none)", min=0.0)
    batch_size: int = option(64, "images per step summed over all processes", min=1)
    precision: str = option("auto", "auto = bf16 autocast on CUDA and on CPUs that multiply bf16 in hardware (AVX512-BF16, AMX), fp32 elsewhere", choices=("auto", "fp32", "bf16"))
    device: str = option("auto", choices=("auto", "cpu", "cuda"))
    seed: int = option(0, min=0)
    out: str = option("runs/{task}", "output folder; {task} and {arch} are filled in")
    checkpoint_every: int = option(100, "also checkpoint every N steps (0 = at epoch ends only)", min=0)
    keep_every: int = option(0, "also keep a copy of the checkpoint every N steps as step_NNNNNN.pt beside last.pt, "
                                "to probe the encoder along pretraining (0 = none)", min=0)
    log_every: int = option(10, "TensorBoard scalar interval in steps", min=1)
    resume: bool = option(False, "continue from <out>/last.pt")
    accept_config_changes: bool = option(False, "with resume: continue although the config differs from the "
                                                "checkpoint's (the record lists the differences)")
    knn_every: int = option(0, "run a kNN monitor (val top-1/top-5) every N epochs and after the last one, "
                               "when the data has labels; 0 = off", min=0)
    knn_layer: str = option("", "layer whose globally average-pooled features the kNN monitor uses; "
                                "empty = the encoder's last layer")
    knn_max_train: int = option(10000, "the kNN monitor's neighbours: at most this many random images of the "
                                       "labelled train split (0 = all of it)", min=0)
    knn_max_val: int = option(5000, "the kNN monitor's queries: at most this many random images of the val "
                                    "split (0 = all of it)", min=0)


@dataclass
class LensConfig:
    enabled: bool = option(False, "put a learned lens in front of the encoder (Minderer et al. 2020, selfsup.models.lens): "
                                  "a small U-Net trained to make the pretext task harder, which erases cheap shortcuts; "
                                  "it is saved with the encoder and applied when probing")
    reconstruction_weight: float = option(0.3, "weight of the lens's penalty, the mean squared change it makes to the "
                                               "encoder's input (in the units the task feeds the encoder, ImageNet-"
                                               "normalised for RGB): larger keeps its changes smaller", gt=0.0)
    width: int = option(16, "channels of the lens's U-Net", min=1)
    lr: float = option(0.01, "learning rate of the lens's own Adam optimiser (constant)", gt=0.0)


@dataclass
class PretrainConfig:
    task: str = option("rotation", "pretext task")
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    lens: LensConfig = field(default_factory=LensConfig)
    pretext: dict = option({}, "task-specific options, validated by the task's own config class")

    def validate(self) -> None:
        """What the values say on their own; the task and architecture names, the task's options and its crop
        size are checked where the registries live (:func:`selfsup.pretext.check_pretrain_config`)."""
        if self.optim.schedule == "step" and not self.optim.milestones:
            raise ConfigError("optim.milestones = [] is invalid with optim.schedule = step: give at least one epoch")
