"""Tests for the built-in demo data set (selfsup.data.demo, demo_scenes, demo_draw, demo_preview).

The full set is generated twice per session (a timed reference copy, and the
repair of a damaged copy of it, which doubles as the determinism check) and
shared through module-scoped fixtures; the install/race logic is tested with a
cheap fake generator.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from selfsup.data import demo, demo_scenes
from selfsup.data.demo import DEMO_VERSION, default_cache_dir, ensure_demo, verify_demo
from selfsup.data.demo_draw import DEMO_CLASSES
from selfsup.data.demo_preview import render_preview

GENERATION_LIMIT_S = 60.0  # the target is < 30 s on 2 cores; slack for slow CI machines


@pytest.fixture(scope="module")
def generated(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, float]:
    cache = tmp_path_factory.mktemp("demo_cache_a")
    start = time.perf_counter()
    root = ensure_demo(cache)
    return root, time.perf_counter() - start


@pytest.fixture(scope="module")
def demo_root(generated: tuple[Path, float]) -> Path:
    return generated[0]


@pytest.fixture(scope="module")
def second_root(demo_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A damaged copy of the reference set, repaired by ensure_demo: an independent
    second generation, used for the determinism, repair and (restored) damage tests."""
    cache = tmp_path_factory.mktemp("demo_cache_b")
    shutil.copytree(demo_root, cache / DEMO_VERSION)
    root = cache / DEMO_VERSION
    _damage_delete(root)
    _damage_truncate(root)
    _damage_garble_manifest(root)
    assert not verify_demo(root)
    assert ensure_demo(cache) == root
    return root


