"""load_rgb: every PIL mode ends as 8-bit RGB, and every broken file as BadImageError."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from selfsup.data.images import IMAGE_EXTENSIONS, BadImageError, load_rgb
from selfsup.errors import DataError


def _noise_rgb(width: int = 64, height: int = 48, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8), mode="RGB")


def _assert_rgb(img: Image.Image, size: tuple[int, int]) -> np.ndarray:
    assert img.mode == "RGB"
    assert img.size == size
    pixels = np.asarray(img)
    assert pixels.dtype == np.uint8
    return pixels


def test_extensions_are_lower_case_with_dot() -> None:
    assert {".jpg", ".jpeg", ".png", ".webp", ".pgm"} <= IMAGE_EXTENSIONS
    assert all(ext.startswith(".") and ext == ext.lower() for ext in IMAGE_EXTENSIONS)


def test_grayscale_l(tmp_path: Path) -> None:
    path = tmp_path / "gray.png"
    Image.new("L", (5, 4), 77).save(path)
    pixels = _assert_rgb(load_rgb(path), (5, 4))
    assert (pixels == 77).all()


def test_one_bit(tmp_path: Path) -> None:
    path = tmp_path / "bits.png"
    img = Image.new("1", (8, 2), 0)
    img.putpixel((3, 1), 1)
    img.save(path)
    pixels = _assert_rgb(load_rgb(path), (8, 2))
    assert pixels[1, 3].tolist() == [255, 255, 255]
    assert pixels[0, 0].tolist() == [0, 0, 0]


def test_palette_with_transparency_is_composited_over_white(tmp_path: Path) -> None:
    path = tmp_path / "palette.png"
    img = Image.new("P", (4, 4), 0)
    img.putpalette([0, 0, 0, 200, 10, 20] + [0] * (254 * 3))
    img.putpixel((0, 0), 1)
    img.save(path, transparency=0)  # palette entry 0 (black) is fully transparent
    with Image.open(path) as reopened:
        assert reopened.mode == "P" and "transparency" in reopened.info
    pixels = _assert_rgb(load_rgb(path), (4, 4))
    assert pixels[0, 0].tolist() == [200, 10, 20]
    assert pixels[3, 3].tolist() == [255, 255, 255]


def test_la(tmp_path: Path) -> None:
    path = tmp_path / "la.png"
    img = Image.new("LA", (3, 1), (0, 255))
    img.putpixel((1, 0), (0, 0))  # transparent black
    img.putpixel((2, 0), (0, 128))  # half-transparent black
    img.save(path)
    pixels = _assert_rgb(load_rgb(path), (3, 1))
    assert pixels[0, 0].tolist() == [0, 0, 0]
    assert pixels[0, 1].tolist() == [255, 255, 255]
    assert abs(int(pixels[0, 2, 0]) - 127) <= 1


def test_rgba(tmp_path: Path) -> None:
    path = tmp_path / "rgba.png"
    img = Image.new("RGBA", (2, 1), (10, 20, 30, 255))
    img.putpixel((1, 0), (10, 20, 30, 0))
    img.save(path)
    pixels = _assert_rgb(load_rgb(path), (2, 1))
    assert pixels[0, 0].tolist() == [10, 20, 30]
    assert pixels[0, 1].tolist() == [255, 255, 255]


def test_cmyk_jpeg(tmp_path: Path) -> None:
    path = tmp_path / "cmyk.jpg"
    img = Image.new("CMYK", (32, 16), (0, 0, 0, 0))  # left half: white
    img.paste((255, 0, 0, 0), (16, 0, 32, 16))  # right half: pure cyan
    img.save(path, quality=95)
    with Image.open(path) as reopened:
        assert reopened.mode == "CMYK"
    pixels = _assert_rgb(load_rgb(path), (32, 16)).astype(int)
    assert np.abs(pixels[8, 4] - [255, 255, 255]).max() <= 6
    assert np.abs(pixels[8, 28] - [0, 255, 255]).max() <= 6


def test_cmyk_key_darkens_multiplicatively(tmp_path: Path) -> None:
    path = tmp_path / "cmyk.tif"  # lossless, so exact values can be checked
    Image.new("CMYK", (2, 2), (128, 0, 0, 128)).save(path)
    pixels = _assert_rgb(load_rgb(path), (2, 2))
    assert pixels[0, 0].tolist() == [63, 127, 127]  # (255-C)(255-K)/255, not clipped 255-(C+K)


def test_sixteen_bit_png_is_scaled_not_clipped(tmp_path: Path) -> None:
    path = tmp_path / "deep.png"
    values = np.array([[0, 257, 32768, 65535]], dtype=np.uint16)
    Image.fromarray(values).save(path)
    with Image.open(path) as reopened:
        assert reopened.mode.startswith("I")
    pixels = _assert_rgb(load_rgb(path), (4, 1))
    assert pixels[0, :, 0].tolist() == [0, 1, 128, 255]
    assert (pixels[..., 0] == pixels[..., 2]).all()


def test_float_image(tmp_path: Path) -> None:
    path = tmp_path / "float.tif"
    Image.fromarray(np.array([[0.0, 0.5, 1.0]], dtype=np.float32), mode="F").save(path)
    pixels = _assert_rgb(load_rgb(path), (3, 1))
    assert pixels[0, :, 0].tolist() == [0, 128, 255]


@pytest.mark.parametrize(
    ("orientation", "corner"),
    [
        (6, "top_right"),  # stored image must be turned 90 degrees clockwise for display
        (8, "bottom_left"),  # ... 90 degrees counter-clockwise
    ],
)
def test_exif_orientation_is_applied(tmp_path: Path, orientation: int, corner: str) -> None:
    path = tmp_path / f"rotated{orientation}.jpg"
    img = Image.new("RGB", (60, 30), (0, 0, 255))
    img.paste((255, 0, 0), (0, 0, 10, 10))  # red marker at the stored top-left corner
    exif = img.getexif()
    exif[0x0112] = orientation
    img.save(path, exif=exif, quality=95)
    pixels = _assert_rgb(load_rgb(path), (30, 60)).astype(int)
    red = np.array([255, 0, 0])
    at = {"top_right": pixels[4, -5], "bottom_left": pixels[-5, 4], "top_left": pixels[4, 4]}
    assert np.abs(at[corner] - red).max() <= 30
    assert np.abs(at["top_left"] - red).max() > 100


@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
def test_truncated_file_is_bad(tmp_path: Path, fmt: str) -> None:
    path = tmp_path / f"cut.{fmt.lower()}"
    full = tmp_path / f"full.{fmt.lower()}"
    _noise_rgb().save(full, fmt)
    data = full.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(BadImageError) as caught:
        load_rgb(path)
    assert str(path) in str(caught.value)
    assert caught.value.path == str(path)


def test_zero_byte_file_is_bad(tmp_path: Path) -> None:
    path = tmp_path / "empty.png"
    path.write_bytes(b"")
    with pytest.raises(BadImageError, match="empty"):
        load_rgb(path)


def test_text_file_with_image_extension_is_bad(tmp_path: Path) -> None:
    path = tmp_path / "x.jpg"
    path.write_text("this is not a picture\nsecond line\n")
    with pytest.raises(BadImageError) as caught:
        load_rgb(path)
    message = str(caught.value)
    assert str(path) in message
    assert "\n" not in message
    assert caught.value.reason
    copy = pickle.loads(pickle.dumps(caught.value))  # survives the trip back from a worker process
    assert (copy.path, copy.reason, str(copy)) == (caught.value.path, caught.value.reason, message)
    assert isinstance(copy, DataError)  # the console scripts report it as a user error, in one line


def test_missing_file_is_bad(tmp_path: Path) -> None:
    with pytest.raises(BadImageError):
        load_rgb(tmp_path / "gone.jpg")


def test_result_is_independent_of_the_file(tmp_path: Path) -> None:
    path = tmp_path / "plain.jpg"
    _noise_rgb().save(path)
    img = load_rgb(path)
    path.unlink()  # fully decoded: pixels stay usable after the file is gone
    assert np.asarray(img).shape == (48, 64, 3)


def test_gather_windows_cuts_what_slicing_cuts_for_any_layout_and_dtype():
    from selfsup.data.images import gather_windows

    gen = torch.Generator().manual_seed(0)
    for dtype in (torch.uint8, torch.float32):
        images = (torch.rand(5, 3, 23, 31, generator=gen) * 255).to(dtype)
        for layout in (images, images.contiguous(memory_format=torch.channels_last)):
            plane = torch.randint(0, 15, (4, 6), generator=gen)
            top = torch.randint(0, 23 - 7 + 1, (4, 6), generator=gen)
            left = torch.randint(0, 31 - 7 + 1, (4, 1), generator=gen)  # broadcast along the last dim
            windows = gather_windows(layout, plane, top, left, 7)
            assert windows.shape == (4, 6, 7, 7) and windows.dtype == dtype
            planes = images.flatten(0, 1)
            for i in range(4):
                for j in range(6):
                    y, x = int(top[i, j]), int(left[i, 0])
                    assert torch.equal(windows[i, j], planes[plane[i, j], y : y + 7, x : x + 7])
    corner = torch.arange(2 * 4 * 4).view(2, 4, 4)  # the window ending at the last element of memory
    assert torch.equal(gather_windows(corner, torch.tensor([1]), torch.tensor([2]), torch.tensor([2]), 2)[0],
                       corner[1, 2:, 2:])
