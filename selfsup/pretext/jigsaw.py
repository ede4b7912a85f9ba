"""Jigsaw puzzles (Noroozi & Favaro, ECCV 2016): which permutation shuffled the 3x3 tiles of a crop.

The crop is split into a 3x3 grid of cells and one tile is cut from each cell at a random offset;
the tile is smaller than its cell (64 of 75 px in the paper), so neighbouring tiles never touch and
edge continuity cannot solve the puzzle. Each image draws a permutation from a fixed set chosen for
maximal Hamming distance (:mod:`selfsup.pretext.permutations`), and the nine tiles are fed in that order.

Permutation convention (the one of the authors' Caffe data layer): for ``perm = permutations[label]``,
position ``i`` of the shuffled sequence holds the tile cut from cell ``perm[i]``; cells are numbered
row-major (0 = top-left, 2 = top-right, 8 = bottom-right). The inverse, ``argsort(perm)``, puts the
tiles back in cell order.

Anti-shortcut guards, all on by default: the gaps between tiles (``tile_fraction < 1``), per-tile
per-channel mean/std normalisation (low-level colour statistics), ~30% of images turned grayscale,
and the paper's colour jitter against chromatic aberration: each colour channel of a tile is cut at
its own small spatial offset (+-2 px of a 64 px tile). Photometric jitter (brightness/contrast per
channel) is not offered: the per-tile per-channel normalisation would undo it exactly.

Shortcut left open at small sizes: tile borders. On the CIFAR-10 tasks-table checkpoint (32 px images upscaled
to 64 px crops, so edges run on smoothly across the gaps), border matching with no learning solves 92.9% of
the puzzles on raw tiles and 29.1% on the standardised tiles the network is fed, level with the network's
28.4% (chance 1%); masking a 2 px border of every tile takes the network to 15.2%
(``python experiments/diagnose_cifar10.py``, experiments/results/diagnose_cifar10.md).

Network: the encoder is the shared per-tile trunk (the 9 tiles are folded into the batch), conv5 is
pooled like the paper's pool5 (3x3 max-pool, stride 2, Caffe's ceil rounding: 6x6 -> 3x3 for the
64 px tiles of ``alexnet_jigsaw``) when the map has at least ``2 * pool_grid`` cells a side, and
max-pooled adaptively to ``pool_grid x pool_grid`` otherwise (the small tiles of the demo preset);
then fc6 per tile -> concatenation of the 9 -> fc7 -> classifier over the permutation set, with
ReLU and dropout after fc6 and fc7 as in the released prototxt.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from selfsup.config import ConfigError, option
from selfsup.data.images import gather_windows, unit_float
from selfsup.models import Encoder
from selfsup.pretext.base import PER_IMAGE, Examples, InputMapping, PretextFC, PretextTask, accuracy, linear_layers
from selfsup.pretext.permutations import GRID, NUM_ALL_PERMUTATIONS, NUM_TILES, permutation_set

MIN_TILE = 8  # below this a tile holds too little structure to place it
LUMA = (0.299, 0.587, 0.114)


@dataclass
class JigsawConfig:
    num_permutations: int = option(
        1000, "size of the permutation set = number of classes (paper: 1000 best, 100 also studied)",
        min=2, max=NUM_ALL_PERMUTATIONS,
    )
    permutation_seed: int = option(0, "seed of the greedy maximal-Hamming-distance permutation selection", min=0)
    tile_fraction: float = option(
        64 / 75, "tile side / cell side (paper: 64 px tiles in 75 px cells); < 1 leaves gaps between tiles", gt=0.0, max=1.0
    )
    grayscale_prob: float = option(0.3, "probability that an image is turned grayscale (paper: ~30%)", min=0.0, max=1.0)
    color_jitter: float = option(
        2 / 64, "max spatial offset of each colour channel of a tile, as a fraction of the tile side "
        "(paper: +-2 px of 64, against chromatic aberration); 0 disables", min=0.0, max=0.25,
    )
    fc6_dim: int = option(1024, "units of the per-tile fc6 (paper: 1024)", min=1)
    fc7_dim: int = option(4096, "units of fc7 on the 9 concatenated fc6 outputs (paper: 4096)", min=1)
    dropout: float = option(0.5, "dropout after fc6 and fc7 (paper: 0.5)", min=0.0, max=0.9)
    head_bn: bool = option(False, "BatchNorm after fc6 and fc7 (paper: none); makes small-scale runs take off sooner")
    pool_grid: int = option(3, "side of the pooled conv5 grid fed to fc6 (paper: 3x3 pool5)", min=1)


# ----------------------------------------------------------------------------- puzzle inputs


def tile_geometry(image_size: int, tile_fraction: float) -> tuple[int, int]:
    """(cell side, tile side) in pixels for square ``image_size`` crops."""
    cell = image_size // GRID
    return cell, max(1, min(cell, round(cell * tile_fraction)))


def standardize(x: Tensor, eps: float = 1e-5) -> Tensor:
    """Each channel of each image (or tile) to zero mean and unit std over its own pixels.

    Two passes, the centred pixels reused for the std and divided in place: 3x faster on a CPU than
    ``x.std`` (Welford's one-pass update), equal to float rounding."""
    pixels = x.flatten(-2)
    centred = pixels - pixels.mean(dim=-1, keepdim=True)
    std = torch.linalg.vector_norm(centred, dim=-1, keepdim=True) / pixels.shape[-1] ** 0.5
    return centred.div_(std + eps).view_as(x)


def tile_origins(n: int, channels: int, size: int, tile_fraction: float, color_jitter: float,
                 generator: torch.Generator | None, device: torch.device) -> Tensor:
    """Top-left corner ``(y, x)`` of every colour channel of every tile, N x 9 x C x 2, in cell order: a random
    offset per tile inside its cell, every channel shifted by its own offset of up to ``color_jitter * t``
    pixels, clamped so that it stays inside the tile's cell."""
    cell, tile = tile_geometry(size, tile_fraction)
    margin = (size - GRID * cell) // 2  # centres the grid when the side is not a multiple of 3
    cell_index = torch.arange(NUM_TILES, device=device)
    cell_origin = margin + cell * torch.stack([cell_index // GRID, cell_index % GRID], dim=-1)  # 9 x (y, x)
    offset = torch.randint(0, cell - tile + 1, (n, NUM_TILES, 1, 2), generator=generator, device=device)
    shift = round(color_jitter * tile)
    if shift:
        offset = offset + torch.randint(-shift, shift + 1, (n, NUM_TILES, channels, 2), generator=generator, device=device)
    offset = offset.clamp(0, cell - tile).expand(n, NUM_TILES, channels, 2)
    return cell_origin.view(1, NUM_TILES, 1, 2) + offset


def gather_tiles(images: Tensor, origins: Tensor, tile: int) -> Tensor:
    """The t x t window of every channel at ``origins`` (N x K x C x 2): N x K x C x t x t, in one gather of
    window rows for the batch (see :func:`gather_windows`)."""
    n, channels = images.shape[:2]
    plane = torch.arange(n, device=images.device).view(n, 1, 1) * channels + torch.arange(channels, device=images.device)
    return gather_windows(images, plane, origins[..., 0], origins[..., 1], tile)


def cut_tiles(images: Tensor, tile_fraction: float, color_jitter: float, generator: torch.Generator | None) -> Tensor:
    """One tile per cell of the 3x3 grid at a random offset inside the cell: N x 9 x C x t x t, cell order
    (see :func:`tile_origins`)."""
    n, channels, height, width = images.shape
    if height != width:
        raise ValueError(f"jigsaw needs square crops, got {height}x{width}")
    origins = tile_origins(n, channels, height, tile_fraction, color_jitter, generator, images.device)
    return gather_tiles(images, origins, tile_geometry(height, tile_fraction)[1])


def shuffle_tiles(tiles: Tensor, permutations: Tensor, labels: Tensor) -> Tensor:
    """Position ``i`` of image ``b``'s output holds its tile ``permutations[labels[b], i]``."""
    order = permutations[labels]
    return tiles[torch.arange(len(tiles), device=tiles.device)[:, None], order]


def unshuffle_tiles(shuffled: Tensor, permutations: Tensor, labels: Tensor) -> Tensor:
    """Inverse of :func:`shuffle_tiles`: the tiles back in cell order."""
    inverse = permutations[labels].argsort(dim=1)
    return shuffled[torch.arange(len(shuffled), device=shuffled.device)[:, None], inverse]


def gather_luma_tiles(images: Tensor, origins: Tensor, tile: int) -> Tensor:
    """What :func:`gather_tiles` gives for the images turned grayscale (luma in all three channels) first:
    every channel's window is the window of the luma image at that channel's origin. The luma image is made
    once (a weighted sum of the three channels, one pass each) and then cut like any image: cheaper than the
    luma of each cut window, since the windows of all channels together cover more pixels than the image has.
    uint8 images give float tiles in [0, 1]."""
    channels = images.shape[1]
    weights = images.new_tensor(LUMA, dtype=torch.float32)
    if images.dtype == torch.uint8:  # the weights scale 0..255 to [0, 1] in the same pass
        weights = weights / 255
    luma = sum(images[:, c] * weights[c] for c in range(channels))
    plane = torch.arange(len(images), device=images.device).view(-1, 1, 1)
    return gather_windows(luma, plane, origins[..., 0], origins[..., 1], tile)


def make_puzzles(
    images: Tensor, permutations: Tensor, cfg: JigsawConfig, generator: torch.Generator | None,
    by_mask: bool | None = None,
) -> tuple[Tensor, Tensor]:
    """Shuffled tiles (N x 9 x 3 x t x t, in [0, 1], not yet normalised) and their permutation labels, from
    float images in [0, 1] or uint8 ones (then only the tiles' pixels are converted).

    About ``cfg.grayscale_prob`` of the images are turned grayscale, then one tile is cut per cell
    (:func:`tile_origins`) and the tiles are put in the drawn permutation's order. Done in that order on whole
    images this costs several passes over every pixel; here the tiles are cut straight into their shuffled
    places, and a grayscale image's tiles are the luma of its tile windows (on a CPU only for the chosen
    images; ``by_mask``, the default on accelerators, makes every image's luma tiles and selects by mask, with
    no device sync). The same tensors, to float rounding, at a fraction of the memory traffic (``ssl-bench
    data``)."""
    n, channels, height, width = images.shape
    if height != width:
        raise ValueError(f"jigsaw needs square crops, got {height}x{width}")
    device = images.device
    grayscale = torch.rand(n, generator=generator, device=device) < cfg.grayscale_prob
    origins = tile_origins(n, channels, height, cfg.tile_fraction, cfg.color_jitter, generator, device)
    labels = torch.randint(0, len(permutations), (n,), generator=generator, device=device)
    order = permutations.to(device)[labels]
    origins = origins[torch.arange(n, device=device)[:, None], order]
    tile = tile_geometry(height, cfg.tile_fraction)[1]
    tiles = unit_float(gather_tiles(images, origins, tile))
    if by_mask if by_mask is not None else device.type != "cpu":
        luma = gather_luma_tiles(images, origins, tile)
        return torch.where(grayscale.view(-1, 1, 1, 1, 1), luma, tiles), labels
    picked = torch.nonzero(grayscale).squeeze(1)
    if len(picked):
        tiles[picked] = gather_luma_tiles(images[picked], origins[picked], tile)
    return tiles, labels


def layout_tiles(tiles: Tensor, image_size: int, background: float = 1.0) -> Tensor:
    """A 9 x C x t x t sequence drawn as a 3x3 picture: position ``i`` in row ``i // 3``, column ``i % 3``."""
    cell = image_size // GRID
    tile = tiles.shape[-1]
    canvas = tiles.new_full((tiles.shape[1], image_size, image_size), background)
    start = (image_size - GRID * cell) // 2 + (cell - tile) // 2
    for i in range(NUM_TILES):
        top, left = start + cell * (i // GRID), start + cell * (i % GRID)
        canvas[:, top : top + tile, left : left + tile] = tiles[i]
    return canvas


# ----------------------------------------------------------------------------- the task


class TilePool(nn.Module):
    """conv5 -> ``grid x grid``: the paper's pool5 where the map is large enough, adaptive max-pool otherwise."""

    def __init__(self, grid: int) -> None:
        super().__init__()
        self.grid = grid

    def forward(self, x: Tensor) -> Tensor:
        if min(x.shape[-2:]) >= 2 * self.grid:
            x = F.max_pool2d(x, kernel_size=3, stride=2, ceil_mode=True)
        return F.adaptive_max_pool2d(x, self.grid)


def fully_connected(in_features: int, out_features: int, batch_norm: bool, dropout: float) -> nn.Sequential:
    """Linear -> (BatchNorm) -> ReLU -> Dropout, the fc6/fc7 blocks of the paper's network."""
    layers: list[nn.Module] = [nn.Linear(in_features, out_features, bias=not batch_norm)]
    if batch_norm:
        layers.append(nn.BatchNorm1d(out_features))
    layers += [nn.ReLU(inplace=True), nn.Dropout(dropout)]
    return nn.Sequential(*layers)


class JigsawTask(PretextTask):
    name = "jigsaw"
    Config = JigsawConfig
    takes_uint8 = True  # nine tiles hold about 70% of a crop's pixels at the paper's geometry: convert those

    @classmethod
    def input_mapping(cls, cfg: JigsawConfig) -> InputMapping:
        return InputMapping(PER_IMAGE)

    @classmethod
    def check_image_size(cls, cfg: JigsawConfig, image_size: int) -> None:
        _, tile = tile_geometry(image_size, cfg.tile_fraction)
        if tile < MIN_TILE:
            smallest = next(s for s in itertools.count(GRID) if tile_geometry(s, cfg.tile_fraction)[1] >= MIN_TILE)
            raise ConfigError(
                f"data.image_size = {image_size} is invalid: jigsaw needs tiles of at least {MIN_TILE} px "
                f"(tile_fraction {cfg.tile_fraction:.3f} of a third of the crop); use data.image_size >= {smallest}"
            )

    @classmethod
    def content_scale(cls, cfg: JigsawConfig) -> float:
        # Tiles are cut from the crop unresized (cut_tiles gathers crop pixels), so the trunk saw content at
        # the crop's pixel density: whole images are probed at the training crop size, not at a tile's
        # (e.g. 64 px for the 18 px tiles of 64 px crops of upscaled 32 px CIFAR images).
        return 1.0

    def __init__(self, encoder: Encoder, cfg: JigsawConfig) -> None:
        super().__init__(encoder, cfg)
        perms = permutation_set(cfg.num_permutations, cfg.permutation_seed)
        # Stored with the weights: a checkpoint names the permutation behind each of its classes.
        self.register_buffer("permutations", torch.from_numpy(perms))
        self.pool = TilePool(cfg.pool_grid)
        features = encoder.out_channels(encoder.layer_names[-1]) * cfg.pool_grid**2
        self.fc6 = fully_connected(features, cfg.fc6_dim, cfg.head_bn, cfg.dropout)
        self.fc7 = fully_connected(NUM_TILES * cfg.fc6_dim, cfg.fc7_dim, cfg.head_bn, cfg.dropout)
        self.classifier = nn.Linear(cfg.fc7_dim, cfg.num_permutations)
        self._checked_tiles: set[int] = set()

    def encoder_input(self, images: Tensor) -> Tensor:
        # The trunk only ever saw tiles normalised on their own statistics; whole images get the same.
        return standardize(images)

    def _check_trunk(self, tile: int, image_size: int) -> None:
        """A readable error instead of a pooling traceback when the tiles are too small for the encoder."""
        if tile in self._checked_tiles:
            return
        try:
            self.encoder.feature_shapes(tile)
        except RuntimeError:
            raise ConfigError(
                f"data.image_size = {image_size} is invalid: jigsaw cuts {tile} px tiles from it, too small for "
                f"model.arch = {self.encoder.arch}; use larger crops (the paper's 64 px tiles need 225 px) "
                f"or an encoder for small inputs such as alexnet_small"
            ) from None
        self._checked_tiles.add(tile)

    def detector_fc(self) -> PretextFC | None:
        # fc7 reads the 9 tiles' fc6 outputs side by side: only the per-tile fc6 fits one RoI
        return PretextFC(self.cfg.pool_grid, linear_layers(self.fc6), "jigsaw fc6")

    def logits(self, tiles: Tensor) -> Tensor:
        """Permutation logits for normalised N x 9 x C x t x t tile sequences."""
        n = tiles.shape[0]
        features = self.pool(self.encoder(tiles.flatten(0, 1))).flatten(1)
        return self.classifier(self.fc7(self.fc6(features).view(n, -1)))

    def puzzles(self, images: Tensor, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        """What the network is fed (normalised shuffled tiles) and the permutation labels it must predict."""
        tiles, labels = make_puzzles(images, self.permutations, self.cfg, generator)
        self._check_trunk(tiles.shape[-1], images.shape[-1])
        return self.encoder_input(tiles), labels

    def forward(self, images: Tensor, labels: Tensor, generator: torch.Generator | None = None) -> dict[str, Tensor]:
        tiles, targets = self.puzzles(images, generator)
        logits = self.logits(tiles)
        loss = F.cross_entropy(logits.float(), targets)
        return {"loss": loss, "acc": accuracy(logits.detach(), targets)}

    def example_images(self, images: Tensor, generator: torch.Generator | None = None) -> Examples:
        shown = images[:4]
        size = shown.shape[-1]
        tiles, labels = self.puzzles(shown, generator)
        predicted = self.logits(tiles).argmax(dim=1)
        # normalised tiles shown at +-2.5 std around mid-grey: what the trunk sees, contrast included
        visible = (0.5 + tiles / 5).clamp(0, 1)
        restored = unshuffle_tiles(visible, self.permutations, predicted)
        panels, captions = [], []
        for i in range(len(shown)):
            label, guess = int(labels[i]), int(predicted[i])
            perm = " ".join(str(int(p)) for p in self.permutations[label])
            verdict = "correct" if guess == label else "wrong"
            panels += [shown[i], layout_tiles(visible[i], size), layout_tiles(restored[i], size)]
            captions += [
                "original crop",
                f"input: permutation {label} = ({perm}); position i holds cell perm[i]",
                f"put back by predicted {guess} ({verdict})",
            ]
        return Examples(torch.stack(panels), captions, per_row=3)
