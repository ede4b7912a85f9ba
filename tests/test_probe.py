import json
from pathlib import Path

import pytest
import torch

from selfsup.cli.pretrain import main as pretrain_main
from selfsup.cli.probe import build_parser, main as probe_main, options_from
from selfsup.epoch import resolve_precision
from selfsup.probes.options import ProbeOptions
from selfsup.probes.run import run_probe
from conftest import one_error_line

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
    assert record["image_size"] == 16 and record["classes"] == 3
    for layer in record["layers"].values():
        assert layer["dims"] <= 9216 and 1 <= layer["best_epoch"] <= 3
        assert 0 <= layer["test_top1"] <= layer["test_top5"] <= 100
    assert len(record["history"]) == 3 and record["command"]
    captured = capsys.readouterr()
    assert "conv1" in captured.out and "conv5" in captured.out and "test@1" in captured.out
    # a progress line per head epoch, with every layer's selection accuracy
    epochs = [line for line in captured.err.splitlines() if line.startswith("ssl-probe: head epoch ")]
    assert [line.split()[3] for line in epochs] == ["1/3:", "2/3:", "3/3:"]
    assert all("selection top-1 conv1" in line and "conv5" in line for line in epochs)


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


def test_test_split_selection_is_refused_unless_forced(tiny_checkpoint, tmp_path, capsys):
    refused = tmp_path / "refused.json"
    assert probe_main(["--checkpoint", str(tiny_checkpoint), "--freeze", "conv2", "--selection-split", "test",
                       "--out", str(refused), *FAST]) == 2
    assert "--force-test-selection" in capsys.readouterr().err and not refused.exists()
    forced = tmp_path / "forced.json"
    assert probe_main(["--checkpoint", str(tiny_checkpoint), "--freeze", "conv2", "--selection-split", "test",
                       "--force-test-selection", "--out", str(forced), *FAST]) == 0
    record = json.loads(forced.read_text())
    assert record["selection_split"] == "test" and record["forced_test_selection"] is True
    assert "FORCED" in capsys.readouterr().out


def test_low_shot_probe_reports_mean_and_std_over_draws(tiny_checkpoint, tmp_path):
    out = tmp_path / "lowshot.json"
    assert probe_main(["--checkpoint", str(tiny_checkpoint), "--freeze", "conv3", "--shots", "1,4", "--draws", "2",
                       "--epochs", "2", "--workers", "0", "--out", str(out)]) == 0
    record = json.loads(out.read_text())
    assert record["kind"] == "lowshot_linear" and record["selection_split"] == "val"
    # no quick probe on the train split's labels to choose BatchNorm statistics: re-estimated, label-free
    assert record["protocol"]["bn_stats"]["used"] == "train" and "low-shot" in record["protocol"]["bn_stats"]["reason"]
    # --precision auto (the default) is recorded as what ran on this machine
    assert record["protocol"]["precision"] == resolve_precision("auto", torch.device("cpu")) != "auto"
    by_k = record["layers"]["conv3"]
    assert set(by_k) >= {"1", "4"} and by_k["1"]["images"] == 3 and by_k["4"]["images"] == 12
    for entry in (by_k["1"], by_k["4"]):
        summary = entry["test_top1"]
        assert len(summary["draws"]) == 2 and summary["std"] >= 0
        assert summary["mean"] == pytest.approx(sum(summary["draws"]) / 2, abs=0.01)


def test_save_features_writes_pooled_features_labels_and_indices(tiny_checkpoint, tmp_path):
    folder = tmp_path / "features"
    assert probe_main(["--checkpoint", str(tiny_checkpoint), "--freeze", "conv2", "--save-features", str(folder),
                       "--out", str(tmp_path / "probe.json"), *FAST]) == 0
    import numpy as np

    record = json.loads((tmp_path / "probe.json").read_text())
    train = np.load(folder / "train_conv2.npy")
    labels = np.load(folder / "train_labels.npy")
    assert train.dtype == np.float32 and train.shape == (len(labels), record["layers"]["conv2"]["dims"])
    assert sorted(set(labels.tolist())) == [0, 1, 2]
    assert np.load(folder / "test_indices.npy").tolist() == list(range(12))


