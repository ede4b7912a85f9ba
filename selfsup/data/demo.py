"""The built-in demo data set: procedurally drawn objects on isotropic clutter, built, cached and verified.

It is what every command uses when no real data set is given (``--data demo``).
Everything is drawn with PIL + numpy from fixed seeds, so the set is identical
on every machine with the same Pillow/zlib/libjpeg, needs no download, and is
rebuilt automatically when the on-disk cache is missing or damaged.

This module writes and checks the files (``ensure_demo``, ``verify_demo``,
``python -m selfsup.data.demo``); the images come from `selfsup.data.demo_scenes`
(backgrounds and layouts) and `selfsup.data.demo_draw` (the objects), the contact
sheet from `selfsup.data.demo_preview`.

Layout of ``ensure_demo()``'s folder::

    manifest.json
    classification/{train,val,test}/<class>/<NNNNN>.png    64x64 RGB
    voc/JPEGImages/<id>.jpg, voc/Annotations/<id>.xml       PASCAL VOC style
    voc/ImageSets/Main/{split}.txt, <class>_{split}.txt
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import shutil
import sys
import time
import uuid
import xml.etree.ElementTree as ET
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_all_start_methods, get_context
from pathlib import Path

import numpy as np
import PIL
from PIL import Image

from selfsup.data import cache_root
from selfsup.data.demo_draw import DEMO_CLASSES
from selfsup.data.demo_preview import render_preview
from selfsup.data.demo_scenes import (
    CLASSIFICATION_COUNTS,
    IMAGE_SIZE,
    SEED,
    VOC_COUNTS,
    VocObject,
    _voc_ids,
    render_classification_image,
    render_voc_image,
)

DEMO_VERSION: str = "demo-v1"
JPEG_QUALITY = 92
# Leftover temp folders older than this belong to killed generations, not live ones.
STALE_TEMP_S = 3600.0


# --------------------------------------------------------------------------- generation


def _voc_xml(image_id: str, size: tuple[int, int], objects: Sequence[VocObject]) -> bytes:
    root = ET.Element("annotation")
    ET.SubElement(root, "folder").text = "voc"
    ET.SubElement(root, "filename").text = f"{image_id}.jpg"
    source = ET.SubElement(root, "source")
    ET.SubElement(source, "database").text = f"selfsup {DEMO_VERSION}"
    size_el = ET.SubElement(root, "size")
    for tag, value in zip(("width", "height", "depth"), (*size, 3)):
        ET.SubElement(size_el, tag).text = str(value)
    ET.SubElement(root, "segmented").text = "0"
    for obj in objects:
        el = ET.SubElement(root, "object")
        ET.SubElement(el, "name").text = obj.name
        ET.SubElement(el, "pose").text = "Unspecified"
        ET.SubElement(el, "truncated").text = str(int(obj.truncated))
        ET.SubElement(el, "difficult").text = str(int(obj.difficult))
        bb = ET.SubElement(el, "bndbox")
        for tag, value in zip(("xmin", "ymin", "xmax", "ymax"), obj.box):
            ET.SubElement(bb, tag).text = str(value)
    ET.indent(root, space="\t")
    return ET.tostring(root, encoding="utf-8") + b"\n"


def _png_bytes(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG", compress_level=6)
    return buf.getvalue()


def _jpeg_bytes(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=JPEG_QUALITY)
    return buf.getvalue()


FileRecord = tuple[str, int, str]  # relative path, size, sha256


def _write(root: Path, rel: str, data: bytes) -> FileRecord:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return rel, len(data), hashlib.sha256(data).hexdigest()


def _classification_job(root: str, split: str, cls: str) -> tuple[list[FileRecord], dict]:
    files = [
        _write(Path(root), f"classification/{split}/{cls}/{i:05d}.png", _png_bytes(render_classification_image(split, cls, i)))
        for i in range(CLASSIFICATION_COUNTS[split])
    ]
    return files, {}


def _voc_job(root: str, indices: Sequence[int]) -> tuple[list[FileRecord], dict[str, list[VocObject]]]:
    files, annotations = [], {}
    for index in indices:
        image_id = f"{index + 1:06d}"
        img, objects = render_voc_image(index)
        files.append(_write(Path(root), f"voc/JPEGImages/{image_id}.jpg", _jpeg_bytes(img)))
        files.append(_write(Path(root), f"voc/Annotations/{image_id}.xml", _voc_xml(image_id, img.size, objects)))
        annotations[image_id] = objects
    return files, annotations


def _jobs(root: Path) -> list[tuple[Callable, tuple]]:
    """All rendering work, biggest jobs first so that two workers finish together."""
    total_voc = sum(VOC_COUNTS.values())
    chunk = 50
    big = [(_classification_job, (str(root), "train", cls)) for cls in DEMO_CLASSES]
    voc = [(_voc_job, (str(root), range(s, min(s + chunk, total_voc)))) for s in range(0, total_voc, chunk)]
    small = [(_classification_job, (str(root), split, cls)) for split in ("val", "test") for cls in DEMO_CLASSES]
    return big + voc + small


def _image_sets(root: Path, annotations: dict[str, list[VocObject]]) -> list[FileRecord]:
    ids = _voc_ids()
    ids["trainval"] = ids["train"] + ids["val"]
    records = []
    for split in ("train", "val", "trainval", "test"):
        records.append(_write(root, f"voc/ImageSets/Main/{split}.txt", "".join(f"{i}\n" for i in ids[split]).encode()))
        for cls in DEMO_CLASSES:
            lines = []
            for image_id in ids[split]:
                mine = [o for o in annotations[image_id] if o.name == cls]
                label = -1 if not mine else (1 if any(not o.difficult for o in mine) else 0)
                lines.append(f"{image_id} {label:2d}\n")
            records.append(_write(root, f"voc/ImageSets/Main/{cls}_{split}.txt", "".join(lines).encode()))
    return records


def _listing_digest(entries: Sequence[tuple[str, int]]) -> str:
    h = hashlib.sha256()
    for rel, size in sorted(entries):
        h.update(f"{rel}\t{size}\n".encode())
    return h.hexdigest()


def _scan(root: Path) -> list[tuple[str, int]]:
    entries = []
    for top in ("classification", "voc"):
        for dirpath, _, filenames in os.walk(root / top):
            for name in filenames:
                path = Path(dirpath, name)
                entries.append((path.relative_to(root).as_posix(), path.stat().st_size))
    return entries


def _generate(root: Path, workers: int) -> None:
    """Render the whole set into `root` (an empty folder) and write its manifest last."""
    files: list[FileRecord] = []
    annotations: dict[str, list[VocObject]] = {}
    jobs = _jobs(root)
    # Only with fork: spawn would re-import the caller's __main__, which may not be import-safe.
    if workers > 1 and "fork" in get_all_start_methods():
        with ProcessPoolExecutor(workers, mp_context=get_context("fork")) as pool:
            futures = [pool.submit(fn, *args) for fn, args in jobs]
            outputs = [f.result() for f in futures]
    else:
        outputs = [fn(*args) for fn, args in jobs]
    for job_files, job_annotations in outputs:
        files += job_files
        annotations.update(job_annotations)
    files += _image_sets(root, annotations)
    files.sort()
    content = hashlib.sha256("".join(f"{rel}\t{size}\t{digest}\n" for rel, size, digest in files).encode())
    objects = [o for objs in annotations.values() for o in objs]
    manifest = {
        "version": DEMO_VERSION,
        "seed": SEED,
        # Bytes are reproducible for the same Pillow/numpy (and their zlib/libjpeg) builds.
        "generated_with": {"pillow": PIL.__version__, "numpy": np.__version__},
        "classes": list(DEMO_CLASSES),
        "classification": {
            "image_size": IMAGE_SIZE,
            "counts": {split: {cls: n for cls in DEMO_CLASSES} for split, n in CLASSIFICATION_COUNTS.items()},
        },
        "voc": {
            "images": {**VOC_COUNTS, "trainval": VOC_COUNTS["train"] + VOC_COUNTS["val"]},
            "objects": {cls: sum(o.name == cls for o in objects) for cls in DEMO_CLASSES},
            "difficult": sum(o.difficult for o in objects),
            "truncated": sum(o.truncated for o in objects),
        },
        "num_files": len(files),
        "listing_sha256": _listing_digest([(rel, size) for rel, size, _ in files]),
        "content_sha256": content.hexdigest(),
    }
    (root / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")


def default_cache_dir() -> Path:
    """$SELFSUP_DEMO_DIR, else the cache root (`selfsup.data.cache_root`)."""
    if os.environ.get("SELFSUP_DEMO_DIR"):
        return Path(os.environ["SELFSUP_DEMO_DIR"]).expanduser()
    return cache_root()


def verify_demo(path: str | Path) -> bool:
    """Cheap integrity check: manifest readable, right version, and the same
    files with the same sizes as when generated (no content hashing)."""
    root = Path(path)
    try:
        manifest = json.loads((root / "manifest.json").read_text())
        if manifest["version"] != DEMO_VERSION:
            return False
        entries = _scan(root)
        return len(entries) == manifest["num_files"] and _listing_digest(entries) == manifest["listing_sha256"]
    except (OSError, ValueError, KeyError, TypeError):
        return False


def _remove_tree(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def _remove_stale(root: Path) -> None:
    """Delete leftovers of killed generations (old temp and trash folders)."""
    now = time.time()
    for entry in root.glob(f".{DEMO_VERSION}.*"):
        try:
            if now - entry.stat().st_mtime > STALE_TEMP_S:
                _remove_tree(entry)
        except OSError:
            pass  # another process removed it first


def ensure_demo(cache_dir: str | Path | None = None, *, force: bool = False) -> Path:
    """Return `<cache_dir>/<DEMO_VERSION>`, generating it if missing, damaged or `force`d.

    Generation happens in a private temp folder that is renamed into place when
    complete, so a killed run never leaves a folder that passes `verify_demo`,
    and concurrent callers (e.g. DDP ranks) cannot corrupt each other: the
    first rename wins and later finishers discard their identical copy.
    """
    root = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    target = root / DEMO_VERSION
    if root.is_dir():
        _remove_stale(root)
    if not force and verify_demo(target):
        return target
    root.mkdir(parents=True, exist_ok=True)
    tmp = root / f".{DEMO_VERSION}.tmp-{uuid.uuid4().hex}"
    tmp.mkdir()
    try:
        cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        # about a minute of silence otherwise: say what is happening, once per machine
        print(f"generating the demo data set in {target} (once; about a minute on 2 cores) ...", file=sys.stderr,
              flush=True)
        started = time.perf_counter()
        _generate(tmp, workers=min(2, cpus))
        print(f"demo data set ready ({time.perf_counter() - started:.0f} s)", file=sys.stderr, flush=True)
        if os.path.lexists(target) and (force or not verify_demo(target)):
            trash = root / f".{DEMO_VERSION}.old-{uuid.uuid4().hex}"
            try:
                os.rename(target, trash)
            except FileNotFoundError:
                pass  # a concurrent caller moved it away already
            else:
                _remove_tree(trash)
        try:
            os.rename(tmp, target)
        except OSError:
            # Lost the race: someone installed a copy between our check and rename.
            if not verify_demo(target):
                raise
    finally:
        if tmp.exists():
            _remove_tree(tmp)
    return target


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m selfsup.data.demo", description="Generate (if needed) the built-in demo data set and preview it."
    )
    parser.add_argument(
        "--cache-dir", type=Path, default=None,
        help="where the versioned folder lives (default: $SELFSUP_DEMO_DIR, else $SELFSUP_CACHE_DIR, $XDG_CACHE_HOME/selfsup "
             "or ~/.cache/selfsup)",
    )
    parser.add_argument("--force", action="store_true", help="regenerate even if the cache verifies")
    parser.add_argument("--preview", type=Path, default=None, help="write a PNG contact sheet here")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    path = ensure_demo(args.cache_dir, force=args.force)
    print(f"demo set ready at {path} ({time.perf_counter() - start:.1f}s)")
    if args.preview is not None:
        print(f"preview written to {render_preview(path, args.preview)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
