"""Detection transfer: detector builds, freezing, BatchNorm handling, rescaling, training items and the
learning-rate schedule (an ssl-detect run: tests/test_detect_run.py)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw
from torch import nn
from torchvision.ops.misc import FrozenBatchNorm2d

from selfsup.data.voc import open_voc
from selfsup.models import build_encoder
from selfsup.pretext.deepcluster import DeepClusterConfig, DeepClusterTask
from selfsup.pretext.jigsaw import JigsawConfig, JigsawTask
from selfsup.models.base import freeze_layers
from selfsup.transfer.detection import lr_factor
from selfsup.transfer.detection_data import DetectionDataset
from selfsup.transfer.detection_model import (
    build_detector,
    freeze_batchnorm,
    rescale_backbone,
    resolve_backbone,
)
from selfsup.transfer.rescale import measure_outputs, rescalable_units, rescale_within_layer

CLASSES = ("disc", "square")


def write_tiny_voc(root: Path, count: int = 8) -> Path:
    """``count`` 60-80 px images, each with a red square and a blue disc, in VOC layout."""
    for sub in ("JPEGImages", "Annotations", "ImageSets/Main"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    ids = []
    for i in range(count):
        picture = Image.fromarray(rng.integers(0, 60, (60, 64 + 8 * (i % 3), 3), dtype=np.uint8))
        draw = ImageDraw.Draw(picture)
        objects = []
        for k, name in enumerate(("square", "disc")):
            x0, y0 = 6 + 30 * k + (i % 2) * 2, 10 + (i % 4) * 3
            box = [x0, y0, x0 + 20, y0 + 22]
            (draw.rectangle if name == "square" else draw.ellipse)(box, fill=(250, 40, 40) if k == 0 else (40, 40, 250))
            difficult = int(i == 3 and k == 1)
            objects.append(f"<object><name>{name}</name><difficult>{difficult}</difficult><bndbox><xmin>{box[0] + 1}"
                           f"</xmin><ymin>{box[1] + 1}</ymin><xmax>{box[2] + 1}</xmax><ymax>{box[3] + 1}</ymax>"
                           f"</bndbox></object>")
        image_id = f"{i:06d}"
        ids.append(image_id)
        picture.save(root / "JPEGImages" / f"{image_id}.jpg")
        (root / "Annotations" / f"{image_id}.xml").write_text(f"<annotation>{''.join(objects)}</annotation>")
    half = count // 2
    parts = {"train": ids[:half], "val": ids[half:half + 2], "test": ids[half + 2:], "trainval": ids[:half + 2]}
    for split, part in parts.items():
        (root / "ImageSets" / "Main" / f"{split}.txt").write_text("\n".join(part) + "\n")
    return root


def random_batch(count: int = 2, size: int = 64):
    torch.manual_seed(0)
    images = [torch.rand(3, size, size + 8 * i) for i in range(count)]
    targets = [{"boxes": torch.tensor([[4.0, 6.0, 30.0, 34.0], [30.0, 20.0, 60.0, 50.0]]),
                "labels": torch.tensor([1, 2])} for _ in range(count)]
    return images, targets


def small_detector(arch: str = "alexnet_small", backbone: str = "auto", width: float | None = None, **kwargs):
    torch.manual_seed(0)
    encoder = build_encoder(arch, width=width)
    freeze_batchnorm(encoder)
    return build_detector(encoder, len(CLASSES), backbone=backbone, min_size=64, max_size=96, **kwargs)


@pytest.mark.parametrize("arch, backbone, width", [("alexnet_small", "auto", None), ("resnet18_small", "fpn", 0.25),
                                                  ("resnet18_small", "c4", 0.25)])
def test_backbones_build_and_give_losses(arch, backbone, width):
    model, parts = small_detector(arch, backbone, width)
    assert parts["backbone"] == ("conv5" if arch.startswith("alexnet") else backbone)
    images, targets = random_batch()
    model.train()
    losses = model(images, targets)
    assert set(losses) == {"loss_classifier", "loss_box_reg", "loss_objectness", "loss_rpn_box_reg"}
    assert all(torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()
    model.eval()
    with torch.no_grad():
        outputs = model(images)
    assert len(outputs) == 2 and outputs[0]["boxes"].dtype == torch.float32


def test_bf16_keeps_box_arithmetic_in_float32():
    model, _ = small_detector(precision="bf16")
    images, targets = random_batch()
    model.train()
    losses = model(images, targets)
    assert all(v.dtype == torch.float32 and torch.isfinite(v) for v in losses.values())
    model.eval()
    with torch.no_grad():
        assert model(images)[0]["boxes"].dtype == torch.float32


def test_backbone_choice_is_checked():
    assert resolve_backbone(build_encoder("resnet18_small", width=0.25), "auto") == "fpn"
    with pytest.raises(ValueError, match="--backbone fpn is invalid for alexnet_small: allowed values are auto, conv5"):
        resolve_backbone(build_encoder("alexnet_small"), "fpn")


def test_multiscale_training_sizes_and_test_size():
    model, _ = small_detector(train_sizes=(48, 64, 80))
    model.train()
    assert model.transform.min_size == (48, 64, 80)
    model.eval()
    assert model.transform.min_size == (64,)


def test_freeze_conv3_leaves_conv1_to_conv3_unchanged():
    torch.manual_seed(0)
    encoder = build_encoder("alexnet_small")
    freeze_batchnorm(encoder)
    freeze_layers(encoder, "conv3")
    model, _ = build_detector(encoder, len(CLASSES), min_size=64, max_size=96)
    before = {k: v.clone() for k, v in encoder.state_dict().items()}
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1, momentum=0.9)
    images, targets = random_batch()
    model.train()
    for _ in range(2):
        optimizer.zero_grad()
        sum(model(images, targets).values()).backward()
        optimizer.step()
    after = encoder.state_dict()
    for name, value in before.items():
        if name.split(".")[0] in ("conv1", "conv2", "conv3"):
            assert torch.equal(value, after[name]), name
    assert not torch.equal(before["conv4.0.weight"], after["conv4.0.weight"])
    with pytest.raises(ValueError, match="--freeze 'res3' is invalid for alexnet_small"):
        freeze_layers(encoder, "res3")


def test_frozen_batchnorm_keeps_statistics_and_trainable_batchnorm_learns():
    encoder = build_encoder("alexnet_small")
    replaced = freeze_batchnorm(encoder)
    assert replaced == 5 and not any(isinstance(m, nn.BatchNorm2d) for m in encoder.modules())
    assert sum(isinstance(m, FrozenBatchNorm2d) for m in encoder.modules()) == 5

    torch.manual_seed(0)
    trainable = build_encoder("alexnet_small")
    model, _ = build_detector(trainable, len(CLASSES), min_size=64, max_size=96)
    stats = trainable.conv5[1].running_mean.clone()
    images, targets = random_batch()
    model.train()
    sum(model(images, targets).values()).backward()
    assert not torch.equal(stats, trainable.conv5[1].running_mean)


def test_rescale_gives_zero_mean_unit_std_per_channel():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 8, 3, bias=True), nn.ReLU(), nn.Conv2d(8, 4, 3, bias=False), nn.BatchNorm2d(4),
                        nn.ReLU(), nn.Flatten(), nn.Linear(4 * 12 * 12, 5))
    with torch.no_grad():
        net[3].running_mean.uniform_(-1, 1)
        net[3].running_var.uniform_(0.5, 2)
    batch = torch.randn(6, 3, 16, 16) * 3 + 1
    units = rescalable_units(net)
    # conv0 alone (biased), conv2 measured after its BatchNorm, the linear layer alone
    assert [(u.name, u.output) for u in units] == [("0", net[0]), ("2", net[3]), ("6", net[6])]
    running = net[3].running_mean.clone(), net[3].running_var.clone(), net[3].weight.clone()
    before = rescale_within_layer(net, units, lambda: net(batch))
    assert [s.name for s in before] == ["0", "2", "6"] and not torch.allclose(before[1].std, torch.ones(4))
    assert net.training  # mode restored
    # the weights were scaled, not the norm's gain or statistics
    assert all(torch.equal(a, b) for a, b in zip(running, (net[3].running_mean, net[3].running_var, net[3].weight)))
    for mean, std in measure_outputs(units, lambda: net.eval()(batch)).values():
        np.testing.assert_allclose(mean.numpy(), 0.0, atol=1e-5)
        np.testing.assert_allclose(std.numpy(), 1.0, atol=1e-4)
    rescale_within_layer(net, units, lambda: net(batch), target_mean=0.5)
    for mean, std in measure_outputs(units, lambda: net.eval()(batch)).values():
        np.testing.assert_allclose(mean.numpy(), 0.5, atol=1e-5)
        np.testing.assert_allclose(std.numpy(), 1.0, atol=1e-4)


def test_rescale_backbone_changes_only_trainable_stages():
    torch.manual_seed(0)
    encoder = build_encoder("alexnet_small")
    freeze_batchnorm(encoder)
    freeze_layers(encoder, "conv2")
    model, _ = build_detector(encoder, len(CLASSES), min_size=64, max_size=96)
    fixed = {k: v.clone() for k, v in encoder.state_dict().items() if k.startswith(("conv1", "conv2"))}
    images = random_batch(4)[0]
    stats = rescale_backbone(model, images)
    assert [s.name for s in stats] == ["conv3.0", "conv4.0", "conv5.0"]
    assert all(torch.equal(v, encoder.state_dict()[k]) for k, v in fixed.items())
    body = model.backbone.module
    batch = model.eval().transform(images)[0].tensors
    units = [unit for unit in rescalable_units(encoder) if unit.name.startswith(("conv3", "conv4", "conv5"))]
    measured = measure_outputs(units, lambda: encoder(body.frontend(batch)))
    assert len(measured) == 3
    for mean, std in measured.values():
        np.testing.assert_allclose(mean.numpy(), 0.0, atol=1e-4)
        np.testing.assert_allclose(std.numpy(), 1.0, atol=1e-3)


def test_box_head_starts_from_pretext_fc_layers():
    torch.manual_seed(0)
    encoder = build_encoder("alexnet_small", in_channels=2)
    task = DeepClusterTask(encoder, DeepClusterConfig(num_clusters=10, mlp_dim=32, head_pool=3)).eval()
    model, parts = build_detector(encoder, len(CLASSES), min_size=64, max_size=96, pretext=task.detector_fc())
    head = model.roi_heads.box_head.module
    assert torch.equal(head.fc6.weight, task.features[2].weight) and torch.equal(head.fc7.bias, task.features[5].bias)
    assert "fc6 + fc7 from the checkpoint's deepcluster" in parts["box_head"]
    assert model.roi_heads.box_roi_pool.output_size == (3, 3)

    jigsaw_encoder = build_encoder("alexnet_small")
    jigsaw = JigsawTask(jigsaw_encoder, JigsawConfig(fc6_dim=16, fc7_dim=8, head_bn=True, num_permutations=10)).eval()
    with torch.no_grad():
        jigsaw.fc6[1].running_mean.uniform_(-1, 1)
        jigsaw.fc6[1].running_var.uniform_(0.5, 2)
    fc = jigsaw.detector_fc()
    x = torch.randn(5, fc.layers[0].in_features)
    with torch.no_grad():
        torch.testing.assert_close(fc.layers[0](x), jigsaw.fc6[1](jigsaw.fc6[0](x)))
    _, parts = build_detector(jigsaw_encoder, len(CLASSES), min_size=64, max_size=96, pretext=fc)
    assert "fc6 from the checkpoint's jigsaw fc6" in parts["box_head"]


def test_training_items_flip_with_their_boxes_and_leave_out_difficult_objects(tmp_path):
    split = open_voc(write_tiny_voc(tmp_path / "voc"), "train")
    index = 3  # its disc is difficult
    plain = DetectionDataset(split, train=False)[index]
    assert plain.target["boxes"].shape == (2, 4)

    def flips(seed: int) -> bool:  # the dataset's draw
        return bool(torch.rand((), generator=torch.Generator().manual_seed(seed)) < 0.5)

    train = DetectionDataset(split, train=True)
    kept = train[(index, next(seed for seed in range(20) if not flips(seed)))]
    flipped = train[(index, next(seed for seed in range(20) if flips(seed)))]
    torch.testing.assert_close(kept.image, plain.image)
    torch.testing.assert_close(kept.target["labels"], torch.tensor([CLASSES.index("square") + 1]))
    width = plain.image.shape[-1]
    torch.testing.assert_close(flipped.image, plain.image.flip(-1))
    x0, y0, x1, y1 = kept.target["boxes"][0]
    torch.testing.assert_close(flipped.target["boxes"][0], torch.stack([width - x1, y0, width - x0, y1]))


def test_lr_warmup_then_steps():
    assert lr_factor(0, 10, [20, 30]) == pytest.approx(0.001)
    assert lr_factor(5, 10, [20, 30]) == pytest.approx(0.5005)
    assert [lr_factor(s, 10, [20, 30]) for s in (10, 19, 20, 30)] == pytest.approx([1, 1, 0.1, 0.01])
