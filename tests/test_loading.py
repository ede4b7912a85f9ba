import json
import os
import pickle
from multiprocessing.reduction import ForkingPickler

import numpy as np
import pytest
import torch
from PIL import Image

from selfsup.cli.pretrain import main as pretrain_main
from selfsup.data.folders import scan_folder
from selfsup.data.crops import CenterCrop, RandomCrop, crop_uniforms
from selfsup.data.loading import (
    Batch, EpochBatchSampler, TransformedDataset, auto_workers, collate, sample_seed, train_loader,
)
from selfsup.data.worker_priority import WORKER_NICENESS, BackgroundLoader, fell_behind, idle_priority, lower_priority


def test_ranks_take_disjoint_slices_of_the_single_process_batches():
    single = list(EpochBatchSampler(50, 8, seed=3))
    ranks = [list(EpochBatchSampler(50, 8, rank=r, world_size=2, seed=3)) for r in range(2)]
    assert len(single) == len(ranks[0]) == len(ranks[1]) == 6
    for step, batch in enumerate(single):
        first, second = ranks[0][step], ranks[1][step]
        assert first + second == batch
        assert not {i for i, _ in first} & {i for i, _ in second}


def test_epoch_order_changes_with_epoch_and_resumes_mid_epoch():
    sampler = EpochBatchSampler(40, 4, seed=0)
    epoch0 = list(sampler)
    sampler.set_epoch(1)
    epoch1 = list(sampler)
    assert epoch0 != epoch1
    sampler.set_epoch(1, start_step=3)
    assert list(sampler) == epoch1[3:]


def test_crops_depend_only_on_the_sample_seed():
    img = Image.effect_noise((50, 40), 60).convert("RGB")
    crop = RandomCrop(16)
    a = crop(img, crop_uniforms([5])[0])
    b = crop(img, crop_uniforms([7, 5])[1])
    c = crop(img, crop_uniforms([6])[0])
    assert a.dtype == torch.uint8 and a.shape == (3, 16, 16)
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_crop_uniforms_are_uniform_and_independent_across_seeds_and_draws():
    u = crop_uniforms([sample_seed(3, 1, index) for index in range(20_000)])
    assert u.shape == (20_000, 23) and u.dtype == np.float64 and (u >= 0).all() and (u < 1).all()
    assert np.abs(u.mean(axis=0) - 0.5).max() < 0.01 and np.abs(u.std(axis=0) - 12**-0.5).max() < 0.01
    correlation = np.corrcoef(u.T)  # draws of one seed unrelated to each other
    assert np.abs(correlation - np.eye(23)).max() < 0.04
    neighbours = np.corrcoef(crop_uniforms(np.arange(20_000))[:, 0], crop_uniforms(np.arange(1, 20_001))[:, 0])
    assert abs(neighbours[0, 1]) < 0.04  # consecutive seeds unrelated
    assert np.array_equal(crop_uniforms([2**47 - 1, 0]), np.vstack([crop_uniforms([2**47 - 1]), crop_uniforms([0])]))


def test_small_images_are_upscaled_to_the_crop():
    img = Image.new("RGB", (7, 5), (10, 200, 30))
    assert RandomCrop(32)(img, crop_uniforms([0])[0]).shape == (3, 32, 32)


def test_training_survives_bad_files_and_counts_them(tiny_folder, tmp_path, capsys):
    data = tmp_path / "data" / "train" / "class0"
    data.mkdir(parents=True)
    for i, path in enumerate(sorted((tiny_folder / "train" / "class0").glob("*.png"))[:12]):
        (data / f"{i}.png").write_bytes(path.read_bytes())
    (data / "broken.png").write_bytes((data / "0.png").read_bytes()[:60])
    (data / "empty.jpg").write_bytes(b"")
    out = tmp_path / "run"
    code = pretrain_main(["--data", str(tmp_path / "data"), "--epochs", "1", "--batch-size", "4", "--workers", "0",
                          "--image-size", "16", "--width", "0.25", "--out", str(out)])
    assert code == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["bad_files_skipped"] == 2
    assert "unreadable files skipped: 2" in capsys.readouterr().out


