"""Detection transfer, the data: a VOC split as images and box targets for torchvision's detectors, and
its ground truth for VOC scoring."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from selfsup.data.images import BadImageError
from selfsup.data.voc import VocSplit
from selfsup.transfer.voc_eval import ImageTruth


@dataclass
class DetectionItem:
    """One image of a split with its targets, or the reasons it could not be read."""

    index: int
    image: Tensor | None  # uint8 3 x H x W; None when the file could not be read
    target: dict[str, Tensor] | None
    bad: list[str]


class DetectionDataset(Dataset):
    """One VOC split as (image, target) for torchvision detectors; labels are class index + 1 (0 is
    background).

    ``train``: difficult objects are left out of the targets (as Fast/Faster R-CNN train on VOC) and an
    ``(index, seed)`` item flips the image horizontally when its seed's draw says so.
    """

    def __init__(self, split: VocSplit, *, train: bool) -> None:
        self.split = split
        self.train = train

    def __len__(self) -> int:
        return len(self.split)

    def __getitem__(self, item: int | tuple[int, int]) -> DetectionItem:
        index, seed = item if isinstance(item, tuple) else (item, None)
        try:
            picture = self.split.load(index)
        except BadImageError as exc:
            return DetectionItem(index, None, None, [str(exc)])
        image = torch.from_numpy(np.asarray(picture, dtype=np.uint8).copy()).permute(2, 0, 1).contiguous()
        objects = [o for o in self.split.objects(index) if not (self.train and o.difficult)]
        boxes = torch.tensor([o.box for o in objects], dtype=torch.float32).reshape(-1, 4)
        labels = torch.tensor([o.label + 1 for o in objects], dtype=torch.int64)
        if self.train:
            # torchvision refuses boxes without area in training
            kept = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
            boxes, labels = boxes[kept], labels[kept]
        if seed is not None and torch.rand((), generator=torch.Generator().manual_seed(seed)) < 0.5:
            width = image.shape[-1]
            image = image.flip(-1)
            boxes = torch.stack([width - boxes[:, 2], boxes[:, 1], width - boxes[:, 0], boxes[:, 3]], dim=1)
        return DetectionItem(index, image, {"boxes": boxes, "labels": labels}, [])


def collate_items(items: list[DetectionItem]) -> list[DetectionItem]:
    """Keeps a batch as its list of items: images differ in size, and torchvision's detectors batch
    (resize and pad) them themselves."""
    return items


def split_truths(split: VocSplit, indices: Sequence[int]) -> list[ImageTruth]:
    """Ground truth of the images ``indices`` of ``split`` (difficult objects included, flagged)."""
    truths = []
    for index in indices:
        objects = split.objects(index)
        truths.append(ImageTruth(np.array([o.box for o in objects], dtype=np.float64).reshape(-1, 4),
                                 np.array([o.label for o in objects], dtype=np.int64),
                                 np.array([o.difficult for o in objects], dtype=bool)))
    return truths
