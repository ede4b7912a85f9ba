"""Relative patch location, "context prediction" (Doersch, Gupta & Efros, ICCV 2015).

A centre patch and one of its 8 neighbours in a 3x3 arrangement are cut from each crop, with a gap
between neighbouring patches and a random jitter of every patch; the network sees the two patches
through one shared trunk and classifies where the neighbour lies (8-way cross-entropy).

Labels, in image coordinates (rows grow downwards), as ``(row, col)`` steps from the centre patch::

    0 top-left    (-1, -1)   1 top     (-1, 0)   2 top-right    (-1, 1)
    3 left        ( 0, -1)                       4 right        ( 0, 1)
    5 bottom-left ( 1, -1)   6 bottom  ( 1, 0)   7 bottom-right ( 1, 1)

Geometry relative to the crop: a 3x3 arrangement of patches of side P with gaps G = gap_ratio * P
and jitter J = jitter_ratio * P needs 3P + 2G + 2J pixels. With ``patch_size = 0`` P is the largest
side for which that fits ``data.image_size``; the paper's 96 px patches, 48 px gap and 7 px jitter are
the default ratios and come out exactly at a 398 px crop (64 px crops give P = 15, G = 8, J = 1). Crop
pixels beyond the arrangement become a random offset of the whole arrangement per image.

The shortcuts the paper found (chromatic aberration, pixel-level statistics, edge continuity) are
guarded against by default: gap and jitter, colour dropping or green-magenta projection, random
down-and-up sampling, and per-patch per-channel normalisation, all batched on the device.

Evaluation (probes, fine-tuning) feeds whole images as the trunk saw patches: standardised per channel,
at the crop's pixel density (patches are cut unresized). With colour dropping the trunk never saw two
real channels at once, only one channel (a random one per patch) beside two almost flat ones, so
whole images are fed the same way: the green channel kept (the brightest-weighted one; each channel
was kept a third of the time) and the other two set to the noise's mean, without the noise. The
remaining mismatch of BatchNorm statistics (whole images vs small patches) is left to the probes'
re-estimation (``ssl-probe --bn-stats``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from selfsup.config import ConfigError, option
from selfsup.data.images import gather_windows, unit_float
from selfsup.models import Encoder
from selfsup.models.normalization import normalize_rgb
from selfsup.pretext.base import (KEPT_CHANNEL, PER_IMAGE, RGB, Examples, InputMapping, PretextTask, accuracy,
                                  draw_box)

NUM_POSITIONS = 8
# (row, col) step of the neighbour from the centre patch for each label; y grows downwards.
NEIGHBOUR_STEPS: tuple[tuple[int, int], ...] = tuple(
    (row, col) for row in (-1, 0, 1) for col in (-1, 0, 1) if (row, col) != (0, 0)
)
DIRECTION_NAMES = ("top-left", "top", "top-right", "left", "right", "bottom-left", "bottom", "bottom-right")
# Smaller patches hold too little to locate; at 8 px the demo AlexNet's conv3-5 maps are already 2x2.
MIN_PATCH = 8
# Variance floor of per-patch normalisation (std 0.01 of the [0, 1] range, ~2.5 grey levels), so
# flat patches are not blown up into amplified quantisation noise.
PATCH_NORM_EPS = 1e-4
# The channel that evaluation keeps under colour dropping (see the module docstring): green.
EVAL_KEPT_CHANNEL = 1
# Chromatic aberration shifts green against magenta; the paper projects this axis out.
GREEN_MAGENTA = (-1 / math.sqrt(6), 2 / math.sqrt(6), -1 / math.sqrt(6))


@dataclass
class ContextConfig:
    patch_size: int = option(0, "patch side in px; 0 = the largest that fits data.image_size (paper: 96 px)", min=0)
    gap_ratio: float = option(0.5, "gap between neighbouring patches / patch side (paper: 48 of 96 px)", min=0.0)
    jitter_ratio: float = option(7 / 96, "max jitter of each patch per axis / patch side (paper: 7 of 96 px)", min=0.0)
    color_mode: str = option(
        "drop", "chromatic-aberration guard: keep one random channel and noise the others, project out "
        "green-magenta, or none", choices=("drop", "project", "none"),
    )
    drop_noise_std: float = option(
        0.01, "std of the noise replacing dropped channels / std of the kept channel as fed, i.e. after "
        "normalisation (paper: ~1/100, an almost flat channel; 1 = noise of matching std)", min=0.0,
    )
    downsample_prob: float = option(0.5, "probability that a patch is downsampled and upsampled back "
                                    "(paper: 'some patches')", min=0.0, max=1.0)
    downsample_min_scale: float = option(10 / 96, "smallest downsampled side / patch side (paper: as few as "
                                         "100 pixels of a 96x96 patch)", gt=0.0, max=1.0)
    downsample_levels: int = option(4, "number of downsampled sizes, spaced geometrically from the smallest "
                                    "up to the patch side; each resampled patch draws one", min=1)
    patch_norm: bool = option(True, "normalise each patch per channel to mean 0 / std 1 (paper: per-patch "
                              "mean subtraction and contrast normalisation)")
    head_pool: int = option(2, "adaptive average-pool side of the trunk's last map before fc6", min=1)
    fc6_dim: int = option(1024, "units of fc6, applied to each patch separately (paper: 4096; 1024 keeps "
                          "the demo head trainable at the demo lr)", min=1)
    fc7_dim: int = option(1024, "units of fc7 on the concatenated pair (paper: 4096)", min=1)

    def validate(self) -> None:
        if 0 < self.patch_size < MIN_PATCH:
            raise ConfigError(
                f"pretext.patch_size = {self.patch_size} is invalid: must be 0 (derived) or >= {MIN_PATCH}"
            )
        if 2 * self.jitter_ratio > self.gap_ratio:
            raise ConfigError(
                f"pretext.jitter_ratio = {self.jitter_ratio!r} is invalid: must be <= pretext.gap_ratio / 2 "
                f"= {self.gap_ratio / 2:g} so that jittered patches never overlap"
            )
        if 4 * self.jitter_ratio >= 1 + self.gap_ratio:
            raise ConfigError(
                f"pretext.jitter_ratio = {self.jitter_ratio!r} is invalid: must be < (1 + pretext.gap_ratio) / 4 "
                f"= {(1 + self.gap_ratio) / 4:g} so that the neighbour's direction stays unambiguous"
            )


@dataclass(frozen=True)
class PatchGeometry:
    patch: int
    gap: int
    jitter: int
    slack: int  # crop pixels left over per axis: the random offset range of the whole arrangement

    @property
    def stride(self) -> int:
        return self.patch + self.gap

    @property
    def extent(self) -> int:
        return 3 * self.patch + 2 * self.gap + 2 * self.jitter


def _geometry_for(patch: int, gap_ratio: float, jitter_ratio: float, image_size: int) -> PatchGeometry:
    gap = round(gap_ratio * patch)
    # Rounding must not break what validate() guarantees for the ratios: no overlap, no ambiguity.
    jitter = min(round(jitter_ratio * patch), gap // 2, (patch + gap - 1) // 4)
    return PatchGeometry(patch, gap, jitter, image_size - (3 * patch + 2 * gap + 2 * jitter))


@lru_cache(maxsize=64)
def patch_geometry(image_size: int, patch_size: int, gap_ratio: float, jitter_ratio: float) -> PatchGeometry:
    """Patch, gap and jitter in pixels for ``image_size`` crops; ``patch_size = 0`` picks the largest
    patch whose arrangement fits. The result's ``slack`` is negative when nothing fits."""
    if patch_size:
        return _geometry_for(patch_size, gap_ratio, jitter_ratio, image_size)
    for patch in range(image_size // 3, 0, -1):
        geometry = _geometry_for(patch, gap_ratio, jitter_ratio, image_size)
        if geometry.slack >= 0:
            return geometry
    return _geometry_for(1, gap_ratio, jitter_ratio, image_size)


def config_geometry(cfg: ContextConfig, image_size: int) -> PatchGeometry:
    return patch_geometry(image_size, cfg.patch_size, cfg.gap_ratio, cfg.jitter_ratio)


@dataclass
class PatchPairs:
    centre: Tensor  # N x 2 (y, x) top-left corners in the crop
    neighbour: Tensor  # N x 2
    labels: Tensor  # N, indices into NEIGHBOUR_STEPS


def sample_pair_positions(count: int, geometry: PatchGeometry, generator: torch.Generator,
                          device: torch.device) -> PatchPairs:
    """Random arrangement offset, neighbour label and per-patch jitter for ``count`` crops."""
    g = geometry

    def uniform_int(low: int, high: int, shape: tuple[int, ...]) -> Tensor:
        return torch.randint(low, high + 1, shape, generator=generator, device=device)

    # Top-left of the arrangement's (0, 0) cell before jitter.
    origin = uniform_int(0, g.slack, (count, 2)) + g.jitter
    labels = uniform_int(0, NUM_POSITIONS - 1, (count,))
    steps = torch.tensor(NEIGHBOUR_STEPS, device=device)[labels]
    centre = origin + g.stride + uniform_int(-g.jitter, g.jitter, (count, 2))
    neighbour = origin + g.stride * (1 + steps) + uniform_int(-g.jitter, g.jitter, (count, 2))
    return PatchPairs(centre, neighbour, labels)


def crop_patches(images: Tensor, top_left: Tensor, size: int) -> Tensor:
    """``images[n, :, y:y+size, x:x+size]`` for every row ``(y, x)`` of ``top_left``, in one gather of window
    rows (see :func:`gather_windows`)."""
    n, channels = images.shape[:2]
    plane = torch.arange(n, device=images.device).view(n, 1) * channels + torch.arange(channels, device=images.device)
    return gather_windows(images, plane, top_left[:, :1], top_left[:, 1:], size)


def downsample_sizes(patch: int, min_scale: float, levels: int) -> list[int]:
    """Sides to resample a ``patch``-px patch through, geometrically spaced from the smallest up to
    (not including) the patch side."""
    # A 1 px patch comes back flat, and per-patch normalisation turns it into zeros: nothing to see.
    smallest = max(2, round(min_scale * patch))
    if smallest >= patch:
        return []
    return sorted({round(smallest * (patch / smallest) ** (i / levels)) for i in range(levels)})


def down_up_sample(patches: Tensor, prob: float, sizes: list[int], generator: torch.Generator,
                   by_mask: bool | None = None) -> Tensor:
    """Each patch, with probability ``prob``, box-downsampled to a random one of ``sizes`` and bilinearly
    upsampled back, so the network cannot rely on pixel-level detail (the paper's pixelation guard).

    ``by_mask`` (default: on accelerators) resamples the whole batch at every level and selects by mask:
    a handful of cheap interpolations instead of a device sync to gather each level's patches. On a CPU
    there is no sync to avoid, and resampling only the chosen patches does a fraction of the work; both
    give the same tensors (every patch is resampled on its own)."""
    if prob <= 0 or not sizes:
        return patches
    count, side = patches.shape[0], patches.shape[-1]
    device = patches.device
    chosen = torch.randint(0, len(sizes), (count,), generator=generator, device=device)
    chosen = torch.where(torch.rand(count, generator=generator, device=device) < prob, chosen, -1)

    def resampled(batch: Tensor, size: int) -> Tensor:
        small = F.interpolate(batch, size=(size, size), mode="area")
        return F.interpolate(small, size=(side, side), mode="bilinear", align_corners=False)

    if by_mask if by_mask is not None else device.type != "cpu":
        out = patches
        for level, size in enumerate(sizes):
            out = torch.where((chosen == level).view(-1, 1, 1, 1), resampled(patches, size), out)
        return out
    out = patches.clone()
    for level, size in enumerate(sizes):
        picked = torch.nonzero(chosen == level).squeeze(1)
        if len(picked):
            out[picked] = resampled(patches[picked], size)
    return out


def drop_colors(patches: Tensor, noise_std: float, generator: torch.Generator) -> tuple[Tensor, Tensor]:
    """Keeps one random channel per patch and replaces the other two by Gaussian noise with the kept
    channel's mean and ``noise_std`` times its std. Returns the patches and the kept channel indices.

    Noise is drawn for the dropped channels only: on a CPU, drawing normals is the largest single cost of
    making context inputs (about 10 ns each), and a third of them would be thrown away. The std takes two
    passes (Welford's one-pass update is several times slower on a CPU; equal to float rounding), and the
    output is assembled by whole channels."""
    count, channels = patches.shape[:2]
    kept = torch.randint(0, channels, (count,), generator=generator, device=patches.device)
    rows = torch.arange(count, device=patches.device)
    kept_channel = patches[rows, kept]  # N x P x P
    pixels = kept_channel.flatten(1)
    mean = pixels.mean(dim=1)
    std = torch.linalg.vector_norm(pixels - mean[:, None], dim=1) / (pixels.shape[1] - 1) ** 0.5  # unbiased
    noise = torch.randn((count, channels - 1, *patches.shape[2:]), generator=generator, device=patches.device,
                        dtype=patches.dtype)
    noise = noise.mul_((noise_std * std).view(-1, 1, 1, 1)).add_(mean.view(-1, 1, 1, 1))
    dropped = (kept.view(-1, 1) + torch.arange(1, channels, device=patches.device)) % channels  # the other channels
    out = torch.empty_like(patches)
    out[rows[:, None], dropped] = noise
    out[rows, kept] = kept_channel
    return out, kept


def project_out_green_magenta(patches: Tensor) -> Tensor:
    """Removes every pixel's component along the green-magenta axis; grey (r = g = b) is unchanged."""
    axis = patches.new_tensor(GREEN_MAGENTA).view(1, 3, 1, 1)
    return patches - (patches * axis).sum(dim=1, keepdim=True) * axis


def normalize_per_patch(patches: Tensor) -> Tensor:
    """Per-patch, per-channel mean 0 / std 1: no absolute colour or contrast left to match on.

    Two passes, the centred pixels reused for the variance and divided in place: 3x faster on a CPU than
    ``patches.var`` (Welford's one-pass update), equal to float rounding."""
    pixels = patches.flatten(-2)
    centred = pixels - pixels.mean(dim=-1, keepdim=True)
    var = torch.linalg.vector_norm(centred, dim=-1, keepdim=True).square() / pixels.shape[-1]
    return centred.div_(torch.sqrt(var + PATCH_NORM_EPS)).view_as(patches)


class ContextTask(PretextTask):
    name = "context"
    Config = ContextConfig
    takes_uint8 = True  # two patches are a few percent of a crop's pixels: convert only those

    @classmethod
    def input_mapping(cls, cfg: ContextConfig) -> InputMapping:
        if cfg.color_mode == "drop":
            if not cfg.patch_norm:
                raise ConfigError(
                    "context with color_mode=drop and patch_norm off is evaluated on green plus two channels "
                    "holding each image's mean green, which no conv on RGB expresses; it cannot be folded: use "
                    "--frontend exact")
            return InputMapping(KEPT_CHANNEL, kept_channel=EVAL_KEPT_CHANNEL)
        return InputMapping(PER_IMAGE if cfg.patch_norm else RGB)

    @classmethod
    def check_image_size(cls, cfg: ContextConfig, image_size: int) -> None:
        # The arrangement's extent grows with the patch side, so the smallest patch allowed decides.
        needed = _geometry_for(max(MIN_PATCH, cfg.patch_size), cfg.gap_ratio, cfg.jitter_ratio, 0).extent
        if image_size < needed:
            raise ConfigError(
                f"data.image_size = {image_size} is invalid: context needs room for 3x3 patches of at least "
                f"{max(MIN_PATCH, cfg.patch_size)} px with gaps of {cfg.gap_ratio:g} and jitter of "
                f"{cfg.jitter_ratio:.3g} patch sides (3P + 2 gap + 2 jitter), i.e. data.image_size >= {needed}"
            )

    def __init__(self, encoder: Encoder, cfg: ContextConfig) -> None:
        super().__init__(encoder, cfg)
        last = encoder.layer_names[-1]
        self.fc6 = nn.Sequential(
            nn.AdaptiveAvgPool2d(cfg.head_pool),
            nn.Flatten(),
            nn.Linear(encoder.out_channels(last) * cfg.head_pool**2, cfg.fc6_dim, bias=False),
            nn.BatchNorm1d(cfg.fc6_dim),
            nn.ReLU(inplace=True),
        )
        self.fc7 = nn.Sequential(
            nn.Linear(2 * cfg.fc6_dim, cfg.fc7_dim, bias=False),
            nn.BatchNorm1d(cfg.fc7_dim),
            nn.ReLU(inplace=True),
        )
        self.fc8 = nn.Linear(cfg.fc7_dim, NUM_POSITIONS)

    @classmethod
    def content_scale(cls, cfg: ContextConfig) -> float:
        # Patches are cut from the crop unresized, and down-and-up sampling returns them at their own side:
        # the trunk saw content at the crop's pixel density, so whole images are probed at the crop size.
        return 1.0

    def encoder_input(self, images: Tensor) -> Tensor:
        # Whole images get what patches got: standardised per channel.
        return normalize_per_patch(images) if self.cfg.patch_norm else normalize_rgb(images)

    def eval_input(self, images: Tensor) -> Tensor:
        """Whole images as the trunk saw patches; under colour dropping one channel, as in drop_colors."""
        mapped = self.encoder_input(images)
        if self.cfg.color_mode != "drop":
            return mapped
        kept = mapped[:, EVAL_KEPT_CHANNEL : EVAL_KEPT_CHANNEL + 1]
        keep_mask = torch.arange(mapped.shape[1], device=mapped.device).view(1, -1, 1, 1) == EVAL_KEPT_CHANNEL
        return torch.where(keep_mask, mapped, kept.mean(dim=(2, 3), keepdim=True).expand_as(mapped))

    def prepare_patches(self, patches: Tensor, generator: torch.Generator) -> Tensor:
        """The anti-shortcut pipeline from [0, 1] RGB patches to what the trunk is fed."""
        cfg = self.cfg
        patches = down_up_sample(
            patches, cfg.downsample_prob,
            downsample_sizes(patches.shape[-1], cfg.downsample_min_scale, cfg.downsample_levels), generator,
        )
        # Projection needs RGB, where grey is r = g = b; dropping comes after normalisation so that the
        # noise's scale is relative to the kept channel as fed (with per-patch normalisation: unit std).
        if cfg.color_mode == "project":
            patches = project_out_green_magenta(patches)
        patches = self.encoder_input(patches)
        if cfg.color_mode == "drop":
            patches, _ = drop_colors(patches, cfg.drop_noise_std, generator)
        return patches

    def make_pairs(self, images: Tensor, generator: torch.Generator) -> tuple[Tensor, PatchPairs]:
        """Both patches of every crop, prepared, stacked as ``[centres; neighbours]`` (2N x 3 x P x P); float
        crops in [0, 1] or uint8 ones (then only the patches' pixels are converted)."""
        geometry = config_geometry(self.cfg, images.shape[-1])
        pairs = sample_pair_positions(images.shape[0], geometry, generator, images.device)
        stacked = torch.cat([crop_patches(images, pairs.centre, geometry.patch),
                             crop_patches(images, pairs.neighbour, geometry.patch)])
        return self.prepare_patches(unit_float(stacked), generator), pairs

    def classify(self, patches: Tensor) -> Tensor:
        """Logits over the 8 positions for ``[centres; neighbours]``: shared trunk and fc6, fc7 on the pair."""
        per_patch = self.fc6(self.encoder(patches))
        centre, neighbour = per_patch.chunk(2)
        return self.fc8(self.fc7(torch.cat([centre, neighbour], dim=1)))

    def forward(self, images: Tensor, labels: Tensor, generator: torch.Generator | None = None) -> dict[str, Tensor]:
        generator = generator if generator is not None else torch.Generator(device=images.device)
        patches, pairs = self.make_pairs(images, generator)
        logits = self.classify(patches)
        loss = F.cross_entropy(logits.float(), pairs.labels)
        return {"loss": loss, "acc": accuracy(logits.detach(), pairs.labels)}

    def example_images(self, images: Tensor, generator: torch.Generator | None = None) -> Examples:
        shown = images[:4]
        generator = generator if generator is not None else torch.Generator(device=images.device)
        patches, pairs = self.make_pairs(shown, generator)
        predicted = self.classify(patches).argmax(dim=1)
        size, patch, count = shown.shape[-1], patches.shape[-1], shown.shape[0]

        crops = draw_box(shown, pairs.centre, patch, (0.0, 0.9, 0.0))
        crops = draw_box(crops, pairs.neighbour, patch, (1.0, 0.0, 0.0))
        # The processed patches, stretched to [0, 1] per patch, side by side on a white panel.
        low = patches.amin(dim=(1, 2, 3), keepdim=True)
        high = patches.amax(dim=(1, 2, 3), keepdim=True)
        shown_patches = (patches - low) / (high - low).clamp_min(1e-6)
        half = size // 2 - 1
        shown_patches = F.interpolate(shown_patches, size=(half, half), mode="nearest")
        panels = torch.ones_like(shown)
        top = (size - half) // 2
        panels[:, :, top:top + half, :half] = shown_patches[:count]
        panels[:, :, top:top + half, size - half:] = shown_patches[count:]

        grid = torch.stack([crops, panels], dim=1).flatten(0, 1)
        captions = []
        for label, guess in zip(pairs.labels.tolist(), predicted.tolist()):
            captions.append(f"label {label} = {DIRECTION_NAMES[label]} (green centre, red neighbour)")
            captions.append(f"fed: centre | neighbour; predicted {guess} = {DIRECTION_NAMES[guess]}")
        return Examples(grid, captions, per_row=4)
