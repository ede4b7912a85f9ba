"""Backbone export: a pretrained encoder as a torchvision / timm ``state_dict``, a Detectron2
checkpoint, or this package's own format, for other frameworks to load.

Every export takes ImageNet-normalised RGB: the task's input mapping (Sobel, L) is folded into conv1
first (:mod:`selfsup.transfer.frontend`). ``FILE`` is written atomically together with ``FILE.json``,
which says what it holds, what was folded and the line of Python that loads it.

Decisions:

* ``torchvision``: the keys of ``torchvision.models.resnet18/50()`` including ``fc.weight`` /
  ``fc.bias``, which are **zeros and untrained**, there only so that ``load_state_dict`` works with
  ``strict=True`` on the stock model; replace or fine-tune the classifier.
* ``timm``: the same keys without ``fc``, for ``timm.create_model(name, num_classes=0)`` (timm's
  classifier-free form), strict.
* ResNets that differ from torchvision's only in the stem (``*_small`` at width 1: 3x3 stride-1 conv1,
  no max-pool; a Sobel-folded conv1 two pixels larger) export for torchvision and timm with the stem
  replacement written into the load line. Other widths have no torchvision or timm model and are
  refused, as are AlexNets (no torchvision/timm/Detectron2 BatchNorm AlexNet): use ``selfsup``.
* ``detectron2``: ``{"model": {name: numpy array}, "__author__": "selfsup", "matching_heuristics":
  True}`` pickled to a ``.pkl``, with the key names of detectron2's
  ``tools/convert-torchvision-to-d2.py`` (``conv1`` -> ``stem.conv1``, ``bn1`` -> ``stem.conv1.norm``,
  ``layerN`` -> ``res{N+1}``, ``bnK`` -> ``convK.norm``, ``downsample.0/1`` -> ``shortcut(.norm)``).
  BatchNorm ``num_batches_tracked`` counters are left out (detectron2's FrozenBatchNorm has none).
  Detectron2's stem is a fixed 7x7 conv + max-pool, so only stock-stem ResNets export. The pixel
  format goes into the config: RGB, PIXEL_MEAN/STD = ImageNet mean/std x 255.
* ``selfsup``: ``{"format", "spec", "state_dict", "metadata"}``; :func:`load_exported` rebuilds it
  with ``build_encoder`` (conv1's folded geometry from the spec) and ``load_state_dict(strict=True)``.
"""

from __future__ import annotations

import json
import pickle
from collections import OrderedDict
from pathlib import Path
from typing import Any

import torch
import torchvision
from torch import Tensor, nn

from selfsup.checkpoint import atomic_file, atomic_save, load_checkpoint
from selfsup.errors import CheckpointError, ConfigError
from selfsup.models import Encoder, build_encoder
from selfsup.models.base import load_weights
from selfsup.models.resnet import ResNet
from selfsup.models.normalization import IMAGENET_MEAN, IMAGENET_STD
from selfsup.pretext import check_pretrain_record, encoder_from_checkpoint
from selfsup.transfer.frontend import INPUT, fold_input_mapping, input_conv, replace_input_conv

__all__ = ["FORMATS", "detectron2_key", "export_backbone", "load_exported", "load_pretrained"]

FORMATS = ("torchvision", "timm", "detectron2", "selfsup")
SPEC_INPUT = "imagenet-normalised RGB"
FC_NOTE = "fc.weight and fc.bias are zeros: an untrained placeholder so that strict=True loading works"
# Detectron2 takes 0-255 pixels and normalises them inside the model.
PIXEL_MEAN = [round(255 * m, 3) for m in IMAGENET_MEAN]
PIXEL_STD = [round(255 * s, 3) for s in IMAGENET_STD]


def load_pretrained(checkpoint: str | Path, trust: bool = False) -> tuple[Encoder, dict[str, Any]]:
    """The encoder of an ssl-pretrain checkpoint, as trained (its own input channels), and the checkpoint.
    CheckpointError when the file is not such a checkpoint or its encoder weights do not fit its record;
    ``trust`` is :func:`selfsup.checkpoint.load_checkpoint`'s (``--trust-checkpoint``)."""
    state = load_checkpoint(checkpoint, trust=trust)
    check_pretrain_record(state, checkpoint)
    encoder = encoder_from_checkpoint(state, checkpoint)
    # The task's heads are not needed: only the encoder's entries of the task module are loaded.
    prefix = "encoder."
    weights = {k[len(prefix):]: v for k, v in state["model"].items() if isinstance(k, str) and k.startswith(prefix)}
    load_weights(encoder, weights, f"checkpoint {checkpoint}", key_prefix=prefix)
    return encoder.eval(), state


