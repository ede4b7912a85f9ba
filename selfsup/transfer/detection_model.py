"""Detection transfer, the detector: a pretrained encoder as the backbone of torchvision's Faster R-CNN.

Backbones (``--backbone``):

- ``conv5`` (AlexNets; ``auto``'s choice for them): Fast/Faster R-CNN on AlexNet. One feature level, the
  unpooled conv5 map (stride 16 for the ImageNet AlexNets, 4 for ``alexnet_small``); RoIAlign to
  ``grid x grid`` cells (6, AlexNet's pool5, unless pretext weights say otherwise); a two-layer box head
  (torchvision's ``TwoMLPHead``: fc6 -> ReLU -> fc7 -> ReLU). fc6/fc7 start from the checkpoint's
  when its pretext task has such layers (DeepCluster's fc6+fc7 over a max-pooled grid, Jigsaw's per-tile
  fc6 over its 3x3 pool5, BatchNorm folded in; their grid and width then fix the head's), else fresh.
- ``fpn`` (ResNets; ``auto``'s choice): ``torchvision.ops.FeaturePyramidNetwork`` over res2..res5 plus
  the max-pooled extra level, as torchvision's ``fasterrcnn_resnet50_fpn`` (256 channels, or the widest
  tap's if narrower); RoIAlign 7x7 over the pyramid and a fresh ``TwoMLPHead``.
- ``c4`` (ResNets): Detectron's C4. The backbone stops at res4 (one level); RoIAlign 14x14 on it, then
  the encoder's own res5 (stride 2 -> 7x7) and a global average pool form the box head.

Anchors: single-level backbones get sizes min_size/10 x (1, 2, 4, 8) (13-102 px at the default 128 px,
60-480 at VOC's usual 600 px), FPN levels one size each, 8 x the level's stride (torchvision's 32-512 for
ImageNet ResNets); aspect ratios 0.5, 1, 2. Proposal and RoI counts are the papers' scaled to small
images: 1000 -> 500 proposals after NMS in training, 600 -> 300 at test (Faster R-CNN's 300), 64 RoIs
per image (Fast R-CNN's 128 per 2-image batch), a quarter positive.

The encoder is fed ImageNet-normalised RGB by the detector's transform when its input mapping was folded
into conv1 (`selfsup.transfer.frontend`), or [0, 1] RGB that the task's exact evaluation input mapping
(``PretextTask.eval_input``, what probes and fine-tuning feed it) turns into its input. With ``frozen_bn`` every BatchNorm of the encoder becomes a ``FrozenBatchNorm2d`` (running
statistics and affine fixed, as Detectron does for small detection batches); otherwise they train in
train mode. ``ssl-detect --bn-stats train`` (the default with frozen BatchNorms) first re-estimates those
statistics on the detection training images as the backbone sees them (:func:`reestimate_backbone_bn`). bf16 precision runs the backbone and the box head under autocast; RPN/box predictions and
all box arithmetic stay float32 (bf16 would round coordinates above 128 px to whole pixels).

Its data: `selfsup.transfer.detection_data`; its training and evaluation: `selfsup.transfer.detection`.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import torch
from torch import Tensor, nn
from torchvision.models.detection import FasterRCNN
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
from torchvision.models.detection.rpn import AnchorGenerator
from torchvision.models.detection.transform import GeneralizedRCNNTransform
from torchvision.ops import FeaturePyramidNetwork, MultiScaleRoIAlign
from torchvision.ops.feature_pyramid_network import LastLevelMaxPool
from torchvision.ops.misc import FrozenBatchNorm2d

from selfsup.epoch import autocast_context
from selfsup.errors import CheckpointError, ConfigError
from selfsup.models import ALEXNET_LAYERS, Encoder
from selfsup.models.normalization import IMAGENET_MEAN, IMAGENET_STD
from selfsup.pretext.base import PretextFC
from selfsup.probes.bn import reestimate_bn_statistics
from selfsup.transfer.rescale import Unit, UnitStats, rescalable_units, rescale_within_layer

BACKBONES = ("auto", "fpn", "c4", "conv5")
RESNET_TAPS = ("res2", "res3", "res4", "res5")
ASPECT_RATIOS = (0.5, 1.0, 2.0)
MIN_SIZE = 128  # default short side: the demo's 112-160 px images at about their own scale
MAX_SIZE = 256
FC_DIM = 512  # fresh fc6/fc7 (the papers' 4096 is for 224+ px AlexNets; a CPU-sized default)
FPN_CHANNELS = 256
ALEXNET_GRID = 6  # AlexNet's pool5 output
FPN_GRID = 7
C4_GRID = 14
RPN_TRAIN = (1000, 500)  # proposals before / after NMS
RPN_TEST = (600, 300)
ROIS_PER_IMAGE = 64


def is_resnet(encoder: Encoder) -> bool:
    return all(tap in encoder.layer_names for tap in RESNET_TAPS)


def is_alexnet(encoder: Encoder) -> bool:
    return tuple(encoder.layer_names) == ALEXNET_LAYERS


def resolve_backbone(encoder: Encoder, backbone: str) -> str:
    """The backbone ``backbone`` means for ``encoder`` (``auto``: conv5 for AlexNets, fpn for ResNets)."""
    if backbone not in BACKBONES:
        raise ConfigError(f"--backbone {backbone!r} is invalid: allowed values are {', '.join(BACKBONES)}")
    if is_alexnet(encoder):
        allowed = ("auto", "conv5")
    elif is_resnet(encoder):
        allowed = ("auto", "fpn", "c4")
    else:
        raise CheckpointError(f"{encoder.arch} has layers {', '.join(encoder.layer_names)}: detection needs an "
                              f"AlexNet (conv1..conv5) or a ResNet (res2..res5)")
    if backbone not in allowed:
        raise ConfigError(f"--backbone {backbone} is invalid for {encoder.arch}: allowed values are {', '.join(allowed)}")
    if backbone == "auto":
        return "conv5" if is_alexnet(encoder) else "fpn"
    return backbone


def feature_strides(encoder: Encoder) -> dict[str, int]:
    """Stride of every tap in input pixels, rounded to a power of two as torchvision's poolers do."""
    size = 256
    return {tap: 2 ** round(math.log2(size / shape[1])) for tap, shape in encoder.feature_shapes(size).items()}


