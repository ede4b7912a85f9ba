"""JPEGs decoded and cropped on the device give the CPU loader's batches: the same rows, labels, bad files and
crop regions (only the resampling filter differs). Run on the CPU here; the CUDA decoder where there is one."""

import numpy as np
import pytest
import torch
from PIL import Image

from selfsup.data.device_decode import (
    DeviceDecodeDataset, batch_images, collate_encoded, crop_on_device, device_decode_loader,
)
from selfsup.data.folders import scan_folder
from selfsup.data.crops import RandomCrop, crop_uniforms
from selfsup.data.loading import EpochBatchSampler, TransformedDataset, train_loader

CUDA = torch.cuda.is_available()


def _smooth(width: int, height: int, phase: float = 0.0) -> np.ndarray:
    y, x = np.mgrid[0:height, 0:width].astype(np.float64)
    channels = [127 + 120 * np.sin(x / 23 + phase), 127 + 120 * np.cos(y / 17 - phase), 127 + 100 * np.sin((x + y) / 31)]
    return np.stack(channels, -1).astype(np.uint8)


def _folder(root):
    """Two classes of JPEGs of mixed sizes, a PNG, a grey JPEG, one whose EXIF says to rotate it, a broken file."""
    for c, sizes in enumerate([[(120, 90), (64, 64), (200, 150)], [(90, 120), (48, 80), (150, 150)]]):
        folder = root / f"class{c}"
        folder.mkdir(parents=True)
        for i, (w, h) in enumerate(sizes):
            Image.fromarray(_smooth(w, h, phase=c + i)).save(folder / f"{i}.jpg", quality=95)
    Image.fromarray(_smooth(70, 50)).save(root / "class0" / "png.png")
    Image.fromarray(_smooth(60, 60)[..., 0]).save(root / "class1" / "grey.jpg", quality=95)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees when shown
    Image.fromarray(_smooth(80, 40)).save(root / "class1" / "rotated.jpg", quality=95, exif=exif)
    (root / "class0" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    return scan_folder(root, layout="classes")


def test_crops_on_the_device_cover_the_regions_the_cpu_crops_cover():
    image = _smooth(200, 150)
    tensor = torch.from_numpy(image).permute(2, 0, 1)
    for size, scale in ((32, (0.5, 1.0)), (160, (0.3, 1.0))):  # a downscale and an upscale
        crop = RandomCrop(size, scale=scale)
        for seed in range(6):
            cpu = crop(Image.fromarray(image), crop_uniforms([seed])[0]).float()
            box, flip = crop.draw(200, 150, crop_uniforms([seed])[0])
            device = crop_on_device(tensor, box, flip, size).float()
            assert device.shape == cpu.shape == (3, size, size)
            assert (device - cpu).abs().mean() < 3  # same region and flip; a box filter against PIL's
            assert (device - cpu.flip(-1)).abs().mean() > 3 or not flip  # a wrong flip would show


def _batches(loader, device, size):
    out = []
    for batch in loader:
        images = batch_images(batch, device, size)
        out.append((images.cpu(), batch.labels, batch.indices, sorted(batch.bad_files)))
    return out


@pytest.mark.parametrize("device", ["cpu"] + (["cuda"] if CUDA else []))
def test_the_device_loader_gives_the_cpu_loaders_batches(tmp_path, device):
    source = _folder(tmp_path)
    crop = RandomCrop(32)
    cpu = _batches(train_loader(source, crop, EpochBatchSampler(len(source), 4, seed=1), workers=0, pin_memory=False),
                   torch.device("cpu"), None)
    on_device = _batches(device_decode_loader(source, crop, EpochBatchSampler(len(source), 4, seed=1), workers=0,
                                              pin_memory=False), torch.device(device), 32)
    assert len(cpu) == len(on_device) == len(source) // 4
    for (images, labels, indices, bad), (d_images, d_labels, d_indices, d_bad) in zip(cpu, on_device):
        assert torch.equal(labels, d_labels) and torch.equal(indices, d_indices) and bad == d_bad
        difference = (images.float() - d_images.float()).abs().mean(dim=(1, 2, 3))
        assert (difference < 3).all(), difference
        for row, index in enumerate(indices.tolist()):
            if not str(source.path(index)).endswith("0.jpg"):
                continue
            assert difference[row] > 0  # decoded as a JPEG on the device: not the worker's PIL crop


def test_files_the_device_does_not_decode_are_cropped_in_the_worker_exactly(tmp_path):
    source = _folder(tmp_path)
    crop = RandomCrop(24)
    names = [str(source.path(i)).rsplit("/", 1)[-1] for i in range(len(source))]
    device_items = DeviceDecodeDataset(source, crop)
    cpu_items = TransformedDataset(source, crop, replace_bad=True)
    for index, name in enumerate(names):
        content, label, bad, current = device_items[(index, 100 + index)]
        image, cpu_label, cpu_bad, cpu_current = cpu_items[(index, 100 + index)]
        assert (label, bad, current) == (cpu_label, cpu_bad, cpu_current)
        if name in ("png.png", "rotated.jpg", "broken.jpg"):  # broken: replaced by the next file, a PNG or JPEG
            if content[0] == "pixels":
                assert torch.equal(content[1], image)
        else:
            assert content[0] == "jpeg", name
    batch = collate_encoded([device_items[(i, i)] for i in range(len(source))])
    assert len(batch.labels) == len(source) and len(batch.jpegs.rows) + len(batch.pixel_rows) == len(source)
    assert batch.bad_files and "broken.jpg" in batch.bad_files[0]


def test_a_jpeg_the_decoder_rejects_is_counted_and_its_row_filled(tmp_path):
    source = _folder(tmp_path)
    items = DeviceDecodeDataset(source, RandomCrop(16))
    jpeg_rows = [i for i in range(len(source)) if items[(i, i)][0][0] == "jpeg"][:3]
    batch = collate_encoded([items[(i, i)] for i in jpeg_rows])
    batch.jpegs.data[1] = batch.jpegs.data[1][:40]  # truncated after its header was read
    (tmp_path / "gone").mkdir()
    batch.jpegs.paths[1] = str(tmp_path / "gone" / "x.jpg")  # and unreadable on the CPU too
    images = batch_images(batch, torch.device("cpu"), 16)
    assert len(batch.bad_files) == 1 and "x.jpg" in batch.bad_files[0]
    assert torch.equal(images[1], images[0])


@pytest.mark.skipif(not CUDA, reason="needs CUDA")
def test_batches_are_pinned_for_asynchronous_copies(tmp_path):
    source = _folder(tmp_path)
    loader = train_loader(source, RandomCrop(16), EpochBatchSampler(len(source), 4), workers=0, pin_memory=True)
    assert next(iter(loader)).images.is_pinned()
