"""What an ssl-detect run is asked to do (:class:`DetectOptions`, one field per ``ssl-detect`` option), the checks
that refuse an option value or combination before any work, and the places of what a run writes."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from PIL import Image

from selfsup.errors import ConfigError, check_option_values
from selfsup.outputs import check_output_file
from selfsup.probes.options import EncoderOptions, default_record_path
from selfsup.probes.records import check_selection
from selfsup.transfer.detection_model import FC_DIM, MAX_SIZE, MIN_SIZE

BN_STATS_CHOICES = ("train", "checkpoint")
FRONTENDS = ("fold", "exact")
RESCALE_IMAGES = 32
DEFAULT_EPOCHS = 16  # the demo set in about 8 minutes on 2 CPU cores


@dataclasses.dataclass(kw_only=True)
class DetectOptions(EncoderOptions):
    """One field per ``ssl-detect`` option, with its default (``ssl-detect --help`` says what each means);
    None is "not given": the default rule the help names applies."""

    data: str = "demo"  # a VOC-layout folder or "demo"
    data_root: str | None = None
    backbone: str = "auto"  # one of detection_model.BACKBONES
    frontend: str = "fold"  # one of FRONTENDS
    freeze: str = "none"  # "none" or the last frozen layer
    frozen_bn: bool = True
    bn_stats: str | None = None  # one of BN_STATS_CHOICES; None: train with frozen BatchNorms
    min_size: int = MIN_SIZE
    max_size: int = MAX_SIZE
    multiscale: list[int] | None = None
    epochs: int = DEFAULT_EPOCHS
    lr: float = 0.02
    batch_size: int = 4
    fc_dim: int = FC_DIM
    rescale: bool = False
    train_split: str = "train"
    val_split: str = "val"
    test_split: str = "test"
    selection_split: str = "val"
    force_test_selection: bool = False
    eval_every: int = 1
    precision: str = "auto"
    figure: str | None = None


def check_options(options: DetectOptions) -> None:
    """ConfigError (one line) for an option value or combination that cannot work, before any work."""
    check_option_values(options, paths=("checkpoint", "data", "data_root", "out", "figure"),
                        at_least=(("epochs", 1), ("batch_size", 1), ("min_size", 1), ("max_size", 1), ("fc_dim", 1),
                                  ("eval_every", 1), ("workers", 0)),
                        positive=("lr", "width"))
    if options.rescale and not options.frozen_bn:
        raise ConfigError("--rescale is invalid with --trainable-bn: a BatchNorm that trains renormalises every batch "
                          "and undoes the rescaling; allowed: --rescale with --frozen-bn (the default)")
    if options.bn_stats is not None and not options.frozen_bn:
        raise ConfigError(f"--bn-stats {options.bn_stats} is invalid with --trainable-bn: trainable BatchNorms "
                          "normalise with batch statistics and update their running ones; allowed: --bn-stats with "
                          "--frozen-bn (the default)")
    if options.max_size < options.min_size:
        raise ConfigError(f"--max-size {options.max_size} is invalid: must be at least --min-size {options.min_size}")
    if options.figure is not None and Path(options.figure).suffix.lower() not in Image.registered_extensions():
        raise ConfigError(f"--figure {options.figure} is invalid: give an image file name such as detections.png")
    check_selection(options.selection_split, options.force_test_selection)


def check_outputs(options: DetectOptions) -> None:
    """OutputError (one line) when --out or --figure cannot be written, before any work; the default
    places are checked once the checkpoint has loaded (a mistyped path must not create folders)."""
    if options.out is not None:
        check_output_file(options.out, "--out")
    if options.figure is not None:
        check_output_file(options.figure, "--figure")


def default_out(options: DetectOptions, backbone: str) -> Path:
    """``--out``, else the record's place (:func:`selfsup.probes.options.default_record_path`):
    detect_BACKBONE.json."""
    if options.out is not None:
        return Path(options.out)
    return default_record_path(options.checkpoint, options.arch, options.input_like, f"detect_{backbone}.json")


def figure_path(options: DetectOptions, out: Path) -> Path:
    """``--figure``, else the record's place with .png for .json."""
    return out.with_suffix(".png") if options.figure is None else Path(options.figure)


def detector_path(out: Path) -> Path:
    """Where the trained detector is saved: beside the record, NAME.detector.pt for NAME.json."""
    return out.with_name(f"{out.stem}.detector.pt")