def _tree_digest(root: Path) -> dict[str, str]:
    return {
        p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def _voc_ids(root: Path, split: str) -> list[str]:
    return (root / "voc" / "ImageSets" / "Main" / f"{split}.txt").read_text().split()


# --------------------------------------------------------------------------- generation


@pytest.mark.slow  # a wall-clock limit: meaningful on an otherwise idle machine only
def test_generation_time(generated: tuple[Path, float]) -> None:
    _, seconds = generated
    assert seconds < GENERATION_LIMIT_S, f"demo generation took {seconds:.1f}s"


def test_public_api(demo_root: Path) -> None:
    assert isinstance(DEMO_VERSION, str) and DEMO_VERSION
    assert len(DEMO_CLASSES) >= 10 and len(set(DEMO_CLASSES)) == len(DEMO_CLASSES)
    assert demo_root.name == DEMO_VERSION
    assert verify_demo(demo_root)


def test_valid_cache_is_reused(demo_root: Path) -> None:
    manifest = demo_root / "manifest.json"
    before = manifest.stat().st_mtime_ns
    start = time.perf_counter()
    assert ensure_demo(demo_root.parent) == demo_root
    assert time.perf_counter() - start < 5.0
    assert manifest.stat().st_mtime_ns == before
    # Nothing but the data set itself is left in the cache directory.
    assert [p.name for p in demo_root.parent.iterdir()] == [DEMO_VERSION]


def test_manifest(demo_root: Path) -> None:
    manifest = json.loads((demo_root / "manifest.json").read_text())
    assert manifest["version"] == DEMO_VERSION
    assert isinstance(manifest["seed"], int)
    assert manifest["classes"] == list(DEMO_CLASSES)
    counts = manifest["classification"]["counts"]
    assert counts == {split: {cls: n for cls in DEMO_CLASSES} for split, n in demo_scenes.CLASSIFICATION_COUNTS.items()}
    assert manifest["voc"]["images"] == {"train": 200, "val": 50, "test": 150, "trainval": 250}
    files = [p for p in demo_root.rglob("*") if p.is_file() and p.name != "manifest.json"]
    assert manifest["num_files"] == len(files)


# --------------------------------------------------------------------------- layout


def test_classification_layout(demo_root: Path) -> None:
    expected = {"train": 500, "val": 100, "test": 100}
    for split, count in expected.items():
        split_dir = demo_root / "classification" / split
        assert sorted(p.name for p in split_dir.iterdir()) == sorted(DEMO_CLASSES)
        for cls in DEMO_CLASSES:
            names = sorted(p.name for p in (split_dir / cls).iterdir())
            assert names == [f"{i:05d}.png" for i in range(count)]
            for name in (names[0], names[-1]):
                with Image.open(split_dir / cls / name) as img:
                    assert img.format == "PNG" and img.mode == "RGB" and img.size == (64, 64)


def test_voc_image_sets(demo_root: Path) -> None:
    ids = {split: _voc_ids(demo_root, split) for split in ("train", "val", "trainval", "test")}
    assert [len(ids[s]) for s in ("train", "val", "trainval", "test")] == [200, 50, 250, 150]
    assert ids["trainval"] == ids["train"] + ids["val"]
    assert not set(ids["trainval"]) & set(ids["test"])
    for image_id in ids["trainval"] + ids["test"]:
        assert (demo_root / "voc" / "JPEGImages" / f"{image_id}.jpg").is_file()
        assert (demo_root / "voc" / "Annotations" / f"{image_id}.xml").is_file()


def _annotation(root: Path, image_id: str) -> ET.Element:
    return ET.parse(root / "voc" / "Annotations" / f"{image_id}.xml").getroot()


def test_voc_annotations(demo_root: Path) -> None:
    flags = {"difficult": 0, "truncated": 0}
    object_counts = []
    for image_id in _voc_ids(demo_root, "trainval") + _voc_ids(demo_root, "test"):
        ann = _annotation(demo_root, image_id)
        assert ann.findtext("filename") == f"{image_id}.jpg"
        width, height = int(ann.findtext("size/width")), int(ann.findtext("size/height"))
        assert int(ann.findtext("size/depth")) == 3
        with Image.open(demo_root / "voc" / "JPEGImages" / f"{image_id}.jpg") as img:
            assert img.format == "JPEG" and img.mode == "RGB" and img.size == (width, height)
        assert 112 <= width <= 160 and 112 <= height <= 160
        objects = ann.findall("object")
        object_counts.append(len(objects))
        for obj in objects:
            assert obj.findtext("name") in DEMO_CLASSES
            assert obj.findtext("pose") == "Unspecified"
            for flag in flags:
                assert obj.findtext(flag) in ("0", "1")
                flags[flag] += obj.findtext(flag) == "1"
            xmin, ymin, xmax, ymax = (int(obj.findtext(f"bndbox/{t}")) for t in ("xmin", "ymin", "xmax", "ymax"))
            assert 1 <= xmin < xmax <= width and 1 <= ymin < ymax <= height
    assert min(object_counts) >= 1 and max(object_counts) <= 4
    assert sum(n > 1 for n in object_counts) > 100, "scenes with several objects should be common"
    assert flags["difficult"] > 0 and flags["truncated"] > 0


def test_voc_class_image_sets_match_annotations(demo_root: Path) -> None:
    main = demo_root / "voc" / "ImageSets" / "Main"
    for split in ("train", "val", "trainval", "test"):
        ids = _voc_ids(demo_root, split)
        objects = {i: _annotation(demo_root, i).findall("object") for i in ids}
        for cls in DEMO_CLASSES:
            rows = [line.split() for line in (main / f"{cls}_{split}.txt").read_text().splitlines()]
            assert [r[0] for r in rows] == ids
            for image_id, label in rows:
                mine = [o for o in objects[image_id] if o.findtext("name") == cls]
                expected = -1 if not mine else (1 if any(o.findtext("difficult") == "0" for o in mine) else 0)
                assert int(label) == expected, (cls, split, image_id)


def test_voc_boxes_are_tight(demo_root: Path) -> None:
    """Boxes hug what is drawn: each is the 1-based bounding box of its object's
    visible pixels, and no pixel the objects changed lies outside every box
    (give or take the 1-px anti-aliased fringe)."""
    for index in range(40):
        background, placed = demo_scenes._voc_scene(index)
        img, objects = demo_scenes.render_voc_image(index)
        ann = _annotation(demo_root, f"{index + 1:06d}")
        assert [(o.name, o.box) for o in objects] == [
            (el.findtext("name"), tuple(int(el.findtext(f"bndbox/{t}")) for t in ("xmin", "ymin", "xmax", "ymax")))
            for el in ann.findall("object")
        ]
        diff = np.abs(np.asarray(img, np.int16) - np.asarray(background.convert("RGB"), np.int16)).max(axis=2)
        covered = np.zeros(diff.shape, bool)
        for obj, (_, visible, _) in zip(objects, demo_scenes._coverage(placed, *img.size)):
            rows, cols = np.nonzero(visible > demo_scenes.BOX_ALPHA)
            assert obj.box == (cols.min() + 1, rows.min() + 1, cols.max() + 1, rows.max() + 1)
            x0, y0, x1, y1 = (v - 1 for v in obj.box)
            covered[max(y0 - 1, 0):y1 + 2, max(x0 - 1, 0):x1 + 2] = True
        assert not ((diff > 40) & ~covered).any(), index


# --------------------------------------------------------------------------- determinism


def test_two_generations_are_identical(demo_root: Path, second_root: Path) -> None:
    """second_root was regenerated from scratch into another folder: same bytes."""
    first = json.loads((demo_root / "manifest.json").read_text())
    second = json.loads((second_root / "manifest.json").read_text())
    assert first == second
    assert _tree_digest(demo_root) == _tree_digest(second_root)


def test_images_render_independently_of_order(demo_root: Path) -> None:
    """Each image is a pure function of its key, so generation can be split across processes."""
    for split, cls, index in [("test", DEMO_CLASSES[-1], 99), ("train", DEMO_CLASSES[0], 0), ("val", DEMO_CLASSES[3], 42)]:
        rendered = np.asarray(demo_scenes.render_classification_image(split, cls, index))
        with Image.open(demo_root / "classification" / split / cls / f"{index:05d}.png") as img:
            assert np.array_equal(rendered, np.asarray(img))


# --------------------------------------------------------------------------- damage


def _some_file(root: Path) -> Path:
    return root / "classification" / "val" / DEMO_CLASSES[1] / "00007.png"


def _some_jpeg(root: Path) -> Path:
    return root / "voc" / "JPEGImages" / "000003.jpg"


def _damage_delete(root: Path) -> None:
    _some_file(root).unlink()


def _damage_truncate(root: Path) -> None:
    path = _some_jpeg(root)
    path.write_bytes(path.read_bytes()[:-100])


def _damage_garble_manifest(root: Path) -> None:
    (root / "manifest.json").write_text('{"version": "demo-v1", "num_fi')


def _damage_remove_manifest(root: Path) -> None:
    (root / "manifest.json").unlink()


def _damage_other_version(root: Path) -> None:
    path = root / "manifest.json"
    manifest = json.loads(path.read_text())
    path.write_text(json.dumps({**manifest, "version": DEMO_VERSION + "-old"}))


def _damage_extra_file(root: Path) -> None:
    (root / "classification" / "train" / DEMO_CLASSES[0] / "99999.png").write_bytes(b"x")


@pytest.mark.parametrize(
    "damage",
    [_damage_delete, _damage_truncate, _damage_garble_manifest, _damage_remove_manifest, _damage_other_version,
     _damage_extra_file],
)
def test_damage_is_detected(second_root: Path, damage) -> None:
    touched = [second_root / "manifest.json", _some_file(second_root), _some_jpeg(second_root)]
    snapshot = {p: p.read_bytes() for p in touched}
    before = set(second_root.rglob("*"))
    try:
        damage(second_root)
        assert not verify_demo(second_root)
    finally:  # restore, so the shared copy stays valid for the other tests
        for path in set(second_root.rglob("*")) - before:
            path.unlink()
        for path, data in snapshot.items():
            path.write_bytes(data)
    assert verify_demo(second_root)


def test_missing_folder_is_not_valid(tmp_path: Path) -> None:
    assert not verify_demo(tmp_path / "nope")
    assert not verify_demo(tmp_path)


def test_damaged_cache_is_regenerated(second_root: Path) -> None:
    assert verify_demo(second_root)
    assert _some_file(second_root).is_file()
    # The damaged folder went to a trash name and was deleted; no temp folders remain.
    assert [p.name for p in second_root.parent.iterdir()] == [DEMO_VERSION]


# --------------------------------------------------------------------------- install logic (fake generator)


def _fake_generate(tag: str):
    """A stand-in for demo._generate that writes a tiny folder verify_demo accepts."""

    def generate(root: Path, workers: int) -> None:
        path = root / "classification" / "train" / "x" / "00000.png"
        path.parent.mkdir(parents=True)
        path.write_bytes(tag.encode())
        entries = [(path.relative_to(root).as_posix(), path.stat().st_size)]
        manifest = {"version": DEMO_VERSION, "tag": tag, "num_files": 1, "listing_sha256": demo._listing_digest(entries)}
        (root / "manifest.json").write_text(json.dumps(manifest))

    return generate


def _tag(root: Path) -> str:
    return json.loads((root / "manifest.json").read_text())["tag"]


def test_interrupted_generation_leaves_nothing_valid(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def crash(root: Path, workers: int) -> None:
        _fake_generate("partial")(root, workers)
        raise KeyboardInterrupt

    monkeypatch.setattr(demo, "_generate", crash)
    with pytest.raises(KeyboardInterrupt):
        ensure_demo(tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_concurrent_finisher_keeps_first_copy(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / DEMO_VERSION

    def racing(root: Path, workers: int) -> None:
        # Another process (e.g. a second DDP rank) installs its copy while we generate.
        _fake_generate("theirs")(target, workers)
        _fake_generate("ours")(root, workers)

    monkeypatch.setattr(demo, "_generate", racing)
    target_parent_before = set(tmp_path.iterdir())
    assert ensure_demo(tmp_path) == target
    assert _tag(target) == "theirs"
    assert set(tmp_path.iterdir()) == target_parent_before | {target}


def test_damaged_target_is_replaced_and_force_regenerates(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / DEMO_VERSION
    target.mkdir()
    (target / "junk.txt").write_text("half-written")
    monkeypatch.setattr(demo, "_generate", _fake_generate("first"))
    assert _tag(ensure_demo(tmp_path)) == "first"
    monkeypatch.setattr(demo, "_generate", _fake_generate("second"))
    assert _tag(ensure_demo(tmp_path)) == "first"  # valid: reused
    assert _tag(ensure_demo(tmp_path, force=True)) == "second"
    assert [p.name for p in tmp_path.iterdir()] == [DEMO_VERSION]


def test_stale_temp_folders_are_cleaned(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    stale = tmp_path / f".{DEMO_VERSION}.tmp-dead"
    fresh = tmp_path / f".{DEMO_VERSION}.tmp-alive"
    stale.mkdir()
    fresh.mkdir()
    old = time.time() - 2 * demo.STALE_TEMP_S
    os.utime(stale, (old, old))
    monkeypatch.setattr(demo, "_generate", _fake_generate("x"))
    ensure_demo(tmp_path)
    assert not stale.exists() and fresh.exists()


def test_default_cache_dir(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("SELFSUP_DEMO_DIR", str(tmp_path / "explicit"))
    monkeypatch.setenv("SELFSUP_CACHE_DIR", str(tmp_path / "root"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert default_cache_dir() == tmp_path / "explicit"
    monkeypatch.delenv("SELFSUP_DEMO_DIR")
    assert default_cache_dir() == tmp_path / "root"  # the one cache root of everything selfsup rebuilds
    monkeypatch.delenv("SELFSUP_CACHE_DIR")
    assert default_cache_dir() == tmp_path / "xdg" / "selfsup"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert default_cache_dir() == tmp_path / "home" / ".cache" / "selfsup"


# --------------------------------------------------------------------------- content


def _mean_rgb(root: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    features, labels = [], []
    for label, cls in enumerate(DEMO_CLASSES):
        for path in sorted((root / "classification" / split / cls).iterdir()):
            with Image.open(path) as img:
                features.append(np.asarray(img, np.float32).mean(axis=(0, 1)))
            labels.append(label)
    return np.stack(features), np.asarray(labels)


def test_class_is_not_decodable_from_mean_colour(demo_root: Path) -> None:
    from sklearn.linear_model import LogisticRegression
    from sklearn.neighbors import NearestCentroid
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    x_train, y_train = _mean_rgb(demo_root, "train")
    x_test, y_test = _mean_rgb(demo_root, "test")
    for clf in (NearestCentroid(), make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000))):
        accuracy = float((clf.fit(x_train, y_train).predict(x_test) == y_test).mean())
        assert accuracy < 0.40, f"{clf}: class decodable from mean colour ({accuracy:.2f})"


def test_backgrounds_have_no_up_direction() -> None:
    """Orientation must come from the objects: a linear classifier on row/column
    colour profiles cannot tell a background from its 90/180-degree rotation."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import cross_val_score

    def profile(img: np.ndarray) -> np.ndarray:
        return img.mean(axis=1).ravel()  # per-row mean colour, top to bottom

    features, labels = [], []
    for seed in range(600):
        img = np.asarray(demo_scenes._background(np.random.default_rng([7, seed]), 64, 64).convert("RGB"), np.float32)
        turns = seed % 3  # 0: upright, 1: 90 degrees, 2: 180 degrees
        features.append(profile(np.rot90(img, k=turns)))
        labels.append(int(turns == 0))
    scores = cross_val_score(LogisticRegression(C=0.1, max_iter=2000), np.stack(features) / 255, labels, cv=5)
    # Chance is 2/3 here (always answer "rotated"); a global gradient would push this towards 1.
    assert scores.mean() < 0.75


def test_images_are_not_flat(demo_root: Path) -> None:
    for cls in DEMO_CLASSES:
        with Image.open(demo_root / "classification" / "test" / cls / "00000.png") as img:
            pixels = np.asarray(img, np.float32)
        assert pixels.std(axis=(0, 1)).mean() > 10.0


# --------------------------------------------------------------------------- preview and CLI


def test_render_preview(demo_root: Path, tmp_path: Path) -> None:
    out = render_preview(demo_root, tmp_path / "preview.png")
    with Image.open(out) as img:
        assert img.width >= 8 * 64 and img.height >= len(DEMO_CLASSES) * 64
    assert out.stat().st_size < 300_000


def test_cli_preview_uses_existing_cache(demo_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "sub" / "preview.png"
    assert demo.main(["--cache-dir", str(demo_root.parent), "--preview", str(out)]) == 0
    assert out.is_file()
    assert str(demo_root) in capsys.readouterr().out