def test_a_batch_of_items_is_what_the_items_give_one_by_one(tiny_folder, tmp_path):
    """__getitems__ (the DataLoader's batch fetch: one array, one generator) gives exactly the items that
    __getitem__ gives, crops of every size of image, unreadable files replaced in training and dropped in
    evaluation."""
    folder = tmp_path / "mixed"
    folder.mkdir()
    for i, path in enumerate(sorted((tiny_folder / "train" / "class0").glob("*.png"))[:5]):
        (folder / f"{i}.png").write_bytes(path.read_bytes())
    Image.effect_noise((50, 23), 60).convert("RGB").save(folder / "5_wide.png")
    Image.new("RGB", (7, 5), (10, 200, 30)).save(folder / "6_small.png")
    (folder / "7_broken.png").write_bytes(b"not an image")
    source = scan_folder(folder)
    items = [(i, 1000 + 7 * i) for i in range(len(source))]
    for transform, replace_bad in ((RandomCrop(16), True), (CenterCrop(12, 0.875), False), (RandomCrop(9), False)):
        dataset = TransformedDataset(source, transform, replace_bad=replace_bad)
        together, alone = dataset.__getitems__(items), [dataset[item] for item in items]
        assert len(together) == len(alone) == 8
        for (image, label, bad, index), (image_alone, label_alone, bad_alone, index_alone) in zip(together, alone):
            assert (label, bad, index) == (label_alone, bad_alone, index_alone)
            assert (image is None) == (image_alone is None)
            assert image is None or torch.equal(image, image_alone)
        assert sum(image is None for image, *_ in together) == (0 if replace_bad else 1)
        batches = [collate(items) for items in (together, alone)]
        assert torch.equal(batches[0].images, batches[1].images) and batches[0].images.is_contiguous()
        laid_out = collate(together, memory_format=torch.channels_last)
        assert torch.equal(laid_out.images, batches[1].images)
        assert laid_out.images.is_contiguous(memory_format=torch.channels_last)


def test_persistent_workers_give_the_batches_of_a_fresh_single_process_loader(tiny_folder):
    """Workers persist across epochs and prefetch; every epoch (and a resume inside one) still gets exactly
    the batches that a loader without workers gives, also from background workers that lay the images out
    channels_last and send the index rows by value."""
    source = scan_folder(tiny_folder / "train")
    crop = RandomCrop(16)

    def epochs(workers: int, **options) -> list[list[Batch]]:
        sampler = EpochBatchSampler(len(source), 8, seed=1)
        loader = train_loader(source, crop, sampler, workers=workers, pin_memory=False, **options)
        seen = []
        for epoch, start in ((0, 0), (1, 0), (1, 2)):
            sampler.set_epoch(epoch, start)
            seen.append(list(loader))
        return seen

    simple = epochs(0)
    assert [len(epoch) for epoch in simple] == [6, 6, 4]
    for persistent in (epochs(2), epochs(2, channels_last=True, background_workers=True)):
        for plain, fast in zip(simple, persistent):
            assert len(plain) == len(fast)
            for a, b in zip(plain, fast):
                assert torch.equal(a.images, b.images) and torch.equal(a.labels, b.labels)
                assert torch.equal(a.indices, b.indices) and a.bad_files == b.bad_files
    assert persistent[0][0].images.is_contiguous(memory_format=torch.channels_last)
    assert not torch.equal(simple[0][0].images, simple[1][0].images)


