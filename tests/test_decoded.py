"""The decoded uint8 cache gives the loader's batches unchanged; JPEG draft decoding keeps every crop's geometry."""

import logging
import os
import pickle

import numpy as np
import pytest
import torch
from PIL import Image

from selfsup.data import decoded
from selfsup.data.decoded import DecodedSource, decoded_source
from selfsup.data.folders import scan_folder
from selfsup.data.images import BadImageError, load_rgb
from selfsup.data.crops import CenterCrop, RandomCrop, crop_uniforms
from selfsup.data.loading import EpochBatchSampler, train_loader
from selfsup.data.source_kinds import IndexedSource, TorchvisionSource


def _folder_with_a_bad_file(root):
    rng = np.random.default_rng(0)
    for i, size in enumerate([(40, 30), (24, 50), (33, 33), (64, 48)]):
        Image.fromarray(rng.integers(0, 256, (*size, 3), dtype=np.uint8)).save(root / f"{i}.png")
    (root / "9.png").write_bytes(b"not a png")
    return scan_folder(root, layout="flat")


def _batches(source, *, workers=0):
    sampler = EpochBatchSampler(len(source), 2, seed=3)
    loader = train_loader(source, RandomCrop(16), sampler, workers=workers, pin_memory=False)
    return [(b.images.clone(), b.labels.clone(), b.indices.clone(), list(b.bad_files)) for b in loader]


def test_cached_images_equal_a_fresh_decode_and_bad_files_stay_bad(tmp_path):
    (tmp_path / "data").mkdir()
    source = _folder_with_a_bad_file(tmp_path / "data")
    cached = decoded_source(source, 10**9, cache_dir=tmp_path / "cache")
    assert isinstance(cached, DecodedSource) and len(cached) == len(source)
    for index in range(len(source)):
        try:
            expected = np.asarray(source.load(index))
        except BadImageError as exc:
            with pytest.raises(BadImageError) as raised:
                cached.load(index)
            assert str(raised.value) == str(exc)  # the same file named, the same reason
            continue
        assert np.array_equal(np.asarray(cached.load(index)), expected)
    assert sorted(p.suffix for p in (tmp_path / "cache").iterdir()) == [".npz", ".u8"]  # no temporaries left


def test_the_loader_gives_the_same_batches_from_the_cache(tmp_path):
    (tmp_path / "data").mkdir()
    source = _folder_with_a_bad_file(tmp_path / "data")
    cached = decoded_source(source, 10**9, cache_dir=tmp_path / "cache", workers=1)
    plain, from_cache = _batches(source), _batches(cached, workers=1)  # workers: the memory map crosses a fork
    assert len(plain) == len(from_cache)
    for (images, labels, indices, bad), (c_images, c_labels, c_indices, c_bad) in zip(plain, from_cache):
        assert torch.equal(images, c_images) and torch.equal(labels, c_labels) and torch.equal(indices, c_indices)
        assert bad == c_bad


def test_a_pickled_cached_source_carries_no_pixels(tmp_path):
    (tmp_path / "data").mkdir()
    cached = decoded_source(_folder_with_a_bad_file(tmp_path / "data"), 10**9, cache_dir=tmp_path / "cache")
    cached.load(0)  # opens the memory map
    restored = pickle.loads(pickle.dumps(cached))
    assert restored._pixels is None
    assert np.array_equal(np.asarray(restored.load(1)), np.asarray(cached.load(1)))


def test_a_changed_file_makes_a_new_cache_and_a_subset_reads_its_own_files(tmp_path):
    (tmp_path / "data").mkdir()
    source = _folder_with_a_bad_file(tmp_path / "data")
    first = decoded_source(source, 10**9, cache_dir=tmp_path / "cache")
    Image.fromarray(np.zeros((8, 8, 3), dtype=np.uint8)).save(tmp_path / "data" / "0.png")
    os.utime(tmp_path / "data" / "0.png", ns=(1, 1))  # a new modification time whatever the clock's resolution
    second = decoded_source(scan_folder(tmp_path / "data", layout="flat"), 10**9, cache_dir=tmp_path / "cache")
    assert second.pixels_path != first.pixels_path
    assert np.asarray(second.load(0)).shape == (8, 8, 3)
    subset = decoded_source(IndexedSource(source, [3, 1], "subset"), 10**9, cache_dir=tmp_path / "cache")
    assert np.array_equal(np.asarray(subset.load(0)), np.asarray(source.load(3)))


