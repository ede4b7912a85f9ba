"""PASCAL VOC layout reader: image ids per split, object annotations and image-level labels.

A VOC folder holds ``JPEGImages/<id>.jpg``, ``Annotations/<id>.xml`` and
``ImageSets/Main/<split>.txt`` (one id per line). `open_voc` reads one split of it as a `VocSplit`,
an `ImageSource` whose images carry several objects each, hence several labels: `image_labels`
gives the VOC classification targets (1 / 0 = difficult only / -1 absent), `objects` the boxes.

Every problem with the files (missing folder or split, malformed XML, unknown class, an inverted
box or one outside its image) raises `DataError` naming the file, when the split is opened; a box
that extends past its image (per the file's <size>) is clipped to it and counted in
`VocSplit.clipped_boxes`. Unreadable images raise `BadImageError` when loaded, as elsewhere.
"""

from __future__ import annotations

import logging
import math
import os
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from selfsup.data.images import IMAGE_EXTENSIONS, DecodeSize, load_rgb
from selfsup.errors import DataError

log = logging.getLogger(__name__)

VOC_SUBFOLDERS = ("JPEGImages", "Annotations", os.path.join("ImageSets", "Main"))


@dataclass(frozen=True)
class VocObject:
    label: int  # index into the split's classes
    # xmin, ymin, xmax, ymax in 0-based pixel-edge coordinates, as torchvision detection models
    # take them: VOC's 1-based inclusive pixel indices with 1 subtracted from xmin and ymin.
    box: tuple[float, float, float, float]
    difficult: bool
    truncated: bool


@dataclass(frozen=True)
class _RawObject:
    name: str
    box: tuple[float, float, float, float]
    difficult: bool
    truncated: bool
    clipped: bool  # the file's box extended past the image and was clipped to it


def _missing_subfolders(folder: Path) -> list[str]:
    return [name for name in VOC_SUBFOLDERS if not (folder / name).is_dir()]


def resolve_voc_root(spec: str, data_root: str | None = None) -> Path:
    """The VOC folder named by ``spec``: ``demo`` (the demo set's VOC part, cached under
    ``data_root`` if given) or a folder holding JPEGImages/, Annotations/ and ImageSets/Main/.

    A folder whose only VOC-layout child is one sub-folder (VOCdevkit holding VOC2007) resolves to
    that child; with several such children the user must pick one.
    """
    if spec == "demo":
        # Imported here: the demo module generates its images on first use, which only the demo needs.
        from selfsup.data.demo import ensure_demo

        cache_dir = None if data_root is None else Path(os.path.expanduser(data_root))
        return Path(ensure_demo(cache_dir=cache_dir)) / "voc"
    folder = Path(os.path.expanduser(spec))
    if not folder.exists():
        raise DataError(f"VOC folder not found: {spec}")
    if not folder.is_dir():
        raise DataError(f"VOC path is not a folder: {spec}")
    missing = _missing_subfolders(folder)
    if not missing:
        return folder
    children = sorted(child for child in folder.iterdir() if child.is_dir() and not _missing_subfolders(child))
    if len(children) == 1:
        return children[0]
    if children:
        names = ", ".join(child.name for child in children)
        raise DataError(f"{folder} holds several VOC data sets ({names}); pass one of them")
    shown = ", ".join(f"{name}/" for name in missing)
    raise DataError(
        f"{folder} is not a VOC folder: missing {shown} "
        "(a VOC folder holds JPEGImages/, Annotations/ and ImageSets/Main/)"
    )


def _split_file(root: Path, split: str) -> Path:
    return root / "ImageSets" / "Main" / f"{split}.txt"


def _read_ids(root: Path, split: str) -> list[str]:
    path = _split_file(root, split)
    if not path.is_file():
        main = root / "ImageSets" / "Main"
        stems = {p.stem for p in main.glob("*.txt")} if main.is_dir() else set()
        # Per-class files (<class>_<split>.txt) repeat a split's ids with a flag; list only splits.
        splits = sorted(s for s in stems if not any(s.endswith(f"_{other}") for other in stems))
        listed = ", ".join(splits) if splits else "none"
        raise DataError(f"VOC split file not found: {path} (available splits: {listed})")
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"cannot read VOC split file {path}: {exc}") from exc
    # First token only: some tools write "<id> <flag>" lines into split files.
    ids = [line.split()[0] for line in lines if line.strip()]
    if not ids:
        raise DataError(f"VOC split file {path} lists no image ids")
    return ids


