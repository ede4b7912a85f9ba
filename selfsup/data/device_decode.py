"""JPEG decoding and random-resized crops on the GPU (nvJPEG through ``torchvision.io.decode_jpeg``).

A loader worker then only reads a file's bytes and its header, and draws the crop box and flip exactly as
`RandomCrop` draws them from the sample's seed; the training process decodes the whole batch on the device and
crops and resizes there. Files the GPU decoder does not take (other formats, CMYK JPEGs, JPEGs whose EXIF says
to rotate them) are decoded and cropped in the worker as usual, and a JPEG the GPU fails on is decoded on the
CPU, so every file gives the image `load_rgb` gives. The crops match the CPU path's regions; only the
resampling differs (a box-averaged bilinear sample, `torchvision.ops.roi_align`, against PIL's bilinear filter).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from selfsup.data.images import BadImageError, load_rgb
from selfsup.data.crops import RandomCrop, crop_uniforms
from selfsup.data.loading import Batch, EncodedJpegs, EpochBatchSampler, training_loader
from selfsup.data.source_kinds import FolderSource, ImageSource, IndexedSource

_EXIF_ORIENTATION = 0x0112
_DEVICE_MODES = frozenset({"RGB", "L"})  # what nvJPEG decodes to RGB as PIL would


def file_of(source: ImageSource, index: int) -> str | None:
    """The image file behind ``source[index]``, or None when the source does not read files."""
    while isinstance(source, IndexedSource):
        source, index = source.base, int(source.indices[index])
    return source.path(index) if isinstance(source, FolderSource) else None


def reads_files(source: ImageSource) -> bool:
    while isinstance(source, IndexedSource):
        source = source.base
    return isinstance(source, FolderSource)


def _jpeg_header(path: str) -> tuple[int, int] | None:
    """(width, height) of a JPEG the GPU decoder takes as is; None for anything else, unreadable headers
    included (`load_rgb` then says why, naming the file)."""
    try:
        with Image.open(path) as img:
            if img.format != "JPEG" or img.mode not in _DEVICE_MODES:
                return None
            if img.getexif().get(_EXIF_ORIENTATION, 1) != 1:
                return None
            return img.size
    except Exception:  # PIL signals bad headers with many exception types
        return None


class DeviceDecodeDataset(Dataset):
    """Items ``(index, seed)`` of a file source: a JPEG as its bytes with the crop drawn for it, any other file
    as its crop, decoded here. Bad files are replaced by the next readable one, as in training loaders."""

    def __init__(self, source: ImageSource, crop: RandomCrop) -> None:
        self.source = source
        self.crop = crop

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, item: tuple[int, int]):
        index, seed = item
        bad: list[str] = []
        for attempt in range(len(self.source)):
            current = (index + attempt) % len(self.source)
            path = file_of(self.source, current)
            uniforms = crop_uniforms([seed])[0]
            try:
                size = _jpeg_header(path)
                if size is None:
                    return ("pixels", self.crop(load_rgb(path), uniforms)), self.source.label(current), bad, current
                box, flip = self.crop.draw(*size, uniforms)
                data = torch.from_numpy(np.fromfile(path, dtype=np.uint8))
                return ("jpeg", data, box, flip, path), self.source.label(current), bad, current
            except (BadImageError, OSError) as exc:  # OSError: the file went away after its header was read
                bad.append(str(exc) if isinstance(exc, BadImageError) else str(BadImageError(path, str(exc))))
        return None, -1, bad, index


def collate_encoded(items: Sequence) -> Batch:
    """A Batch whose ``images`` hold the rows decoded in workers and whose ``jpegs`` the rest."""
    kept = [(content, label, index) for content, label, _, index in items if content is not None]
    bad = [message for _, _, messages, _ in items for message in messages]
    pixels = [(row, content[1]) for row, (content, _, _) in enumerate(kept) if content[0] == "pixels"]
    jpegs = [(row, content) for row, (content, _, _) in enumerate(kept) if content[0] == "jpeg"]
    images = torch.stack([image for _, image in pixels]) if pixels else torch.empty(0, dtype=torch.uint8)
    return Batch(
        images=images,
        labels=torch.tensor([label for _, label, _ in kept], dtype=torch.long),
        bad_files=bad,
        indices=torch.tensor([index for _, _, index in kept], dtype=torch.long),
        pixel_rows=torch.tensor([row for row, _ in pixels], dtype=torch.long),
        jpegs=EncodedJpegs(
            data=[content[1] for _, content in jpegs],
            boxes=torch.tensor([content[2] for _, content in jpegs], dtype=torch.float64).reshape(-1, 4),
            flips=torch.tensor([content[3] for _, content in jpegs], dtype=torch.bool),
            rows=torch.tensor([row for row, _ in jpegs], dtype=torch.long),
            paths=[content[4] for _, content in jpegs],
        ),
    )


def crop_on_device(image: torch.Tensor, box: Sequence[float], flip: bool, size: int) -> torch.Tensor:
    """The ``size`` x ``size`` uint8 crop of a C x H x W uint8 ``image`` (on any device) at ``box`` (left, top,
    right, bottom in pixels, as `RandomCrop.draw` gives it), flipped left-right if ``flip``: each output pixel
    averages bilinear samples spread over its footprint in the image, so large downscales do not alias."""
    from torchvision.ops import roi_align

    rois = torch.tensor([[0.0, *box]], dtype=torch.float32, device=image.device)
    out = roi_align(image[None].float(), rois, output_size=size, spatial_scale=1.0, sampling_ratio=-1, aligned=True)[0]
    if flip:
        out = out.flip(-1)
    return out.round_().clamp_(0, 255).to(torch.uint8)


def batch_images(batch: Batch, device: torch.device, size: int | None) -> torch.Tensor:
    """The batch's N x 3 x size x size uint8 images on ``device``: decoded in workers, or decoded and cropped
    here for the JPEGs a `DeviceDecodeDataset` left encoded. A file that fails to decode both on the device and
    on the CPU is counted in ``batch.bad_files`` and its row repeats another image, so the batch keeps its size."""
    jpegs = batch.jpegs
    if jpegs is None:
        return batch.images.to(device, non_blocking=True)
    out = torch.empty((len(batch.labels), 3, size, size), dtype=torch.uint8, device=device)
    if len(batch.pixel_rows):
        out[batch.pixel_rows.to(device)] = batch.images.to(device, non_blocking=True)
    decoded = _decode(jpegs, device, batch.bad_files)
    for row, image, box, flip in zip(jpegs.rows.tolist(), decoded, jpegs.boxes.tolist(), jpegs.flips.tolist()):
        if image is not None:
            out[row] = crop_on_device(image, box, flip, size)
    failed = [row for row, image in zip(jpegs.rows.tolist(), decoded) if image is None]
    good = sorted(set(range(len(out))) - set(failed))
    if failed and not good:
        raise BadImageError(jpegs.paths[0], "no image of the batch decodes")
    for row in failed:
        out[row] = out[good[0]]
    return out


def _decode(jpegs: EncodedJpegs, device: torch.device, bad_files: list[str]) -> list[torch.Tensor | None]:
    from torchvision.io import ImageReadMode, decode_jpeg

    if not jpegs.data:
        return []
    try:
        return list(decode_jpeg(jpegs.data, mode=ImageReadMode.RGB, device=device))
    except RuntimeError:  # the batch call gives nothing if one file fails: decode them one by one
        pass
    images: list[torch.Tensor | None] = []
    for data, path in zip(jpegs.data, jpegs.paths):
        try:
            images.append(decode_jpeg(data, mode=ImageReadMode.RGB, device=device))
        except RuntimeError:
            try:  # PIL decodes what nvJPEG refuses (e.g. some progressive or truncated files)
                images.append(torch.from_numpy(np.asarray(load_rgb(path)).copy()).permute(2, 0, 1).to(device))
            except BadImageError as exc:
                bad_files.append(str(exc))
                images.append(None)
    return images


def device_decode_loader(source: ImageSource, crop: RandomCrop, sampler: EpochBatchSampler, *, workers: int,
                         pin_memory: bool) -> DataLoader:
    """A training loader whose JPEGs are decoded on the device by `batch_images`."""
    return training_loader(DeviceDecodeDataset(source, crop), collate_encoded, sampler, workers=workers,
                           pin_memory=pin_memory)
