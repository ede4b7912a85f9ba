"""Rotation prediction (Gidaris, Singh & Komodakis, ICLR 2018).

Every image of the batch appears in all four rotations (0, 90, 180, 270 degrees) in the same
batch, and the network classifies which rotation was applied (4-way cross-entropy).

Shortcut: the coarse layout of colour and brightness (a light sky above, a dark ground below). On the
CIFAR-10 tasks-table checkpoint a linear classifier on colour and edge statistics of four image regions
reaches 43.6% (chance 25%, the network 61.0%), and the network keeps 55.7% on low-pass images but drops to
41.6% on the high-pass residual: it leans more on the layout than on fine detail
(``python experiments/diagnose_cifar10.py``, experiments/results/diagnose_cifar10.md).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from selfsup.config import option
from selfsup.models import Encoder
from selfsup.pretext.base import Examples, PretextTask, accuracy

NUM_ROTATIONS = 4


@dataclass
class RotationConfig:
    head_hidden: int = option(512, "hidden units of the MLP head on the pooled last layer; 0 = linear head", min=0)
    head_pool: int = option(2, "adaptive average-pool side before the head (keeps some spatial layout)", min=1)


def rotate_batch(images: Tensor) -> tuple[Tensor, Tensor]:
    """All four rotations of every image: rotation k (k x 90 degrees counter-clockwise) has label k.

    Output order is rotation-major: ``out[k * N + i]`` is image ``i`` rotated by ``k``.
    """
    if images.shape[-1] != images.shape[-2]:
        raise ValueError(f"rotation needs square images, got {tuple(images.shape[-2:])}")
    rotated = torch.cat([torch.rot90(images, k, dims=(2, 3)) for k in range(NUM_ROTATIONS)])
    labels = torch.arange(NUM_ROTATIONS, device=images.device).repeat_interleave(images.shape[0])
    return rotated, labels


def pooled_head(in_channels: int, pool: int, hidden: int, num_outputs: int) -> nn.Sequential:
    layers: list[nn.Module] = [nn.AdaptiveAvgPool2d(pool), nn.Flatten()]
    features = in_channels * pool * pool
    if hidden:
        layers += [nn.Linear(features, hidden, bias=False), nn.BatchNorm1d(hidden), nn.ReLU(inplace=True)]
        features = hidden
    layers.append(nn.Linear(features, num_outputs))
    return nn.Sequential(*layers)


class RotationTask(PretextTask):
    name = "rotation"
    Config = RotationConfig

    def __init__(self, encoder: Encoder, cfg: RotationConfig) -> None:
        super().__init__(encoder, cfg)
        last = encoder.layer_names[-1]
        self.head = pooled_head(encoder.out_channels(last), cfg.head_pool, cfg.head_hidden, NUM_ROTATIONS)

    def forward(self, images: Tensor, labels: Tensor, generator: torch.Generator | None = None) -> dict[str, Tensor]:
        rotated, targets = rotate_batch(self.encoder_input(images))
        logits = self.head(self.encoder(rotated))
        loss = F.cross_entropy(logits.float(), targets)
        return {"loss": loss, "acc": accuracy(logits.detach(), targets)}

    def example_images(self, images: Tensor, generator: torch.Generator | None = None) -> Examples:
        rotated, targets = rotate_batch(images[:4])
        with torch.no_grad():
            predicted = self.head(self.encoder(self.encoder_input(rotated))).argmax(dim=1)
        # rows of the grid = images, columns = rotations 0/90/180/270
        order = torch.arange(len(rotated)).view(NUM_ROTATIONS, -1).t().reshape(-1)
        captions = [f"label {int(targets[i])} ({90 * int(targets[i])} deg), predicted {int(predicted[i])}" for i in order]
        return Examples(rotated[order], captions, per_row=NUM_ROTATIONS)
