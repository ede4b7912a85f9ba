"""Detection transfer, training and evaluation: the learning-rate schedule, the epoch loop with model
selection (`fit`), VOC scoring of a split and a figure of test detections.

The detector comes from `selfsup.transfer.detection_model`, its images and boxes from
`selfsup.transfer.detection_data`; `selfsup.transfer.detection_run` puts them together.
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import numpy as np
from PIL import Image, ImageDraw, ImageFont
from torch import Tensor
from torch.utils.data import DataLoader
from torchvision.models.detection import FasterRCNN
from tqdm import tqdm

from selfsup.checkpoint import atomic_file
from selfsup.data.images import unit_float
from selfsup.data.voc import VocSplit
from selfsup.errors import ConfigError, DataError
from selfsup.transfer.detection_data import DetectionItem, split_truths
from selfsup.transfer.voc_eval import DetectionScores, ImageDetections, voc_detection_scores


def lr_factor(step: int, warmup_steps: int, milestones: Sequence[int], warmup_start: float = 0.001,
              gamma: float = 0.1) -> float:
    """Linear warm-up from ``warmup_start`` over ``warmup_steps``, then x ``gamma`` at each milestone step."""
    factor = gamma ** sum(step >= m for m in milestones)
    if step < warmup_steps:
        alpha = step / warmup_steps
        factor *= warmup_start * (1 - alpha) + alpha
    return factor


def _progress_interval() -> float:
    # in a log file (no terminal) a line every 30 s, not every 0.5 s
    return 0.5 if sys.stderr.isatty() else 30.0


def _images(items: list[DetectionItem], device: torch.device) -> list[Tensor]:
    return [unit_float(item.image.to(device, non_blocking=True)) for item in items]


def train_one_epoch(model: FasterRCNN, loader: DataLoader, optimizer: torch.optim.Optimizer,
                    scheduler: torch.optim.lr_scheduler.LRScheduler, device: torch.device, desc: str,
                    on_bad: Callable[[list[str]], None]) -> dict[str, float]:
    """One pass over ``loader``; mean losses and speed."""
    model.train()
    bar = tqdm(total=len(loader), desc=desc, unit="step", mininterval=_progress_interval(), dynamic_ncols=True)
    started, seen = time.perf_counter(), 0
    sums: dict[str, float] = {}
    for items in loader:
        for item in items:
            on_bad(item.bad)
        items = [item for item in items if item.image is not None]
        if not items:
            continue
        targets = [{key: value.to(device) for key, value in item.target.items()} for item in items]
        losses = model(_images(items, device), targets)
        loss = sum(losses.values())
        if not torch.isfinite(loss):
            bar.close()  # the error must be the last line, not the progress bar's
            raise ConfigError(f"--lr {optimizer.param_groups[0]['initial_lr']:g} made the loss {loss.detach().item()} "
                              f"({desc}, step {bar.n + 1}); use a smaller --lr")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
        seen += len(items)
        for name, value in {"loss": loss, **losses}.items():
            sums[name] = sums.get(name, 0.0) + float(value.detach()) * len(items)
        rate = seen / max(time.perf_counter() - started, 1e-9)
        bar.set_postfix(loss=f"{sums['loss'] / seen:.3f}", lr=f"{optimizer.param_groups[0]['lr']:.4g}",
                        img_s=f"{rate:.1f}", refresh=False)
        bar.update(1)
    bar.close()
    elapsed = time.perf_counter() - started
    stats = {name: round(total / max(seen, 1), 4) for name, total in sums.items()}
    return {**stats, "images_per_s": round(seen / max(elapsed, 1e-9), 2)}


@torch.no_grad()
def predict(model: FasterRCNN, loader: DataLoader, device: torch.device, desc: str,
            on_bad: Callable[[list[str]], None]) -> tuple[list[int], list[ImageDetections]]:
    """Detections (0-based class indices, original image coordinates) of every readable image of
    ``loader``, with the split index of each."""
    model.eval()
    indices, detections = [], []
    for items in tqdm(loader, desc=desc, unit="batch", leave=False, mininterval=_progress_interval()):
        for item in items:
            on_bad(item.bad)
        items = [item for item in items if item.image is not None]
        if not items:
            continue
        for item, output in zip(items, model(_images(items, device))):
            indices.append(item.index)
            detections.append(ImageDetections(output["boxes"].float().cpu().numpy(), output["scores"].float().cpu().numpy(),
                                              output["labels"].cpu().numpy() - 1))
    return indices, detections


def evaluate(model: FasterRCNN, loader: DataLoader, split: VocSplit, device: torch.device, desc: str,
             on_bad: Callable[[list[str]], None]) -> tuple[DetectionScores, list[int], list[ImageDetections]]:
    """VOC AP of the detector on ``split`` (images that cannot be read are left out, their boxes too)."""
    indices, detections = predict(model, loader, device, desc, on_bad)
    if not indices:
        raise DataError(f"no readable image in {split.describe()}")
    return voc_detection_scores(detections, split_truths(split, indices), split.classes), indices, detections


def _percent(value: float | None) -> float | None:
    return None if value is None else round(100.0 * value, 2)


def scores_entry(scores: DetectionScores, classes: list[str], split: str, per_class: bool) -> dict[str, Any]:
    """``scores`` as record fields: ``<split>_mAP`` and ``<split>_mAP_area`` in percent, and with ``per_class``
    the per-class APs too."""
    entry: dict[str, Any] = {f"{split}_mAP": _percent(scores.mean["voc07"]), f"{split}_mAP_area": _percent(scores.mean["area"])}
    if per_class:
        entry[f"{split}_AP"] = {name: _percent(ap) for name, ap in zip(classes, scores.ap["voc07"])}
        entry[f"{split}_AP_area"] = {name: _percent(ap) for name, ap in zip(classes, scores.ap["area"])}
    return entry


@dataclass
class DetectionFit:
    """What `fit` kept: the selected epoch, every epoch's history entry, the val and test scores of the kept
    weights, and the test images' detections (split indices and boxes) for the figure."""

    best_epoch: int
    history: list[dict[str, Any]]
    scores: dict[str, DetectionScores]
    test_indices: list[int]
    test_detections: list[ImageDetections]


