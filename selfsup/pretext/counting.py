"""Learning to count visual primitives (Noroozi, Pirsiavash & Favaro, ICCV 2017).

A feature vector phi(image) >= 0 should "count" visual primitives: the counts of an image equal
the sum of the counts of its four 2x2 tiles, and counting is invariant to scale, so

    phi(D x) = sum_j phi(T_j x)

where T_j x are the four tiles of x and D x is x downsampled by two (the same size as a tile).
phi = 0 satisfies this trivially, so a contrastive hinge asks the counts of another image y to
differ from the tiles' sum of x by at least the margin M:

    loss = ||phi(D x) - sum_j phi(T_j x)||^2 + max(0, M - ||phi(D y) - sum_j phi(T_j x)||^2)

``y`` is the batch rolled by one (image i is contrasted with image i - 1): the downsampled batch
is already computed, so the contrastive image costs no extra forward pass.

Anti-shortcut guards (as in the paper): a network could tell D x from a tile by the artefacts of one
fixed resampling filter, so every image draws its own filter among antialiased area (box),
bilinear, bicubic and Lanczos; and colour is jittered and sometimes dropped (grayscale).

Shortcut these guards leave open: global colour statistics. Per-channel means and mean squares of each view,
times 4 for D x, add up from the tiles to D x whatever the jitter, and a closed-form fit on them scores 100%
count accuracy on the CIFAR-10 tasks-table checkpoint's inputs (the network: 94.2%); with every view's colour
statistics equalised the network drops to 68.2% (chance 50%; ``python experiments/diagnose_cifar10.py``,
experiments/results/diagnose_cifar10.md). ``view_norm`` sets every view's per-channel mean and std to the
same values (jigsaw's per-tile normalisation), which leaves the colour solver nothing to count; the demo
preset turns it on (before and after: ``python experiments/counting_guard.py``,
experiments/results/counting_guard.md).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from selfsup.config import ConfigError, option
from selfsup.models import Encoder
from selfsup.models.normalization import IMAGENET_MEAN, IMAGENET_STD
from selfsup.pretext.base import Examples, PretextTask

NUM_TILES = 4
MIN_TILE = 8  # smallest tile side every built-in encoder accepts


def _box(t: float) -> float:
    return 1.0 if abs(t) < 0.5 else 0.0


def _triangle(t: float) -> float:
    return max(0.0, 1.0 - abs(t))


def _keys_cubic(t: float, a: float = -0.5) -> float:
    # a = -0.5 is the cubic of PIL and of torch's antialiased bicubic
    t = abs(t)
    if t < 1:
        return (a + 2) * t**3 - (a + 3) * t**2 + 1
    if t < 2:
        return a * t**3 - 5 * a * t**2 + 8 * a * t - 4 * a
    return 0.0


def _lanczos3(t: float) -> float:
    def sinc(u: float) -> float:
        return 1.0 if u == 0 else math.sin(math.pi * u) / (math.pi * u)

    return sinc(t) * sinc(t / 3) if abs(t) < 3 else 0.0


# Resampling kernels of PIL's BOX, BILINEAR, BICUBIC and LANCZOS filters, in output pixels.
FILTERS: dict[str, Callable[[float], float]] = {
    "area": _box,
    "bilinear": _triangle,
    "bicubic": _keys_cubic,
    "lanczos": _lanczos3,
}
# Taps of a 2x downsampling kernel: Lanczos-3 spans 3 output pixels = 6 input pixels each side.
KERNEL_TAPS = 12


@dataclass
class CountingConfig:
    feature_dim: int = option(1000, "number of counting features: outputs of the ReLU head (paper: 1000)", min=1)
    margin: float = option(10.0, "M of the contrastive hinge max(0, M - ||phi(Dy) - sum phi(T x)||^2) (paper: 10)", gt=0.0)
    filters: list[str] = option(
        list(FILTERS),
        "antialiased downsampling filters, one drawn uniformly per image (paper: a random one of these four)",
    )
    color_jitter: float = option(
        0.4,
        "brightness, contrast and saturation factors drawn per image from [1 - s, 1 + s]; 0 disables "
        "(the paper jitters colour without giving a strength)",
        min=0.0,
        max=1.0,
    )
    grayscale_prob: float = option(
        0.3, "probability that an image is converted to grayscale (not given in the paper; jigsaw's ~30%)", min=0.0, max=1.0
    )
    view_norm: bool = option(
        False,
        "set every view's (D x's and each tile's) per-channel mean and std to ImageNet's, so the encoder sees "
        "each view standardised on its own statistics (jigsaw's per-tile normalisation; not in the counting "
        "paper): global colour statistics, which alone solve the task, no longer add up from the tiles to D x",
    )

    def validate(self) -> None:
        unknown = [name for name in self.filters if name not in FILTERS]
        if unknown or not self.filters:
            raise ConfigError(
                f"pretext.filters = {self.filters!r} is invalid: give one or more of {', '.join(FILTERS)}"
            )


def filter_bank(names: list[str], device: torch.device | None = None, dtype: torch.dtype = torch.float32) -> Tensor:
    """``len(names) x KERNEL_TAPS`` normalised 1-D kernels that downsample by two.

    Tap ``k`` sits at offset ``k - KERNEL_TAPS/2 + 0.5`` input pixels from the output pixel's centre,
    where the continuous filter is evaluated at half that offset (the scale factor is 2), as in
    PIL / torch's ``antialias=True`` resampling.
    """
    offsets = [k - KERNEL_TAPS / 2 + 0.5 for k in range(KERNEL_TAPS)]
    bank = torch.tensor([[FILTERS[name](d / 2) for d in offsets] for name in names], dtype=torch.float64)
    return (bank / bank.sum(dim=1, keepdim=True)).to(device=device, dtype=dtype)


def downsample_2x(images: Tensor, kernels: Tensor) -> Tensor:
    """Downsamples image ``i`` by two with its own separable kernel ``kernels[i]`` (``N x KERNEL_TAPS``).

    One depthwise convolution over the whole batch; borders are reflected.
    """
    n, c, h, w = images.shape
    weight = kernels.to(images.dtype).repeat_interleave(c, dim=0)  # one kernel per (image, channel)
    pad = KERNEL_TAPS // 2 - 1
    x = F.pad(images.reshape(1, n * c, h, w), (pad, pad, pad, pad), mode="reflect")
    x = F.conv2d(x, weight.view(n * c, 1, KERNEL_TAPS, 1), stride=(2, 1), groups=n * c)
    x = F.conv2d(x, weight.view(n * c, 1, 1, KERNEL_TAPS), stride=(1, 2), groups=n * c)
    return x.view(n, c, h // 2, w // 2)


def tile_2x2(images: Tensor) -> Tensor:
    """The four tiles of every image, tile-major: ``out[j * N + i]`` is tile ``j`` (row-major) of image ``i``."""
    h, w = images.shape[-2] // 2, images.shape[-1] // 2
    return torch.cat([images[..., r * h : (r + 1) * h, c * w : (c + 1) * w] for r in range(2) for c in range(2)])


def to_grayscale(images: Tensor) -> Tensor:
    """ITU-R 601 luma, one channel."""
    r, g, b = images.unbind(dim=1)
    return (0.299 * r + 0.587 * g + 0.114 * b).unsqueeze(1)


def photometric_jitter(images: Tensor, strength: float, grayscale_prob: float, generator: torch.Generator) -> Tensor:
    """Per-image brightness, contrast and saturation jitter, then random conversion to grayscale.

    Applied to x before tiling and downsampling, so the tiles and D x share the colours of x.
    """
    n, device = images.shape[0], images.device

    def factors() -> Tensor:
        u = torch.rand(n, 1, 1, 1, generator=generator, device=device, dtype=images.dtype)
        return 1 + strength * (2 * u - 1)

    x = images
    if strength > 0:
        x = (x * factors()).clamp(0, 1)
        mean = to_grayscale(x).mean(dim=(1, 2, 3), keepdim=True)
        x = ((x - mean) * factors() + mean).clamp(0, 1)
        gray = to_grayscale(x)
        x = ((x - gray) * factors() + gray).clamp(0, 1)
    if grayscale_prob > 0:
        drop = torch.rand(n, 1, 1, 1, generator=generator, device=device) < grayscale_prob
        x = torch.where(drop, to_grayscale(x).expand_as(x), x)
    return x


def normalize_views(views: Tensor, eps: float = 1e-5) -> Tensor:
    """Each view's per-channel mean and std set to ImageNet's, the pattern inside it kept.

    ``normalize_rgb`` then maps every view to zero mean and unit std per channel, as jigsaw's tiles: every
    view has the same colour statistics, so they no longer tell an image's tiles from another's. The std is
    divided out exactly: jigsaw's ``std + eps`` leaves a deficit of about eps / std, which follows an image's
    contrast from D x to its tiles, and a colour solver with a fitted scale ranks pairs on it.
    A channel flat over the view (std at most eps: rounding noise of a constant) is not stretched: it is set
    to ImageNet's mean.
    """
    pixels = views.flatten(-2)
    centred = pixels - pixels.mean(dim=-1, keepdim=True)
    std = centred.square().mean(dim=-1, keepdim=True).sqrt()
    standard = torch.where(std > eps, centred / std.clamp_min(eps), 0.0).view_as(views)
    mean = views.new_tensor(IMAGENET_MEAN).view(1, -1, 1, 1)
    return standard * views.new_tensor(IMAGENET_STD).view(1, -1, 1, 1) + mean


def counting_loss(phi_down_x: Tensor, phi_tiles_x_sum: Tensor, phi_down_y: Tensor, margin: float) -> dict[str, Tensor]:
    """The counting loss of N images from their ``N x D`` counting vectors, averaged over the batch.

    ``loss_count`` pulls phi(D x) to the tiles' sum; ``loss_contrast`` pushes phi(D y) at least
    ``margin`` (squared distance) away from it. ``count_acc`` is the fraction of images whose own
    downsampled counts are strictly closer to their tiles' sum than the other image's (chance 50%,
    0 when phi has collapsed to a constant).
    """
    d_own = (phi_down_x - phi_tiles_x_sum).pow(2).sum(dim=1)
    d_other = (phi_down_y - phi_tiles_x_sum).pow(2).sum(dim=1)
    loss_count = d_own.mean()
    loss_contrast = F.relu(margin - d_other).mean()
    return {
        "loss": loss_count + loss_contrast,
        "loss_count": loss_count.detach(),
        "loss_contrast": loss_contrast.detach(),
        "count_acc": (d_own < d_other).float().mean().detach(),
    }


class CountingHead(nn.Module):
    """phi's last layer: global average pooling -> linear -> ReLU, a non-negative counting vector.

    The count term has curvature ~ ||input||^2 along the linear weights, so the pooled features are
    scaled by 1/sqrt(C): with C = 128 raw pooled features, SGD at the toolkit's lr (0.05) overshoots,
    pushes every unit below zero and leaves phi = 0 (a stationary point, loss = margin) within a few
    steps. The init puts the first counts on the margin's scale, E||phi(D x) - sum phi(T x)||^2 ~ M;
    PyTorch's default init starts near 400 and the first steps overwrite the encoder.
    """

    def __init__(self, in_features: int, feature_dim: int, margin: float) -> None:
        super().__init__()
        self.input_scale = in_features**-0.5
        self.counter = nn.Linear(in_features, feature_dim)
        nn.init.normal_(self.counter.weight, std=math.sqrt(2 * margin / (9 * feature_dim)))
        nn.init.zeros_(self.counter.bias)

    def forward(self, features: Tensor) -> Tensor:
        return F.relu(self.counter(features.mean(dim=(2, 3)) * self.input_scale))


@dataclass
class CountingInputs:
    """What the network sees for a batch x: D x (N images) then the tiles (4N), all tile-sized."""

    images: Tensor  # (5N) x 3 x H/2 x W/2
    filters: Tensor  # N filter indices into CountingConfig.filters


class CountingTask(PretextTask):
    name = "counting"
    Config = CountingConfig
    metric = "count_acc"  # loss_count alone reads 0 when phi collapses; this reads 0 then

    @classmethod
    def check_image_size(cls, cfg: CountingConfig, image_size: int) -> None:
        if image_size % 2 or image_size < 2 * MIN_TILE:
            raise ConfigError(
                f"data.image_size = {image_size} is invalid: counting needs an even size of at least {2 * MIN_TILE} "
                f"(2x2 tiles of at least {MIN_TILE} px, each the size of the image downsampled by two)"
            )

    @classmethod
    def content_scale(cls, cfg: CountingConfig) -> float:
        # Four of every five views are tiles cut from the crop unresized (the crop's density); D x, at half
        # that density, is trained to count like them, so the crop's density is inside what the encoder
        # learned: whole images are probed at the training crop size (32 px crops: 16 px views, 32 px probe).
        return 1.0

    def __init__(self, encoder: Encoder, cfg: CountingConfig) -> None:
        super().__init__(encoder, cfg)
        self.head = CountingHead(encoder.out_channels(encoder.layer_names[-1]), cfg.feature_dim, cfg.margin)
        self.register_buffer("kernels", filter_bank(cfg.filters), persistent=False)

    def counting_features(self, images: Tensor) -> Tensor:
        """phi: [0, 1] RGB images -> non-negative counting vectors (float32)."""
        return self.head(self.encoder(self.encoder_input(images))).float()

    def make_inputs(self, images: Tensor, generator: torch.Generator | None) -> CountingInputs:
        gen = generator if generator is not None else torch.Generator(device=images.device)
        # inputs are made in float32 under any autocast, so D x and the tiles carry the same precision
        with torch.autocast(device_type=images.device.type, enabled=False):
            x = photometric_jitter(images.float(), self.cfg.color_jitter, self.cfg.grayscale_prob, gen)
            choice = torch.randint(len(self.cfg.filters), (x.shape[0],), generator=gen, device=x.device)
            down = downsample_2x(x, self.kernels[choice])
            views = torch.cat([down, tile_2x2(x)])
            if self.cfg.view_norm:
                views = normalize_views(views)
        # D x and the tiles go through one forward pass so BatchNorm normalises them alike
        return CountingInputs(views, choice)

    def forward(self, images: Tensor, labels: Tensor, generator: torch.Generator | None = None) -> dict[str, Tensor]:
        n = images.shape[0]
        if n < 2:
            raise ValueError("counting needs at least 2 images per batch and process: the contrastive image is another one")
        phi = self.counting_features(self.make_inputs(images, generator).images)
        phi_down, phi_tiles_sum = phi[:n], phi[n:].view(NUM_TILES, n, -1).sum(dim=0)
        return counting_loss(phi_down, phi_tiles_sum, phi_down.roll(1, dims=0), self.cfg.margin)

    def example_images(self, images: Tensor, generator: torch.Generator | None = None) -> Examples:
        shown = images[:4]
        n = shown.shape[0]
        inputs = self.make_inputs(shown, generator)
        with torch.no_grad():
            phi = self.counting_features(inputs.images)
        counts = phi.sum(dim=1)  # = ||phi||_1, as phi >= 0
        down_counts, tile_counts = counts[:n], counts[n:].view(NUM_TILES, n)
        tiles_sum = phi[n:].view(NUM_TILES, n, -1).sum(dim=0)
        d_own = (phi[:n] - tiles_sum).pow(2).sum(dim=1)
        d_other = (phi[:n].roll(1, dims=0) - tiles_sum).pow(2).sum(dim=1)
        # rows = images; columns = D x, then tiles 1-4 (row-major)
        index = torch.arange(n, device=phi.device)
        order = torch.stack([index] + [n + j * n + index for j in range(NUM_TILES)], dim=1).reshape(-1)
        captions: list[str] = []
        for i in range(n):
            filter_name = self.cfg.filters[int(inputs.filters[i])]
            captions.append(
                f"Dx ({filter_name}) count {float(down_counts[i]):.1f}; tiles sum {float(tile_counts[:, i].sum()):.1f}; "
                f"other image {float(down_counts.roll(1)[i]):.1f}; d own {float(d_own[i]):.2f} other {float(d_other[i]):.2f}"
            )
            captions += [f"tile {j + 1} count {float(tile_counts[j, i]):.1f}" for j in range(NUM_TILES)]
        return Examples(inputs.images[order].clamp(0, 1), captions, per_row=1 + NUM_TILES)