def test_a_batch_pickles_to_the_same_batch():
    """What a loader worker does to send one (its index rows by value, see Batch.__reduce__)."""
    batch = Batch(images=torch.arange(24, dtype=torch.uint8).reshape(2, 3, 2, 2), labels=torch.tensor([3, -1]),
                  bad_files=["x.jpg: broken"], indices=torch.tensor([5, 9]))
    for copy in (pickle.loads(pickle.dumps(batch)), pickle.loads(ForkingPickler.dumps(batch))):
        assert torch.equal(copy.images, batch.images) and torch.equal(copy.labels, batch.labels)
        assert torch.equal(copy.indices, batch.indices) and copy.bad_files == batch.bad_files
        assert copy.jpegs is None and copy.pixel_rows is None
        assert copy.labels.dtype == copy.indices.dtype == torch.long


def test_background_workers_lower_their_priority(monkeypatch):
    niced, policies = [], []
    monkeypatch.setattr(os, "nice", niced.append)
    lower_priority(0)
    assert niced == [WORKER_NICENESS] and WORKER_NICENESS > 0
    monkeypatch.setattr(os, "SCHED_IDLE", 5, raising=False)
    monkeypatch.setattr(os, "sched_setscheduler", lambda pid, policy, param: policies.append((pid, policy)),
                        raising=False)
    idle_priority(0)
    assert policies == [(0, 5)] and niced == [WORKER_NICENESS]
    monkeypatch.delattr(os, "sched_setscheduler")  # not on macOS or Windows: nice instead
    idle_priority(0)
    assert niced == [WORKER_NICENESS, WORKER_NICENESS]


def test_a_loader_falls_behind_when_the_step_waits_longer_than_it_computes():
    assert fell_behind([0.5, 0.6], [0.5, 0.5]) and not fell_behind([0.002] * 8, [0.1] * 8)


@pytest.mark.parametrize("behind", [False, True])
def test_background_loader_gives_the_batches_of_a_plain_loader_before_and_after_it_falls_back(tiny_folder, behind):
    """Idle-priority workers that fall behind hand over to nice-10 workers from the epoch's next batch on
    (``behind`` forced here: no timing): the batches, a resumed epoch's included, are those without workers."""
    source = scan_folder(tiny_folder / "train")
    crop = RandomCrop(16)

    def epochs(loader, sampler) -> list[list[Batch]]:
        seen = []
        for epoch, start in ((0, 0), (1, 2), (2, 0)):
            sampler.set_epoch(epoch, start)
            seen.append(list(loader))
        return seen

    plain_sampler = EpochBatchSampler(len(source), 8, seed=1)
    plain = epochs(train_loader(source, crop, plain_sampler, workers=0, pin_memory=False), plain_sampler)
    sampler = EpochBatchSampler(len(source), 8, seed=1)
    loader = train_loader(source, crop, sampler, workers=1, pin_memory=False, background_workers=True)
    assert isinstance(loader, BackgroundLoader) and loader.idle
    calls = []
    loader.window, loader.behind = 2, lambda waits, steps: calls.append((list(waits), list(steps))) or behind
    background = epochs(loader, sampler)
    assert [len(epoch) for epoch in background] == [len(epoch) for epoch in plain] == [6, 4, 6]
    for plain_epoch, background_epoch in zip(plain, background):
        for a, b in zip(plain_epoch, background_epoch):
            assert torch.equal(a.images, b.images) and torch.equal(a.indices, b.indices)
    assert loader.idle is not behind
    # an epoch's first batch (its workers start over) is not counted; the windows hold 2 batches
    assert calls and all(len(waits) == len(steps) == 2 for waits, steps in calls)
    assert len(calls) == (1 if behind else 4 + 2 + 4)


def test_auto_workers_leave_the_cores_to_the_step_on_a_cpu_and_feed_a_gpu_from_all_but_one(monkeypatch):
    for cores, cpu, cuda, cuda_two_processes in ((2, 1, 1, 1), (16, 4, 8, 7), (4, 1, 3, 1)):
        monkeypatch.setattr(os, "sched_getaffinity", lambda pid, cores=cores: set(range(cores)))
        assert auto_workers(torch.device("cpu")) == cpu
        assert auto_workers(torch.device("cuda")) == cuda
        assert auto_workers(torch.device("cuda"), processes_per_machine=2) == cuda_two_processes