def detectron2_key(torchvision_key: str) -> str:
    """A torchvision ResNet key renamed by the rules of detectron2's ``convert-torchvision-to-d2.py``."""
    key = torchvision_key if "layer" in torchvision_key else "stem." + torchvision_key
    for stage in (1, 2, 3, 4):
        key = key.replace(f"layer{stage}", f"res{stage + 1}")
    for index in (1, 2, 3):
        key = key.replace(f"bn{index}", f"conv{index}.norm")
    return key.replace("downsample.0", "shortcut").replace("downsample.1", "shortcut.norm")


def _torchvision_layout(encoder: Encoder, fmt: str) -> tuple[str, list[str]]:
    """The torchvision model name whose tensors this encoder fills, and the Python statements that adapt
    that model's stem (``m`` = the model) first; ConfigError (``--format``) when no such model exists."""
    if not isinstance(encoder, ResNet):
        raise ConfigError(f"--format {fmt} needs a ResNet encoder: {encoder.arch} is a BatchNorm AlexNet, which "
                          f"torchvision, timm and detectron2 have no model for; use --format selfsup")
    name = encoder.arch.removesuffix("_small")
    with torch.device("meta"):  # shapes only: no memory, no initialisation
        stock = getattr(torchvision.models, name)()
    ours = encoder.torchvision_state_dict()
    for key, value in stock.state_dict().items():
        if key.startswith(("fc.", "conv1.")):
            continue
        if key not in ours or ours[key].shape != value.shape:
            shape = "missing" if key not in ours else "x".join(map(str, ours[key].shape))
            raise ConfigError(f"--format {fmt} needs torchvision's {name} widths: {encoder.arch}'s {key} is "
                              f"{shape}, torchvision's is {'x'.join(map(str, value.shape))}; use --format selfsup")
    _, conv = input_conv(encoder)
    changes = []
    if (conv.kernel_size, conv.stride, conv.padding) != (stock.conv1.kernel_size, stock.conv1.stride, stock.conv1.padding):
        changes.append(f"m.conv1 = torch.nn.Conv2d(3, {conv.out_channels}, {conv.kernel_size}, stride={conv.stride}, "
                       f"padding={conv.padding}, bias=False)")
    if getattr(encoder.res2, "pool", None) is None:
        changes.append("m.maxpool = torch.nn.Identity()")
    return name, changes


def _torchvision_state(encoder: ResNet, with_fc: bool) -> OrderedDict[str, Tensor]:
    state = OrderedDict((k, v.detach().clone()) for k, v in encoder.torchvision_state_dict().items())
    if with_fc:
        features = encoder.out_channels("res5")
        state["fc.weight"] = torch.zeros(1000, features)
        state["fc.bias"] = torch.zeros(1000)
    return state


def _detectron2_config(out: Path, name: str) -> list[str]:
    """``cfg.merge_from_list`` arguments that make detectron2 read this export as it was trained."""
    config = ["MODEL.WEIGHTS", str(out), "MODEL.RESNETS.DEPTH", name.removeprefix("resnet"),
              "INPUT.FORMAT", "RGB",
              "MODEL.PIXEL_MEAN", str(PIXEL_MEAN), "MODEL.PIXEL_STD", str(PIXEL_STD)]
    # torchvision's bottlenecks stride in the 3x3 conv; R18/R34 need their 64-channel res2 named.
    config += ["MODEL.RESNETS.STRIDE_IN_1X1", "False"] if name == "resnet50" else ["MODEL.RESNETS.RES2_OUT_CHANNELS", "64"]
    return config


def export_backbone(checkpoint: str | Path, fmt: str, out: str | Path, trust: bool = False) -> dict[str, Any]:
    """Writes the checkpoint's encoder, folded to take ImageNet-normalised RGB, as ``fmt`` to ``out``
    (and ``out`` + ``.json``); returns the metadata written there, ``load`` being the line that loads it.
    ``trust`` is :func:`selfsup.checkpoint.load_checkpoint`'s (``--trust-checkpoint``)."""
    if fmt not in FORMATS:
        raise ConfigError(f"--format {fmt!r} is not supported; choose one of: {', '.join(FORMATS)}")
    out = Path(out)
    if fmt == "detectron2" and out.suffix != ".pkl":
        raise ConfigError(f"--out {out} must end in .pkl for --format detectron2 (detectron2 unpickles only .pkl "
                          "files)")
    encoder, state = load_pretrained(checkpoint, trust=trust)
    task = state["task"]
    folded, folding = fold_input_mapping(encoder, task["name"], task["options"])
    metadata: dict[str, Any] = {
        "format": fmt, "file": str(out), "source_checkpoint": str(checkpoint), "task": task["name"],
        "arch": folded.arch, "width": state["encoder"]["width"], "input": INPUT, "front_end_folding": folding,
    }
    if fmt == "selfsup":
        _write_selfsup(folded, metadata, out)
    else:
        _write_resnet(folded, fmt, metadata, out)
    with atomic_file(out.with_name(out.name + ".json"), "w") as handle:
        handle.write(json.dumps(metadata, indent=2) + "\n")
    return metadata


