"""ssl-export: torchvision / timm / Detectron2 / selfsup files that load strictly and compute the same features."""

import json
import pickle
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
import torchvision
from torch import nn

from selfsup.checkpoint import load_checkpoint
from selfsup.cli.export import main as export_main
from selfsup.errors import CheckpointError
from selfsup.cli.pretrain import main as pretrain_main
from selfsup.models import build_encoder
from selfsup.models.normalization import normalize_rgb
from selfsup.pretext.deepcluster import sobel_input
from selfsup.transfer.export import detectron2_key, export_backbone, load_exported, load_pretrained
from conftest import one_error_line

NORM = ("weight", "bias", "running_mean", "running_var")


def randomize_batchnorms(encoder, seed=0):
    g = torch.Generator().manual_seed(seed)
    for m in encoder.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.3)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(m.num_features, generator=g) + 0.5)
    return encoder.eval()


def fake_checkpoint(path, encoder, task="rotation", options=None, width=None):
    """The parts of an ssl-pretrain checkpoint that ssl-export reads (no need to train a ResNet-50 here)."""
    state = {"encoder": {"arch": encoder.arch, "in_channels": encoder.in_channels, "width": width},
             "task": {"name": task, "options": options or {}, "num_classes": None},
             "model": {f"encoder.{k}": v for k, v in encoder.state_dict().items()}}
    torch.save(state, path)
    return path


def run_load_line(metadata):
    """Executes the printed load line, as a user would paste it, and returns the model it built."""
    namespace = {"torch": torch, "torchvision": torchvision, "timm": timm}
    exec(metadata["load"], namespace)
    return namespace.get("m", namespace.get("encoder"))


def res5(encoder, x):
    with torch.no_grad():
        return encoder(normalize_rgb(x))


@pytest.fixture(scope="module")
def resnet18_checkpoint(tmp_path_factory):
    torch.manual_seed(0)
    encoder = randomize_batchnorms(build_encoder("resnet18"))
    return encoder, fake_checkpoint(tmp_path_factory.mktemp("r18") / "last.pt", encoder)


def test_torchvision_export_loads_strictly_into_resnet18_and_matches_features(resnet18_checkpoint, tmp_path):
    encoder, checkpoint = resnet18_checkpoint
    out = tmp_path / "r18.pth"
    metadata = export_backbone(checkpoint, "torchvision", out)
    model = torchvision.models.resnet18()
    model.load_state_dict(torch.load(out), strict=True)
    model.eval()
    assert torch.count_nonzero(model.fc.weight) == 0 and "untrained" in metadata["classifier"]
    assert json.loads((tmp_path / "r18.pth.json").read_text()) == metadata

    images = torch.rand(2, 3, 64, 64)
    trunk = nn.Sequential(*list(model.children())[:-2])  # up to layer4
    with torch.no_grad():
        torch.testing.assert_close(trunk(normalize_rgb(images)), res5(encoder, images))
    assert isinstance(run_load_line(metadata), torchvision.models.ResNet)


def test_timm_export_loads_strictly_and_matches_features(resnet18_checkpoint, tmp_path):
    encoder, checkpoint = resnet18_checkpoint
    metadata = export_backbone(checkpoint, "timm", tmp_path / "r18_timm.pth")
    model = timm.create_model("resnet18", pretrained=False, num_classes=0)
    model.load_state_dict(torch.load(tmp_path / "r18_timm.pth"), strict=True)
    model.eval()
    images = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(model.forward_features(normalize_rgb(images)), res5(encoder, images))
    run_load_line(metadata)