def single_level_anchor_sizes(min_size: int) -> tuple[int, ...]:
    return tuple(max(1, round(min_size / 10 * 2**k)) for k in range(4))


def freeze_batchnorm(module: nn.Module) -> int:
    """Replaces every ``BatchNorm2d`` under ``module`` by a ``FrozenBatchNorm2d`` with its statistics and
    affine; returns how many were replaced. (A BatchNorm without running statistics has nothing to
    freeze and is left alone.)"""
    count = 0
    for name, child in list(module.named_children()):
        if isinstance(child, nn.BatchNorm2d) and child.track_running_stats:
            frozen = FrozenBatchNorm2d(child.num_features, eps=child.eps).to(child.running_mean.device)
            if child.affine:
                frozen.weight.copy_(child.weight.detach())
                frozen.bias.copy_(child.bias.detach())
            frozen.running_mean.copy_(child.running_mean)
            frozen.running_var.copy_(child.running_var)
            setattr(module, name, frozen)
            count += 1
        else:
            count += freeze_batchnorm(child)
    return count


def _to_float(value: Any) -> Any:
    if isinstance(value, Tensor):
        return value.float()
    if isinstance(value, dict):
        return OrderedDict((key, _to_float(item)) for key, item in value.items())
    return value


class Autocast(nn.Module):
    """Runs ``module`` under the precision's autocast and returns float32, so that what follows (box
    arithmetic, losses) stays exact."""

    def __init__(self, module: nn.Module, precision: str) -> None:
        super().__init__()
        self.module = module
        self.precision = precision

    def forward(self, x: Tensor) -> Any:
        with autocast_context(self.precision, x.device):
            return _to_float(self.module(x))


class InputMapping(nn.Module):
    """A task's fixed input mapping ([0, 1] RGB -> encoder input) as a parameter-free module."""

    def __init__(self, input_fn: Callable[[Tensor], Tensor]) -> None:
        super().__init__()
        self.input_fn = input_fn

    def forward(self, x: Tensor) -> Tensor:
        return self.input_fn(x)


class EncoderBackbone(nn.Module):
    """An encoder's taps as a torchvision detection backbone: an ordered dict of feature maps, through an
    FPN when ``fpn`` is set."""

    def __init__(self, encoder: Encoder, taps: Sequence[str], frontend: nn.Module, fpn: bool) -> None:
        super().__init__()
        self.frontend = frontend
        self.encoder = encoder
        self.taps = tuple(taps)
        channels = [encoder.out_channels(tap) for tap in self.taps]
        # narrow encoders (the *_small ResNets) get a pyramid no wider than their widest tap
        width = min(FPN_CHANNELS, max(channels))
        self.fpn = FeaturePyramidNetwork(channels, width, extra_blocks=LastLevelMaxPool()) if fpn else None
        self.out_channels = width if fpn else channels[0]

    def forward(self, x: Tensor) -> OrderedDict[str, Tensor]:
        taps = self.encoder.forward_taps(self.frontend(x), self.taps)
        features = OrderedDict((str(i), taps[tap]) for i, tap in enumerate(self.taps))
        return self.fpn(features) if self.fpn is not None else features