def _write_selfsup(encoder: Encoder, metadata: dict[str, Any], out: Path) -> None:
    _, conv = input_conv(encoder)
    spec = {"arch": encoder.arch, "width": metadata["width"], "in_channels": 3, "input": SPEC_INPUT,
            "conv1": {"kernel_size": list(conv.kernel_size), "stride": list(conv.stride),
                      "padding": list(conv.padding), "bias": conv.bias is not None}}
    metadata["load"] = f"from selfsup.transfer.export import load_exported; encoder = load_exported({str(out)!r})"
    atomic_save({"format": "selfsup", "spec": spec, "state_dict": encoder.state_dict(), "metadata": metadata}, out)


def _write_resnet(encoder: Encoder, fmt: str, metadata: dict[str, Any], out: Path) -> None:
    name, changes = _torchvision_layout(encoder, fmt)
    adapt = "".join(f"{change}; " for change in changes)
    if changes:
        if fmt == "detectron2":
            raise ConfigError(f"--format detectron2 needs a 7x7 stride-2 conv1 and a max-pool (detectron2's fixed "
                              f"ResNet stem), and this {encoder.arch} ({metadata['front_end_folding']}) has another "
                              "stem; use --format torchvision or selfsup")
        metadata["stem"] = f"differs from {name}'s 7x7 stride-2 conv1 + max-pool; the load line replaces it first"
    load = f"m.load_state_dict(torch.load({str(out)!r}))"
    if fmt == "torchvision":
        metadata["classifier"] = FC_NOTE
        metadata["load"] = f"import torch, torchvision; m = torchvision.models.{name}(); {adapt}{load}"
        atomic_save(_torchvision_state(encoder, with_fc=True), out)
    elif fmt == "timm":
        metadata["classifier"] = "none: timm's classifier-free num_classes=0 model"
        metadata["load"] = f"import timm, torch; m = timm.create_model({name!r}, pretrained=False, num_classes=0); {adapt}{load}"
        atomic_save(_torchvision_state(encoder, with_fc=False), out)
    else:
        config = _detectron2_config(out, name)
        metadata["detectron2_config"] = config
        metadata["pixel_format"] = f"INPUT.FORMAT RGB, MODEL.PIXEL_MEAN {PIXEL_MEAN}, MODEL.PIXEL_STD {PIXEL_STD} (0-255 pixels)"
        metadata["load"] = f"cfg.merge_from_list({config})"
        model = {detectron2_key(k): v.numpy() for k, v in _torchvision_state(encoder, with_fc=False).items()
                 if not k.endswith("num_batches_tracked")}
        saved = {"model": model, "__author__": "selfsup", "matching_heuristics": True, "selfsup": metadata}
        with atomic_file(out) as handle:
            pickle.dump(saved, handle)


def load_exported(path: str | Path) -> Encoder:
    """The encoder of a ``--format selfsup`` export, in eval mode, for ``normalize_rgb`` input; CheckpointError
    (one line) when ``path`` is missing, unsafe, not such an export or damaged."""
    saved = load_checkpoint(path)
    if saved.get("format") != "selfsup" or not isinstance(saved.get("spec"), dict):
        raise CheckpointError(f"{path} is not an ssl-export --format selfsup file")
    spec = saved["spec"]
    try:
        encoder = build_encoder(spec["arch"], in_channels=spec["in_channels"], width=spec["width"])
        geometry = spec["conv1"]
        conv1 = nn.Conv2d(spec["in_channels"], input_conv(encoder)[1].out_channels, tuple(geometry["kernel_size"]),
                          tuple(geometry["stride"]), tuple(geometry["padding"]), bias=geometry["bias"])
    except (KeyError, ValueError, TypeError) as exc:  # the values came from the file
        raise CheckpointError(f"{path}: its spec {spec} cannot be built ({type(exc).__name__}: {exc})") from exc
    # A Sobel fold grows conv1 by two pixels, so the stock conv1 is replaced by the exported geometry.
    replace_input_conv(encoder, conv1)
    load_weights(encoder, saved.get("state_dict"), str(path))
    return encoder.eval()
