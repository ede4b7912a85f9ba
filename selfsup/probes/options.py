"""What an ssl-probe run is asked to do (:class:`ProbeOptions`, one field per ``ssl-probe`` option), the checks
that refuse an option value or combination before any work, and the names derived from the options (the
record's kind, its default place)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from selfsup.config import ModelConfig
from selfsup.errors import ConfigError, check_option_values
from selfsup.outputs import check_output_dir, check_output_file
from selfsup.probes.frozen import RANDOM_INPUT_TASK
from selfsup.probes.knn import DEFAULT_KS
from selfsup.probes.records import check_selection

METHODS = ("linear", "knn", "svm")
# protocols --also runs on the linear probe's feature pass: kNN on its features, the linear probe and kNN on
# globally average-pooled ones (global-knn costs next to nothing; knn on ~9k dims costs more than the probe)
ALSO = ("knn", "global", "global-knn")
KNN_TEMPERATURE = 0.07
# --bn-stats auto chooses on a quick linear probe, not on the full one run twice: images per split and epochs
AUTO_IMAGES = 5000
AUTO_EPOCHS = 10


@dataclasses.dataclass(kw_only=True)
class EncoderOptions:
    """The options ssl-probe, ssl-finetune and ssl-detect share (``cli.common.add_encoder_arguments``): the
    encoder and how it is fed, the device, the seed and where the record goes."""

    checkpoint: str  # an ssl-pretrain checkpoint (last.pt) or "random"
    arch: str = ModelConfig.arch  # for checkpoint "random"
    width: float | None = None  # for checkpoint "random"; None: the architecture's own
    input_like: str = RANDOM_INPUT_TASK  # for checkpoint "random": fed as this task feeds its encoder
    workers: int = 1
    device: str = "auto"
    seed: int = 0
    out: str | None = None
    trust_checkpoint: bool = False


@dataclasses.dataclass(kw_only=True)
class ProbeOptions(EncoderOptions):
    """One field per ``ssl-probe`` option, with its default (``ssl-probe --help`` says what each means);
    None is "not given": the protocol's, the checkpoint's or the data's value is used."""

    freeze: str = "all"  # the probed layer (conv3, res4, ...) or "all"
    method: str = "linear"  # one of METHODS
    data: str | None = None
    data_root: str | None = None
    data_layout: str = "auto"
    pool: str = "auto"  # a pooling preset of probes.pooling.PRESETS
    protocol: str = "common"  # a key of probes.linear.PROTOCOLS
    epochs: int | None = None
    lr: float | None = None
    batch_size: int | None = None
    augment: bool = False
    knn_k: list[int] = dataclasses.field(default_factory=lambda: list(DEFAULT_KS))
    knn_temperature: float = KNN_TEMPERATURE
    svm_costs: list[float] | None = None
    shots: list[int] | None = None
    draws: int = 3
    train_images: int | None = None
    also: list[str] = dataclasses.field(default_factory=list)  # names of ALSO
    selection_split: str = "val"
    force_test_selection: bool = False
    save_features: str | None = None
    max_cache_gb: float = 6.0
    image_size: int | None = None
    bn_stats: str = "auto"  # one of probes.bn.BN_STATS
    precision: str = "auto"
    head_precision: str = "auto"
    eval_crop: float | None = None


def record_kind(options: ProbeOptions) -> str:
    if options.method == "linear":
        return "lowshot_linear" if options.shots else "linear_probe"
    if options.method == "svm":
        return "lowshot_svm" if options.shots else "svm_voc07"
    return "knn"


def default_record_path(checkpoint: str, arch: str, input_like: str, name: str) -> Path:
    """Where ssl-probe, ssl-finetune and ssl-detect put the record file ``name`` when --out is not given: next to
    the checkpoint, or for ``random`` under runs/random-ARCH/ (runs/random-ARCH-TASK-input/ when fed as a task
    other than rotation feeds its encoder), so that random rows of different inputs do not overwrite each other."""
    if checkpoint == "random":
        suffix = "" if input_like == RANDOM_INPUT_TASK else f"-{input_like}-input"
        return Path("runs") / f"random-{arch}{suffix}" / name
    return Path(checkpoint).parent / name


def default_out(options: ProbeOptions) -> Path:
    """``--out``, else the record's place (:func:`default_record_path`)."""
    if options.out is not None:
        return Path(options.out)
    name = {"linear_probe": "probe", "lowshot_linear": "lowshot_linear", "knn": "knn", "svm_voc07": "svm",
            "lowshot_svm": "lowshot_svm"}[record_kind(options)]
    return default_record_path(options.checkpoint, options.arch, options.input_like, f"{name}_{options.freeze}.json")


def check_options(options: ProbeOptions) -> None:
    """ConfigError (one line) for an option value or combination that cannot work, before any work."""
    check_option_values(options, paths=("checkpoint", "data", "data_root", "save_features", "out"),
                        at_least=(("epochs", 1), ("batch_size", 2), ("draws", 1), ("image_size", 1), ("workers", 0),
                                  ("train_images", 2)),
                        positive=("lr", "width", "knn_temperature"),
                        reasons={"batch_size": " (the probe's BatchNorm needs two images)"})
    if options.max_cache_gb < 0:
        raise ConfigError(f"--max-cache-gb {options.max_cache_gb:g} is invalid: must be at least 0")
    if options.eval_crop is not None and not 0 < options.eval_crop <= 1:
        raise ConfigError(f"--eval-crop {options.eval_crop:g} is invalid: must be a fraction in (0, 1]")
    if options.method == "svm":
        if options.selection_split != "val":
            raise ConfigError("--selection-split does not apply to --method svm: its costs are chosen by 3-fold "
                              "cross-validation on trainval, and test is used once")
    else:
        check_selection(options.selection_split, options.force_test_selection)
    if options.augment and (options.method != "linear" or options.shots or options.save_features is not None):
        raise ConfigError("--augment recomputes features every epoch: it only applies to the plain linear probe "
                          "(not with --method knn/svm, --shots or --save-features)")
    if options.train_images is not None and (options.method == "svm" or options.shots):
        raise ConfigError("--train-images applies to the linear and kNN probes, not to --method svm or --shots "
                          "(which draw their own training images)")
    unknown = [name for name in options.also if name not in ALSO]
    if unknown:
        raise ConfigError(f"--also {','.join(options.also)} is invalid: {', '.join(unknown)} is not one of "
                          f"{', '.join(ALSO)}")
    if options.also and (options.method != "linear" or options.shots or options.augment):
        raise ConfigError("--also reuses the linear probe's cached features: it applies to --method linear without "
                          "--shots or --augment")
    if {"global", "global-knn"} & set(options.also) and options.pool == "global":
        raise ConfigError("--also global or global-knn with --pool global would run the same probe twice")
    if options.shots and options.method == "knn":
        raise ConfigError("--shots applies to --method linear and svm, not knn")


def check_outputs(options: ProbeOptions) -> None:
    """OutputError (one line) when --out or --save-features cannot be written, before any work. The
    default record place is checked once the checkpoint is known to exist: a mistyped checkpoint path
    must not create folders."""
    if options.out is not None:
        check_output_file(options.out, "--out")
    if options.save_features is not None:
        check_output_dir(options.save_features, "--save-features")