def _text(element: ET.Element, tag: str, path: Path) -> str:
    child = element.find(tag)
    if child is None or child.text is None or not child.text.strip():
        raise DataError(f"malformed VOC annotation {path}: an object lacks <{tag}>")
    return child.text.strip()


def _flag(element: ET.Element, tag: str, path: Path) -> bool:
    # Absent flags are common in VOC-format exports from labelling tools; absent means "no".
    child = element.find(tag)
    text = "" if child is None or child.text is None else child.text.strip().lower()
    if text in ("", "0", "false"):
        return False
    if text in ("1", "true"):
        return True
    raise DataError(f"malformed VOC annotation {path}: <{tag}> is {text!r}, expected 0 or 1")


def _coordinate(box: ET.Element, tag: str, path: Path) -> float:
    text = _text(box, tag, path)
    try:
        value = float(text)  # real-world files sometimes hold fractional coordinates
    except ValueError:
        value = math.nan
    # float() also takes "nan" and "inf", which would slip past every bound check below.
    if not math.isfinite(value):
        raise DataError(f"malformed VOC annotation {path}: <{tag}> is {text!r}, not a number")
    return value


def _image_size(annotation: ET.Element, path: Path) -> tuple[float, float] | None:
    """<size> width and height, or None when absent or zero (exporters write 0 for an unknown size)."""
    values = []
    for tag in ("width", "height"):
        text = (annotation.findtext(f"size/{tag}") or "").strip()
        if not text:
            return None
        try:
            values.append(float(text))
        except ValueError:
            raise DataError(f"malformed VOC annotation {path}: <size><{tag}> is {text!r}, not a number") from None
    width, height = values
    return (width, height) if width > 0 and height > 0 else None


def _checked_box(
    box: tuple[float, float, float, float], size: tuple[float, float] | None, where: str
) -> tuple[tuple[float, float, float, float], bool]:
    """``box`` (VOC's 1-based inclusive pixel indices) clipped to the pixels [1, width] x [1, height]
    of the image, and whether clipping changed it; inverted boxes and boxes without a pixel inside
    the image are DataErrors. Without a known size only the lower bound 1 applies."""
    xmin, ymin, xmax, ymax = box
    for axis, low, high in (("x", xmin, xmax), ("y", ymin, ymax)):
        if low > high:
            raise DataError(f"{where} has an inverted box: {axis}min {low:g} > {axis}max {high:g}")
    width, height = size if size is not None else (float("inf"), float("inf"))
    # Inclusive indices: a box with xmin <= xmax covers at least one pixel column, so after these
    # checks clipping cannot leave it empty.
    if xmax < 1 or ymax < 1 or xmin > width or ymin > height:
        bounds = f"the {width:g}x{height:g} image" if size is not None else "the image"
        raise DataError(
            f"{where} has an empty box: ({xmin:g}, {ymin:g}, {xmax:g}, {ymax:g}) lies entirely outside {bounds}"
        )
    clipped = (max(xmin, 1.0), max(ymin, 1.0), min(xmax, width), min(ymax, height))
    return clipped, clipped != box


def _parse_annotation(path: Path) -> list[_RawObject]:
    try:
        tree = ET.parse(path)
    except FileNotFoundError:
        raise DataError(f"VOC annotation not found: {path}") from None
    except (ET.ParseError, OSError) as exc:
        raise DataError(f"malformed VOC annotation {path}: {exc}") from None
    size = _image_size(tree.getroot(), path)
    elements = list(tree.getroot().iter("object"))
    objects = []
    for number, element in enumerate(elements, start=1):
        name = _text(element, "name", path)
        box = element.find("bndbox")
        if box is None:
            raise DataError(f"malformed VOC annotation {path}: an object lacks <bndbox>")
        xmin, ymin, xmax, ymax = (_coordinate(box, tag, path) for tag in ("xmin", "ymin", "xmax", "ymax"))
        where = f"VOC annotation {path}: object {number} of {len(elements)} ({name!r})"
        (xmin, ymin, xmax, ymax), clipped = _checked_box((xmin, ymin, xmax, ymax), size, where)
        objects.append(
            _RawObject(
                name=name,
                box=(xmin - 1.0, ymin - 1.0, xmax, ymax),
                difficult=_flag(element, "difficult", path),
                truncated=_flag(element, "truncated", path),
                clipped=clipped,
            )
        )
    return objects


