"""Image sources and split rules: folder layouts, carving, built-in data sets, error messages."""

from __future__ import annotations

import os
import sys
import tarfile
import time
import types
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from selfsup.data.folders import (
    IGNORED_HIDDEN,
    IGNORED_IN_SUBFOLDER,
    IGNORED_NOT_IMAGE,
    IGNORED_TOP_LEVEL,
    scan_folder,
)
from selfsup.data.source_kinds import FolderSource, ImageSource, IndexedSource, TorchvisionSource
from selfsup.data.sources import Splits, open_splits, stratified_holdout
from selfsup.errors import ConfigError, DataError

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def _write_png(path: Path, value: int = 0) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (4, 4), (value % 256, 0, 0)).save(path)


def _image_folder(root: Path, counts: dict[str, int]) -> Path:
    for class_name, count in counts.items():
        for index in range(count):
            _write_png(root / class_name / f"{index:03d}.png", index)
    return root


def _labels(source: ImageSource) -> list[int]:
    return [source.label(index) for index in range(len(source))]


def _base_indices(source: ImageSource) -> set[int]:
    assert isinstance(source, IndexedSource)
    return set(source.indices.tolist())


def _paths(source: ImageSource) -> set[str]:
    """Files behind a folder source or a carved part of one."""
    if isinstance(source, IndexedSource):
        assert isinstance(source.base, FolderSource)
        return {source.base.path(int(index)) for index in source.indices}
    assert isinstance(source, FolderSource)
    return {source.path(index) for index in range(len(source))}


# --- scan_folder --------------------------------------------------------------------------------


def test_scan_image_folder_layout(tmp_path: Path) -> None:
    _image_folder(tmp_path, {"dog": 2, "cat": 3})
    _write_png(tmp_path / "dog" / "nested" / "deep.png")  # found recursively
    _write_png(tmp_path / "cat" / ".hidden.png")  # hidden file
    _write_png(tmp_path / "cat" / ".cache" / "thumb.png")  # hidden folder
    _write_png(tmp_path / ".git" / "x.png")  # hidden folder: not a class
    _write_png(tmp_path / "stray.png")  # loose image next to class folders: needs layout "classes"
    (tmp_path / "cat" / "notes.txt").write_text("not an image")
    (tmp_path / "README.md").write_text("readme")
    (tmp_path / "empty_class").mkdir()

    source = scan_folder(tmp_path, layout="classes")

    assert source.ignored == {IGNORED_HIDDEN: 3, IGNORED_TOP_LEVEL: 1, IGNORED_NOT_IMAGE: 2}
    assert source.ignored_extensions == [".md", ".txt"]
    assert source.classes == ["cat", "dog"]
    assert len(source) == 6
    assert _labels(source) == [0, 0, 0, 1, 1, 1]
    names = [os.path.relpath(source.path(index), tmp_path) for index in range(len(source))]
    assert names == ["cat/000.png", "cat/001.png", "cat/002.png", "dog/000.png", "dog/001.png", "dog/nested/deep.png"]
    assert source.load(0).mode == "RGB"
    assert source.describe() == f"folder {tmp_path} (6 images, 2 classes)"
    assert isinstance(source, ImageSource)


def test_scan_flat_folder_is_unlabelled(tmp_path: Path) -> None:
    for name in ["b.jpg", "a.png", "c.JPEG"]:
        _write_png(tmp_path / name)
    (tmp_path / "list.csv").write_text("a,b\n")
    (tmp_path / "no_images_here").mkdir()

    source = scan_folder(tmp_path)

    assert source.classes == []
    assert [Path(source.path(index)).name for index in range(len(source))] == ["a.png", "b.jpg", "c.JPEG"]
    assert _labels(source) == [-1, -1, -1]
    assert source.describe() == f"folder {tmp_path} (3 images, unlabelled)"


def test_scan_fixed_classes_keep_train_indices(tmp_path: Path) -> None:
    _image_folder(tmp_path, {"zebra": 1})
    source = scan_folder(tmp_path, classes=["ant", "zebra"])
    assert source.classes == ["ant", "zebra"]
    assert _labels(source) == [1]