def test_sources_that_do_not_fit_or_are_not_files_are_left_alone(tmp_path, caplog):
    (tmp_path / "data").mkdir()
    source = _folder_with_a_bad_file(tmp_path / "data")
    with caplog.at_level(logging.INFO, logger="selfsup.data.decoded"):
        assert decoded_source(source, 100, cache_dir=tmp_path / "cache") is source
    assert "more than data.decoded_cache_gb" in caplog.text
    in_memory = TorchvisionSource([(np.zeros((4, 4, 3), np.uint8), 0)], ["a"], "arrays")
    assert decoded_source(in_memory, 10**9, cache_dir=tmp_path / "cache") is in_memory
    assert not (tmp_path / "cache").exists()


def test_a_killed_build_leaves_no_cache(tmp_path, monkeypatch):
    (tmp_path / "data").mkdir()
    source = _folder_with_a_bad_file(tmp_path / "data")

    def killed(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(decoded.np, "savez", killed)  # after the pixels, before the index
    with pytest.raises(KeyboardInterrupt):
        decoded_source(source, 10**9, cache_dir=tmp_path / "cache")
    assert list((tmp_path / "cache").iterdir()) == []
    monkeypatch.undo()
    assert isinstance(decoded_source(source, 10**9, cache_dir=tmp_path / "cache"), DecodedSource)


def _smooth_jpeg(path, width=400, height=300):
    y, x = np.mgrid[0:height, 0:width].astype(np.float64)
    pixels = np.stack([127 + 120 * np.sin(x / 37), 127 + 120 * np.cos(y / 29), 127 + 120 * np.sin((x + y) / 53)], -1)
    Image.fromarray(pixels.astype(np.uint8)).save(path, quality=95)
    return path


def test_draft_decoding_shrinks_large_jpegs_and_keeps_every_crop(tmp_path):
    path = _smooth_jpeg(tmp_path / "big.jpg")
    crop = RandomCrop(32, scale=(0.5, 1.0))
    full = load_rgb(path)
    drafted = load_rgb(path, crop.decode_size)
    assert full.size == (400, 300) and drafted.size[0] < 400  # 32 px crops of at least 0.5 of the area: 1/4 scale
    smallest = min(np.sqrt(drafted.size[0] * drafted.size[1] * 0.5) * np.sqrt(3 / 4), *drafted.size)
    assert smallest >= 32  # every crop it may draw still has full resolution
    for seed in range(8):
        a = crop(full, crop_uniforms([seed])[0]).float()
        b = crop(drafted, crop_uniforms([seed])[0]).float()
        assert (a - b).abs().mean() < 4  # the same region: only the resampling differs (0..255 scale)
    assert load_rgb(path, RandomCrop(32, jpeg_draft=False).decode_size).size == (400, 300)
    assert load_rgb(path, CenterCrop(256).decode_size).size == (400, 300)  # cannot halve: full size


def test_draft_decoding_leaves_other_formats_at_full_size(tmp_path):
    Image.open(_smooth_jpeg(tmp_path / "big.jpg")).save(tmp_path / "big.png")
    assert load_rgb(tmp_path / "big.png", RandomCrop(16).decode_size).size == (400, 300)


def test_building_the_cache_draws_nothing_from_the_global_generators(tmp_path):
    (tmp_path / "data").mkdir()
    source = _folder_with_a_bad_file(tmp_path / "data")
    torch.manual_seed(7)
    expected = torch.rand(3)
    torch.manual_seed(7)
    decoded_source(source, 10**9, cache_dir=tmp_path / "cache")  # a run that builds it draws what one that finds it does
    assert torch.equal(torch.rand(3), expected)
