import itertools
import logging
import re

import numpy as np
import pytest
import torch

from selfsup.config import ConfigError, PretrainConfig, from_dict
from selfsup.models import build_encoder
from selfsup.pretext import check_pretrain_config, new_task
from selfsup.pretext import permutations
from selfsup.pretext.jigsaw import (
    JigsawConfig,
    JigsawTask,
    TilePool,
    make_puzzles,
    cut_tiles,
    shuffle_tiles,
    standardize,
    tile_geometry,
    unshuffle_tiles,
)
from selfsup.pretext.permutations import hamming_permutations, hamming_stats, permutation_set


@pytest.fixture(autouse=True)
def permutation_cache(tmp_path_factory, monkeypatch):
    """Keeps the tests' permutation sets out of the user's cache (shared by the tests of this module)."""
    root = tmp_path_factory.getbasetemp() / "jigsaw-cache"
    monkeypatch.setenv("SELFSUP_CACHE_DIR", str(root))
    return root


def small_task(**options) -> JigsawTask:
    options = {"num_permutations": 10, "fc6_dim": 32, "fc7_dim": 64, "dropout": 0.0, **options}
    return new_task("jigsaw", build_encoder("alexnet_small", width=0.25), options)


def coordinate_images(n: int, size: int) -> torch.Tensor:
    """Every channel of every pixel holds its own flat index y * size + x: a tile reveals where it was cut."""
    index = torch.arange(size * size, dtype=torch.float32).view(1, 1, size, size)
    return index.expand(n, 3, size, size).clone()


def origin_of(channel: torch.Tensor, size: int) -> tuple[int, int]:
    return divmod(int(channel[0, 0]), size)


# ----------------------------------------------------------------------------- permutation sets


def test_permutation_set_has_no_duplicates_and_reported_distances_match_a_recomputation(caplog):
    with caplog.at_level(logging.INFO, logger="selfsup.pretext.permutations"):
        perms = permutation_set(100, 0)
    assert perms.shape == (100, 9)
    assert all(sorted(p) == list(range(9)) for p in perms.tolist())
    assert len({tuple(p) for p in perms.tolist()}) == 100
    pairs = [sum(a != b for a, b in zip(p, q)) for p, q in itertools.combinations(perms.tolist(), 2)]
    low, mean = min(pairs), sum(pairs) / len(pairs)
    assert hamming_stats(perms) == (low, pytest.approx(mean))
    reported = re.search(r"Hamming distance min (\d+), mean ([\d.]+)", caplog.text)
    assert reported and int(reported.group(1)) == low and float(reported.group(2)) == pytest.approx(mean, abs=1e-3)
    # greedy max-min selection: far better spread than a random draw (whose minimum is usually 2-3)
    assert low >= 6


def test_permutation_set_is_deterministic_for_a_seed():
    first, again, other = hamming_permutations(50, 3), hamming_permutations(50, 3), hamming_permutations(50, 4)
    assert np.array_equal(first, again)
    assert not np.array_equal(first, other)
    # a larger set starts with the smaller one: the greedy choice does not depend on n
    assert np.array_equal(hamming_permutations(60, 3)[:50], first)


def test_permutation_cache_is_written_once_and_then_used(permutation_cache, monkeypatch):
    first = permutation_set(20, 7)
    path = permutation_cache / "permutations" / "hamming_20_seed7.npy"
    assert path.is_file()

    def must_not_run(n: int, seed: int) -> np.ndarray:
        raise AssertionError("the cached set should have been used")

    monkeypatch.setattr(permutations, "hamming_permutations", must_not_run)
    assert np.array_equal(permutation_set(20, 7), first)
    monkeypatch.undo()
    monkeypatch.setenv("SELFSUP_CACHE_DIR", str(permutation_cache))
    path.write_bytes(b"damaged")
    assert np.array_equal(permutation_set(20, 7), first)  # regenerated, same set


# ----------------------------------------------------------------------------- puzzles


def test_shuffle_puts_tile_perm_i_at_position_i_and_unshuffle_inverts_it():
    perms = torch.from_numpy(hamming_permutations(12, 0))
    tiles = torch.rand(6, 9, 3, 4, 4)
    labels = torch.tensor([0, 5, 11, 3, 3, 7])
    shuffled = shuffle_tiles(tiles, perms, labels)
    for b in range(6):
        for i in range(9):
            assert torch.equal(shuffled[b, i], tiles[b, perms[labels[b], i]])
    assert torch.equal(unshuffle_tiles(shuffled, perms, labels), tiles)


