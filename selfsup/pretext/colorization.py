"""Colorization (Zhang, Isola & Efros, ECCV 2016).

The encoder sees only the lightness L of a CIE Lab image and predicts, for every pixel of a map
at 1/4 of the input resolution, a distribution over quantised ab colours. Targets are soft-encoded
over the 5 nearest ab bins (Gaussian, sigma 5) and the multinomial cross-entropy is rebalanced by
the inverse of a smoothed empirical colour prior mixed with a uniform one (lambda 0.5), so that
the network does not settle on desaturated browns. Predictions are turned into colours by the
annealed mean (T = 0.38).

The in-gamut ab bins are derived, not shipped: every sRGB colour is converted to Lab and its ab
rounded to the nearest point of a grid of step 10; the bins hit are kept. Because the ab
projection of the RGB cube equals that of its surface, a dense sampling of the six faces
(step 1/512) finds them all: 262 bins for the default grid. The paper's released set has 313;
it contains bins such as (a, b) = (-90, 50) that no sRGB colour reaches under the conversion
below, so it was built from a wider gamut or a looser in-gamut test, and 313 is not reproduced.

The prior needs the training data, which a task only sees batch by batch: it is estimated online
from the hard (nearest-bin) targets of the first ``prior_images`` training images and kept in
buffers, so it is checkpointed and a resumed run continues the same estimate. Until the first
batch has been counted the prior is uniform, i.e. all weights are 1.

Read the bin accuracy with care: on the CIFAR-10 tasks-table checkpoint the network's most likely bin is
right for 18.9% of the pixels, below the 25.5% of one constant colour distribution fitted on other images
(each image's own mean colour: 36.9%). The rebalanced loss pushes predictions towards rare, saturated
colours, which the accuracy of the most likely bin does not reward (``python experiments/diagnose_cifar10.py``,
experiments/results/diagnose_cifar10.md).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from selfsup.config import ConfigError, option
from selfsup.models import Encoder
from selfsup.pretext.base import LIGHTNESS, Examples, InputMapping, PretextTask

# sRGB (linear) -> XYZ and the D65 2-degree white, exactly as scikit-image's rgb2lab / lab2rgb.
_XYZ_FROM_RGB = (
    (0.412453, 0.357580, 0.180423),
    (0.212671, 0.715160, 0.072169),
    (0.019334, 0.119193, 0.950227),
)
_RGB_FROM_XYZ = torch.linalg.inv(torch.tensor(_XYZ_FROM_RGB, dtype=torch.float64)).tolist()
_D65_WHITE = (0.95047, 1.0, 1.08883)
_LAB_EPSILON = 0.008856  # below it the cube root is replaced by a line (CIE)
_LAB_F_KNEE = 0.2068966  # f(_LAB_EPSILON), the knee of the inverse
L_CENTER = 50.0  # L in [0, 100] is fed to the encoder as (L - 50) / 50


@dataclass
class ColorizationConfig:
    grid_size: float = option(10.0, "ab quantisation step; the in-gamut bins are derived for it (paper: 10)", gt=0.0)
    soft_neighbours: int = option(5, "ab bins a target is soft-encoded over (paper: 5)", min=1)
    soft_sigma: float = option(5.0, "Gaussian width of the soft encoding, in ab units (paper: 5)", gt=0.0)
    rebalance_lambda: float = option(
        0.5, "weight of the uniform distribution mixed into the prior before inverting it; 1 = no rebalancing "
        "(paper: 0.5)", gt=0.0, max=1.0)
    prior_sigma: float = option(5.0, "Gaussian smoothing of the empirical ab prior, in ab units; 0 = none (paper: 5)",
                                min=0.0)
    prior_images: int = option(
        5000, "training images whose pixels estimate the ab prior at the start of training (kept in the checkpoint)",
        min=1)
    gray_threshold: float = option(
        5.0, "an image is gray, and left out of the loss, when no |a| or |b| of its target map exceeds this "
        "(paper's code: 5)", min=0.0)
    target_downsample: int = option(4, "targets and predictions live at 1/this of the input resolution (paper: 4)",
                                    min=1)
    head_hidden: int = option(256, "channels of the 3x3 conv before the per-pixel bin classifier; 0 = linear head "
                                   "(paper's conv8: 256)", min=0)
    anneal_temperature: float = option(0.38, "temperature of the annealed-mean decoding (paper: 0.38)", gt=0.0)


# ------------------------------------------------------------------------------------------
# colour space


def _mix(matrix, channels: list[Tensor]) -> list[Tensor]:
    # Elementwise rather than a matmul so that autocast never runs the conversion in bfloat16.
    return [row[0] * channels[0] + row[1] * channels[1] + row[2] * channels[2] for row in matrix]


def _float(x: Tensor) -> Tensor:
    return x if x.dtype == torch.float64 else x.float()


def rgb_to_lab(rgb: Tensor) -> Tensor:
    """sRGB in [0, 1] (channels at dim -3) -> CIE Lab (L in [0, 100]), D65, as ``skimage.color.rgb2lab``."""
    channels = _float(rgb).unbind(-3)
    linear = [torch.where(c > 0.04045, ((c.clamp_min(0.04045) + 0.055) / 1.055) ** 2.4, c / 12.92) for c in channels]
    fx, fy, fz = (
        torch.where(t > _LAB_EPSILON, t.clamp_min(_LAB_EPSILON) ** (1 / 3), 7.787 * t + 16 / 116)
        for t in (v / w for v, w in zip(_mix(_XYZ_FROM_RGB, linear), _D65_WHITE))
    )
    return torch.stack([116 * fy - 16, 500 * (fx - fy), 200 * (fy - fz)], dim=-3)


def lightness_input(images: Tensor) -> Tensor:
    """[0, 1] RGB (N x 3 x H x W) -> what the encoder is fed: L, centred and scaled to -1..1 (N x 1 x H x W)."""
    return (rgb_to_lab(images)[:, :1] - L_CENTER) / L_CENTER


def lab_to_rgb(lab: Tensor) -> Tensor:
    """CIE Lab (channels at dim -3) -> sRGB clipped to [0, 1], as ``skimage.color.lab2rgb`` (negative Z clipped)."""
    light, a, b = _float(lab).unbind(-3)
    fy = (light + 16) / 116
    fs = (a / 500 + fy, fy, (fy - b / 200).clamp_min(0))
    xyz = [w * torch.where(f > _LAB_F_KNEE, f**3, (f - 16 / 116) / 7.787) for f, w in zip(fs, _D65_WHITE)]
    rgb = [
        torch.where(c > 0.0031308, 1.055 * c.clamp_min(0.0031308) ** (1 / 2.4) - 0.055, 12.92 * c)
        for c in _mix(_RGB_FROM_XYZ, xyz)
    ]
    return torch.stack(rgb, dim=-3).clamp(0, 1)


# ------------------------------------------------------------------------------------------
# ab bins, targets and weights


def quantize_ab(ab: Tensor, grid: float) -> Tensor:
    """Integer grid cell (index of the nearest grid point) of each ab value; same shape as ``ab``."""
    return torch.floor(ab / grid + 0.5).long()


@functools.lru_cache(maxsize=4)
def _derive_gamut_bins(grid: float, face_steps: int) -> Tensor:
    axis = torch.linspace(0, 1, face_steps + 1, dtype=torch.float64)
    u, v = torch.meshgrid(axis, axis, indexing="ij")
    faces = []
    for fixed in range(3):
        for value in (0.0, 1.0):
            channels = [u, v]
            channels.insert(fixed, torch.full_like(u, value))
            faces.append(torch.stack(channels))
    cells = quantize_ab(rgb_to_lab(torch.stack(faces))[:, 1:], grid)  # 6 x 2 x S x S
    # One integer per (a, b) cell makes the de-duplication a cheap 1-D unique, sorted by a then b.
    low = int(cells.min())
    span = int(cells.max()) - low + 1
    codes = torch.unique((cells[:, 0] - low) * span + (cells[:, 1] - low))
    centres = torch.stack([codes // span + low, codes % span + low], dim=1)
    return (centres.double() * grid).float()


def gamut_bins(grid: float = 10.0, face_steps: int = 512) -> Tensor:
    """The ab grid points (Q x 2, sorted by a then b) that some sRGB colour rounds to.

    The ab projection of the RGB cube is the projection of its surface, so the six faces are
    sampled at ``face_steps + 1`` points a side. For grid 10 this gives 262 bins from 256 steps
    on, the same set at 512, 1024 and 2048 (128 misses one); the 8-bit colours of the whole cube
    all fall into it (they reach 261 of its bins).
    """
    return _derive_gamut_bins(float(grid), int(face_steps)).clone()


def squared_distances(ab: Tensor, bins: Tensor) -> Tensor:
    """N x 2 x h x w ab values, Q x 2 bins -> N x Q x h x w squared distances (elementwise, autocast-safe)."""
    da = ab[:, 0:1] - bins[:, 0].view(1, -1, 1, 1)
    db = ab[:, 1:2] - bins[:, 1].view(1, -1, 1, 1)
    return da * da + db * db


def soft_encode(ab: Tensor, bins: Tensor, neighbours: int = 5, sigma: float = 5.0) -> tuple[Tensor, Tensor]:
    """Soft targets over the ``neighbours`` nearest bins, as (indices, weights), each N x k x h x w.

    Bins come nearest first (``indices[:, 0]`` is the hard target) and the Gaussian weights sum
    to 1 over k; a softmax of -d^2 / 2 sigma^2 is that normalised Gaussian without underflow.
    """
    dist2, indices = squared_distances(_float(ab), bins).topk(neighbours, dim=1, largest=False, sorted=True)
    return indices, torch.softmax(-dist2 / (2 * sigma * sigma), dim=1)


def non_gray(ab: Tensor, threshold: float) -> Tensor:
    """N booleans: does any pixel of the N x 2 x h x w ab map have |a| or |b| above ``threshold``."""
    return (ab.abs() > threshold).flatten(1).any(dim=1)


def prior_kernel(bins: Tensor, sigma: float) -> Tensor:
    """Q x Q Gaussian over bin-centre distances that smooths a histogram of bins (identity for sigma 0)."""
    dist2 = (bins[:, None, :] - bins[None, :, :]).pow(2).sum(dim=-1)
    if sigma == 0:
        return (dist2 == 0).to(bins.dtype)
    return torch.exp(-dist2 / (2 * sigma * sigma))


def smoothed_prior(counts: Tensor, kernel: Tensor) -> Tensor:
    """The empirical bin distribution of ``counts`` smoothed by ``kernel``; uniform (so no rebalancing)
    while nothing has been counted."""
    counts = counts.to(kernel.dtype)
    smoothed = (kernel * counts[None, :]).sum(dim=1)
    uniform = torch.full_like(smoothed, 1 / smoothed.numel())
    return torch.where(counts.sum() > 0, smoothed / smoothed.sum().clamp_min(1e-30), uniform)


def rebalance_weights(prior: Tensor, lam: float) -> Tensor:
    """w proportional to ((1 - lam) prior + lam / Q)^-1, normalised so that sum(prior * w) = 1."""
    weights = 1 / ((1 - lam) * prior + lam / prior.numel())
    return weights / (prior * weights).sum()


def annealed_mean(probs: Tensor, bins: Tensor, temperature: float = 0.38) -> Tensor:
    """N x Q x h x w bin probabilities -> N x 2 x h x w ab: the mean of the distribution re-sharpened as
    p^(1/T) / sum p^(1/T); T = 1 is the mean, T -> 0 the mode."""
    sharpened = torch.softmax(torch.log(_float(probs).clamp_min(1e-30)) / temperature, dim=1)
    a = (sharpened * bins[:, 0].view(1, -1, 1, 1)).sum(dim=1)
    b = (sharpened * bins[:, 1].view(1, -1, 1, 1)).sum(dim=1)
    return torch.stack([a, b], dim=1)


def colorization_loss(logits: Tensor, indices: Tensor, soft: Tensor, bin_weights: Tensor, valid: Tensor) -> Tensor:
    """Rebalanced multinomial cross-entropy, averaged over the pixels of the ``valid`` (non-gray) images.

    Each pixel's cross-entropy with its soft target is weighted by the weight of its nearest bin
    (the paper's v(Z) = w at argmax Z); logits are N x Q x h x w, targets as from ``soft_encode``.
    """
    cross_entropy = -(soft * F.log_softmax(logits.float(), dim=1).gather(1, indices)).sum(dim=1)
    mask = valid.view(-1, 1, 1).to(cross_entropy.dtype)
    pixels = mask.sum() * cross_entropy.shape[1] * cross_entropy.shape[2]
    return (cross_entropy * bin_weights[indices[:, 0]] * mask).sum() / pixels.clamp_min(1)


def bin_accuracy(logits: Tensor, nearest: Tensor, valid: Tensor) -> Tensor:
    """Fraction of pixels of valid images whose top-1 predicted bin is the nearest bin (0 if none valid)."""
    hits = (logits.argmax(dim=1) == nearest).float().mean(dim=(1, 2))
    return (hits * valid).sum() / valid.sum().clamp_min(1)


# ------------------------------------------------------------------------------------------
# the task


class ColorHead(nn.Module):
    """3x3 conv + BN + ReLU on a feature map, bilinear resize to the target map, 1x1 conv to Q bin logits.

    Resizing after the 3x3 conv keeps its cost at the tap's resolution; with ``alexnet_small`` the
    last tap is already at 1/4 of the input, so no resize happens there.
    """

    def __init__(self, in_channels: int, hidden: int, num_bins: int) -> None:
        super().__init__()
        if hidden:
            self.body: nn.Module = nn.Sequential(
                nn.Conv2d(in_channels, hidden, 3, padding=1, bias=False), nn.BatchNorm2d(hidden), nn.ReLU(inplace=True)
            )
            in_channels = hidden
        else:
            self.body = nn.Identity()
        self.classifier = nn.Conv2d(in_channels, num_bins, 1)

    def forward(self, features: Tensor, size: tuple[int, int]) -> Tensor:
        x = self.body(features)
        if tuple(x.shape[-2:]) != tuple(size):
            x = F.interpolate(x, size=size, mode="bilinear", align_corners=False)
        return self.classifier(x)


class ColorizationTask(PretextTask):
    name = "colorization"
    Config = ColorizationConfig
    metric = "acc"
    input_channels = 1

    @classmethod
    def input_mapping(cls, cfg: ColorizationConfig) -> InputMapping:
        return InputMapping(LIGHTNESS, pixel_map=lightness_input)

    @classmethod
    def check_image_size(cls, cfg: ColorizationConfig, image_size: int) -> None:
        if image_size // cfg.target_downsample < 2:
            raise ConfigError(
                f"data.image_size = {image_size} is invalid: colorization needs at least "
                f"2 x pretext.target_downsample = {2 * cfg.target_downsample} px for a 2x2 target map"
            )

    def __init__(self, encoder: Encoder, cfg: ColorizationConfig) -> None:
        super().__init__(encoder, cfg)
        if encoder.in_channels != self.input_channels:
            raise ValueError(f"colorization feeds the encoder 1 channel (L), but it takes {encoder.in_channels}")
        bins = gamut_bins(cfg.grid_size)
        # Persistent: a checkpoint names the colours its head's classes stand for.
        self.register_buffer("bins", bins)
        self.register_buffer("prior_kernel", prior_kernel(bins, cfg.prior_sigma), persistent=False)
        self.register_buffer("prior_counts", torch.zeros(len(bins), dtype=torch.long))
        self.register_buffer("prior_images_seen", torch.zeros((), dtype=torch.long))
        self.head = ColorHead(encoder.out_channels(encoder.layer_names[-1]), cfg.head_hidden, len(bins))

    def encoder_input(self, images: Tensor) -> Tensor:
        return lightness_input(images)

    def _predict(self, lightness: Tensor) -> Tensor:
        size = tuple(s // self.cfg.target_downsample for s in lightness.shape[-2:])
        return self.head(self.encoder((lightness - L_CENTER) / L_CENTER), size)

    def _targets(self, ab: Tensor, size: tuple[int, int]) -> tuple[Tensor, Tensor, Tensor]:
        ab_small = F.adaptive_avg_pool2d(ab, size)
        indices, soft = soft_encode(ab_small, self.bins, self.cfg.soft_neighbours, self.cfg.soft_sigma)
        return indices, soft, non_gray(ab_small, self.cfg.gray_threshold)

    def bin_weights(self) -> Tensor:
        """Current rebalancing weights from the prior counted so far."""
        return rebalance_weights(smoothed_prior(self.prior_counts, self.prior_kernel), self.cfg.rebalance_lambda)

    def _count_prior(self, nearest: Tensor, valid: Tensor) -> None:
        # Tensor arithmetic instead of an `if` keeps the step free of host synchronisation.
        # Under DDP, rank 0's buffers are broadcast before every forward, so all ranks share
        # rank 0's estimate; weights are read before this update so they agree within a step.
        open_window = (self.prior_images_seen < self.cfg.prior_images).long()
        per_pixel = valid.view(-1, 1, 1).expand_as(nearest).long()
        counts = torch.zeros_like(self.prior_counts).scatter_add_(0, nearest.flatten(), per_pixel.flatten())
        self.prior_counts += counts * open_window
        self.prior_images_seen += open_window * nearest.shape[0]

    def forward(self, images: Tensor, labels: Tensor, generator: torch.Generator | None = None) -> dict[str, Tensor]:
        lab = rgb_to_lab(images)
        logits = self._predict(lab[:, :1])
        indices, soft, valid = self._targets(lab[:, 1:], tuple(logits.shape[-2:]))
        weights = self.bin_weights()
        if self.training:
            self._count_prior(indices[:, 0], valid)
        loss = colorization_loss(logits, indices, soft, weights, valid)
        return {"loss": loss, "acc": bin_accuracy(logits.detach(), indices[:, 0], valid)}

    def example_images(self, images: Tensor, generator: torch.Generator | None = None) -> Examples:
        shown = images[:8]
        lab = rgb_to_lab(shown)
        lightness = lab[:, :1]
        logits = self._predict(lightness)
        size = tuple(logits.shape[-2:])
        indices, _, valid = self._targets(lab[:, 1:], size)
        nearest = indices[:, 0]
        full = tuple(shown.shape[-2:])
        target_ab = self.bins[nearest].permute(0, 3, 1, 2)
        predicted_ab = annealed_mean(torch.softmax(logits.float(), dim=1), self.bins, self.cfg.anneal_temperature)
        columns = [
            lab_to_rgb(torch.cat([lightness, torch.zeros_like(lab[:, 1:])], dim=1)),
            lab_to_rgb(torch.cat([lightness, F.interpolate(target_ab, size=full, mode="nearest")], dim=1)),
            lab_to_rgb(torch.cat([lightness, F.interpolate(predicted_ab, size=full, mode="bilinear",
                                                           align_corners=False)], dim=1)),
            shown.float(),
        ]
        hits = (logits.argmax(dim=1) == nearest).float().mean(dim=(1, 2))
        captions = []
        for i in range(len(shown)):
            masked = "" if bool(valid[i]) else " (gray image: no loss)"
            captions += [
                "input: L only",
                f"target: nearest of {len(self.bins)} ab bins at {size[0]}x{size[1]}{masked}",
                f"predicted: annealed mean T={self.cfg.anneal_temperature:g}, bin acc {100 * float(hits[i]):.0f}%",
                "ground truth",
            ]
        return Examples(torch.stack(columns, dim=1).flatten(0, 1), captions, per_row=len(columns))
