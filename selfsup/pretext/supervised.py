"""Supervised training of the same encoder on the data's labels: the upper-bound row of probe tables."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from selfsup.config import option
from selfsup.models import Encoder
from selfsup.pretext.base import PretextTask, accuracy
from selfsup.pretext.rotation import pooled_head


@dataclass
class SupervisedConfig:
    head_hidden: int = option(512, "hidden units of the MLP classifier; 0 = linear", min=0)
    head_pool: int = option(2, "adaptive average-pool side before the classifier", min=1)


class SupervisedTask(PretextTask):
    name = "supervised"
    Config = SupervisedConfig
    needs_labels = True

    def __init__(self, encoder: Encoder, cfg: SupervisedConfig, num_classes: int) -> None:
        super().__init__(encoder, cfg)
        last = encoder.layer_names[-1]
        self.head = pooled_head(encoder.out_channels(last), cfg.head_pool, cfg.head_hidden, num_classes)

    def forward(self, images: Tensor, labels: Tensor, generator: torch.Generator | None = None) -> dict[str, Tensor]:
        if bool((labels < 0).any()):
            raise ValueError("task supervised needs labelled images, but the batch holds unlabelled ones")
        logits = self.head(self.encoder(self.encoder_input(images)))
        loss = F.cross_entropy(logits.float(), labels)
        return {"loss": loss, "acc": accuracy(logits.detach(), labels)}
