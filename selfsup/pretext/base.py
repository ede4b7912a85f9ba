"""What every pretext task provides to the shared engine and to the probes."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, ClassVar

import torch
from torch import Tensor, nn

from selfsup.epoch import EpochContext, EpochPlan
from selfsup.models import Encoder
from selfsup.models.normalization import normalize_rgb

# What a task feeds its encoder at evaluation (``eval_input``), named so that transfer can rebuild it as a conv on
# ImageNet-normalised RGB (selfsup.transfer.frontend) and reports can match encoders fed alike.
RGB, PER_IMAGE, SOBEL, LIGHTNESS = "rgb", "per-image standardised rgb", "sobel", "lab-L"
# one per-image standardised colour channel (InputMapping.kept_channel), the other two zero
KEPT_CHANNEL = "one per-image standardised channel, two zero channels"
# SOBEL's x-gradient kernel (the y-gradient's is its transpose), applied with padding 1 to the mean of the
# ImageNet-normalised channels
SOBEL_X = ((1.0, 0.0, -1.0), (2.0, 0.0, -2.0), (1.0, 0.0, -1.0))


@dataclass(frozen=True)
class InputMapping:
    """What a task's ``eval_input`` does to [0, 1] RGB, declared (``PretextTask.input_mapping``) with what
    transfer needs to fold it into the encoder's first conv."""

    kind: str  # RGB, PER_IMAGE, SOBEL, LIGHTNESS or KEPT_CHANNEL
    # LIGHTNESS: the per-pixel map from [0, 1] RGB (N x 3 x H x W) to the one channel fed, which transfer linearises
    pixel_map: Callable[[Tensor], Tensor] | None = None
    # KEPT_CHANNEL: the colour channel kept (0 red, 1 green, 2 blue)
    kept_channel: int | None = None


@dataclass
class PretextFC:
    """fc layers of a pretext head that can start a detector's box head: fc6 reads a ``grid x grid`` pooled map."""

    grid: int
    layers: list[nn.Linear]
    source: str


def _fold_batchnorm1d(linear: nn.Linear, norm: nn.BatchNorm1d) -> nn.Linear:
    # eval-mode BatchNorm after a linear layer is itself affine: fold it into the layer's weight and bias
    folded = nn.Linear(linear.in_features, linear.out_features)
    scale = norm.weight / torch.sqrt(norm.running_var + norm.eps)
    bias = linear.bias if linear.bias is not None else torch.zeros_like(norm.running_mean)
    with torch.no_grad():
        folded.weight.copy_(linear.weight * scale[:, None])
        folded.bias.copy_((bias - norm.running_mean) * scale + norm.bias)
    return folded


def linear_layers(block: nn.Sequential) -> list[nn.Linear]:
    """The linear layers of a Linear [-> BatchNorm1d] -> ReLU... block, BatchNorms folded in."""
    layers: list[nn.Linear] = []
    modules = list(block)
    for position, module in enumerate(modules):
        if isinstance(module, nn.Linear):
            following = modules[position + 1] if position + 1 < len(modules) else None
            layers.append(_fold_batchnorm1d(module, following) if isinstance(following, nn.BatchNorm1d) else module)
    return layers


def accuracy(logits: Tensor, targets: Tensor) -> Tensor:
    return (logits.argmax(dim=1) == targets).float().mean()


@dataclass
class Examples:
    """What a task shows of its inputs: images in [0, 1], one caption each, laid out ``per_row`` a row."""

    images: Tensor  # N x 3 x H x W
    captions: list[str]
    per_row: int


def draw_box(images: Tensor, top_left: Tensor, size: int, color: tuple[float, float, float]) -> Tensor:
    """A copy of ``images`` with a 1 px outline of the ``size`` box at each ``top_left`` (y, x)."""
    side = images.shape[-1]
    coords = torch.arange(side, device=images.device)
    y0, x0 = top_left[:, 0].view(-1, 1, 1), top_left[:, 1].view(-1, 1, 1)
    ys, xs = coords.view(1, -1, 1), coords.view(1, 1, -1)
    inside = (ys >= y0) & (ys < y0 + size) & (xs >= x0) & (xs < x0 + size)
    interior = (ys > y0) & (ys < y0 + size - 1) & (xs > x0) & (xs < x0 + size - 1)
    outline = (inside & ~interior).unsqueeze(1)
    return torch.where(outline, images.new_tensor(color).view(1, 3, 1, 1), images)