def fit(model: FasterRCNN, train_loader: DataLoader, eval_loaders: dict[str, DataLoader], splits: dict[str, VocSplit],
        optimizer: torch.optim.Optimizer, scheduler: torch.optim.lr_scheduler.LRScheduler, *, epochs: int,
        eval_every: int, selection: str, device: torch.device, on_bad: Callable[[list[str]], None]) -> DetectionFit:
    """Trains for ``epochs``, scoring the ``selection`` split ("val" or "test") every ``eval_every`` epochs and
    after the last; keeps the best epoch's weights (the first of equal mAPs) in memory, loads them and
    evaluates the other split once. ``train_loader``'s batch sampler must have ``set_epoch``; ``eval_loaders``
    and ``splits`` hold "val" and "test"."""
    history: list[dict[str, Any]] = []
    best: dict[str, Any] | None = None
    for epoch in range(epochs):
        epoch_started = time.perf_counter()
        train_loader.batch_sampler.set_epoch(epoch)
        stats = train_one_epoch(model, train_loader, optimizer, scheduler, device, f"epoch {epoch + 1}/{epochs}", on_bad)
        entry: dict[str, Any] = {"epoch": epoch + 1, **stats}
        if (epoch + 1) % eval_every == 0 or epoch + 1 == epochs:
            scores = evaluate(model, eval_loaders[selection], splits[selection], device, selection, on_bad)[0]
            entry.update(scores_entry(scores, splits[selection].classes, selection, per_class=False))
            if best is None or (scores.mean["voc07"] or 0.0) > (best["scores"].mean["voc07"] or 0.0):
                state = {name: value.detach().to("cpu", copy=True) for name, value in model.state_dict().items()}
                best = {"epoch": epoch + 1, "scores": scores, "state": state}
        entry["seconds"] = round(time.perf_counter() - epoch_started, 1)
        history.append(entry)
        shown = f", {selection} mAP {entry[f'{selection}_mAP']}" if f"{selection}_mAP" in entry else ""
        print(f"epoch {epoch + 1}/{epochs}: loss {stats.get('loss', float('nan')):.4f}{shown}, "
              f"{stats['images_per_s']:.1f} img/s, {entry['seconds']} s", file=sys.stderr)

    model.load_state_dict(best["state"])
    other = "test" if selection == "val" else "val"
    other_scores, indices, detections = evaluate(model, eval_loaders[other], splits[other], device, other, on_bad)
    if other != "test":
        # the selection evaluations kept scores only; the figure needs the kept weights' test boxes
        indices, detections = evaluate(model, eval_loaders["test"], splits["test"], device, "test", on_bad)[1:]
    return DetectionFit(best["epoch"], history, {selection: best["scores"], other: other_scores}, indices, detections)