def test_train_images_trains_the_probe_on_a_stratified_subset_and_says_so(tiny_checkpoint, tmp_path):
    import numpy as np

    folder = tmp_path / "features"
    assert probe_main(["--checkpoint", str(tiny_checkpoint), "--freeze", "conv2", "--train-images", "9",
                       "--save-features", str(folder), "--out", str(tmp_path / "probe.json"), *FAST,
                       "--batch-size", "4"]) == 0
    record = json.loads((tmp_path / "probe.json").read_text())
    labels = np.load(folder / "train_labels.npy")
    assert sorted(labels.tolist()) == [0, 0, 0, 1, 1, 1, 2, 2, 2]  # 9 images, 3 of each class
    assert "stratified subset (seed 0)" in record["splits"]["train"] and "(9 images" in record["splits"]["train"]
    assert np.load(folder / "test_indices.npy").tolist() == list(range(12))  # test stays whole


def test_also_gives_the_records_of_separate_knn_and_global_pool_runs_from_one_pass(tiny_checkpoint, tmp_path):
    common = ["--checkpoint", str(tiny_checkpoint), "--bn-stats", "train", "--knn-k", "1,5", *FAST]
    assert probe_main([*common, "--also", "knn,global,global-knn", "--out", str(tmp_path / "linear.json")]) == 0
    assert probe_main([*common, "--method", "knn", "--out", str(tmp_path / "knn.json")]) == 0
    assert probe_main([*common, "--pool", "global", "--out", str(tmp_path / "global.json")]) == 0
    assert probe_main([*common, "--pool", "global", "--method", "knn", "--out", str(tmp_path / "global-knn.json")]) == 0
    for name in ("knn", "global", "global-knn"):
        shared = json.loads((tmp_path / f"linear.{name}.json").read_text())
        alone = json.loads((tmp_path / f"{name}.json").read_text())
        assert shared["layers"] == alone["layers"], name
        assert (shared["kind"], shared["pool_preset"]) == (alone["kind"], alone["pool_preset"])
        assert "--also" in shared["protocol"]["shared_pass"]
    linear = json.loads((tmp_path / "linear.json").read_text())
    assert linear["pool_preset"] == "auto" and "shared_pass" not in linear["protocol"]
    assert json.loads((tmp_path / "linear.global.json").read_text())["layers"]["conv2"]["dims"] == 48  # its channels


def test_bf16_features_are_close_to_fp32_ones(tiny_checkpoint, tiny_folder):
    from selfsup.data.crops import CenterCrop
    from selfsup.data.loading import BadFileLog, eval_loader
    from selfsup.data.sources import open_splits
    from selfsup.epoch import autocast_context
    from selfsup.probes.frozen import load_frozen
    from selfsup.probes.linear import extract_features
    from selfsup.probes.pooling import build_pool

    frozen = load_frozen(str(tiny_checkpoint), arch="alexnet_small", width=None, image_size=None, seed=0)
    shapes = frozen.encoder.feature_shapes(frozen.image_size)
    pools = {layer: build_pool("auto", layer, shapes[layer])[0] for layer in ("conv1", "conv3", "conv5")}
    loader = eval_loader(open_splits(str(tiny_folder)).test, CenterCrop(frozen.image_size, 1.0), batch_size=8, workers=0)
    device = torch.device("cpu")
    plain, fast = (extract_features(frozen.encoder.eval(), frozen.input_fn, pools, loader, device, "test", BadFileLog().add,
                                    autocast=lambda: autocast_context(precision, device)) for precision in ("fp32", "bf16"))
    for layer in pools:
        a, b = plain.features[layer].float(), fast.features[layer].float()
        assert not torch.equal(a, b)  # bf16 did run
        assert (a - b).norm() / a.norm() < 0.03, layer


def test_knn_probe_chooses_k_on_val_and_reports_test(tiny_checkpoint, tmp_path):
    out = tmp_path / "knn.json"
    assert probe_main(["--checkpoint", str(tiny_checkpoint), "--method", "knn", "--knn-k", "1,5,20",
                       "--workers", "0", "--out", str(out)]) == 0
    record = json.loads(out.read_text())
    assert record["kind"] == "knn" and record["selection_split"] == "val"
    for entry in record["layers"].values():
        by_k = entry["selection_top1_by_k"]
        assert set(by_k) == {"1", "5", "20"} and entry["k"] in (1, 5, 20)
        assert entry["val_top1"] == max(by_k.values())  # val is the selection split
        assert 0 <= entry["test_top1"] <= entry["test_top5"] <= 100