class PretextTask(nn.Module):
    """A pretext task owns its heads and turns a batch of plain images into a loss.

    ``forward(images, labels, generator)`` receives float RGB in [0, 1] on the training device (or uint8
    RGB where the task ``takes_uint8``)
    (labels are -1 where unknown; most tasks ignore them) and returns a dict with ``loss`` and
    detached scalar metrics; ``metric`` names the one shown as the task's accuracy.

    Everything the trainer, the loaders, checkpoints, probes and transfer need to know of a task is declared
    here, with the defaults of a plain task: what it trains on (``needs_labels``), what it is fed
    (``takes_uint8``, ``input_channels``, ``input_mapping``), its epoch hooks (``prepare_epoch``,
    ``batch_labels`` where ``relabels_batches``) and the fc layers a detector may reuse (``detector_fc``).
    """

    name: ClassVar[str]
    Config: ClassVar[type]
    metric: ClassVar[str] = "acc"
    input_channels: ClassVar[int] = 3
    # forward also takes the uint8 batch (0..255) and converts only the pixels it uses: tasks that cut small
    # pieces from large crops then skip converting whole crops (the trainer hands them uint8)
    takes_uint8: ClassVar[bool] = False
    # trains on the labelled train split (with its labels) instead of the pretraining split
    needs_labels: ClassVar[bool] = False
    # replaces every batch's labels (batch_labels): the trainer then hands it the batch's source indices
    relabels_batches: ClassVar[bool] = False

    @classmethod
    def input_mapping(cls, cfg) -> InputMapping:
        """Which input mapping the task's ``eval_input`` is, given its config (its ``kind`` one of the names
        above: ``RGB``, ``PER_IMAGE``, ``SOBEL``, ``LIGHTNESS``, ``KEPT_CHANNEL``); ConfigError for a mapping
        that no conv on RGB expresses. A task that keeps the default ``encoder_input`` feeds ImageNet-normalised
        RGB; one that overrides it declares its mapping here."""
        if cls.encoder_input is PretextTask.encoder_input:
            return InputMapping(RGB)
        raise ValueError(f"task {cls.name} has an input mapping with no declared kind: override input_mapping")

    @classmethod
    def input_kind(cls, cfg) -> str:
        """The ``kind`` of :meth:`input_mapping`."""
        return cls.input_mapping(cfg).kind

    @classmethod
    def encoder_channels(cls, cfg) -> int:
        """Input channels of the encoder this task trains, given its config."""
        return cls.input_channels

    @classmethod
    def fit_to_data(cls, cfg, num_samples: int):
        """The config with data-dependent defaults resolved (e.g. a number of clusters from the
        dataset size); what is returned is what checkpoints record."""
        return cfg

    @classmethod
    def check_image_size(cls, cfg, image_size: int) -> None:
        """Raises ConfigError when the task's geometry does not fit ``data.image_size`` crops."""

    @classmethod
    def content_scale(cls, cfg) -> float:
        """Pixels per unit of image content in what the encoder was fed, relative to the ``data.image_size``
        crop it was cut from. Evaluation feeds whole images at ``content_scale * data.image_size`` px so that
        objects span as many pixels as in training: 1.0 for tasks that feed the crop, or unresized pieces of
        it, to the encoder; a task that resizes what it feeds declares its factor."""
        return 1.0

    @classmethod
    def eval_image_size(cls, cfg, image_size: int) -> int:
        """The input size at which probes and fine-tuning feed whole images to an encoder trained by this
        task on ``image_size`` crops (see :meth:`content_scale`)."""
        return max(1, round(cls.content_scale(cfg) * image_size))

    def __init__(self, encoder: Encoder, cfg) -> None:
        super().__init__()
        self.encoder = encoder
        self.cfg = cfg

    def encoder_input(self, images: Tensor) -> Tensor:
        """What the encoder sees for plain [0, 1] RGB images during training."""
        return normalize_rgb(images)

    def eval_input(self, images: Tensor) -> Tensor:
        """What probes and fine-tuning feed the encoder for plain [0, 1] RGB images: ``encoder_input``,
        unless training altered the mapped inputs further (e.g. dropped colour channels), in which case
        the task maps whole images to what its encoder saw."""
        return self.encoder_input(images)

    def prepare_epoch(self, context: EpochContext) -> EpochPlan | None:
        """Called before every epoch (and again when a run resumes inside one), for epoch-level steps such as
        clustering the whole dataset: the plan may fix the epoch's sampling order and adds metrics to the
        epoch's log. None: a plain shuffle."""
        return None

    def batch_labels(self, indices: Tensor, labels: Tensor) -> Tensor:
        """The labels a batch trains on, from its images' source ``indices`` (e.g. pseudo-labels); asked only
        where ``relabels_batches``."""
        return labels

    def detector_fc(self) -> PretextFC | None:
        """fc layers of the task's head that a detector's box head may start from; None for tasks without."""
        return None

    def example_images(self, images: Tensor, generator: torch.Generator | None = None) -> Examples:
        """What the network is fed and asked for a few of ``images`` ([0, 1] RGB), for TensorBoard
        and ``ssl-inspect``; tasks override this to show their own inputs and targets."""
        shown = images[:8]
        return Examples(shown, [""] * len(shown), per_row=4)