# ----------------------------------------------------------------------------- figure

PREDICTED = (230, 40, 40)
TRUE = (40, 200, 60)
DIFFICULT = (240, 200, 40)
SCORE_THRESHOLD = 0.5
# a weak detector scores nothing above the threshold: its best guesses still show what it learned
AT_LEAST = 3


def shown_detections(scores: np.ndarray, threshold: float = SCORE_THRESHOLD, at_least: int = AT_LEAST) -> np.ndarray:
    """Indices of the detections a figure draws, best first: every one scoring above ``threshold``, and at
    least the ``at_least`` best whatever their scores."""
    order = np.argsort(-np.asarray(scores, dtype=np.float64), kind="stable")
    above = int((np.asarray(scores) > threshold).sum())
    return order[:max(above, at_least)]


def _label(draw: ImageDraw.ImageDraw, xy: tuple[float, float], text: str, colour: tuple[int, int, int],
           font: ImageFont.ImageFont) -> None:
    # white on the box's colour stays readable over any background
    left, top, right, bottom = draw.textbbox(xy, text, font=font)
    draw.rectangle((left - 1, top - 1, right + 1, bottom + 1), fill=colour)
    draw.text(xy, text, fill=(255, 255, 255), font=font)


def _legend(width: int, threshold: float, at_least: int, font: ImageFont.ImageFont) -> Image.Image:
    """The lines above the grid that say what its boxes are, wrapped to ``width`` pixels."""
    text = (f"red: detections scoring above {threshold:g}, at least each image's top {at_least} (score shown); "
            "green: true boxes (yellow: difficult)")
    line_height = font.getbbox("Ag")[3] + 4
    lines = [""]
    for word in text.split():
        joined = f"{lines[-1]} {word}".strip()
        if lines[-1] and font.getlength(joined) > width - 8:
            lines.append(word)
        else:
            lines[-1] = joined
    strip = Image.new("RGB", (width, line_height * len(lines) + 6), (255, 255, 255))
    draw = ImageDraw.Draw(strip)
    for row, line in enumerate(lines):
        draw.text((4, 3 + row * line_height), line, fill=(0, 0, 0), font=font)
    return strip


def draw_detections(split: VocSplit, indices: Sequence[int], detections: Sequence[ImageDetections], path: str | Path,
                    *, score_threshold: float = SCORE_THRESHOLD, at_least: int = AT_LEAST, count: int = 8,
                    per_row: int = 4, cell: int = 256) -> Path:
    """A PNG grid of the first ``count`` images under a legend: true boxes in green (difficult in yellow), in
    red the detections :func:`shown_detections` picks (above ``score_threshold``, at least the ``at_least``
    best), each box with its class name (and score)."""
    font = ImageFont.load_default()
    shown = list(zip(indices, detections))[:count]
    per_row = max(1, min(per_row, len(shown)))
    rows = max(1, math.ceil(len(shown) / per_row))
    legend = _legend(per_row * cell, score_threshold, at_least, font)
    sheet = Image.new("RGB", (per_row * cell, legend.height + rows * cell), (255, 255, 255))
    sheet.paste(legend, (0, 0))
    for position, (index, found) in enumerate(shown):
        picture = split.load(index)
        scale = cell / max(picture.size)
        picture = picture.resize((max(1, round(picture.width * scale)), max(1, round(picture.height * scale))))
        draw = ImageDraw.Draw(picture)
        for obj in split.objects(index):
            box = [v * scale for v in obj.box]
            colour = DIFFICULT if obj.difficult else TRUE
            draw.rectangle(box, outline=colour, width=2)
            _label(draw, (box[0] + 2, box[3] - 12), split.classes[obj.label], colour, font)
        # the best last, drawn over the others
        for which in shown_detections(found.scores, score_threshold, at_least)[::-1]:
            box = [float(v) * scale for v in found.boxes[which]]
            draw.rectangle(box, outline=PREDICTED, width=2)
            label = f"{split.classes[int(found.labels[which])]} {found.scores[which]:.2f}"
            _label(draw, (box[0] + 2, box[1] + 2), label, PREDICTED, font)
        sheet.paste(picture, ((position % per_row) * cell, legend.height + (position // per_row) * cell))
    path = Path(path)
    with atomic_file(path) as handle:
        sheet.save(handle, format="PNG")
    return path
