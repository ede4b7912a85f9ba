import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

import selfsup.probes.finetune_run as finetune_run
from selfsup.checkpoint import load_checkpoint
from selfsup.cli.finetune import build_parser, main as finetune_main, options_from
from selfsup.cli.pretrain import main as pretrain_main
from selfsup.epoch import resolve_precision
from selfsup.models import build_encoder
from selfsup.probes.finetune import MultiLabel, build_classifier, column_name, trained_from
from selfsup.probes.finetune_run import FinetuneOptions
from conftest import one_error_line

FAST = ["--epochs", "2", "--batch-size", "12", "--workers", "0"]
TINY_PRETRAIN = ["--epochs", "1", "--batch-size", "8", "--workers", "0", "--image-size", "16", "--width", "0.25"]


@pytest.fixture(scope="module")
def tiny_checkpoint(tiny_folder, tmp_path_factory):
    out = tmp_path_factory.mktemp("rotation")
    assert pretrain_main(["--data", str(tiny_folder), *TINY_PRETRAIN, "--out", str(out)]) == 0
    return out / "last.pt"


def make_voc(root, counts=(("train", 12), ("val", 6), ("test", 6)), size=32):
    """A VOC tree of noisy images holding a red and/or a blue square; image 1 of each split has only a
    difficult red square (VOC label 0 for red)."""
    rng = np.random.default_rng(0)
    main = root / "ImageSets" / "Main"
    for folder in (root / "JPEGImages", root / "Annotations", main):
        folder.mkdir(parents=True)
    for split, count in counts:
        ids = []
        for i in range(count):
            image_id = f"{split}{i:03d}"
            img = Image.fromarray((rng.random((size, size, 3)) * 60).astype(np.uint8))
            objects = []
            for c, (name, colour) in enumerate((("red", (220, 30, 30)), ("blue", (30, 30, 220)))):
                if (i + c) % 3:  # every class present in some images of every split and absent in others
                    x, y = (int(v) for v in rng.integers(0, size - 12, 2))
                    ImageDraw.Draw(img).rectangle([x, y, x + 10, y + 10], fill=colour)
                    objects.append(f"<object><name>{name}</name><difficult>{int(i == 1 and c == 0)}</difficult>"
                                   f"<bndbox><xmin>{x + 1}</xmin><ymin>{y + 1}</ymin><xmax>{x + 11}</xmax>"
                                   f"<ymax>{y + 11}</ymax></bndbox></object>")
            img.save(root / "JPEGImages" / f"{image_id}.jpg", quality=95)
            (root / "Annotations" / f"{image_id}.xml").write_text(f"<annotation>{''.join(objects)}</annotation>")
            ids.append(image_id)
        (main / f"{split}.txt").write_text("\n".join(ids) + "\n")
    return root


@pytest.fixture
def spy_fit(monkeypatch):
    """Captures the model ``fit`` trains, with its weights before training."""
    seen = {}
    real_fit = finetune_run.fit

    def fit(model, *args, **kwargs):
        seen["before"] = {name: value.clone() for name, value in model.state_dict().items()}
        seen["model"] = model
        return real_fit(model, *args, **kwargs)

    monkeypatch.setattr(finetune_run, "fit", fit)
    return seen