def test_small_resnet_at_width_one_exports_with_the_stem_replacement_in_its_load_line(tmp_path):
    torch.manual_seed(0)
    encoder = randomize_batchnorms(build_encoder("resnet18_small", width=1.0))
    checkpoint = fake_checkpoint(tmp_path / "last.pt", encoder, width=1.0)
    images = torch.rand(2, 3, 32, 32)
    for fmt in ("torchvision", "timm"):
        metadata = export_backbone(checkpoint, fmt, tmp_path / f"{fmt}.pth")
        assert "m.maxpool = torch.nn.Identity()" in metadata["load"] and "stem" in metadata
        model = run_load_line(metadata).eval()  # load_state_dict's default is strict=True
        trunk = model.forward_features if fmt == "timm" else nn.Sequential(*list(model.children())[:-2])
        with torch.no_grad():
            torch.testing.assert_close(trunk(normalize_rgb(images)), res5(encoder, images))
    with pytest.raises(ValueError, match="detectron2's fixed ResNet stem"):
        export_backbone(checkpoint, "detectron2", tmp_path / "small.pkl")


def expected_detectron2_keys(depth):
    """Detectron2's ResNet-{18,50} backbone parameters (FrozenBN), as its converter names them."""
    blocks, convs = {18: ((2, 2, 2, 2), 2), 50: ((3, 4, 6, 3), 3)}[depth]
    keys = {"stem.conv1.weight", *(f"stem.conv1.norm.{p}" for p in NORM)}
    for stage, count in zip(range(2, 6), blocks):
        for block in range(count):
            names = [f"conv{i}" for i in range(1, convs + 1)]
            if block == 0 and (stage > 2 or depth == 50):  # projection shortcut where the shape changes
                names.append("shortcut")
            for name in names:
                keys.add(f"res{stage}.{block}.{name}.weight")
                keys.update(f"res{stage}.{block}.{name}.norm.{p}" for p in NORM)
    return keys


@pytest.mark.parametrize("arch", ["resnet50", "resnet18"])
def test_detectron2_export_has_the_converter_key_names_and_round_trips_values(arch, tmp_path):
    torch.manual_seed(0)
    encoder = randomize_batchnorms(build_encoder(arch))
    out = tmp_path / f"{arch}.pkl"
    metadata = export_backbone(fake_checkpoint(tmp_path / "last.pt", encoder), "detectron2", out)
    with open(out, "rb") as handle:
        saved = pickle.load(handle, encoding="latin1")  # as detectron2's checkpointer reads .pkl files
    assert saved["__author__"] == "selfsup" and saved["matching_heuristics"] is True
    assert set(saved["model"]) == expected_detectron2_keys(int(arch.removeprefix("resnet")))
    assert all(isinstance(v, np.ndarray) for v in saved["model"].values())
    assert "INPUT.FORMAT RGB" in metadata["pixel_format"] and "123.675" in metadata["pixel_format"]
    config = dict(zip(metadata["detectron2_config"][::2], metadata["detectron2_config"][1::2]))
    assert config["MODEL.PIXEL_STD"] == "[58.395, 57.12, 57.375]" and config["MODEL.WEIGHTS"] == str(out)

    # Back from detectron2's names to ours: every tensor comes back unchanged and loads strictly.
    tv_state = encoder.torchvision_state_dict()
    restored = {k: torch.from_numpy(saved["model"][detectron2_key(k)]) for k in tv_state
                if not k.endswith("num_batches_tracked")}
    restored.update({k: v for k, v in tv_state.items() if k.endswith("num_batches_tracked")})
    fresh = build_encoder(arch)
    fresh.load_torchvision_state_dict(restored, strict=True)
    assert all(torch.equal(a, b) for a, b in zip(fresh.state_dict().values(), encoder.state_dict().values()))


def test_detectron2_key_rules_match_the_converter_examples():
    assert detectron2_key("conv1.weight") == "stem.conv1.weight"
    assert detectron2_key("bn1.running_var") == "stem.conv1.norm.running_var"
    assert detectron2_key("layer1.0.bn3.bias") == "res2.0.conv3.norm.bias"
    assert detectron2_key("layer4.0.downsample.0.weight") == "res5.0.shortcut.weight"
    assert detectron2_key("layer4.0.downsample.1.running_mean") == "res5.0.shortcut.norm.running_mean"