def test_missing_path_error(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere"
    with pytest.raises(DataError) as caught:
        scan_folder(missing)
    assert str(caught.value) == f"data path not found: {missing}"


def test_folder_without_images_error(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    (tmp_path / "notes.txt").write_text("hello")
    (tmp_path / ".hidden.png").write_bytes(b"")
    with pytest.raises(DataError) as caught:
        scan_folder(tmp_path)
    message = str(caught.value)
    assert message.startswith(f"no images found under {tmp_path} (looked for ")
    assert ".jpg" in message and ".png" in message
    assert "\n" not in message


def test_open_splits_missing_path_names_it(tmp_path: Path) -> None:
    missing = tmp_path / "typo"
    with pytest.raises(DataError) as caught:
        open_splits(str(missing))
    assert str(missing) in str(caught.value)
    assert "\n" not in str(caught.value)


def _mixed_folder(root: Path) -> Path:
    """5 images at top level beside 2 sub-folders with 3 images between them (and a note file)."""
    for index in range(5):
        _write_png(root / f"top{index}.png")
    _write_png(root / "extra" / "a.png")
    (root / "extra" / "notes.txt").write_text("not an image")
    _image_folder(root / "more", {"deeper": 2})
    return root


def test_mixed_folder_is_ambiguous_in_auto_layout(tmp_path: Path) -> None:
    _mixed_folder(tmp_path)
    for call in (lambda: scan_folder(tmp_path), lambda: open_splits(str(tmp_path))):
        with pytest.raises(DataError) as caught:
            call()
        message = str(caught.value)
        assert str(tmp_path) in message and "\n" not in message
        assert "5 images at top level and 2 sub-folders with images (3 images)" in message
        assert "--data-layout flat" in message and "--data-layout classes" in message


def test_flat_layout_reads_top_level_images_only(tmp_path: Path) -> None:
    _mixed_folder(tmp_path)

    source = scan_folder(tmp_path, layout="flat")

    assert source.classes == [] and _labels(source) == [-1] * 5
    assert sorted(Path(source.path(index)).name for index in range(len(source))) == [f"top{i}.png" for i in range(5)]
    assert source.ignored == {IGNORED_IN_SUBFOLDER: 3, IGNORED_NOT_IMAGE: 1}
    splits = open_splits(str(tmp_path), layout="flat")
    assert len(splits.pretrain) == 5 and splits.train is None
    assert splits.ignored_files == {IGNORED_IN_SUBFOLDER: 3, IGNORED_NOT_IMAGE: 1}


def test_classes_layout_reads_sub_folders_only(tmp_path: Path) -> None:
    _mixed_folder(tmp_path)

    source = scan_folder(tmp_path, layout="classes")

    assert source.classes == ["extra", "more"] and _labels(source) == [0, 1, 1]
    assert source.ignored == {IGNORED_TOP_LEVEL: 5, IGNORED_NOT_IMAGE: 1}
    splits = open_splits(str(tmp_path), layout="classes", val_fraction=0.0, test_fraction=0.0)
    assert splits.train is not None and len(splits.train) == 3
    assert splits.ignored_files == {IGNORED_TOP_LEVEL: 5, IGNORED_NOT_IMAGE: 1}


def test_layout_that_does_not_fit_the_folder_is_an_error(tmp_path: Path) -> None:
    for index in range(2):
        _write_png(tmp_path / "flat" / f"{index}.png")
    with pytest.raises(DataError, match=r"no sub-folders with images.*2 images at top level.*--data-layout flat"):
        scan_folder(tmp_path / "flat", layout="classes")
    _image_folder(tmp_path / "classes", {"a": 1, "b": 2})
    with pytest.raises(DataError, match=r"no images at the top level.*2 sub-folders with images \(3 images\)"):
        scan_folder(tmp_path / "classes", layout="flat")


def test_invalid_layout_is_a_config_error(tmp_path: Path) -> None:
    _image_folder(tmp_path, {"a": 1})
    for call in (lambda: scan_folder(tmp_path, layout="imagefolder"), lambda: open_splits(str(tmp_path), layout="x")):
        with pytest.raises(ConfigError, match="allowed values are auto, flat, classes"):
            call()


def test_notes_sum_up_the_ignored_files_of_every_split_folder(tmp_path: Path) -> None:
    _image_folder(tmp_path / "train", {"a": 2, "b": 2})
    _image_folder(tmp_path / "val", {"a": 1, "b": 1})
    _image_folder(tmp_path / "test", {"a": 1, "b": 1})
    (tmp_path / "train" / "a" / "labels.json").write_text("{}")
    (tmp_path / "val" / "b" / "notes.txt").write_text("x")
    (tmp_path / "test" / ".DS_Store").write_bytes(b"")

    splits = open_splits(str(tmp_path))

    assert splits.ignored_files == {IGNORED_NOT_IMAGE: 2, IGNORED_HIDDEN: 1}
    assert splits.notes[-1] == "ignored 3 files: 2 not an image (.json, .txt), 1 hidden file or folder"
    clean = open_splits(str(tmp_path / "train" / "b"))
    assert clean.ignored_files == {} and not any(note.startswith("ignored") for note in clean.notes)


# --- sources --------------------------------------------------------------------------------------


class _FakeDataset:
    """Shaped like a torchvision data set: items are (image, label), labels in ``targets``."""

    def __init__(self, items: list[tuple[object, int]], with_targets: bool) -> None:
        self.items = items
        if with_targets:
            self.targets = [label for _, label in items]

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> tuple[object, int]:
        return self.items[index]


@pytest.mark.parametrize("with_targets", [True, False])
def test_torchvision_source(with_targets: bool) -> None:
    gray = np.full((3, 5), 9, dtype=np.uint8)
    color = np.zeros((3, 5, 3), dtype=np.uint8)
    items: list[tuple[object, int]] = [(gray, 1), (color, 0), (Image.new("L", (5, 3)), 1)]
    source = TorchvisionSource(_FakeDataset(items, with_targets), ["a", "b"], "fake train")
    assert len(source) == 3
    assert _labels(source) == [1, 0, 1]
    for index in range(3):
        img = source.load(index)
        assert img.mode == "RGB" and img.size == (5, 3)
    assert source.describe() == "fake train (3 images, 2 classes)"


def test_indexed_source(tmp_path: Path) -> None:
    base = scan_folder(_image_folder(tmp_path, {"a": 2, "b": 2}))
    part = IndexedSource(base, [3, 1], "part")
    assert part.classes == ["a", "b"]
    assert _labels(part) == [1, 0]
    assert part.describe() == "part (2 images, 2 classes)"
    with pytest.raises(ValueError):
        IndexedSource(base, [4], "out of range")


# --- carving ------------------------------------------------------------------------------------


def test_stratified_holdout_is_stratified_disjoint_and_deterministic() -> None:
    labels = np.repeat(np.arange(4), [100, 50, 30, 20])
    rest, (val, test) = stratified_holdout(labels, [0.1, 0.2], seed=3)

    assert len(val) == 20 and len(test) == 40
    assert Counter(labels[val].tolist()) == {0: 10, 1: 5, 2: 3, 3: 2}
    assert Counter(labels[test].tolist()) == {0: 20, 1: 10, 2: 6, 3: 4}
    assert not set(rest) & set(val) and not set(rest) & set(test) and not set(val) & set(test)
    assert sorted(np.concatenate([rest, val, test]).tolist()) == list(range(len(labels)))

    rest_again, (val_again, test_again) = stratified_holdout(labels, [0.1, 0.2], seed=3)
    assert (val == val_again).all() and (test == test_again).all() and (rest == rest_again).all()
    _, (val_other_seed, _) = stratified_holdout(labels, [0.1, 0.2], seed=4)
    assert set(val) != set(val_other_seed)
    # val depends only on the seed and its own fraction
    _, (val_less_test, _) = stratified_holdout(labels, [0.1, 0.05], seed=3)
    assert (val == val_less_test).all()


def test_stratified_holdout_keeps_every_class_in_training() -> None:
    labels = np.array([0, 1, 1, 2, 2, 2, 2, 2, 2, 2, 2, 2])
    rest, (val, test) = stratified_holdout(labels, [0.3, 0.3], seed=0)
    assert set(labels[rest].tolist()) == {0, 1, 2}
    assert len(val) > 0 and len(test) > 0
    assert len(set(rest) | set(val) | set(test)) == len(labels)


def test_invalid_fractions(tmp_path: Path) -> None:
    _image_folder(tmp_path, {"a": 3})
    with pytest.raises(DataError, match="val_fraction"):
        open_splits(str(tmp_path), val_fraction=1.5)
    with pytest.raises(DataError, match="below 1"):
        open_splits(str(tmp_path), val_fraction=0.5, test_fraction=0.5)


# --- split rules for folders --------------------------------------------------------------------


def test_train_val_test_folders_are_used_as_is(tmp_path: Path) -> None:
    _image_folder(tmp_path / "train", {"a": 4, "b": 4})
    _image_folder(tmp_path / "val", {"b": 2})  # missing class "a": indices must still match train
    _image_folder(tmp_path / "test", {"a": 1, "b": 1})

    splits = open_splits(str(tmp_path))

    assert isinstance(splits, Splits)
    assert splits.pretrain is splits.train
    assert splits.train is not None and splits.val is not None and splits.test is not None
    assert len(splits.train) == 8 and len(splits.val) == 2 and len(splits.test) == 2
    assert splits.val.classes == ["a", "b"] and _labels(splits.val) == [1, 1]
    assert _labels(splits.test) == [0, 1]
    assert any("val = folder" in note for note in splits.notes)


@pytest.mark.parametrize("val_dir_name", ["val", "validation"])
def test_imagenet_layout_val_folder_becomes_test(tmp_path: Path, val_dir_name: str) -> None:
    _image_folder(tmp_path / "train", {"a": 20, "b": 10})
    _image_folder(tmp_path / val_dir_name, {"a": 3, "b": 3})

    splits = open_splits(str(tmp_path), val_fraction=0.2, seed=1)

    assert splits.train is not None and splits.val is not None and splits.test is not None
    assert _paths(splits.test) == _paths(scan_folder(tmp_path / val_dir_name))
    assert len(splits.pretrain) == 30  # pretext training reads the whole train folder
    assert Counter(_labels(splits.val)) == {0: 4, 1: 2}
    assert len(splits.train) == 24
    assert not _base_indices(splits.train) & _base_indices(splits.val)
    assert _paths(splits.train) | _paths(splits.val) == _paths(scan_folder(tmp_path / "train"))
    assert any("val folder serves as the test split" in note for note in splits.notes)


def test_train_and_test_folders_carve_val(tmp_path: Path) -> None:
    _image_folder(tmp_path / "train", {"a": 10, "b": 10, "c": 10})
    _image_folder(tmp_path / "test", {"a": 2, "b": 2, "c": 2})

    splits = open_splits(str(tmp_path), val_fraction=0.1)

    assert splits.train is not None and splits.val is not None and splits.test is not None
    assert Counter(_labels(splits.val)) == {0: 1, 1: 1, 2: 1}
    assert len(splits.train) == 27
    assert not _base_indices(splits.train) & _base_indices(splits.val)
    assert len(splits.test) == 6 and _paths(splits.test) == _paths(scan_folder(tmp_path / "test"))
    assert len(splits.pretrain) == 30
    assert any("10% of folder" in note and "seed 0" in note for note in splits.notes)


def test_labelled_folder_without_splits_is_carved(tmp_path: Path) -> None:
    _image_folder(tmp_path, {"a": 40, "b": 20, "c": 20})

    splits = open_splits(str(tmp_path), val_fraction=0.1, test_fraction=0.25, seed=7)

    assert splits.train is not None and splits.val is not None and splits.test is not None
    train, val, test = _base_indices(splits.train), _base_indices(splits.val), _base_indices(splits.test)
    assert not train & val and not train & test and not val & test
    assert train | val | test == set(range(80))
    assert Counter(_labels(splits.val)) == {0: 4, 1: 2, 2: 2}
    assert Counter(_labels(splits.test)) == {0: 10, 1: 5, 2: 5}
    assert _base_indices(splits.pretrain) == train | val  # everything but test
    again = open_splits(str(tmp_path), val_fraction=0.1, test_fraction=0.25, seed=7)
    assert again.test is not None and _base_indices(again.test) == test


def test_unlabelled_flat_folder_gives_pretrain_only(tmp_path: Path) -> None:
    for index in range(5):
        _write_png(tmp_path / f"{index}.png")

    splits = open_splits(str(tmp_path))

    assert len(splits.pretrain) == 5
    assert splits.train is None and splits.val is None and splits.test is None
    assert any("no labels: probes unavailable" in note for note in splits.notes)


def test_split_folder_with_unknown_class_is_an_error(tmp_path: Path) -> None:
    _image_folder(tmp_path / "train", {"a": 3})
    _image_folder(tmp_path / "test", {"a": 1, "zzz": 1})
    with pytest.raises(DataError, match="zzz"):
        open_splits(str(tmp_path))


def test_demo_uses_its_split_folders(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Stand-in for selfsup.data.demo so this checks the wiring, not the demo generator.
    demo_root = tmp_path / "demo"
    for split, count in {"train": 4, "val": 2, "test": 2}.items():
        _image_folder(demo_root / "classification" / split, {"circle": count, "square": count})
    requested: list[object] = []

    def ensure_demo(cache_dir: Path | None = None) -> Path:
        requested.append(cache_dir)
        return demo_root

    monkeypatch.setitem(sys.modules, "selfsup.data.demo", types.SimpleNamespace(ensure_demo=ensure_demo))

    splits = open_splits("demo", data_root=str(tmp_path / "cache"))

    assert requested == [tmp_path / "cache"]
    assert splits.train is not None and splits.val is not None and splits.test is not None
    assert (len(splits.train), len(splits.val), len(splits.test)) == (8, 4, 4)
    assert splits.pretrain is splits.train


# --- built-in torchvision data sets ---------------------------------------------------------------


def test_cifar10_without_files_fails_fast_and_clearly(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    started = time.monotonic()
    try:
        splits = open_splits("cifar10", data_root=str(tmp_path))
    except DataError as error:
        message = str(error)
        assert "cifar10" in message and str(tmp_path) in message
        assert "download failed" in message and "--data-root" in message
        assert "\n" not in message
    else:  # this machine is online and the download worked
        assert splits.test is not None and len(splits.test) == 10_000
    assert time.monotonic() - started < 30


@pytest.mark.skipif(not (SHARED_DATA / "cifar10-jpg.tar.gz").exists(), reason="shared CIFAR-10 JPEG archive absent")
def test_cifar10_jpeg_tree_from_shared_data(tmp_path: Path) -> None:
    # A few files per class and split are enough to exercise the train + test layout.
    wanted = {"train": 20, "test": 5}
    taken: Counter[tuple[str, str]] = Counter()
    with tarfile.open(SHARED_DATA / "cifar10-jpg.tar.gz") as archive:
        for member in archive:
            parts = member.name.split("/")
            if not member.isfile() or len(parts) != 4 or parts[1] not in wanted:
                continue
            key = (parts[1], parts[2])
            if taken[key] < wanted[parts[1]]:
                taken[key] += 1
                archive.extract(member, tmp_path, filter="data")

    splits = open_splits(str(tmp_path / "cifar10"))

    assert splits.train is not None and splits.val is not None and splits.test is not None
    assert len(splits.train.classes) == 10 and "airplane" in splits.train.classes
    assert len(splits.test) == 50 and len(splits.pretrain) == 200
    assert len(splits.train) + len(splits.val) == 200
    assert Counter(_labels(splits.val)) == {label: 2 for label in range(10)}
    assert not _base_indices(splits.train) & _base_indices(splits.val)
    for source in (splits.train, splits.val, splits.test):
        img = source.load(0)
        assert img.mode == "RGB" and img.size == (32, 32)
    test_source = splits.test
    assert isinstance(test_source, FolderSource)
    for index in range(len(test_source)):
        assert Path(test_source.path(index)).parent.name == test_source.classes[test_source.label(index)]


class _FakeTorchvisionSet:
    """Mimics a torchvision data set that exists on disk only after ``download=True``."""

    downloads: list[str] = []
    per_class = 10

    def __init__(self, root: str, download: bool = False, **split: object) -> None:
        if not download and root not in self.downloads:
            raise RuntimeError("Dataset not found or corrupted. You can use download=True to download it")
        if download:
            self.downloads.append(root)
        self.split = split
        self.classes = ["cat", "dog"]
        count = self.per_class * 2 if split.get("split") == "train+unlabeled" else self.per_class
        self.targets = [index % 2 for index in range(count)]
        if split.get("split") == "train+unlabeled":
            self.targets[self.per_class :] = [-1] * self.per_class

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: int) -> tuple[Image.Image, int]:
        return Image.new("RGB", (8, 8), (index, 0, 0)), self.targets[index]


@pytest.fixture
def fake_torchvision(monkeypatch: pytest.MonkeyPatch) -> type[_FakeTorchvisionSet]:
    from torchvision import datasets

    monkeypatch.setattr(_FakeTorchvisionSet, "downloads", [])
    for name in ("CIFAR10", "CIFAR100", "STL10"):
        monkeypatch.setattr(datasets, name, _FakeTorchvisionSet)
    return _FakeTorchvisionSet


def test_cifar_splits_wiring(tmp_path: Path, fake_torchvision: type[_FakeTorchvisionSet]) -> None:
    splits = open_splits("cifar100", data_root=str(tmp_path), val_fraction=0.2, seed=5)

    assert fake_torchvision.downloads == [str(tmp_path)]  # one download, then found on disk
    assert splits.train is not None and splits.val is not None and splits.test is not None
    assert isinstance(splits.pretrain, TorchvisionSource) and len(splits.pretrain) == 10  # the full train split
    assert Counter(_labels(splits.val)) == {0: 1, 1: 1}
    assert not _base_indices(splits.train) & _base_indices(splits.val)
    assert len(splits.train) == 8
    assert splits.train.classes == ["cat", "dog"]
    assert splits.val.load(0).mode == "RGB"
    assert any(note.startswith("pretrain = the full cifar100 train split") for note in splits.notes)
    assert splits.ignored_files == {}


def test_stl10_pretrains_on_train_and_unlabeled(tmp_path: Path, fake_torchvision: type[_FakeTorchvisionSet]) -> None:
    splits = open_splits("stl10", data_root=str(tmp_path), val_fraction=0.2)

    assert len(splits.pretrain) == 20
    assert _labels(splits.pretrain).count(-1) == 10
    assert splits.train is not None and splits.val is not None and splits.test is not None
    assert len(splits.train) + len(splits.val) == 10
    assert len(splits.test) == 10


def test_train_folder_alone_carves_val_and_test(tmp_path: Path) -> None:
    _image_folder(tmp_path / "train", {"a": 10, "b": 10})

    splits = open_splits(str(tmp_path), val_fraction=0.1, test_fraction=0.2)

    assert splits.train is not None and splits.val is not None and splits.test is not None
    assert (len(splits.train), len(splits.val), len(splits.test)) == (14, 2, 4)
    assert splits.train.classes == ["a", "b"]  # "train" itself is not taken for a class
    assert _base_indices(splits.pretrain) == _base_indices(splits.train) | _base_indices(splits.val)