class MultiScaleTransform(GeneralizedRCNNTransform):
    """torchvision's resize-normalise-batch transform, drawing the short side from ``train_sizes`` in
    training and using ``test_size`` in evaluation."""

    def __init__(self, train_sizes: Sequence[int], test_size: int, max_size: int, mean: Sequence[float],
                 std: Sequence[float]) -> None:
        super().__init__(tuple(train_sizes), max_size, list(mean), list(std))
        self.train_sizes = tuple(train_sizes)
        self.test_size = test_size

    def train(self, mode: bool = True) -> MultiScaleTransform:
        super().train(mode)
        self.min_size = self.train_sizes if mode else (self.test_size,)
        return self


class C4Head(nn.Module):
    """Detectron's C4 box head: the encoder's res5 on each RoI's features, then a global average pool."""

    def __init__(self, encoder: Encoder) -> None:
        super().__init__()
        self.res5 = encoder.res5
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())
        # not a submodule: the encoder is registered under the backbone already
        self._encoder = [encoder]

    def train(self, mode: bool = True) -> C4Head:
        super().train(mode)
        # res5 is the encoder's: the encoder decides which of its BatchNorms stay in eval mode (frozen stages)
        self._encoder[0].train(mode)
        return self

    def forward(self, x: Tensor) -> Tensor:
        return self.pool(self.res5(x))


def _box_head(channels: int, grid: int, fc_dim: int, fc: PretextFC | None) -> tuple[TwoMLPHead, int, str]:
    """The AlexNet box head over ``channels x grid x grid`` RoI features; fc6/fc7 from ``fc`` where they fit."""
    if fc is not None and fc.layers[0].in_features == channels * fc.grid**2:
        grid, fc_dim = fc.grid, fc.layers[0].out_features
        head = TwoMLPHead(channels * grid**2, fc_dim)
        head.fc6.load_state_dict(fc.layers[0].state_dict())
        loaded = ["fc6"]
        if len(fc.layers) > 1 and tuple(fc.layers[1].weight.shape) == (fc_dim, fc_dim):
            head.fc7.load_state_dict(fc.layers[1].state_dict())
            loaded.append("fc7")
        return head, grid, f"{' + '.join(loaded)} from the checkpoint's {fc.source}"
    head = TwoMLPHead(channels * grid**2, fc_dim)
    reason = "" if fc is None else f" (the checkpoint's {fc.source} expects {fc.layers[0].in_features} inputs)"
    return head, grid, f"fresh{reason}"


