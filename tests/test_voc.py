"""PASCAL VOC layout reader (selfsup.data.voc): tiny trees written here, the demo set, and the shared
real sets when present."""

from __future__ import annotations

import logging
import sys
import tarfile
import types
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from selfsup.data.demo_draw import DEMO_CLASSES
from selfsup.data.images import BadImageError
from selfsup.data.sources import DataError, ImageSource
from selfsup.data.voc import open_voc, resolve_voc_root, voc_classes

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"

# (name, (xmin, ymin, xmax, ymax) 1-based as in VOC files, difficult, truncated) per image id.
TINY = {
    "img1": [("dog", (1, 1, 10, 20), False, False), ("cat", (5, 6, 7, 8), True, False)],
    "img2": [("cat", (3, 4, 30, 25), False, True), ("cat", (2, 2, 4, 4), True, False)],
    "img3": [("person", (10, 10, 12, 14), True, True)],
}
TINY_SPLITS = {"train": ["img1", "img2"], "val": ["img3"], "trainval": ["img1", "img2", "img3"]}


def _xml(objects: list[tuple[str, tuple[int, int, int, int], bool, bool]]) -> str:
    parts = ["<annotation><size><width>32</width><height>24</height><depth>3</depth></size>"]
    for name, (xmin, ymin, xmax, ymax), difficult, truncated in objects:
        parts.append(
            f"<object><name>{name}</name><truncated>{int(truncated)}</truncated><difficult>{int(difficult)}</difficult>"
            f"<bndbox><xmin>{xmin}</xmin><ymin>{ymin}</ymin><xmax>{xmax}</xmax><ymax>{ymax}</ymax></bndbox></object>"
        )
    return "".join(parts) + "</annotation>\n"


def write_voc(root: Path, annotations: dict = TINY, splits: dict = TINY_SPLITS) -> Path:
    for name in ("JPEGImages", "Annotations", "ImageSets/Main"):
        (root / name).mkdir(parents=True, exist_ok=True)
    for image_id, objects in annotations.items():
        Image.new("RGB", (32, 24), (200, 30, 30)).save(root / "JPEGImages" / f"{image_id}.jpg")
        (root / "Annotations" / f"{image_id}.xml").write_text(_xml(objects))
    for split, ids in splits.items():
        (root / "ImageSets" / "Main" / f"{split}.txt").write_text("".join(f"{i}\n" for i in ids))
    return root


def test_tiny_tree_labels_boxes_and_classes(tmp_path: Path) -> None:
    voc = open_voc(write_voc(tmp_path), "trainval")

    assert isinstance(voc, ImageSource)
    assert voc.classes == ["cat", "dog", "person"] and voc.ids == ["img1", "img2", "img3"]
    labels = voc.image_labels()
    assert labels.dtype == np.int8
    # cat: difficult only in img1, a clear one in img2; person: difficult only in img3.
    np.testing.assert_array_equal(labels, [[0, 1, -1], [1, -1, -1], [-1, -1, 0]])
    dog, cat = voc.objects(0)
    assert (dog.label, dog.box, dog.difficult, dog.truncated) == (1, (0.0, 0.0, 10.0, 20.0), False, False)
    assert (cat.label, cat.box, cat.difficult) == (0, (4.0, 5.0, 7.0, 8.0), True)
    assert voc.objects(1)[0].truncated and voc.objects(2)[0].truncated
    assert voc.label(0) == -1 and len(voc) == 3
    assert voc.load(2).mode == "RGB" and voc.load(2).size == (32, 24)
    assert "trainval" in voc.describe() and "3 images" in voc.describe()


def test_every_split_shares_the_trainval_class_list(tmp_path: Path) -> None:
    root = write_voc(tmp_path)
    val = open_voc(root, "val")  # holds only a person
    assert val.classes == voc_classes(root) == ["cat", "dog", "person"]
    np.testing.assert_array_equal(val.image_labels(), [[-1, -1, 0]])


def test_given_classes_fix_the_order_and_reject_unknown_names(tmp_path: Path) -> None:
    root = write_voc(tmp_path)
    train = open_voc(root, "train", classes=["person", "dog", "cat"])
    np.testing.assert_array_equal(train.image_labels(), [[-1, 1, 0], [-1, -1, 1]])
    with pytest.raises(DataError, match=r"img1\.xml.*'dog'"):
        open_voc(root, "train", classes=["cat", "person"])