def test_detectron2_needs_a_pkl_name(resnet18_checkpoint, tmp_path):
    with pytest.raises(ValueError, match=r"--out .* must end in \.pkl"):
        export_backbone(resnet18_checkpoint[1], "detectron2", tmp_path / "r18.pth")


def test_alexnet_is_refused_for_torchvision_with_a_one_line_error(tmp_path, capsys):
    checkpoint = fake_checkpoint(tmp_path / "last.pt", build_encoder("alexnet_small", width=0.25), width=0.25)
    out = tmp_path / "alexnet.pth"
    assert export_main(["--checkpoint", str(checkpoint), "--format", "torchvision", "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:") and "AlexNet" in err[0] and "--format selfsup" in err[0]
    assert not out.exists()


def test_sobel_resnet_exports_a_larger_conv1_for_torchvision(tmp_path):
    torch.manual_seed(0)
    encoder = randomize_batchnorms(build_encoder("resnet18", in_channels=2))
    checkpoint = fake_checkpoint(tmp_path / "last.pt", encoder, task="deepcluster", options={"sobel": True})
    metadata = export_backbone(checkpoint, "torchvision", tmp_path / "sobel.pth")
    assert "m.conv1 = torch.nn.Conv2d(3, 64, (9, 9), stride=(2, 2), padding=(4, 4)" in metadata["load"]
    model = run_load_line(metadata).eval()
    images = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        ours = model.relu(model.bn1(model.conv1(normalize_rgb(images))))
        original = encoder.forward_taps(sobel_input(images), ["conv1"])["conv1"]
    torch.testing.assert_close(ours[..., 2:-2, 2:-2], original[..., 2:-2, 2:-2], atol=1e-4, rtol=1e-4)


# ------------------------------------------------------------------ the CLI on real (tiny) runs


@pytest.fixture(scope="module")
def tiny_resnet_checkpoint(tiny_folder, tmp_path_factory):
    out = tmp_path_factory.mktemp("rotation_resnet")
    assert pretrain_main(["--data", str(tiny_folder), "--arch", "resnet18_small", "--width", "0.25", "--epochs", "1",
                          "--batch-size", "8", "--workers", "0", "--image-size", "16", "--out", str(out)]) == 0
    return out / "last.pt"


def test_cli_exports_a_pretrained_small_resnet_in_selfsup_format(tiny_resnet_checkpoint, tmp_path, capsys):
    out = tmp_path / "encoder.pt"
    assert export_main(["--checkpoint", str(tiny_resnet_checkpoint), "--format", "selfsup", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert f"wrote {out}" in printed and "front-end folding: none" in printed and "load_exported" in printed
    encoder = load_exported(out)
    saved = torch.load(out, weights_only=True)
    assert saved["spec"]["in_channels"] == 3 and saved["spec"]["input"] == "imagenet-normalised RGB"
    original, _ = load_pretrained(tiny_resnet_checkpoint)
    images = torch.rand(2, 3, 16, 16)
    torch.testing.assert_close(res5(encoder, images), res5(original, images))


def test_cli_refuses_torchvision_for_a_quarter_width_resnet(tiny_resnet_checkpoint, tmp_path, capsys):
    out = tmp_path / "r18.pth"
    assert export_main(["--checkpoint", str(tiny_resnet_checkpoint), "--format", "torchvision", "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "widths" in err[0] and "--format selfsup" in err[0] and not out.exists()


def test_cli_exports_a_deepcluster_sobel_checkpoint_as_three_channels(tiny_folder, tmp_path, capsys):
    run = tmp_path / "run"
    assert pretrain_main(["--task", "deepcluster", "--batch-size", "8", "--workers", "0", "--image-size", "16",
                          "--width", "0.25", "--device", "cpu", "--set", "pretext.num_clusters=6",
                          "--set", "pretext.mlp_dim=32", "--set", "pretext.head_pool=1", "--data", str(tiny_folder),
                          "--epochs", "1", "--out", str(run)]) == 0
    assert load_checkpoint(run / "last.pt")["encoder"]["in_channels"] == 2
    out = tmp_path / "dc.pt"
    assert export_main(["--checkpoint", str(run / "last.pt"), "--format", "selfsup", "--out", str(out)]) == 0
    assert "front-end folding: sobel:" in capsys.readouterr().out
    encoder = load_exported(out)
    assert encoder.in_channels == 3
    original, _ = load_pretrained(run / "last.pt")
    images = torch.rand(2, 3, 24, 24)
    with torch.no_grad():
        ours = encoder.forward_taps(normalize_rgb(images), ["conv1"])["conv1"]
        theirs = original.forward_taps(sobel_input(images), ["conv1"])["conv1"]
    torch.testing.assert_close(ours[..., 2:-2, 2:-2], theirs[..., 2:-2, 2:-2], atol=1e-4, rtol=1e-4)


# ------------------------------------------------------------------ bad input: one line, exit status 2


def test_unusable_out_is_refused_before_the_checkpoint_is_read(tmp_path, capsys):
    missing = str(tmp_path / "missing.pt")
    assert export_main(["--checkpoint", missing, "--format", "selfsup", "--out", str(tmp_path)]) == 2
    assert f"--out {tmp_path} is a folder" in one_error_line(capsys)
    assert export_main(["--checkpoint", missing, "--format", "selfsup", "--out", "/proc/selfsup-test/x.pt"]) == 2
    assert "--out" in one_error_line(capsys)


@pytest.mark.parametrize("edit, named", [
    (lambda s: s["model"].__setitem__("encoder.conv1.0.weight", torch.zeros(4, 3, 3, 3)),
     "encoder.conv1.0.weight is 4x3x3x3 in the file"),
    (lambda s: s["model"].pop("encoder.res5.1.bn2.running_var"), "no encoder.res5.1.bn2.running_var"),
    (lambda s: s.pop("model"), "not an ssl-pretrain checkpoint"),
    (lambda s: s["task"].__setitem__("name", "inpainting"), "task.name 'inpainting'"),
    (lambda s: s["task"].__setitem__("options", {"sobel": True}), "task options"),
])
def test_a_checkpoint_that_does_not_fit_is_named_in_one_line(resnet18_checkpoint, tmp_path, edit, named, capsys):
    state = torch.load(resnet18_checkpoint[1], weights_only=True)
    edit(state)
    damaged = tmp_path / "last.pt"
    torch.save(state, damaged)
    out = tmp_path / "r18.pt"
    assert export_main(["--checkpoint", str(damaged), "--format", "selfsup", "--out", str(out)]) == 2
    line = one_error_line(capsys)
    assert f"checkpoint {damaged}" in line and named in line and not out.exists()


def test_an_older_checkpoint_exports_with_trust_checkpoint_only(tmp_path, capsys):
    encoder = build_encoder("resnet18_small", width=0.25)
    older = fake_checkpoint(tmp_path / "last.pt", encoder, width=0.25)
    state = torch.load(older, weights_only=True)
    torch.save({**state, "saved_from": Path("/somewhere")}, older)
    out = tmp_path / "encoder.pt"
    assert export_main(["--checkpoint", str(older), "--format", "selfsup", "--out", str(out)]) == 2
    assert "--trust-checkpoint" in one_error_line(capsys) and not out.exists()
    assert export_main(["--checkpoint", str(older), "--trust-checkpoint", "--format", "selfsup", "--out", str(out)]) == 0
    assert load_exported(out).arch == "resnet18_small" and (tmp_path / "last.pt.orig").exists()


def test_load_exported_names_a_file_of_another_kind(resnet18_checkpoint):
    with pytest.raises(CheckpointError, match="is not an ssl-export --format selfsup file"):
        load_exported(resnet18_checkpoint[1])