def test_puzzle_tiles_come_from_their_own_cells_in_the_order_of_the_labelled_permutation():
    size, n = 64, 8
    cfg = JigsawConfig(num_permutations=30, grayscale_prob=0.0, color_jitter=0.0)
    perms = torch.from_numpy(hamming_permutations(30, 0))
    images = coordinate_images(n, size)
    shuffled, labels = make_puzzles(images, perms, cfg, torch.Generator().manual_seed(1))
    cell, tile = tile_geometry(size, cfg.tile_fraction)
    assert (cell, tile) == (21, 18) and tile < cell  # a gap: no edge continuity between tiles
    assert shuffled.shape == (n, 9, 3, tile, tile)
    assert labels.dtype == torch.int64 and bool(((labels >= 0) & (labels < 30)).all())
    margin = (size - 3 * cell) // 2
    restored = unshuffle_tiles(shuffled, perms, labels)
    for b in range(n):
        for i in range(9):
            source = int(perms[labels[b], i])
            assert torch.equal(shuffled[b, i], restored[b, source])
        for k in range(9):  # inverse permutation reassembles the grid: tile k lies inside cell k
            y, x = origin_of(restored[b, k, 0], size)
            assert torch.equal(restored[b, k], images[b, :, y : y + tile, x : x + tile])
            top, left = margin + cell * (k // 3), margin + cell * (k % 3)
            assert top <= y and y + tile <= top + cell
            assert left <= x and x + tile <= left + cell


def test_colour_channels_are_jittered_separately_but_stay_inside_the_cell():
    size = 64
    cfg = JigsawConfig(grayscale_prob=0.0, color_jitter=0.25)
    perms = torch.from_numpy(hamming_permutations(10, 0))
    shuffled, labels = make_puzzles(coordinate_images(16, size), perms, cfg, torch.Generator().manual_seed(2))
    restored = unshuffle_tiles(shuffled, perms, labels)
    cell, tile = tile_geometry(size, cfg.tile_fraction)
    margin = (size - 3 * cell) // 2
    origins = [[origin_of(restored[b, k, c], size) for c in range(3)] for b in range(16) for k in range(9)]
    assert any(len(set(channels)) > 1 for channels in origins)  # the chromatic-aberration guard is on
    for index, channels in enumerate(origins):
        k = index % 9
        for y, x in channels:
            assert margin + cell * (k // 3) <= y <= margin + cell * (k // 3 + 1) - tile
            assert margin + cell * (k % 3) <= x <= margin + cell * (k % 3 + 1) - tile
    plain, _ = make_puzzles(coordinate_images(4, size), perms, JigsawConfig(grayscale_prob=0.0, color_jitter=0.0), None)
    assert torch.equal(plain[:, :, 0], plain[:, :, 1]) and torch.equal(plain[:, :, 0], plain[:, :, 2])


@pytest.mark.parametrize("size", [64, 225])
def test_every_channel_of_every_tile_is_the_whole_window_at_its_origin(size):
    """The batched cut (one gather of whole windows) against plain slicing, channel by channel, at the demo
    size and the paper's 225 px crops (64 px tiles), colour jitter on."""
    images = coordinate_images(3, size)
    tiles = cut_tiles(images, 64 / 75, 2 / 64, torch.Generator().manual_seed(4))
    _, tile = tile_geometry(size, 64 / 75)
    assert tiles.shape == (3, 9, 3, tile, tile) and tiles.is_contiguous()
    for b in range(3):
        for k in range(9):
            for c in range(3):
                y, x = origin_of(tiles[b, k, c], size)
                assert torch.equal(tiles[b, k, c], images[b, c, y : y + tile, x : x + tile])


def simple_puzzles(images, permutations, cfg, generator):
    """make_puzzles written plainly: whole images to grayscale, a per-pixel gather of every tile, a shuffle."""
    n, channels, size, _ = images.shape
    chosen = torch.rand(n, generator=generator) < cfg.grayscale_prob
    luma = (images * torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)).sum(dim=1, keepdim=True)
    images = torch.where(chosen.view(-1, 1, 1, 1), luma.expand_as(images), images)
    cell, tile = tile_geometry(size, cfg.tile_fraction)
    margin = (size - 3 * cell) // 2
    tiles = torch.empty(n, 9, channels, tile, tile)
    offset = torch.randint(0, cell - tile + 1, (n, 9, 1, 2), generator=generator)
    shift = round(cfg.color_jitter * tile)
    if shift:
        offset = offset + torch.randint(-shift, shift + 1, (n, 9, channels, 2), generator=generator)
    offset = offset.clamp(0, cell - tile).expand(n, 9, channels, 2)
    for b in range(n):
        for k in range(9):
            for c in range(channels):
                y = margin + cell * (k // 3) + int(offset[b, k, c, 0])
                x = margin + cell * (k % 3) + int(offset[b, k, c, 1])
                tiles[b, k, c] = images[b, c, y : y + tile, x : x + tile]
    labels = torch.randint(0, len(permutations), (n,), generator=generator)
    return shuffle_tiles(tiles, permutations, labels), labels


@pytest.mark.parametrize("size", [64, 225])
@pytest.mark.parametrize("by_mask", [False, True])
def test_puzzles_cut_into_place_equal_grayscale_then_cut_then_shuffle(size, by_mask):
    cfg = JigsawConfig(num_permutations=10, grayscale_prob=0.5, color_jitter=0.05)
    perms = torch.from_numpy(hamming_permutations(10, 0))
    images = torch.rand(6, 3, size, size)
    fast, labels = make_puzzles(images, perms, cfg, torch.Generator().manual_seed(7), by_mask=by_mask)
    simple, simple_labels = simple_puzzles(images, perms, cfg, torch.Generator().manual_seed(7))
    assert torch.equal(labels, simple_labels)
    torch.testing.assert_close(fast, simple, rtol=0, atol=1e-6)
    grayscale = torch.rand(6, generator=torch.Generator().manual_seed(7)) < 0.5  # make_puzzles' first draw
    assert 0 < int(grayscale.sum()) < 6  # both kinds of image are compared


@pytest.mark.parametrize("by_mask", [False, True])
def test_puzzles_of_uint8_crops_equal_those_of_the_crops_in_unit_floats(by_mask):
    cfg = JigsawConfig(num_permutations=10, grayscale_prob=0.5, color_jitter=0.05)
    perms = torch.from_numpy(hamming_permutations(10, 0))
    crops = torch.randint(0, 256, (6, 3, 64, 64), dtype=torch.uint8)
    from_uint8, labels = make_puzzles(crops, perms, cfg, torch.Generator().manual_seed(3), by_mask=by_mask)
    from_float, float_labels = make_puzzles(crops.float() / 255, perms, cfg, torch.Generator().manual_seed(3),
                                            by_mask=by_mask)
    assert from_uint8.dtype == torch.float32 and torch.equal(labels, float_labels)
    torch.testing.assert_close(from_uint8, from_float, rtol=0, atol=1e-6)


def test_about_thirty_percent_of_images_are_turned_grayscale():
    images = torch.rand(1500, 3, 27, 27)
    perms = torch.from_numpy(hamming_permutations(10, 0))
    tiles, _ = make_puzzles(images, perms, JigsawConfig(color_jitter=0.0), torch.Generator().manual_seed(3))
    gray = (tiles[:, :, 0] == tiles[:, :, 1]).flatten(1).all(dim=1) & (tiles[:, :, 1] == tiles[:, :, 2]).flatten(1).all(dim=1)
    assert 0.25 < float(gray.float().mean()) < 0.35


def test_every_tile_channel_is_normalised_on_its_own_statistics():
    task = small_task()
    images = torch.rand(4, 3, 32, 32) * torch.tensor([0.2, 0.5, 1.0]).view(1, 3, 1, 1) + 0.1
    tiles, _ = task.puzzles(images, torch.Generator().manual_seed(0))
    mean = tiles.mean(dim=(-2, -1))
    std = tiles.std(dim=(-2, -1), unbiased=False)
    assert torch.allclose(mean, torch.zeros_like(mean), atol=1e-5)
    assert torch.allclose(std, torch.ones_like(std), atol=1e-3)


def test_standardize_equals_the_plain_formula_and_leaves_flat_channels_at_zero():
    x = torch.rand(5, 9, 3, 12, 12)
    x[0, 0, 1] = 0.4  # a flat channel
    plain = (x - x.mean(dim=(-2, -1), keepdim=True)) / (x.std(dim=(-2, -1), keepdim=True, unbiased=False) + 1e-5)
    torch.testing.assert_close(standardize(x), plain, rtol=0, atol=1e-5)
    assert torch.equal(standardize(x)[0, 0, 1], torch.zeros(12, 12))


def test_defaults_follow_the_paper_and_keep_the_shortcut_guards_on():
    cfg = JigsawConfig()
    assert cfg.num_permutations == 1000 and (cfg.fc6_dim, cfg.fc7_dim) == (1024, 4096)
    assert cfg.tile_fraction == pytest.approx(64 / 75) and cfg.grayscale_prob == 0.3
    assert cfg.color_jitter == pytest.approx(2 / 64) and cfg.pool_grid == 3 and cfg.dropout == 0.5


# ----------------------------------------------------------------------------- the network


def test_forward_gives_a_finite_loss_and_accuracy_and_learns_a_fixed_batch():
    torch.manual_seed(0)
    task = small_task()
    images = torch.rand(8, 3, 32, 32)
    labels = torch.full((8,), -1)
    optimizer = torch.optim.SGD(task.parameters(), lr=0.05, momentum=0.9)
    losses = []
    for _ in range(10):
        out = task(images, labels, torch.Generator().manual_seed(0))  # the same puzzles every step
        losses.append(float(out["loss"].detach()))
        optimizer.zero_grad()
        out["loss"].backward()
        optimizer.step()
    assert set(out) == {"loss", "acc"}
    assert np.isfinite(losses).all() and 0.0 <= float(out["acc"]) <= 1.0
    assert losses[-1] < 0.5 * losses[0]


def test_paper_geometry_pools_conv5_of_64px_tiles_to_3x3():
    task = new_task("jigsaw", build_encoder("alexnet_jigsaw", width=0.25),
                      {"num_permutations": 10, "fc6_dim": 16, "fc7_dim": 16})
    conv5 = task.encoder.feature_shapes(64)["conv5"]
    assert conv5[1:] == (6, 6)
    assert TilePool(3)(torch.rand(2, conv5[0], 6, 6)).shape[-2:] == (3, 3)
    task.eval()
    tiles, _ = task.puzzles(torch.rand(2, 3, 225, 225))
    assert tiles.shape == (2, 9, 3, 64, 64)
    assert task.logits(tiles).shape == (2, 10)


def test_small_pool_input_is_pooled_adaptively():
    x = torch.arange(25.0).view(1, 1, 5, 5)
    assert torch.equal(TilePool(3)(x), torch.nn.functional.adaptive_max_pool2d(x, 3))


def test_check_image_size_rejects_crops_whose_tiles_are_too_small():
    JigsawTask.check_image_size(JigsawConfig(), 32)
    with pytest.raises(ConfigError, match=r"data.image_size = 20 is invalid: jigsaw needs .* data.image_size >= 27"):
        JigsawTask.check_image_size(JigsawConfig(), 20)
    with pytest.raises(ConfigError, match="data.image_size = 20 is invalid"):
        check_pretrain_config(from_dict(PretrainConfig, {"task": "jigsaw", "data": {"image_size": 20}}))


def test_tiles_too_small_for_the_encoder_give_a_config_error():
    task = new_task("jigsaw", build_encoder("alexnet_jigsaw", width=0.25),
                      {"num_permutations": 10, "fc6_dim": 16, "fc7_dim": 16})
    with pytest.raises(ConfigError, match="alexnet_jigsaw"):
        task(torch.rand(2, 3, 64, 64), torch.full((2,), -1))


def test_example_images_show_crop_shuffled_tiles_and_prediction():
    task = small_task(head_bn=True).eval()
    with torch.no_grad():
        shown = task.example_images(torch.rand(5, 3, 32, 32), torch.Generator().manual_seed(0))
    assert shown.images.shape == (12, 3, 32, 32) and shown.per_row == 3
    assert float(shown.images.min()) >= 0.0 and float(shown.images.max()) <= 1.0
    assert len(shown.captions) == 12
    assert re.match(r"input: permutation \d+ = \((\d ){8}\d\)", shown.captions[1])
