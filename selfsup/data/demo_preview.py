"""A PNG contact sheet of a generated demo folder (``python -m selfsup.data.demo --preview``)."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

from selfsup.data.demo_draw import DEMO_CLASSES
from selfsup.data.demo_scenes import IMAGE_SIZE, _voc_ids


def render_preview(path: str | Path, out: str | Path, per_class: int = 8, detections: int = 3) -> Path:
    """Write a PNG contact sheet of an existing demo folder: one row per class
    (train images) and a row of multi-object detection images with their boxes
    (thin boxes mark difficult objects)."""
    root, out = Path(path), Path(out)
    cell, label_w, gap, det_h = IMAGE_SIZE, 72, 2, 150
    font = ImageFont.load_default()
    width = label_w + per_class * (cell + gap)
    grid_h = len(DEMO_CLASSES) * (cell + gap)
    sheet = Image.new("RGB", (width, grid_h + det_h + 2 * gap), (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    for row, cls in enumerate(DEMO_CLASSES):
        y = row * (cell + gap)
        draw.text((4, y + cell // 2 - 6), cls, fill=(0, 0, 0), font=font)
        for col in range(per_class):
            with Image.open(root / "classification" / "train" / cls / f"{col:05d}.png") as img:
                sheet.paste(img.convert("RGB"), (label_w + col * (cell + gap), y))
    palette = [(255, 60, 60), (60, 230, 60), (80, 150, 255), (255, 210, 0)]
    x, shown_count = 0, 0
    for image_id in _voc_ids()["train"]:
        objects = ET.parse(root / "voc" / "Annotations" / f"{image_id}.xml").findall("object")
        if len(objects) < 2:  # single objects are what the grid above already shows
            continue
        with Image.open(root / "voc" / "JPEGImages" / f"{image_id}.jpg") as img:
            scale = det_h / img.height
            shown = img.convert("RGB").resize((round(img.width * scale), det_h), Image.Resampling.LANCZOS)
        if x + shown.width > width or shown_count == detections:
            break
        d = ImageDraw.Draw(shown)
        for k, obj in enumerate(objects):
            bb = [int(obj.findtext(f"bndbox/{t}")) for t in ("xmin", "ymin", "xmax", "ymax")]
            box = [(bb[0] - 1) * scale, (bb[1] - 1) * scale, bb[2] * scale - 1, bb[3] * scale - 1]
            color = palette[k % len(palette)]
            d.rectangle(box, outline=color, width=1 if obj.findtext("difficult") == "1" else 2)
            label = d.textbbox((box[0] + 2, box[1] + 2), obj.findtext("name"), font=font)
            d.rectangle(label, fill=(0, 0, 0))
            d.text((box[0] + 2, box[1] + 2), obj.findtext("name"), fill=color, font=font)
        sheet.paste(shown, (x, grid_h + gap))
        x += shown.width + 2 * gap
        shown_count += 1
    out.parent.mkdir(parents=True, exist_ok=True)
    # A 256-colour palette keeps the sheet small enough to commit (~150 KB instead of ~550 KB).
    sheet.quantize(256).save(out, optimize=True)
    return out