def test_missing_split_file_names_it_and_the_available_splits(tmp_path: Path) -> None:
    root = write_voc(tmp_path)
    (root / "ImageSets" / "Main" / "dog_train.txt").write_text("img1  1\nimg2 -1\n")  # per-class file
    with pytest.raises(DataError) as error:
        open_voc(root, "test")
    message = str(error.value)
    assert str(root / "ImageSets" / "Main" / "test.txt") in message
    assert "available splits: train, trainval, val)" in message


def test_malformed_or_missing_annotation_names_the_file(tmp_path: Path) -> None:
    root = write_voc(tmp_path)
    (root / "Annotations" / "img2.xml").write_text("<annotation><object><name>cat</name>")
    with pytest.raises(DataError, match=r"malformed VOC annotation .*img2\.xml"):
        open_voc(root, "train", classes=["cat", "dog", "person"])
    no_box = _xml([]).replace("</annotation>", "<object><name>cat</name></object></annotation>")
    (root / "Annotations" / "img2.xml").write_text(no_box)
    with pytest.raises(DataError, match=r"img2\.xml.*bndbox"):
        open_voc(root, "train", classes=["cat", "dog", "person"])
    (root / "Annotations" / "img2.xml").unlink()
    with pytest.raises(DataError, match=r"not found: .*img2\.xml"):
        open_voc(root, "train", classes=["cat", "dog", "person"])


