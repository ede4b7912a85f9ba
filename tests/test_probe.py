import json

import pytest

from selfsup.cli.pretrain import main as pretrain_main
from selfsup.cli.probe import main as probe_main

FAST = ["--epochs", "3", "--batch-size", "12", "--workers", "0"]


@pytest.fixture(scope="module")
def tiny_checkpoint(tiny_folder, tmp_path_factory):
    out = tmp_path_factory.mktemp("rotation")
    assert pretrain_main(["--data", str(tiny_folder), "--epochs", "1", "--batch-size", "8", "--workers", "0",
                          "--image-size", "16", "--width", "0.25", "--out", str(out)]) == 0
    return out / "last.pt"


def test_probe_all_layers_in_one_pass_writes_a_complete_record(tiny_checkpoint, tiny_folder, capsys):
    assert probe_main(["--checkpoint", str(tiny_checkpoint), "--freeze", "all", *FAST]) == 0
    record = json.loads((tiny_checkpoint.parent / "probe_all.json").read_text())
    assert list(record["layers"]) == ["conv1", "conv2", "conv3", "conv4", "conv5"]
    assert record["selection_split"] == "val" and record["reported_split"] == "test"
    assert record["data"] == str(tiny_folder)  # the checkpoint's own data is the default
    assert record["image_size"] == 16
    for layer in record["layers"].values():
        assert layer["dims"] <= 9216 and 1 <= layer["best_epoch"] <= 3
        assert 0 <= layer["test_top1"] <= layer["test_top5"] <= 100
    assert len(record["history"]) == 3 and record["command"]
    table = capsys.readouterr().out
    assert "conv1" in table and "conv5" in table and "test@1" in table


def test_probe_one_layer_accepts_resnet_aliases(tiny_folder, tmp_path):
    out = tmp_path / "probe.json"
    assert probe_main(["--checkpoint", "random", "--arch", "resnet18_small", "--width", "0.25", "--image-size", "16",
                       "--data", str(tiny_folder), "--freeze", "conv3", *FAST, "--out", str(out)]) == 0
    record = json.loads(out.read_text())
    assert list(record["layers"]) == ["conv3"] and record["method"] == "random"


def test_probe_unknown_layer_is_a_one_line_error(tiny_checkpoint, capsys):
    assert probe_main(["--checkpoint", str(tiny_checkpoint), "--freeze", "fc9"]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("error:") and "fc9" in err and "conv3" in err


def test_probe_refuses_unlabelled_data(tiny_checkpoint, tmp_path, tiny_folder, capsys):
    flat = tmp_path / "flat"
    flat.mkdir()
    for i, path in enumerate(sorted((tiny_folder / "train" / "class0").glob("*.png"))[:4]):
        (flat / f"{i}.png").write_bytes(path.read_bytes())
    assert probe_main(["--checkpoint", str(tiny_checkpoint), "--data", str(flat)]) == 2
    assert "labelled" in capsys.readouterr().err


def test_random_baseline_can_be_fed_like_a_one_channel_task(tiny_folder, tmp_path):
    out = tmp_path / "random_l.json"
    assert probe_main(["--checkpoint", "random", "--input-like", "colorization", "--width", "0.25", "--image-size", "16",
                       "--data", str(tiny_folder), "--freeze", "conv2", *FAST, "--out", str(out)]) == 0
    record = json.loads(out.read_text())
    assert record["encoder"]["in_channels"] == 1 and record["pretraining"]["task"]["input"] == "colorization"