def test_finetune_writes_a_val_selected_record_next_to_the_checkpoint(tiny_checkpoint, tiny_folder, capsys):
    assert finetune_main(["--checkpoint", str(tiny_checkpoint), *FAST]) == 0
    record = json.loads((tiny_checkpoint.parent / "finetune_none.json").read_text())
    assert record["kind"] == "finetune" and record["method"] == "rotation"
    assert record["checkpoint"] == str(tiny_checkpoint) and record["data"] == str(tiny_folder)
    assert record["selection_split"] == "val" and record["reported_split"] == "test"
    assert record["forced_test_selection"] is False
    assert record["pretraining"]["task"]["name"] == "rotation" and record["encoder"]["arch"] == "alexnet_small"
    protocol = record["protocol"]
    assert protocol["epochs"] == 2 and protocol["batch_size"] == 12 and protocol["freeze"] == "none"
    assert protocol["precision"] == resolve_precision("auto", torch.device("cpu"))  # what the default ran
    assert protocol["optimizer"]["momentum"] == 0.9 and protocol["optimizer"]["weight_decay"] == 5e-4
    assert "fc6" in protocol["head"] and "flip" in protocol["augmentation"]
    assert set(record["splits"]) >= {"train", "val", "test"} and record["image_size"] == 16
    assert list(record["layers"]) == ["all"]
    result = record["layers"]["all"]
    assert result["trained_from"] == "conv1"
    history = record["history"]
    assert [entry["epoch"] for entry in history] == [1, 2]
    val = [entry["val_top1"] for entry in history]
    assert result["best_epoch"] == val.index(max(val)) + 1 and result["val_top1"] == max(val)
    assert 0 <= result["test_top1"] <= result["test_top5"] <= 100
    assert record["command"] and record["wall_time_s"] > 0
    shown = capsys.readouterr().out
    assert "test_top1" in shown and "finetune_none.json" in shown


def test_freeze_conv3_keeps_conv1_to_conv3_bit_identical(tiny_checkpoint, tmp_path, spy_fit):
    out = tmp_path / "ft.json"
    assert finetune_main(["--checkpoint", str(tiny_checkpoint), "--freeze", "conv3", *FAST, "--out", str(out)]) == 0
    before, after = spy_fit["before"], spy_fit["model"].state_dict()
    frozen = [name for name in before if name.split(".")[1] in ("conv1", "conv2", "conv3")]
    trained = [name for name in before if name.split(".")[1] in ("conv4", "conv5")]
    assert frozen and trained
    for name in frozen:  # weights and BatchNorm statistics alike
        assert torch.equal(before[name], after[name]), name
    assert all(not torch.equal(before[name], after[name]) for name in trained if "num_batches" not in name)
    assert torch.equal(after["encoder.conv1.0.weight"], load_checkpoint(tiny_checkpoint)["model"]["encoder.conv1.0.weight"])
    record = json.loads(out.read_text())
    assert list(record["layers"]) == ["conv4+"] and record["layers"]["conv4+"]["trained_from"] == "conv4"


