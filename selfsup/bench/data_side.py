"""The data side of the tile and patch tasks: jigsaw's and context's batched input-making (the task's forward
up to its first encoder call) against a per-sample PIL reference (:func:`reference_jigsaw`,
:func:`reference_context`, written as the original repositories made inputs), timed interleaved.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from PIL import Image

from selfsup.bench.pipeline import synchronize
from selfsup.data.images import unit_float
from selfsup.models import build_encoder
from selfsup.pretext import TASKS, PretextTask, new_task
from selfsup.pretext.context import config_geometry


class _InputsReady(Exception):
    """Raised at the encoder's first call: the task's inputs are made, the rest of the step is not wanted."""


def time_pretext_inputs(task: PretextTask, images: torch.Tensor, seed: int) -> float:
    """Seconds the task's forward takes to turn ``images`` ([0, 1], on their device) into encoder inputs, up to
    its first encoder call (which is not run)."""

    def stop(module: torch.nn.Module, inputs: Any) -> None:
        synchronize(images.device)
        raise _InputsReady

    handle = task.encoder.register_forward_pre_hook(stop)
    labels = torch.full((len(images),), -1, dtype=torch.long, device=images.device)
    try:
        started = time.perf_counter()
        with torch.no_grad():
            task(images, labels, torch.Generator(device=images.device).manual_seed(seed))
    except _InputsReady:
        return time.perf_counter() - started
    finally:
        handle.remove()
    raise RuntimeError(f"task {task.name} never called its encoder")


def reference_jigsaw(crop: Image.Image, cfg: Any, permutations: np.ndarray, rng: np.random.Generator) -> torch.Tensor:
    """One puzzle per sample with PIL and numpy, as the original PyTorch jigsaw loader makes it: grayscale
    sometimes, nine cells cropped with PIL, a tile at a random offset in each (every channel at its own small
    shift), per-tile per-channel normalisation, the tiles stacked in the drawn permutation's order."""
    if rng.random() < cfg.grayscale_prob:
        crop = crop.convert("L").convert("RGB")
    size = crop.size[0]
    cell = size // 3
    tile = max(1, min(cell, round(cell * cfg.tile_fraction)))
    margin = (size - 3 * cell) // 2
    shift = round(cfg.color_jitter * tile)
    tiles = []
    for k in range(9):
        top, left = margin + cell * (k // 3), margin + cell * (k % 3)
        pixels = np.asarray(crop.crop((left, top, left + cell, top + cell)), dtype=np.float32) / 255
        oy, ox = rng.integers(0, cell - tile + 1, 2)
        channels = []
        for c in range(3):
            y, x = np.clip(np.array([oy, ox]) + rng.integers(-shift, shift + 1, 2), 0, cell - tile)
            channels.append(pixels[y : y + tile, x : x + tile, c])
        tensor = torch.from_numpy(np.stack(channels))
        mean = tensor.mean(dim=(1, 2), keepdim=True)
        std = tensor.std(dim=(1, 2), keepdim=True, unbiased=False)
        tiles.append((tensor - mean) / (std + 1e-5))
    order = permutations[rng.integers(len(permutations))]
    return torch.stack([tiles[i] for i in order])


def reference_context(crop: Image.Image, cfg: Any, geometry: Any, rng: np.random.Generator) -> torch.Tensor:
    """One patch pair per sample with PIL and numpy, as the original context-prediction data layer made it:
    the centre and a random neighbour cropped with PIL at jittered positions, each sometimes box-downsampled and
    bilinearly upsampled back, normalised per channel, one colour channel kept and the others noise."""
    g = geometry
    origin = rng.integers(0, g.slack + 1, 2) + g.jitter
    step = np.array(((-1, -1), (-1, 0), (-1, 1), (0, -1), (0, 1), (1, -1), (1, 0), (1, 1))[rng.integers(8)])
    patches = []
    for corner in (origin + g.stride, origin + g.stride * (1 + step)):
        y, x = corner + rng.integers(-g.jitter, g.jitter + 1, 2)
        patch = crop.crop((x, y, x + g.patch, y + g.patch))
        if rng.random() < cfg.downsample_prob:
            small = max(2, round(g.patch * rng.uniform(cfg.downsample_min_scale, 1.0)))
            patch = patch.resize((small, small), Image.BOX).resize((g.patch, g.patch), Image.BILINEAR)
        pixels = np.asarray(patch, dtype=np.float32) / 255
        pixels = (pixels - pixels.mean(axis=(0, 1))) / np.sqrt(pixels.var(axis=(0, 1)) + 1e-4)
        kept = rng.integers(3)
        noise = rng.normal(pixels[..., kept].mean(), cfg.drop_noise_std * pixels[..., kept].std(), pixels.shape)
        noise[..., kept] = pixels[..., kept]
        patches.append(torch.from_numpy(noise.astype(np.float32)).permute(2, 0, 1))
    return torch.stack(patches)


@dataclass
class DataSideResult:
    task: str
    scale: str
    image_size: int
    piece: int  # tile or patch side in px
    batch_size: int
    device: str  # where the batched side ran (the reference always runs on the CPU)
    batched_ms_per_image: float
    per_sample_pil_ms_per_image: float
    ratio: float  # batched / per-sample PIL

    def row(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def measure_data_side(task_name: str, scale: str, image_size: int, options: dict[str, Any], *, batch_size: int,
                      rounds: int, device: torch.device, seed: int = 0) -> DataSideResult:
    """Per image, the task's batched input-making on ``device`` against the per-sample PIL reference on the CPU,
    both from the same decoded uint8 training crops, interleaved over ``rounds``. Crops are smooth random
    images: the cost does not depend on content."""
    torch.manual_seed(seed)
    task_cls = TASKS[task_name]
    task = new_task(task_name, build_encoder("alexnet_small", in_channels=3, width=0.25), options).eval().to(device)
    task_cls.check_image_size(task.cfg, image_size)
    rng = np.random.default_rng(seed)
    small = torch.rand(batch_size, 3, image_size // 8 + 1, image_size // 8 + 1, generator=torch.Generator().manual_seed(seed))
    crops = (torch.nn.functional.interpolate(small, size=(image_size, image_size), mode="bilinear") * 255).to(torch.uint8)
    pil_crops = [Image.fromarray(crop.permute(1, 2, 0).numpy()) for crop in crops]
    if task_name == "jigsaw":
        permutations = task.permutations.cpu().numpy()
        piece = int(task.puzzles(unit_float(crops[:1].to(device)))[0].shape[-1])

        def reference(crop: Image.Image) -> torch.Tensor:
            return reference_jigsaw(crop, task.cfg, permutations, rng)
    elif task_name == "context":
        geometry = config_geometry(task.cfg, image_size)
        piece = geometry.patch

        def reference(crop: Image.Image) -> torch.Tensor:
            return reference_context(crop, task.cfg, geometry, rng)
    else:
        raise ValueError(f"no per-sample reference for task {task_name}: jigsaw or context")
    batched = reference_total = 0.0
    for r in range(rounds + 1):  # round 0 warms both up
        started = time.perf_counter()
        # the step's transfer and, unless the task converts only what it cuts, its conversion
        images = crops.to(device, non_blocking=True)
        if not task.takes_uint8:
            images = unit_float(images)
        batched_seconds = time.perf_counter() - started + time_pretext_inputs(task, images, seed + r)
        started = time.perf_counter()
        for crop in pil_crops:
            reference(crop)
        reference_seconds = time.perf_counter() - started
        if r:
            batched += batched_seconds
            reference_total += reference_seconds
    images = rounds * batch_size
    return DataSideResult(task_name, scale, image_size, piece, batch_size, str(device), 1000 * batched / images,
                          1000 * reference_total / images, batched / reference_total)