def voc_classes(root: str | os.PathLike) -> list[str]:
    """Sorted object names over the trainval annotations, or over every annotation file when the
    folder has no trainval split: one class list for all splits of a data set, so class indices
    agree between the split an SVM is trained on and the one it is tested on."""
    root = Path(root)
    if _split_file(root, "trainval").is_file():
        paths = [root / "Annotations" / f"{image_id}.xml" for image_id in _read_ids(root, "trainval")]
    else:
        # Hidden files: macOS "._<id>.xml" resource forks are not annotations.
        paths = sorted(p for p in (root / "Annotations").glob("*.xml") if not p.name.startswith("."))
    names = {obj.name for path in paths for obj in _parse_annotation(path)}
    if not names:
        raise DataError(f"no annotated objects in {root / 'Annotations'}: cannot derive the VOC class list")
    return sorted(names)


class VocSplit:
    """One split of a VOC folder; annotations are parsed once, when it is opened.

    ``clipped_boxes`` counts the boxes that extended past their image and were clipped to it.
    """

    def __init__(
        self,
        root: Path,
        split: str,
        ids: list[str],
        classes: list[str],
        objects: list[list[VocObject]],
        clipped_boxes: int = 0,
    ) -> None:
        self.root = root
        self.split = split
        self.ids = ids
        self.classes = classes
        self._objects = objects
        self.clipped_boxes = clipped_boxes

    def __len__(self) -> int:
        return len(self.ids)

    def path(self, index: int) -> str:
        image_id = self.ids[index]
        folder = self.root / "JPEGImages"
        jpg = folder / f"{image_id}.jpg"
        if jpg.exists():
            return str(jpg)
        # VOC-format exports of other data sets keep the source's image format.
        for extension in sorted(IMAGE_EXTENSIONS):
            candidate = folder / f"{image_id}{extension}"
            if candidate.exists():
                return str(candidate)
        return str(jpg)  # absent: load_rgb reports it as a bad image, named

    def load(self, index: int, decode_size: DecodeSize | None = None) -> Image.Image:
        return load_rgb(self.path(index), decode_size)

    def label(self, index: int) -> int:
        return -1  # multi-label: see image_labels

    def objects(self, index: int) -> list[VocObject]:
        return list(self._objects[index])

    def image_labels(self) -> np.ndarray:
        """N x C int8 VOC classification targets: 1 = a non-difficult object of the class is in the
        image, 0 = only difficult ones (ignored by AP), -1 = none."""
        labels = np.full((len(self.ids), len(self.classes)), -1, dtype=np.int8)
        for row, objects in enumerate(self._objects):
            for obj in objects:
                if not obj.difficult:
                    labels[row, obj.label] = 1
                elif labels[row, obj.label] == -1:
                    labels[row, obj.label] = 0
        return labels

    def describe(self) -> str:
        count = len(self.classes)
        classes = f"{count} class{'es' if count != 1 else ''}"
        # Named here because descriptions go into run records, which should show that boxes were changed.
        clipped = f", {self.clipped_boxes:,} boxes clipped to their image" if self.clipped_boxes else ""
        return f"VOC {self.split} of {self.root} ({len(self):,} images, {classes}, multi-label{clipped})"


def open_voc(root: str | os.PathLike, split: str, classes: list[str] | None = None) -> VocSplit:
    """Split ``split`` of the VOC folder ``root`` (see `resolve_voc_root`), with the class list
    ``classes`` or, by default, `voc_classes` of the folder."""
    root = Path(root)
    ids = _read_ids(root, split)
    classes = list(classes) if classes is not None else voc_classes(root)
    index = {name: position for position, name in enumerate(classes)}
    objects = []
    clipped_boxes, first_clipped = 0, None
    for image_id in ids:
        path = root / "Annotations" / f"{image_id}.xml"
        parsed = []
        for raw in _parse_annotation(path):
            if raw.clipped:
                clipped_boxes += 1
                first_clipped = first_clipped or path
            if raw.name not in index:
                known = ", ".join(classes[:10]) + (", ..." if len(classes) > 10 else "")
                raise DataError(
                    f"VOC annotation {path} has class {raw.name!r}, which is not in the class list ({known})"
                )
            parsed.append(VocObject(index[raw.name], raw.box, raw.difficult, raw.truncated))
        objects.append(parsed)
    if clipped_boxes:
        log.warning(
            "VOC %s split of %s: clipped %d box(es) extending past their image to the image (first in %s)",
            split, root, clipped_boxes, first_clipped,
        )
    return VocSplit(root, split, ids, classes, objects, clipped_boxes)