def test_selection_on_test_is_refused_without_force(tiny_checkpoint, tmp_path, capsys):
    out = tmp_path / "ft.json"
    assert finetune_main(["--checkpoint", str(tiny_checkpoint), "--selection-split", "test", *FAST,
                          "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("error: --selection-split test is refused") and "--force-test-selection" in err
    assert not out.exists()


def test_forced_test_selection_is_marked_in_the_record(tiny_checkpoint, tmp_path):
    out = tmp_path / "ft.json"
    assert finetune_main(["--checkpoint", str(tiny_checkpoint), "--selection-split", "test", "--force-test-selection",
                          "--freeze", "conv5", *FAST, "--out", str(out)]) == 0
    record = json.loads(out.read_text())
    assert record["selection_split"] == "test" and record["forced_test_selection"] is True
    result = record["layers"]["fc6-8"]
    test = [entry["test_top1"] for entry in record["history"]]
    assert result["best_epoch"] == test.index(max(test)) + 1 and result["test_top1"] == max(test)
    assert "val_top1" in result and result["trained_from"] == "head"


def test_colorization_checkpoint_is_fine_tuned_on_l(tiny_folder, tmp_path, spy_fit):
    assert pretrain_main(["--task", "colorization", "--data", str(tiny_folder), *TINY_PRETRAIN,
                          "--out", str(tmp_path)]) == 0
    assert finetune_main(["--checkpoint", str(tmp_path / "last.pt"), *FAST]) == 0
    record = json.loads((tmp_path / "finetune_none.json").read_text())
    assert record["method"] == "colorization" and record["encoder"]["in_channels"] == 1
    assert spy_fit["model"].input_fn(torch.rand(2, 3, 16, 16)).shape == (2, 1, 16, 16)


def test_random_encoder_fed_like_deepcluster_gets_sobel_input(tiny_folder, tmp_path, spy_fit):
    out = tmp_path / "ft.json"
    assert finetune_main(["--checkpoint", "random", "--input-like", "deepcluster", "--width", "0.25", "--image-size", "16",
                          "--data", str(tiny_folder), *FAST, "--out", str(out)]) == 0
    record = json.loads(out.read_text())
    assert record["method"] == "random" and record["encoder"]["in_channels"] == 2
    assert spy_fit["model"].input_fn(torch.rand(2, 3, 16, 16)).shape == (2, 2, 16, 16)


def test_resnet_gets_a_linear_head_and_accepts_aliases(tiny_folder, tmp_path):
    out = tmp_path / "ft.json"
    assert finetune_main(["--checkpoint", "random", "--arch", "resnet18_small", "--width", "0.25", "--image-size", "16",
                          "--data", str(tiny_folder), "--freeze", "conv3", *FAST, "--out", str(out)]) == 0
    record = json.loads(out.read_text())
    assert list(record["layers"]) == ["res4+"] and record["protocol"]["head"].startswith("global average pool")


def test_unknown_freeze_point_is_a_one_line_error(tiny_checkpoint, capsys):
    assert finetune_main(["--checkpoint", str(tiny_checkpoint), "--freeze", "fc9", *FAST]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("error: --freeze 'fc9' is invalid") and "none" in err and "conv5" in err


def test_the_command_line_defaults_are_the_library_defaults():
    assert options_from(build_parser().parse_args(["--checkpoint", "random"])) == FinetuneOptions(checkpoint="random")


def test_interrupted_run_writes_no_record(tiny_checkpoint, tmp_path, monkeypatch, capsys):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(finetune_run, "fit", interrupted)
    out = tmp_path / "ft.json"
    assert finetune_main(["--checkpoint", str(tiny_checkpoint), *FAST, "--out", str(out)]) == 130
    assert not out.exists() and list(tmp_path.iterdir()) == []
    assert "no record written" in capsys.readouterr().err


def test_voc_folder_is_fine_tuned_as_multi_label_and_reports_map(tiny_checkpoint, tmp_path, capsys):
    voc = make_voc(tmp_path / "VOCdevkit" / "VOC2007")
    assert finetune_main(["--checkpoint", str(tiny_checkpoint), "--data", str(tmp_path / "VOCdevkit"), "--freeze", "conv5",
                          *FAST]) == 0
    record = json.loads((tiny_checkpoint.parent / "finetune-voc_conv5.json").read_text())
    assert record["protocol"]["objective"] == "multi-label" and record["protocol"]["selection_metric"] == "val mAP"
    assert "VOC test" in record["splits"]["test"] and str(voc) in record["splits"]["notes"][0]
    result = record["layers"]["fc6-8"]
    mean_ap = [entry["val_mAP"] for entry in record["history"]]
    assert result["best_epoch"] == mean_ap.index(max(mean_ap)) + 1 and result["val_mAP"] == max(mean_ap)
    assert set(result["test_AP"]) == set(result["test_AP_area"]) == {"blue", "red"}
    assert 0 <= result["test_mAP"] <= 100 and 0 <= result["test_mAP_area"] <= 100
    assert result["test_mAP"] == pytest.approx(np.mean(list(result["test_AP"].values())), abs=0.01)
    assert "test AP per class" in capsys.readouterr().out


def test_heads_and_column_names():
    alexnet = build_encoder("alexnet_small", width=0.25)
    head, text = build_classifier(alexnet, 32, 10)
    assert head(torch.zeros(2, *alexnet.feature_shapes(32)["conv5"])).shape == (2, 10)
    assert "4x4" in text and "fc6 512" in text  # conv5 8x8 at 32 px, narrow fc layers for small images
    big = build_encoder("alexnet", width=0.25)
    assert "6x6" in build_classifier(big, 224, 20)[1] and "fc6 4096" in build_classifier(big, 224, 20)[1]
    assert [column_name(alexnet, f) for f in ("none", "conv1", "conv4", "conv5")] == ["all", "conv2+", "conv5+", "fc6-8"]
    assert trained_from(alexnet, "conv5") == "head"
    resnet = build_encoder("resnet18_small", width=0.25)
    assert [column_name(resnet, f) for f in ("none", "conv2", "res5")] == ["all", "res3+", "fc"]


def test_multilabel_loss_ignores_difficult_only_labels():
    objective = MultiLabel({}, ["a", "b", "c"])
    targets = torch.tensor([[1, -1, 0], [0, 1, -1]], dtype=torch.int8)
    logits = torch.zeros(2, 3, requires_grad=True)
    loss = objective.loss(logits, targets)
    loss.backward()
    assert loss.item() == pytest.approx(torch.log(torch.tensor(2.0)).item())
    assert logits.grad[0, 2] == 0 and logits.grad[1, 0] == 0 and logits.grad[0, 0] < 0 < logits.grad[0, 1]


# ------------------------------------------------------------------ bad input: one line, exit status 2

MISSING_CHECKPOINT = "/nonexistent/selfsup/last.pt"  # an option error must come before the checkpoint is read


@pytest.mark.parametrize("argv, named", [
    (["--epochs", "0"], "--epochs 0 is invalid: must be at least 1"),
    (["--batch-size", "1"], "--batch-size 1"),
    (["--hidden", "0"], "--hidden 0"),
    (["--lr", "nan"], "--lr"),
    (["--lr", "inf"], "--lr"),
    (["--lr", "0"], "--lr 0 is invalid"),
    (["--eval-crop", "0"], "--eval-crop 0"),
    (["--width", "0"], "--width 0"),
    (["--arch", "vgg16"], "--arch"),
    (["--data", ""], "--data ''"),
])
def test_bad_option_values_are_one_line_before_the_checkpoint_is_read(argv, named, capsys):
    assert finetune_main(["--checkpoint", MISSING_CHECKPOINT, *argv]) == 2
    line = one_error_line(capsys)
    assert named in line and "checkpoint" not in line


def test_unusable_out_and_missing_cuda_are_refused_before_the_checkpoint_is_read(tmp_path, monkeypatch, capsys):
    assert finetune_main(["--checkpoint", MISSING_CHECKPOINT, "--out", str(tmp_path)]) == 2
    assert f"--out {tmp_path} is a folder" in one_error_line(capsys)
    assert finetune_main(["--checkpoint", MISSING_CHECKPOINT, "--out", "/proc/selfsup-test/ft.json"]) == 2
    assert "--out" in one_error_line(capsys)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert finetune_main(["--checkpoint", MISSING_CHECKPOINT, "--device", "cuda"]) == 2
    assert "--device cuda" in one_error_line(capsys)


def test_damaged_and_older_checkpoints_are_one_line(tiny_checkpoint, tmp_path, capsys):
    state = torch.load(tiny_checkpoint, weights_only=True)
    state["model"]["encoder.conv1.0.weight"] = torch.zeros(2, 3, 1, 1)
    damaged = tmp_path / "damaged.pt"
    torch.save(state, damaged)
    assert finetune_main(["--checkpoint", str(damaged), *FAST, "--out", str(tmp_path / "ft.json")]) == 2
    assert f"checkpoint {damaged}" in (line := one_error_line(capsys)) and "encoder.conv1.0.weight is 2x3x1x1" in line
    older = tmp_path / "older.pt"
    torch.save({**torch.load(tiny_checkpoint, weights_only=True), "saved_from": Path("/somewhere")}, older)
    assert finetune_main(["--checkpoint", str(older), "--freeze", "fc9"]) == 2
    assert "--trust-checkpoint" in one_error_line(capsys)
    assert finetune_main(["--checkpoint", str(older), "--trust-checkpoint", "--freeze", "fc9"]) == 2
    assert "--freeze 'fc9'" in one_error_line(capsys) and (tmp_path / "older.pt.orig").exists()


def test_a_learning_rate_that_makes_the_loss_non_finite_is_one_line(tiny_checkpoint, tmp_path, monkeypatch, capsys):
    from selfsup.probes.finetune import SingleLabel

    monkeypatch.setattr(SingleLabel, "loss", lambda self, logits, targets: (logits * float("nan")).sum())
    out = tmp_path / "ft.json"
    assert finetune_main(["--checkpoint", str(tiny_checkpoint), *FAST, "--lr", "1000", "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]  # after the run's progress lines
    assert err.startswith("error: --lr 1000 made the loss nan") and not out.exists()
