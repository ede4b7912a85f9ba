"""Full fine-tuning for classification: a pretrained encoder (all of it, or the stages after a freeze
point) and a new classifier trained together on labelled data.

Two objectives share one loop: single-label (softmax cross-entropy, top-1/top-5 accuracy) and
multi-label on PASCAL VOC (one sigmoid per class, mAP), where "difficult-only" labels are masked out
of the loss as the VOC evaluation ignores them.

Classifiers, new for every run (nothing is reused from pretext heads):

- AlexNet family (taps conv1..conv5): the fc6-fc7-fc8 head of the papers. conv5 is max-pooled to a
  small grid (AlexNet's pool5 halves conv5: 13x13 -> 6x6 at 224 px, 8x8 -> 4x4 for ``alexnet_small`` at
  32 px), then dropout 0.5 -> fc6 -> BN -> ReLU -> dropout 0.5 -> fc7 -> BN -> ReLU -> fc8. fc6/fc7 are
  4096 wide at ImageNet-sized inputs as in the papers, 1024 at 96-159 px and 512 below 96 px, where
  conv5 holds only a few thousand values and 4096-wide layers would mostly memorise a small training
  set. The BatchNorms (as in RotNet's non-linear classifiers and the BN trunk itself) let the randomly
  initialised head train at the trunk's learning rate within a few epochs.
- anything else (ResNets): global average pool + one linear layer, as torchvision's ResNet.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader
from tqdm import tqdm

from selfsup.data.images import unit_float
from selfsup.data.loading import Batch
from selfsup.epoch import autocast_context
from selfsup.errors import ConfigError, DataError
from selfsup.models import ALEXNET_LAYERS, Encoder
from selfsup.probes.linear import topk_correct
from selfsup.probes.metrics import mean_average_precision

DROPOUT = 0.5


def default_hidden(image_size: int) -> int:
    """fc6/fc7 width for an input side of ``image_size`` pixels (see the module docstring)."""
    if image_size >= 160:
        return 4096
    if image_size >= 96:
        return 1024
    return 512


def fc_grid(conv5_side: int) -> int:
    """Side of the pooled conv5 grid fed to fc6: half of conv5 like AlexNet's pool5, at most the paper's
    6x6, so that large inputs do not blow up fc6's weight matrix."""
    return max(1, min(6, conv5_side // 2))


def build_classifier(encoder: Encoder, image_size: int, num_classes: int,
                     hidden: int | None = None) -> tuple[nn.Module, str]:
    """A new classifier over ``encoder``'s last tap, and a one-line description for records."""
    last = encoder.layer_names[-1]
    channels, height, width = encoder.feature_shapes(image_size)[last]
    if tuple(encoder.layer_names) != ALEXNET_LAYERS:
        head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(channels, num_classes))
        return head, f"global average pool of {last} ({channels}-d) -> fc {num_classes}"
    grid = fc_grid(min(height, width))
    width_fc = default_hidden(image_size) if hidden is None else hidden
    dims = channels * grid * grid
    head = nn.Sequential(
        nn.AdaptiveMaxPool2d(grid),
        nn.Flatten(),
        nn.Dropout(DROPOUT),
        # no bias: the BatchNorm that follows subtracts it again
        nn.Linear(dims, width_fc, bias=False),
        nn.BatchNorm1d(width_fc),
        nn.ReLU(inplace=True),
        nn.Dropout(DROPOUT),
        nn.Linear(width_fc, width_fc, bias=False),
        nn.BatchNorm1d(width_fc),
        nn.ReLU(inplace=True),
        nn.Linear(width_fc, num_classes),
    )
    text = (f"max-pool {last} to {grid}x{grid} ({dims}-d) -> dropout {DROPOUT} -> fc6 {width_fc} -> BN -> ReLU -> "
            f"dropout {DROPOUT} -> fc7 {width_fc} -> BN -> ReLU -> fc8 {num_classes}")
    return head, text


class FinetuneNet(nn.Module):
    """Input mapping of the pretext task (L only, Sobel, normalisation) -> encoder -> classifier."""

    def __init__(self, encoder: Encoder, head: nn.Module, input_fn: Callable[[Tensor], Tensor]) -> None:
        super().__init__()
        self.encoder = encoder
        self.head = head
        self.input_fn = input_fn

    def forward(self, images: Tensor) -> Tensor:
        """``images``: [0, 1] RGB batch -> class logits."""
        return self.head(self.encoder(self.input_fn(images)))


def trained_from(encoder: Encoder, freeze: str) -> str:
    """The first trained stage for ``--freeze`` (``none`` or a layer name): a stage name, or ``head``."""
    if freeze == "none":
        return encoder.layer_names[0]
    depth = encoder.layer_names.index(encoder.canonical(freeze)) + 1
    return encoder.layer_names[depth] if depth < len(encoder.layer_names) else "head"


def column_name(encoder: Encoder, freeze: str) -> str:
    """How tables name a freeze point: ``all``, ``conv4+`` (conv4 and after are trained), or the head
    alone (``fc6-8`` for the AlexNet fc head, the papers' column; ``fc`` otherwise)."""
    first = trained_from(encoder, freeze)
    if freeze == "none":
        return "all"
    if first == "head":
        return "fc6-8" if tuple(encoder.layer_names) == ALEXNET_LAYERS else "fc"
    return f"{first}+"


class SingleLabel:
    """Softmax cross-entropy; top-1/top-5 accuracy in percent; selection on top-1."""

    kind = "single-label"
    metric = "top1"

    def targets(self, batch: Batch, split: str) -> Tensor:
        return batch.labels

    def loss(self, logits: Tensor, targets: Tensor) -> Tensor:
        return F.cross_entropy(logits.float(), targets)

    def score(self, logits: Tensor, targets: Tensor) -> dict[str, Any]:
        top1, top5 = topk_correct(logits, targets)
        n = max(len(targets), 1)
        return {"top1": round(100.0 * top1 / n, 2), "top5": round(100.0 * top5 / n, 2)}


class MultiLabel:
    """One sigmoid per class on VOC labels (N x C, 1 present, -1 absent, 0 difficult-only).

    Difficult-only entries are left out of the loss, as the VOC evaluation ignores them. Scores, in
    percent, named as in the other VOC records: ``mAP`` (VOC07 11-point, the papers' number and the
    selection metric), ``mAP_area`` (area under the curve), and per class ``AP`` / ``AP_area`` (None
    for a class without positives, which the means leave out).
    """

    kind = "multi-label"
    metric = "mAP"

    def __init__(self, labels: dict[str, np.ndarray], classes: list[str]) -> None:
        self.labels = {split: torch.from_numpy(np.asarray(matrix, dtype=np.int8)) for split, matrix in labels.items()}
        self.classes = list(classes)

    def targets(self, batch: Batch, split: str) -> Tensor:
        return self.labels[split][batch.indices]

    def loss(self, logits: Tensor, targets: Tensor) -> Tensor:
        known = (targets != 0).float()
        losses = F.binary_cross_entropy_with_logits(logits.float(), (targets > 0).float(), reduction="none")
        return (losses * known).sum() / known.sum().clamp(min=1.0)

    def score(self, logits: Tensor, targets: Tensor) -> dict[str, Any]:
        scores, labels = logits.float().numpy(), targets.numpy()
        result: dict[str, Any] = {}
        for method, suffix in (("voc07", ""), ("area", "_area")):
            per_class, mean = mean_average_precision(scores, labels, method=method)
            result[f"mAP{suffix}"] = _percent(mean)
            result[f"AP{suffix}"] = {cls: _percent(ap) for cls, ap in zip(self.classes, per_class)}
        return result


def _percent(fraction: float) -> float | None:
    # NaN (a class without positives) is not valid JSON; records say None instead
    return None if np.isnan(fraction) else round(100.0 * float(fraction), 2)


Objective = SingleLabel | MultiLabel


@dataclass
class Selected:
    """The epoch kept by model selection, its scores on the selection split and its weights (CPU)."""

    epoch: int
    scores: dict[str, Any]
    state: dict[str, Tensor]


def _images(batch: Batch, device: torch.device) -> Tensor:
    return unit_float(batch.images.to(device, non_blocking=True))


def _progress_interval() -> float:
    # in a log file (no terminal) a line every 30 s, not every 0.5 s
    return 0.5 if sys.stderr.isatty() else 30.0


def train_epoch(model: FinetuneNet, loader: DataLoader, optimizer: torch.optim.Optimizer,
                scheduler: torch.optim.lr_scheduler.LRScheduler, objective: Objective, device: torch.device,
                precision: str, desc: str, on_bad: Callable[[list[str]], None]) -> dict[str, float]:
    """One pass over ``loader`` (its batch sampler already set to the epoch); mean loss and speed."""
    model.train()
    bar = tqdm(total=len(loader), desc=desc, unit="step", mininterval=_progress_interval(), dynamic_ncols=True)
    started, seen, loss_sum = time.perf_counter(), 0, 0.0
    for batch in loader:
        on_bad(batch.bad_files)
        images = _images(batch, device)
        targets = objective.targets(batch, "train").to(device, non_blocking=True)
        with autocast_context(precision, device):
            logits = model(images)
        loss = objective.loss(logits, targets)
        if not torch.isfinite(loss):
            bar.close()  # the error must be the last line, not the progress bar's
            raise ConfigError(f"--lr {optimizer.param_groups[0]['initial_lr']:g} made the loss "
                              f"{float(loss.detach())} ({desc}, step {bar.n + 1}); use a smaller --lr")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
        seen += len(images)
        loss_sum += float(loss.detach()) * len(images)
        rate = seen / max(time.perf_counter() - started, 1e-9)
        bar.set_postfix(loss=f"{loss_sum / seen:.3f}", img_s=f"{rate:.0f}", refresh=False)
        bar.update(1)
    bar.close()
    elapsed = time.perf_counter() - started
    return {"train_loss": round(loss_sum / max(seen, 1), 4), "train_images_per_s": round(seen / max(elapsed, 1e-9), 1)}


@torch.no_grad()
def predict(model: FinetuneNet, loader: DataLoader, objective: Objective, split: str, device: torch.device,
            precision: str, on_bad: Callable[[list[str]], None]) -> tuple[Tensor, Tensor]:
    """Logits (float32, CPU) and targets of every readable image of ``loader``."""
    model.eval()
    logits, targets = [], []
    for batch in tqdm(loader, desc=split, unit="batch", leave=False, mininterval=_progress_interval()):
        on_bad(batch.bad_files)
        if batch.images.numel() == 0:
            continue
        with autocast_context(precision, device):
            logits.append(model(_images(batch, device)).float().cpu())
        targets.append(objective.targets(batch, split))
    if not logits:
        raise DataError(f"no readable image in the {split} split")
    return torch.cat(logits), torch.cat(targets)


def evaluate(model: FinetuneNet, loader: DataLoader, objective: Objective, split: str, device: torch.device,
             precision: str, on_bad: Callable[[list[str]], None]) -> dict[str, Any]:
    return objective.score(*predict(model, loader, objective, split, device, precision, on_bad))


def fit(model: FinetuneNet, train: DataLoader, select: DataLoader, select_split: str, objective: Objective,
        optimizer: torch.optim.Optimizer, scheduler: torch.optim.lr_scheduler.LRScheduler, epochs: int,
        device: torch.device, precision: str, on_bad: Callable[[list[str]], None]) -> tuple[Selected, list[dict]]:
    """Trains for ``epochs``, scoring ``select`` after each; keeps the best epoch's weights (the first
    of equal scores) in memory. ``train``'s batch sampler must have ``set_epoch``."""
    best: Selected | None = None
    history = []
    for epoch in range(epochs):
        started = time.perf_counter()
        train.batch_sampler.set_epoch(epoch)
        lr = optimizer.param_groups[0]["lr"]
        stats = train_epoch(model, train, optimizer, scheduler, objective, device, precision,
                            f"epoch {epoch + 1}/{epochs}", on_bad)
        scores = evaluate(model, select, objective, select_split, device, precision, on_bad)
        entry = {"epoch": epoch + 1, "lr_start": lr, **stats,
                 **{f"{select_split}_{k}": v for k, v in scores.items() if not isinstance(v, dict)},
                 "seconds": round(time.perf_counter() - started, 1)}
        history.append(entry)
        print(f"epoch {epoch + 1}/{epochs}: loss {stats['train_loss']:.4f}, {select_split} {objective.metric} "
              f"{scores[objective.metric]}, {stats['train_images_per_s']:.0f} img/s", file=sys.stderr)
        if best is None or _better(scores[objective.metric], best.scores[objective.metric]):
            state = {name: value.detach().to("cpu", copy=True) for name, value in model.state_dict().items()}
            best = Selected(epoch + 1, scores, state)
    return best, history


def _better(value: float | None, incumbent: float | None) -> bool:
    return value is not None and (incumbent is None or value > incumbent)