def voc_from_folder(folder, root):
    """A VOC-layout copy of the tiny labelled folder: one whole-image object of its class per image."""
    import shutil

    for name in ("JPEGImages", "Annotations", "ImageSets/Main"):
        (root / name).mkdir(parents=True, exist_ok=True)
    ids = {"trainval": [], "test": []}
    for image in sorted(folder.glob("*/*/*.png")):
        split, cls = image.parts[-3], image.parts[-2]
        image_id = f"{split}_{cls}_{image.stem}"
        shutil.copy(image, root / "JPEGImages" / f"{image_id}.png")
        (root / "Annotations" / f"{image_id}.xml").write_text(
            f"<annotation><object><name>{cls}</name><difficult>0</difficult><bndbox><xmin>1</xmin><ymin>1</ymin>"
            "<xmax>40</xmax><ymax>40</ymax></bndbox></object></annotation>")
        ids["test" if split == "test" else "trainval"].append(image_id)
    for split, names in ids.items():
        (root / "ImageSets" / "Main" / f"{split}.txt").write_text("".join(f"{i}\n" for i in names))
    return root


def test_svm_probe_reports_ap_per_class_and_map(tiny_checkpoint, tiny_folder, tmp_path, capsys):
    voc = voc_from_folder(tiny_folder, tmp_path / "voc")
    out = tmp_path / "svm.json"
    assert probe_main(["--checkpoint", str(tiny_checkpoint), "--method", "svm", "--data", str(voc), "--freeze", "conv2",
                       "--svm-costs", "0.01,1", "--workers", "0", "--out", str(out)]) == 0
    record = json.loads(out.read_text())
    entry = record["layers"]["conv2"]
    assert record["kind"] == "svm_voc07" and record["splits"]["classes"] == ["class0", "class1", "class2"]
    assert set(entry["test_AP"]) == {"class0", "class1", "class2"} and set(entry["cost"].values()) <= {0.01, 1.0}
    assert entry["test_mAP"] == pytest.approx(sum(entry["test_AP"].values()) / 3, abs=0.02)
    assert "mAP" in capsys.readouterr().out
    assert probe_main(["--checkpoint", str(tiny_checkpoint), "--method", "svm", "--data", str(voc), "--freeze", "conv2",
                       "--selection-split", "test", "--force-test-selection"]) == 2


# ------------------------------------------------------------------ bad input: one line, exit status 2

MISSING_CHECKPOINT = "/nonexistent/selfsup/last.pt"  # an option error must come before the checkpoint is read


def edited_copy(checkpoint: Path, folder: Path, edit) -> Path:
    """A copy of ``checkpoint`` changed by ``edit(state)``, saved the way older versions did (full pickle)."""
    state = torch.load(checkpoint, weights_only=True)
    edit(state)
    path = folder / "last.pt"
    torch.save(state, path)
    return path


@pytest.mark.parametrize("argv, named", [
    (["--epochs", "0"], "--epochs 0 is invalid: must be at least 1"),
    (["--batch-size", "1"], "--batch-size 1"),
    (["--draws", "0"], "--draws 0"),
    (["--image-size", "0"], "--image-size 0"),
    (["--workers", "-1"], "--workers -1"),
    (["--train-images", "1"], "--train-images 1"),
    (["--also", "svm"], "--also svm is invalid"),
    (["--also", "knn", "--method", "knn"], "--also reuses"),
    (["--also", "global", "--pool", "global"], "--also global or global-knn with --pool global"),
    (["--precision", "fp16"], "--precision"),
    (["--train-images", "9", "--shots", "1"], "--train-images applies"),
    (["--lr", "0"], "--lr 0 is invalid"),
    (["--lr", "nan"], "--lr"),
    (["--knn-temperature", "inf"], "--knn-temperature"),
    (["--knn-temperature", "0"], "--knn-temperature 0"),
    (["--max-cache-gb", "-1"], "--max-cache-gb -1"),
    (["--eval-crop", "0"], "--eval-crop 0"),
    (["--eval-crop", "1.5"], "--eval-crop 1.5"),
    (["--width", "0"], "--width 0"),
    (["--svm-costs", "nan"], "--svm-costs"),
    (["--arch", "vgg16"], "--arch"),
    (["--data", ""], "--data ''"),
    (["--out", ""], "--out ''"),
])
def test_bad_option_values_are_one_line_before_the_checkpoint_is_read(argv, named, capsys):
    assert probe_main(["--checkpoint", MISSING_CHECKPOINT, *argv]) == 2
    line = one_error_line(capsys)
    assert named in line and "checkpoint" not in line