def test_box_past_the_image_is_clipped_and_counted(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    annotations = {
        "img1": [("dog", (0, 1, 40, 20), False, False), ("cat", (5, 6, 7, 8), False, False)],  # image is 32x24
        "img2": [("cat", (3, 4, 30, 30), False, False)],
        "img3": [("person", (10, 10, 12, 14), False, False)],
    }
    root = write_voc(tmp_path, annotations)
    # Without <size> only the lower bound is known: xmin 0 is clipped, xmax 99 is kept.
    (root / "Annotations" / "img3.xml").write_text(_xml([("person", (0, 10, 99, 14), False, False)]).replace(
        "<size><width>32</width><height>24</height><depth>3</depth></size>", ""))

    with caplog.at_level(logging.WARNING, logger="selfsup.data.voc"):
        voc = open_voc(root, "trainval")

    assert voc.clipped_boxes == 3
    assert voc.objects(0)[0].box == (0.0, 0.0, 32.0, 20.0) and voc.objects(0)[1].box == (4.0, 5.0, 7.0, 8.0)
    assert voc.objects(1)[0].box == (2.0, 3.0, 30.0, 24.0)
    assert voc.objects(2)[0].box == (0.0, 9.0, 99.0, 14.0)
    warnings = [record.getMessage() for record in caplog.records if record.levelno == logging.WARNING]
    assert len(warnings) == 1 and "clipped 3 box" in warnings[0] and "img1.xml" in warnings[0]
    assert "3 boxes clipped" in voc.describe()
    assert open_voc(root, "val").clipped_boxes == 1


@pytest.mark.parametrize(
    ("box", "problem"),
    [
        ((10, 5, 4, 8), "inverted box: xmin 10 > xmax 4"),
        ((5, 9, 7, 8), "inverted box: ymin 9 > ymax 8"),
        ((0, 0, 0, 0), "empty box: (0, 0, 0, 0) lies entirely outside the 32x24 image"),
        ((40, 5, 50, 10), "empty box: (40, 5, 50, 10) lies entirely outside the 32x24 image"),
    ],
)
def test_inverted_or_empty_box_names_the_file_and_object(
    tmp_path: Path, box: tuple[int, int, int, int], problem: str
) -> None:
    annotations = {**TINY, "img2": [("dog", (1, 1, 5, 5), False, False), ("cat", box, False, False)]}
    root = write_voc(tmp_path, annotations)
    with pytest.raises(DataError) as error:
        open_voc(root, "train", classes=["cat", "dog", "person"])
    message = str(error.value)
    assert f"VOC annotation {root / 'Annotations' / 'img2.xml'}: object 2 of 2 ('cat') has an {problem}" == message


def test_non_finite_coordinate_is_malformed(tmp_path: Path) -> None:
    root = write_voc(tmp_path)
    (root / "Annotations" / "img2.xml").write_text(_xml([("cat", (1, 1, 5, 5), False, False)]).replace(
        "<xmax>5</xmax>", "<xmax>nan</xmax>"))
    with pytest.raises(DataError, match=r"malformed VOC annotation .*img2\.xml: <xmax> is 'nan', not a number"):
        open_voc(root, "train", classes=["cat", "dog", "person"])


def test_missing_image_is_a_bad_image_when_loaded(tmp_path: Path) -> None:
    root = write_voc(tmp_path)
    (root / "JPEGImages" / "img1.jpg").unlink()
    voc = open_voc(root, "train")
    with pytest.raises(BadImageError, match="img1"):
        voc.load(0)


def test_resolve_voc_root_accepts_the_folder_or_its_single_parent(tmp_path: Path) -> None:
    root = write_voc(tmp_path / "VOCdevkit" / "VOC2007")
    assert resolve_voc_root(str(root)) == root
    assert resolve_voc_root(str(tmp_path / "VOCdevkit")) == root
    write_voc(tmp_path / "VOCdevkit" / "VOC2012")
    with pytest.raises(DataError, match="VOC2007, VOC2012"):
        resolve_voc_root(str(tmp_path / "VOCdevkit"))
    with pytest.raises(DataError, match="not found"):
        resolve_voc_root(str(tmp_path / "nowhere"))
    partial = tmp_path / "partial"
    (partial / "JPEGImages").mkdir(parents=True)
    (partial / "Annotations").mkdir()
    with pytest.raises(DataError, match=r"missing ImageSets/Main/ \("):
        resolve_voc_root(str(partial))


def test_resolve_demo_uses_the_data_root_as_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Stand-in for selfsup.data.demo so this checks the wiring, not the demo generator.
    requested: list[object] = []

    def ensure_demo(cache_dir: Path | None = None) -> Path:
        requested.append(cache_dir)
        return tmp_path / "demo-v1"

    monkeypatch.setitem(sys.modules, "selfsup.data.demo", types.SimpleNamespace(ensure_demo=ensure_demo))
    assert resolve_voc_root("demo", data_root=str(tmp_path / "cache")) == tmp_path / "demo-v1" / "voc"
    assert requested == [tmp_path / "cache"]


def test_demo_voc_opens_for_every_split() -> None:
    # The real demo set, from the user's demo cache (generated there on first use).
    root = resolve_voc_root("demo")
    splits = {split: open_voc(root, split) for split in ("train", "val", "trainval", "test")}
    assert voc_classes(root) == sorted(DEMO_CLASSES)
    assert [len(splits[s]) for s in ("train", "val", "test")] == [200, 50, 150]
    assert splits["trainval"].ids == splits["train"].ids + splits["val"].ids
    for voc in splits.values():
        labels = voc.image_labels()
        assert voc.classes == sorted(DEMO_CLASSES) and labels.shape == (len(voc), 10)
        assert ((labels == 1).sum(axis=0) > 0).all()  # every class has positives in every split
        boxes = [obj.box for i in range(len(voc)) for obj in voc.objects(i)]
        assert all(xmin < xmax and ymin < ymax for xmin, ymin, xmax, ymax in boxes)
    trainval = splits["trainval"].image_labels()
    assert (trainval == 0).any()  # difficult-only images exist and are kept apart
    assert splits["test"].load(0).mode == "RGB"


@pytest.mark.skipif(not (SHARED_DATA / "fruits_voc.tar.gz").exists(), reason="shared fruits VOC archive absent")
def test_real_fruits_set_from_shared_data(tmp_path: Path) -> None:
    with tarfile.open(SHARED_DATA / "fruits_voc.tar.gz") as archive:
        # Annotations and split lists only, plus one image: enough to exercise the reader.
        members = [m for m in archive if "/JPEGImages/" not in m.name or m.name.endswith("/apple_1.jpg")]
        archive.extractall(tmp_path, members=members, filter="data")
    root = resolve_voc_root(str(tmp_path))
    assert root.name == "fruits_voc" and voc_classes(root) == ["apple", "banana", "orange"]
    trainval, test = open_voc(root, "trainval"), open_voc(root, "test")
    assert (len(trainval), len(test)) == (240, 60)
    assert (trainval.image_labels() == 1).any(axis=0).all()
    assert trainval.load(trainval.ids.index("apple_1")).mode == "RGB"
