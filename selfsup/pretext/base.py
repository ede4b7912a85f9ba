"""What every pretext task provides to the shared engine and to the probes."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor, nn

from selfsup.models import Encoder

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def normalize_rgb(images: Tensor) -> Tensor:
    """[0, 1] RGB batch -> ImageNet-normalised batch (on the batch's device)."""
    mean = images.new_tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = images.new_tensor(IMAGENET_STD).view(1, 3, 1, 1)
    return (images - mean) / std


def accuracy(logits: Tensor, targets: Tensor) -> Tensor:
    return (logits.argmax(dim=1) == targets).float().mean()


@dataclass
class Examples:
    """What a task shows of its inputs: images in [0, 1], one caption each, laid out ``per_row`` a row."""

    images: Tensor  # N x 3 x H x W
    captions: list[str]
    per_row: int


class PretextTask(nn.Module):
    """A pretext task owns its heads and turns a batch of plain images into a loss.

    ``forward(images, labels, generator)`` receives float RGB in [0, 1] on the training device (or uint8
    RGB where the task ``takes_uint8``)
    (labels are -1 where unknown; most tasks ignore them) and returns a dict with ``loss`` and
    detached scalar metrics; ``metric`` names the one shown as the task's accuracy.
    """

    name: ClassVar[str]
    Config: ClassVar[type]
    metric: ClassVar[str] = "acc"
    input_channels: ClassVar[int] = 3
    # forward also takes the uint8 batch (0..255) and converts only the pixels it uses: tasks that cut small
    # pieces from large crops then skip converting whole crops (the trainer hands them uint8)
    takes_uint8: ClassVar[bool] = False

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

    def example_images(self, images: Tensor, generator: torch.Generator | None = None) -> Examples:
        """What the network is fed and asked for a few of ``images`` ([0, 1] RGB), for TensorBoard
        and ``ssl-inspect``; tasks override this to show their own inputs and targets."""
        shown = images[:8]
        return Examples(shown, [""] * len(shown), per_row=4)
