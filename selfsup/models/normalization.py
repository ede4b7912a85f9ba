"""The ImageNet input normalisation that RGB encoders are fed (and that exported models and detectors repeat)."""

from __future__ import annotations

from torch import Tensor

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def normalize_rgb(images: Tensor) -> Tensor:
    """[0, 1] RGB batch -> ImageNet-normalised batch (on the batch's device)."""
    mean = images.new_tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = images.new_tensor(IMAGENET_STD).view(1, 3, 1, 1)
    return (images - mean) / std
