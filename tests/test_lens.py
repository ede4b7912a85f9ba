"""The learned lens (selfsup.models.lens): its adversarial gradient, its place in pretraining, checkpoints,
probes and ssl-inspect, and a planted shortcut that it learns to erase."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from selfsup.checkpoint import load_checkpoint
from selfsup.cli.export import main as export_main
from selfsup.cli.inspect import main as inspect_main
from selfsup.cli.pretrain import main as pretrain_main
from selfsup.errors import CheckpointError
from selfsup.models import build_encoder
from selfsup.models.lens import Lens
from selfsup.pretext import load_task
from selfsup.pretext.rotation import rotate_batch
from selfsup.probes.frozen import load_frozen
from conftest import one_error_line
from test_resume import TASK_ARGS, Stopped, run_args, stop_after_checkpoint_at, tensors

TINY = ["--epochs", "1", "--batch-size", "8", "--workers", "0", "--image-size", "16", "--width", "0.25",
        "--device", "cpu"]


def busy_lens(channels: int = 3, weight: float | None = None) -> Lens:
    """A lens whose residual is not zero (a new one's last convolution is)."""
    torch.manual_seed(0)
    lens = Lens(channels, 4, reconstruction_weight=weight)
    torch.nn.init.normal_(lens.up[-1].weight, std=0.3)
    return lens


def gradients(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {name: p.grad.clone() for name, p in module.named_parameters()}


@pytest.mark.parametrize("channels, size", [(3, 16), (1, 7), (2, 9)])
def test_a_new_lens_is_the_identity_and_its_change_is_zero_mean(channels, size):
    images = torch.randn(2, channels, size, size)
    torch.testing.assert_close(Lens(channels, 4)(images), images, rtol=0, atol=0)
    change = busy_lens(channels)(images) - images
    assert change.shape == images.shape and change.abs().amax() > 0.01
    # no global shifts: per image and channel the change averages to zero
    torch.testing.assert_close(change.mean(dim=(2, 3)), torch.zeros(2, channels), rtol=0, atol=1e-5)


def test_the_lens_ascends_the_log_of_the_loss_and_descends_its_reconstruction_penalty():
    images, direction = torch.randn(4, 3, 12, 12), torch.randn(4, 3, 12, 12)
    weight, loss = 0.7, torch.tensor(2.5)
    plain, adversary, penalised = busy_lens(), busy_lens(weight=weight), busy_lens()
    adversary.weigh_loss(loss)
    (plain(images) * direction).sum().backward()
    (adversary(images) * direction).sum().backward()
    (weight * penalised.residual(images).pow(2).mean()).backward()
    loss_grad, adversary_grad, penalty_grad = gradients(plain), gradients(adversary), gradients(penalised)
    for name, grad in loss_grad.items():
        assert grad.abs().sum() > 0 and penalty_grad[name].abs().sum() > 0, name
        # d/dθ of -log(loss) + penalty = -(1 / loss) dloss/dθ + dpenalty/dθ
        torch.testing.assert_close(adversary_grad[name], -grad / loss + penalty_grad[name])
    # without gradients (evaluation) the adversary computes what the plain lens computes
    with torch.no_grad():
        torch.testing.assert_close(adversary(images), plain(images))


def test_the_encoder_behind_an_adversarial_lens_gets_the_ordinary_gradient():
    torch.manual_seed(0)
    encoder = build_encoder("alexnet_small", width=0.25)
    encoder.lens = busy_lens()
    adversarial = copy.deepcopy(encoder)
    adversarial.lens.reconstruction_weight = 1e-6  # the penalty's share is checked above
    images = torch.randn(4, 3, 16, 16)
    for model in (encoder, adversarial):
        model(images).square().mean().backward()
    ordinary, reversed_ = gradients(encoder), gradients(adversarial)
    for name, grad in ordinary.items():
        if name.startswith("lens."):
            assert torch.dot(grad.flatten(), reversed_[name].flatten()) < 0, name
        else:
            torch.testing.assert_close(reversed_[name], grad)


def test_freezing_any_stage_freezes_the_lens_in_front_of_it():
    encoder = build_encoder("alexnet_small", width=0.25)
    encoder.lens = Lens(3, 4)
    encoder.freeze_through("conv1")
    assert not any(p.requires_grad for p in encoder.lens.parameters())
    assert all(p.requires_grad for p in encoder.conv2.parameters())


# ------------------------------------------------------------------ pretraining, checkpoint, probes, CLIs


@pytest.fixture(scope="module")
def lens_run(tiny_folder, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("lens") / "run"
    assert pretrain_main(["--data", str(tiny_folder), *TINY, "--set", "lens.enabled=true", "--set", "lens.width=4",
                          "--out", str(out)]) == 0
    return out / "last.pt"


def test_the_lens_is_trained_saved_and_applied_when_probing(lens_run):
    state = load_checkpoint(lens_run)
    assert state["encoder"]["lens"] == {"channels": 3, "width": 4}
    assert state["config"]["lens"]["enabled"] is True
    assert state["lens_optimizer"]["state"]  # its own Adam, saved for an exact resume
    assert state["history"][-1]["lens_change"] > 0  # the mean squared change, logged beside the loss
    saved = state["model"]["encoder.lens.up.2.weight"]
    assert saved.abs().sum() > 0  # it started at zero: pretraining trained it
    # the task's optimiser leaves the lens to its own
    task_params = sum(len(group["params"]) for group in state["optimizer"]["param_groups"])
    lens_params = len(state["lens_optimizer"]["param_groups"][0]["params"])
    assert task_params + lens_params == sum(1 for key in state["model"] if not key.endswith(("running_mean",
                                                                                             "running_var",
                                                                                             "num_batches_tracked")))
    frozen = load_frozen(str(lens_run), arch="alexnet_small", width=None, image_size=None, seed=0)
    assert frozen.record["encoder"]["lens"] == {"channels": 3, "width": 4}
    torch.testing.assert_close(frozen.encoder.lens.up[2].weight, saved)
    assert not frozen.encoder.lens.adversarial  # no adversary outside pretraining
    images = frozen.input_fn(torch.rand(2, 3, 16, 16))
    without = copy.deepcopy(frozen.encoder)
    without.lens = None
    with torch.no_grad():
        taps = frozen.encoder.forward_taps(images, ["conv1"])["conv1"]
        torch.testing.assert_close(taps, without.forward_taps(frozen.encoder.lens(images), ["conv1"])["conv1"])
        assert not torch.allclose(taps, without.forward_taps(images, ["conv1"])["conv1"])


def test_a_run_without_a_lens_records_none(tiny_folder, tmp_path):
    assert pretrain_main(["--data", str(tiny_folder), *TINY, "--max-steps", "1", "--out", str(tmp_path / "run")]) == 0
    state = load_checkpoint(tmp_path / "run" / "last.pt")
    assert "lens" not in state["encoder"] and "lens_optimizer" not in state
    assert not any(".lens." in key for key in state["model"])
    assert load_task("run", state=state).encoder.lens is None


@pytest.mark.parametrize("task", [task for task in TASK_ARGS if task != "rotation"])
def test_every_task_trains_behind_a_lens(task, tiny_folder, tmp_path):
    """Tiles, patches, L and Sobel inputs of odd sizes go through the lens and come back whole."""
    out = tmp_path / "run"
    args = run_args(task, tiny_folder / "train", out, "--max-steps", "2", "--set", "lens.enabled=true",
                    "--set", "lens.width=4")
    assert pretrain_main(args) == 0
    state = load_checkpoint(out / "last.pt")
    assert state["encoder"]["lens"]["channels"] == state["encoder"]["in_channels"]
    assert state["model"]["encoder.lens.up.2.weight"].abs().sum() > 0
    assert load_task(out / "last.pt").encoder.lens is not None


def test_a_stopped_lens_run_resumes_to_the_same_tensors(tiny_folder, tmp_path, monkeypatch):
    folder, lens = tiny_folder / "train", ["--set", "lens.enabled=true", "--set", "lens.width=4"]
    assert pretrain_main(run_args("rotation", folder, tmp_path / "reference", *lens)) == 0
    with monkeypatch.context() as patch:
        stop_after_checkpoint_at(patch, 8)
        with pytest.raises(Stopped):
            pretrain_main(run_args("rotation", folder, tmp_path / "stopped", *lens))
    torch.manual_seed(12345)
    assert pretrain_main(run_args("rotation", folder, tmp_path / "stopped", *lens, "--resume")) == 0
    expected = load_checkpoint(tmp_path / "reference" / "last.pt")
    resumed = load_checkpoint(tmp_path / "stopped" / "last.pt")
    for part in ("model", "optimizer", "lens_optimizer"):
        want, got = tensors(expected[part]), tensors(resumed[part])
        assert want.keys() == got.keys() and want
        for name in want:
            assert torch.equal(want[name], got[name]), f"{part}.{name}"


def test_inspect_shows_input_lens_output_and_difference(lens_run, tiny_folder, tmp_path, capsys):
    out = tmp_path / "inspect.png"
    assert inspect_main(["--checkpoint", str(lens_run), "--data", str(tiny_folder), "--count", "2",
                         "--out", str(out)]) == 0
    lens_png = tmp_path / "inspect_lens.png"
    assert f"wrote {lens_png}" in capsys.readouterr().out
    image = Image.open(lens_png)
    # 3 columns (input, output, difference) of 128 px cells, a row per image
    assert 3 * 128 <= image.width < 4 * 128 and image.height >= 2 * 128


def test_export_refuses_a_lens_in_one_line(lens_run, tmp_path, capsys):
    assert export_main(["--checkpoint", str(lens_run), "--format", "selfsup", "--out", str(tmp_path / "e.pt")]) == 2
    assert "lens" in one_error_line(capsys) and not (tmp_path / "e.pt").exists()


@pytest.mark.parametrize("lens", [{"channels": 1, "width": 4}, {"width": 4}, {"channels": 3, "width": 0}, "wide"])
def test_a_bad_lens_record_is_a_checkpoint_error(lens_run, lens):
    state = load_checkpoint(lens_run)
    state["encoder"]["lens"] = lens
    with pytest.raises(CheckpointError, match="encoder.lens"):
        load_task("edited.pt", state=state)


@pytest.mark.parametrize("option", ["lens.reconstruction_weight=0", "lens.width=0", "lens.lr=nan"])
def test_bad_lens_options_are_one_line(option, tiny_folder, tmp_path, capsys):
    assert pretrain_main(["--data", str(tiny_folder), *TINY, "--set", option, "--out", str(tmp_path / "run")]) == 2
    assert option.split("=")[0] in one_error_line(capsys)


# ------------------------------------------------------------------ a planted shortcut

SIZE, MARK = 16, 3


def marked_images(count: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Smooth grey blobs, whose distribution looks the same in every rotation, with and without a red square in
    the top-left corner: rotated, its corner gives the rotation away."""
    blobs = F.interpolate(torch.rand(count, 1, 4, 4, generator=generator), size=SIZE, mode="bilinear",
                          align_corners=False)
    plain = (0.2 + 0.6 * blobs).expand(-1, 3, -1, -1).clone()
    marked = plain.clone()
    marked[:, :, :MARK, :MARK] = torch.tensor([1.0, 0.0, 0.0]).view(1, 3, 1, 1)
    return marked, plain


def rotation_accuracy(task, images: torch.Tensor) -> float:
    rotated, targets = rotate_batch(task.encoder_input(images))
    with torch.no_grad():
        return float((task.head(task.encoder(rotated)).argmax(dim=1) == targets).float().mean())


@pytest.fixture(scope="module")
def marked_folder(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("marked")
    marked, _ = marked_images(512, torch.Generator().manual_seed(1))
    for i, image in enumerate((marked * 255).round().byte().permute(0, 2, 3, 1).numpy()):
        Image.fromarray(np.ascontiguousarray(image)).save(root / f"{i:04d}.png")
    return root


def pretrain_on_marked_images(folder: Path, out: Path, *lens: str):
    """ssl-pretrain rotation for 200 steps on the marked images (whole images: no crops, no flips, which would
    move the mark), then its task, in eval mode."""
    assert pretrain_main(["--data", str(folder), "--epochs", "100", "--max-steps", "200", "--batch-size", "16",
                          "--workers", "0", "--image-size", str(SIZE), "--arch", "alexnet_small", "--width", "0.25",
                          "--device", "cpu", "--set", "pretext.head_hidden=64", "--set", "data.hflip=false",
                          "--set", "data.crop_scale_min=1.0", "--out", str(out), *lens]) == 0
    return load_task(out / "last.pt")


def test_the_lens_erases_a_planted_shortcut(marked_folder, tmp_path):
    """Without a lens the network reads the rotation off the corner mark; behind the (default) lens it does
    not, and the lens changes the mark's pixels several times more than the rest."""
    held_out_marked, held_out_plain = marked_images(256, torch.Generator().manual_seed(2))
    plain_task = pretrain_on_marked_images(marked_folder, tmp_path / "plain")
    use = rotation_accuracy(plain_task, held_out_marked) - rotation_accuracy(plain_task, held_out_plain)
    lensed = pretrain_on_marked_images(marked_folder, tmp_path / "lensed", "--set", "lens.enabled=true")
    lensed_use = rotation_accuracy(lensed, held_out_marked) - rotation_accuracy(lensed, held_out_plain)
    print(f"mark use (accuracy marked - plain): {use:.3f} without the lens, {lensed_use:.3f} with it")
    assert use > 0.6  # chance is 0.25 on the plain blobs; the mark gives it all away
    assert abs(lensed_use) < 0.3
    marked, _ = marked_images(64, torch.Generator().manual_seed(3))
    seen = lensed.encoder_input(marked)
    with torch.no_grad():
        change = (lensed.encoder.lens(seen) - seen).abs().mean(dim=(0, 1))
    at_mark = change[:MARK, :MARK].mean()
    elsewhere = (change.sum() - change[:MARK, :MARK].sum()) / (SIZE * SIZE - MARK * MARK)
    print(f"mean change at the mark {float(at_mark):.3f}, elsewhere {float(elsewhere):.3f}")
    assert at_mark > 4 * elsewhere
