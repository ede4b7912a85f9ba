"""Detection transfer: detector builds, freezing, BatchNorm handling, rescaling and an ssl-detect run."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw
from torch import nn
from torchvision.models.detection.transform import GeneralizedRCNNTransform
from torchvision.ops.misc import FrozenBatchNorm2d

import selfsup.cli.detect as detect_cli
import selfsup.probes.frozen as frozen_module
from selfsup.cli.detect import main
from selfsup.data.voc import open_voc
from selfsup.models import build_encoder
from selfsup.pretext import new_task
from selfsup.models.normalization import IMAGENET_MEAN, IMAGENET_STD
from selfsup.pretext.context import normalize_per_patch
from selfsup.probes.bn import bn_statistics, reestimate_bn_statistics
from selfsup.transfer.frontend import input_conv
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
from conftest import one_error_line

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


def test_ssl_detect_end_to_end(tmp_path, capsys):
    root = write_tiny_voc(tmp_path / "voc")
    out = tmp_path / "out" / "detect.json"
    code = main(["--checkpoint", "random", "--arch", "alexnet_small", "--data", str(root), "--epochs", "1",
                 "--batch-size", "2", "--min-size", "64", "--max-size", "96", "--workers", "0", "--out", str(out)])
    assert code == 0
    record = json.loads(out.read_text())
    assert record["kind"] == "detection" and record["method"] == "random"
    assert record["selection_split"] == "val" and record["reported_split"] == "test"
    entry = record["layers"]["conv5"]
    assert set(entry["test_AP"]) == set(CLASSES)
    assert entry["test_mAP"] is not None and entry["test_mAP_area"] is not None
    figure = out.with_suffix(".png")
    assert Path(record["figure"]) == figure and Image.open(figure).size[0] > 0
    printed = capsys.readouterr().out
    assert "square" in printed and "mean" in printed


def test_selection_on_test_is_refused(tmp_path, capsys):
    code = main(["--checkpoint", "random", "--data", str(tmp_path), "--selection-split", "test"])
    assert code == 2
    assert "--selection-split test is refused" in capsys.readouterr().err


# ------------------------------------------------------------------ bad input: one line, exit status 2

MISSING_CHECKPOINT = "/nonexistent/selfsup/last.pt"  # an option error must come before the checkpoint is read


def fake_checkpoint(path: Path, task: str = "rotation", edit=None) -> Path:
    """An untrained ssl-pretrain checkpoint of ``task`` on a quarter-width alexnet_small (pickled as older
    versions saved), changed by ``edit(state)``."""
    torch.manual_seed(0)
    model = new_task(task, build_encoder("alexnet_small", width=0.25), {})
    state = {"encoder": {"arch": "alexnet_small", "in_channels": 3, "width": 0.25},
             "task": {"name": task, "options": {}, "num_classes": None}, "model": model.state_dict(), "image_size": 32}
    if edit is not None:
        edit(state)
    torch.save(state, path)
    return path


@pytest.mark.parametrize("argv, named", [
    (["--epochs", "0"], "--epochs 0 is invalid: must be at least 1"),
    (["--min-size", "0"], "--min-size 0"),
    (["--lr", "nan"], "--lr"),
    (["--lr", "0"], "--lr 0 is invalid"),
    (["--width", "0"], "--width 0"),
    (["--max-size", "10", "--min-size", "20"], "--max-size 10"),
    (["--figure", "detections.txt"], "--figure detections.txt"),
    (["--arch", "vgg16"], "--arch"),
    (["--data", ""], "--data ''"),
    (["--trainable-bn", "--bn-stats", "train"], "--bn-stats train is invalid with --trainable-bn"),
])
def test_bad_option_values_are_one_line_before_the_checkpoint_is_read(argv, named, capsys):
    assert main(["--checkpoint", MISSING_CHECKPOINT, *argv]) == 2
    line = one_error_line(capsys)
    assert named in line and "checkpoint" not in line


def test_unusable_outputs_and_missing_cuda_are_refused_before_the_checkpoint_is_read(tmp_path, monkeypatch, capsys):
    assert main(["--checkpoint", MISSING_CHECKPOINT, "--out", str(tmp_path)]) == 2
    assert f"--out {tmp_path} is a folder" in one_error_line(capsys)
    assert main(["--checkpoint", MISSING_CHECKPOINT, "--figure", "/proc/selfsup-test/detections.png"]) == 2
    assert "--figure" in one_error_line(capsys)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert main(["--checkpoint", MISSING_CHECKPOINT, "--device", "cuda"]) == 2
    assert "--device cuda" in one_error_line(capsys)


def test_checkpoints_that_do_not_fit_or_need_trust_are_one_line(tmp_path, capsys):
    damaged = fake_checkpoint(tmp_path / "damaged.pt", edit=lambda s: s["model"].pop("encoder.conv5.0.weight"))
    assert main(["--checkpoint", str(damaged), "--data", str(tmp_path)]) == 2
    assert f"checkpoint {damaged}" in (line := one_error_line(capsys)) and "no encoder.conv5.0.weight" in line
    older = fake_checkpoint(tmp_path / "older.pt", edit=lambda s: s.__setitem__("saved_from", Path("/somewhere")))
    assert main(["--checkpoint", str(older), "--backbone", "fpn"]) == 2
    assert "--trust-checkpoint" in one_error_line(capsys)
    assert main(["--checkpoint", str(older), "--trust-checkpoint", "--backbone", "fpn"]) == 2
    assert "--backbone fpn is invalid for alexnet_small" in one_error_line(capsys)
    assert (tmp_path / "older.pt.orig").exists()


def test_a_test_size_too_small_for_the_encoder_is_one_line(tmp_path, capsys):
    assert main(["--checkpoint", "random", "--arch", "alexnet", "--width", "0.25", "--min-size", "8",
                 "--max-size", "16", "--out", str(tmp_path / "detect.json")]) == 2
    assert "--min-size 8 is too small for alexnet" in one_error_line(capsys)


def test_the_checkpoint_is_read_once_and_gives_the_pretext_fc_layers(tmp_path, monkeypatch):
    checkpoint = fake_checkpoint(tmp_path / "jigsaw.pt", task="jigsaw")
    reads, seen = [], {}
    real_load = frozen_module.load_checkpoint

    def counted_load(*args, **kwargs):
        reads.append(args[0])
        return real_load(*args, **kwargs)

    def stop_at_build(encoder, num_classes, **kwargs):
        seen.update(kwargs)
        raise KeyboardInterrupt

    monkeypatch.setattr(frozen_module, "load_checkpoint", counted_load)
    monkeypatch.setattr(detect_cli, "load_checkpoint", counted_load, raising=False)
    monkeypatch.setattr(detect_cli, "build_detector", stop_at_build)
    root = write_tiny_voc(tmp_path / "voc")
    assert main(["--checkpoint", str(checkpoint), "--data", str(root), "--batch-size", "2", "--workers", "0",
                 "--min-size", "64", "--max-size", "96"]) == 130
    assert reads == [str(checkpoint)] and seen["pretext"].source == "jigsaw fc6"


# ------------------------------------------------------------------ evaluation input rules, as for the probes


def load_task(checkpoint: Path):
    return frozen_module.load_task(checkpoint, state=torch.load(checkpoint, weights_only=True))


@pytest.mark.parametrize("frontend", ["fold", "exact"])
def test_a_context_drop_detector_feeds_the_encoder_its_evaluation_mapping(tmp_path, monkeypatch, frontend):
    checkpoint = fake_checkpoint(tmp_path / "context.pt", task="context")
    task = load_task(checkpoint)
    assert task.cfg.color_mode == "drop" and task.cfg.patch_norm
    seen = {}

    def stop_at_build(encoder, num_classes, **kwargs):
        seen.update(kwargs, encoder=encoder)
        raise KeyboardInterrupt

    monkeypatch.setattr(detect_cli, "build_detector", stop_at_build)
    root = write_tiny_voc(tmp_path / "voc")
    assert main(["--checkpoint", str(checkpoint), "--data", str(root), "--batch-size", "2", "--workers", "0",
                 "--min-size", "64", "--max-size", "96", "--frontend", frontend]) == 130
    torch.manual_seed(1)
    images = torch.rand(2, 3, 40, 48)
    conv = input_conv(task.encoder)[1]
    wanted = conv(task.eval_input(images))  # green standardised, red and blue zero
    if frontend == "exact":
        fed = seen["input_fn"](images)
        torch.testing.assert_close(fed, task.eval_input(images))
        assert not torch.allclose(fed, task.encoder_input(images), atol=1e-3)
        got = input_conv(seen["encoder"])[1](fed)
    else:
        assert seen["input_fn"] is None
        # the folded conv1 on per-image standardised RGB is conv1 on the evaluation mapping
        got = input_conv(seen["encoder"])[1](normalize_per_patch(images))
    torch.testing.assert_close(got, wanted, atol=1e-5, rtol=1e-5)


def distinct_batchnorm_statistics(state):
    generator = torch.Generator().manual_seed(3)
    for key, value in state["model"].items():
        if key.endswith("running_mean"):
            value.copy_(torch.randn(value.shape, generator=generator))
        elif key.endswith("running_var"):
            value.copy_(torch.rand(value.shape, generator=generator) + 0.5)


def train_batch(root: Path, min_size: int, max_size: int) -> torch.Tensor:
    """The tiny VOC's training images as the detector's test-time transform batches them."""
    names = (root / "ImageSets" / "Main" / "train.txt").read_text().split()
    images = [torch.from_numpy(np.asarray(Image.open(root / "JPEGImages" / f"{name}.jpg").convert("RGB"), dtype=np.float32)
                               ).permute(2, 0, 1) / 255 for name in names]
    transform = GeneralizedRCNNTransform(min_size, max_size, list(IMAGENET_MEAN), list(IMAGENET_STD)).eval()
    return transform(images)[0].tensors


@pytest.mark.parametrize("option", ["train", "checkpoint", None])
def test_bn_stats_train_reestimates_the_frozen_backbone_on_the_training_images(tmp_path, monkeypatch, option):
    checkpoint = fake_checkpoint(tmp_path / "rotation.pt", edit=distinct_batchnorm_statistics)
    pretrained = bn_statistics(load_task(checkpoint).encoder)
    captured = {}
    real_freeze = detect_cli.freeze_batchnorm

    def capturing_freeze(module):
        captured.update(bn_statistics(module))
        return real_freeze(module)

    monkeypatch.setattr(detect_cli, "freeze_batchnorm", capturing_freeze)
    root = write_tiny_voc(tmp_path / "voc")
    out = tmp_path / "detect.json"
    argv = ["--checkpoint", str(checkpoint), "--data", str(root), "--epochs", "1", "--batch-size", "2",
            "--min-size", "64", "--max-size", "96", "--workers", "0", "--out", str(out)]
    assert main(argv + ([] if option is None else ["--bn-stats", option])) == 0
    bn_record = json.loads(out.read_text())["protocol"]["bn_stats"]
    used = option or "train"
    assert bn_record["option"] == used and bn_record["used"] == used
    assert bn_record["reason"] == ("--bn-stats" if option else "default with frozen BatchNorm")
    assert set(captured) == set(pretrained)
    if used == "checkpoint":
        for name, (mean, var) in pretrained.items():
            assert torch.equal(captured[name][0], mean) and torch.equal(captured[name][1], var)
        return
    assert bn_record["images"] == 4
    batch = train_batch(root, 64, 96)
    # by hand for the first BatchNorm: the moments of conv1's output over every pixel of the batch
    encoder = load_task(checkpoint).encoder
    with torch.no_grad():
        first = encoder.conv1[0](batch).double()
    torch.testing.assert_close(captured["conv1.1"][0].double(), first.mean(dim=(0, 2, 3)), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(captured["conv1.1"][1].double(), first.var(dim=(0, 2, 3)), atol=1e-5, rtol=1e-5)
    # and every BatchNorm as selfsup.probes.bn computes them on that batch
    assert reestimate_bn_statistics(encoder, lambda x: x, [batch], torch.device("cpu")) == 4
    for name, (mean, var) in bn_statistics(encoder).items():
        torch.testing.assert_close(captured[name][0], mean, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(captured[name][1], var, atol=1e-5, rtol=1e-5)
        assert not torch.allclose(captured[name][0], pretrained[name][0])