def build_detector(encoder: Encoder, num_classes: int, *, backbone: str = "auto", min_size: int = MIN_SIZE,
                   max_size: int = MAX_SIZE, train_sizes: Sequence[int] | None = None,
                   input_fn: Callable[[Tensor], Tensor] | None = None, pretext: PretextFC | None = None,
                   fc_dim: int = FC_DIM, precision: str = "fp32") -> tuple[FasterRCNN, dict[str, Any]]:
    """Faster R-CNN over ``encoder`` for ``num_classes`` object classes (background added), and a
    description of its parts for records.

    ``input_fn`` None: the encoder takes ImageNet-normalised RGB (folded front-end); otherwise the detector
    feeds it ``input_fn`` of [0, 1] RGB. Freezing and BatchNorm handling are the caller's, before this.
    """
    backbone = resolve_backbone(encoder, backbone)
    if input_fn is None:
        frontend, mean, std = nn.Identity(), IMAGENET_MEAN, IMAGENET_STD
    else:
        frontend, mean, std = InputMapping(input_fn), (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)
    transform = MultiScaleTransform(train_sizes or (min_size,), min_size, max_size, mean, std)
    strides = feature_strides(encoder)
    if backbone == "fpn":
        body = EncoderBackbone(encoder, RESNET_TAPS, frontend, fpn=True)
        levels = [*(strides[tap] for tap in RESNET_TAPS), 2 * strides["res5"]]
        anchor_sizes = tuple((8 * stride,) for stride in levels)
        pooler = MultiScaleRoIAlign([str(i) for i in range(len(RESNET_TAPS))], FPN_GRID, sampling_ratio=2)
        head = TwoMLPHead(body.out_channels * FPN_GRID**2, fc_dim)
        representation = fc_dim
        head_text = f"RoIAlign {FPN_GRID}x{FPN_GRID} over P2-P5 -> fresh fc6 {fc_dim} -> fc7 {fc_dim}"
    elif backbone == "c4":
        body = EncoderBackbone(encoder, ("res4",), frontend, fpn=False)
        levels = [strides["res4"]]
        anchor_sizes = (single_level_anchor_sizes(min_size),)
        pooler = MultiScaleRoIAlign(["0"], C4_GRID, sampling_ratio=2)
        head = C4Head(encoder)
        representation = encoder.out_channels("res5")
        head_text = f"RoIAlign {C4_GRID}x{C4_GRID} on res4 -> the encoder's res5 -> global average pool ({representation}-d)"
    else:
        body = EncoderBackbone(encoder, ("conv5",), frontend, fpn=False)
        levels = [strides["conv5"]]
        anchor_sizes = (single_level_anchor_sizes(min_size),)
        head, grid, origin = _box_head(body.out_channels, ALEXNET_GRID, fc_dim, pretext)
        representation = head.fc7.out_features
        pooler = MultiScaleRoIAlign(["0"], grid, sampling_ratio=2)
        head_text = (f"RoIAlign {grid}x{grid} on conv5 -> fc6 {representation} -> fc7 {representation} ({origin})")
    anchors = AnchorGenerator(anchor_sizes, (ASPECT_RATIOS,) * len(anchor_sizes))
    features = Autocast(body, precision)
    features.out_channels = body.out_channels
    model = FasterRCNN(
        features,
        num_classes=None,
        rpn_anchor_generator=anchors,
        box_roi_pool=pooler,
        box_head=Autocast(head, precision),
        box_predictor=FastRCNNPredictor(representation, num_classes + 1),
        rpn_pre_nms_top_n_train=RPN_TRAIN[0], rpn_post_nms_top_n_train=RPN_TRAIN[1],
        rpn_pre_nms_top_n_test=RPN_TEST[0], rpn_post_nms_top_n_test=RPN_TEST[1],
        box_batch_size_per_image=ROIS_PER_IMAGE,
    )
    # FasterRCNN builds its own transform from min/max size; ours adds the train/test scale switch
    model.transform = transform
    description = {
        "backbone": backbone,
        "features": (f"FPN ({body.out_channels} channels) over {', '.join(RESNET_TAPS)} + max-pooled P6" if backbone == "fpn"
                     else f"{body.taps[0]} ({body.out_channels} channels)"),
        "strides": levels,
        "anchor_sizes": [list(sizes) for sizes in anchor_sizes],
        "aspect_ratios": list(ASPECT_RATIOS),
        "box_head": head_text,
        "proposals": {"train": list(RPN_TRAIN), "test": list(RPN_TEST), "rois_per_image": ROIS_PER_IMAGE},
        "input": "ImageNet-normalised RGB" if input_fn is None else "[0, 1] RGB through the task's evaluation input mapping",
        "train_sizes": list(transform.train_sizes),
        "test_size": min_size,
        "max_size": max_size,
    }
    return model, description


def rescale_backbone(model: FasterRCNN, images: Sequence[Tensor], target_mean: float = 0.0) -> list[UnitStats]:
    """Krähenbühl et al.'s within-layer rescaling (`selfsup.transfer.rescale`) of the encoder's trainable
    stages, measured on ``images`` ([0, 1] RGB) as the detector's transform feeds them at test size;
    frozen stages keep their weights. Returns the statistics before rescaling, per unit."""
    body = model.backbone.module
    encoder = body.encoder
    units = [Unit(f"{stage}.{unit.name}", unit.layer, unit.norm) for stage in encoder.layer_names
             if any(p.requires_grad for p in getattr(encoder, stage).parameters())
             for unit in rescalable_units(getattr(encoder, stage))]
    if not units:
        return []
    was_training = model.transform.training
    model.transform.eval()
    with torch.no_grad():
        batch = model.transform(list(images))[0].tensors
    model.transform.train(was_training)
    return rescale_within_layer(encoder, units, lambda: encoder(body.frontend(batch)), target_mean=target_mean)


@torch.no_grad()
def reestimate_backbone_bn(model: FasterRCNN, batches: Iterable[Sequence[Tensor]], device: torch.device) -> int:
    """Sets the running statistics of every (not yet frozen) BatchNorm of the detector's encoder to those of
    ``batches`` (lists of [0, 1] RGB images) as the detector feeds its backbone at test time: resized by its
    transform (short side ``min_size``, long side capped), normalised as the front end needs, padded into one
    tensor per batch (as in training and testing), then through the front end (the task's evaluation mapping
    or the folded conv1). Exact float64 moments over all images (`selfsup.probes.bn`); every BatchNorm of the
    encoder is re-estimated on whole-image maps, C4's res5 too (in the box head it sees RoI features).
    Returns how many images were used (batches of one image are skipped)."""
    body = model.backbone.module
    transform = model.transform
    was_training = transform.training
    transform.eval()
    try:
        inputs = (transform([image.to(device) for image in batch])[0].tensors for batch in batches)
        return reestimate_bn_statistics(body.encoder, body.frontend, inputs, device)
    finally:
        transform.train(was_training)