def test_unusable_outputs_are_refused_before_the_checkpoint_is_read(tmp_path, capsys):
    assert probe_main(["--checkpoint", MISSING_CHECKPOINT, "--out", str(tmp_path)]) == 2
    assert f"--out {tmp_path} is a folder" in one_error_line(capsys)
    assert probe_main(["--checkpoint", MISSING_CHECKPOINT, "--out", "/proc/selfsup-test/probe.json"]) == 2
    assert "--out" in one_error_line(capsys)
    a_file = tmp_path / "file"
    a_file.write_text("")
    assert probe_main(["--checkpoint", MISSING_CHECKPOINT, "--save-features", str(a_file)]) == 2
    assert f"--save-features {a_file} is an existing file" in one_error_line(capsys)


def test_cuda_without_cuda_is_a_device_error(monkeypatch, capsys):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert probe_main(["--checkpoint", MISSING_CHECKPOINT, "--device", "cuda"]) == 2
    assert "--device cuda" in one_error_line(capsys)


@pytest.mark.parametrize("edit, named", [
    (lambda s: s["model"].__setitem__("encoder.conv2.0.weight", torch.zeros(3, 3)), "encoder.conv2.0.weight is 3x3"),
    (lambda s: s["model"].pop("encoder.conv3.0.weight"), "no encoder.conv3.0.weight"),
    (lambda s: s["model"].__setitem__("encoder.extra", torch.zeros(1)), "unexpected entry encoder.extra"),
    (lambda s: s.pop("task"), "not an ssl-pretrain checkpoint"),
    (lambda s: s["encoder"].__setitem__("arch", "vgg16"), "encoder.arch 'vgg16'"),
    (lambda s: s["task"].__setitem__("name", "inpainting"), "task.name 'inpainting'"),
])
def test_a_checkpoint_that_does_not_fit_is_named_in_one_line(tiny_checkpoint, tmp_path, edit, named, capsys):
    damaged = edited_copy(tiny_checkpoint, tmp_path, edit)
    assert probe_main(["--checkpoint", str(damaged), "--out", str(tmp_path / "probe.json")]) == 2
    line = one_error_line(capsys)
    assert f"checkpoint {damaged}" in line and named in line
    assert not (tmp_path / "probe.json").exists()


def test_an_older_checkpoint_loads_with_trust_checkpoint_only(tiny_checkpoint, tmp_path, capsys):
    older = edited_copy(tiny_checkpoint, tmp_path, lambda s: s.__setitem__("saved_from", Path("/somewhere")))
    assert probe_main(["--checkpoint", str(older), "--freeze", "fc9"]) == 2
    assert "--trust-checkpoint" in one_error_line(capsys)
    # trusted, it loads (and is converted); the --freeze mistake is found after loading
    assert probe_main(["--checkpoint", str(older), "--trust-checkpoint", "--freeze", "fc9"]) == 2
    assert "--freeze 'fc9'" in one_error_line(capsys) and older.with_name("last.pt.orig").exists()


@pytest.mark.parametrize("argv, named", [
    (["--arch", "alexnet", "--width", "0.25", "--image-size", "8"], "--image-size 8 is too small for alexnet"),
    (["--arch", "resnet18_small", "--width", "0.25", "--pool", "rotnet"], "--pool rotnet is invalid for layer"),
])
def test_options_that_do_not_fit_the_encoder_are_one_line(argv, named, tmp_path, capsys):
    assert probe_main(["--checkpoint", "random", *argv, "--out", str(tmp_path / "probe.json")]) == 2
    assert named in one_error_line(capsys)


def test_the_command_line_defaults_are_the_library_defaults():
    args = build_parser().parse_args(["--checkpoint", "random"])
    assert options_from(args) == ProbeOptions(checkpoint="random")


def test_the_library_runs_a_probe_from_options_and_leaves_printing_to_the_caller(tiny_checkpoint, tmp_path, capsys):
    out = tmp_path / "conv2.json"
    result = run_probe(ProbeOptions(checkpoint=str(tiny_checkpoint), freeze="conv2", epochs=3, batch_size=12,
                                    workers=0, out=str(out)))
    assert result.written == [(result.record, out)]
    assert json.loads(out.read_text())["layers"].keys() == result.record["layers"].keys() == {"conv2"}
    assert capsys.readouterr().out == ""
