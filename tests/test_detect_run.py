"""ssl-detect runs: end to end, the trained detector saved and rebuilt, the figure's rule, bad input as one line,
the checkpoint read once, the evaluation input mapping and the BatchNorm statistics step."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.models.detection.transform import GeneralizedRCNNTransform

import selfsup.probes.frozen as frozen_module
import selfsup.transfer.detection_run as detection_run
import selfsup.transfer.detection_saved as detection_saved
from selfsup.cli.detect import build_parser, main, options_from
from selfsup.data.voc import open_voc
from selfsup.errors import CheckpointError
from selfsup.models import build_encoder
from selfsup.models.normalization import IMAGENET_MEAN, IMAGENET_STD
from selfsup.pretext import new_task
from selfsup.pretext.context import normalize_per_patch
from selfsup.probes.bn import bn_statistics, reestimate_bn_statistics
from selfsup.transfer.detection import PREDICTED, draw_detections, shown_detections
from selfsup.transfer.detection_options import DetectOptions
from selfsup.transfer.detection_run import run_detection
from selfsup.transfer.detection_saved import load_detector
from selfsup.transfer.frontend import input_conv
from selfsup.transfer.voc_eval import ImageDetections
from conftest import one_error_line
from test_detection import CLASSES, write_tiny_voc


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
    detector = out.with_name("detect.detector.pt")
    assert Path(record["detector"]) == detector and detector.exists()
    printed = capsys.readouterr().out
    assert "square" in printed and "mean" in printed and f"detector to {detector}" in printed


def test_selection_on_test_is_refused(tmp_path, capsys):
    code = main(["--checkpoint", "random", "--data", str(tmp_path), "--selection-split", "test"])
    assert code == 2
    assert "--selection-split test is refused" in capsys.readouterr().err


def test_the_command_line_defaults_are_the_library_defaults():
    assert options_from(build_parser().parse_args(["--checkpoint", "random"])) == DetectOptions(checkpoint="random")


@pytest.mark.parametrize("task, frontend", [("rotation", "fold"), ("jigsaw", "exact")])
def test_the_saved_detector_loads_safely_and_gives_the_trained_detectors_boxes(tmp_path, task, frontend):
    checkpoint = fake_checkpoint(tmp_path / f"{task}.pt", task=task)
    root = write_tiny_voc(tmp_path / "voc")
    result = run_detection(DetectOptions(checkpoint=str(checkpoint), data=str(root), frontend=frontend, epochs=1,
                                         batch_size=2, min_size=64, max_size=96, workers=0, device="cpu"))
    assert result.detector == tmp_path / "detect_conv5.detector.pt" and result.record["detector"] == str(result.detector)
    saved = torch.load(result.detector, weights_only=True)
    assert saved["classes"] == list(CLASSES) and saved["detector"]["backbone"] == "conv5"
    assert saved["encoder"]["arch"] == "alexnet_small" and saved["task"]["name"] == task
    loaded = load_detector(result.detector)
    image = torch.rand(3, 60, 72, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        wanted, got = result.model.eval()([image])[0], loaded.model([image])[0]
    assert len(wanted["boxes"]) > 0 and wanted.keys() == got.keys()
    for key in wanted:
        torch.testing.assert_close(got[key], wanted[key], rtol=0, atol=0)
    with pytest.raises(CheckpointError, match="not a detector"):
        load_detector(checkpoint)


def test_the_figure_draws_each_images_best_detections_when_none_scores_above_the_threshold(tmp_path):
    assert list(shown_detections(np.array([0.1, 0.3, 0.05, 0.2]))) == [1, 3, 0]
    assert list(shown_detections(np.array([0.9, 0.2, 0.6, 0.7, 0.55]))) == [0, 3, 2, 4]
    assert list(shown_detections(np.array([0.04]))) == [0] and len(shown_detections(np.zeros(0))) == 0
    split = open_voc(write_tiny_voc(tmp_path / "voc"), "test", list(CLASSES))
    weak = ImageDetections(np.array([[5.0, 5.0, 40.0, 40.0]]), np.array([0.04]), np.array([1]))
    figure = draw_detections(split, [0], [weak], tmp_path / "weak.png")
    pixels = np.asarray(Image.open(figure))
    assert (pixels == PREDICTED).all(axis=-1).any()


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
    monkeypatch.setattr(detection_saved, "load_checkpoint", counted_load)
    monkeypatch.setattr(detection_saved, "build_detector", stop_at_build)
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

    monkeypatch.setattr(detection_saved, "build_detector", stop_at_build)
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
    real_freeze = detection_run.freeze_batchnorm

    def capturing_freeze(module):
        captured.update(bn_statistics(module))
        return real_freeze(module)

    monkeypatch.setattr(detection_run, "freeze_batchnorm", capturing_freeze)
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
