import pytest
import torch
from PIL import Image

from selfsup.cli.inspect import main as inspect_main
from selfsup.models import build_encoder
from selfsup.pretext import new_task
from conftest import one_error_line


def test_inspect_writes_a_captioned_png_of_the_rotated_inputs(tiny_folder, tmp_path):
    out = tmp_path / "rotation.png"
    assert inspect_main(["--task", "rotation", "--data", str(tiny_folder), "--count", "3", "--out", str(out)]) == 0
    image = Image.open(out)
    # 3 images x 4 rotations, 4 a row: 3 rows of 128 px cells plus captions
    assert image.width >= 4 * 128 and image.height >= 3 * 128


# ------------------------------------------------------------------ bad input: one line, exit status 2


def fake_checkpoint(path, edit=None):
    """An untrained rotation checkpoint (pickled as older versions saved), changed by ``edit(state)``."""
    torch.manual_seed(0)
    model = new_task("rotation", build_encoder("alexnet_small", width=0.25), {})
    state = {"encoder": {"arch": "alexnet_small", "in_channels": 3, "width": 0.25},
             "task": {"name": "rotation", "options": {}, "num_classes": None}, "model": model.state_dict(),
             "image_size": 16}
    if edit is not None:
        edit(state)
    torch.save(state, path)
    return path


@pytest.mark.parametrize("argv, named", [
    (["--count", "0"], "--count 0 is invalid: must be at least 1"),
    (["--image-size", "0"], "--image-size 0"),
    (["--out", "inspect.txt"], "--out inspect.txt"),
    (["--out", "/proc/selfsup-test/inspect.png"], "--out"),
    (["--checkpoint", "/nonexistent/last.pt", "--arch", "alexnet"], "--arch"),
])
def test_bad_options_are_one_line_before_any_work(argv, named, capsys):
    assert inspect_main(["--data", "/nonexistent/data", *argv]) == 2
    line = one_error_line(capsys)
    assert named in line and "/nonexistent" not in line


def test_checkpoints_that_do_not_fit_or_need_trust_are_one_line(tmp_path, capsys):
    out = ["--out", str(tmp_path / "inspect.png"), "--data", "/nonexistent/data"]
    damaged = fake_checkpoint(tmp_path / "damaged.pt", lambda s: s["model"].pop("encoder.conv2.0.weight"))
    assert inspect_main(["--checkpoint", str(damaged), *out]) == 2
    assert f"checkpoint {damaged}" in (line := one_error_line(capsys)) and "no encoder.conv2.0.weight" in line
    older = fake_checkpoint(tmp_path / "older.pt", lambda s: s.__setitem__("saved_from", tmp_path))
    assert inspect_main(["--checkpoint", str(older), "--task", "jigsaw", *out]) == 2
    assert "--trust-checkpoint" in one_error_line(capsys)
    # trusted, it loads (and is converted); the --task mismatch is found after loading, before the data
    assert inspect_main(["--checkpoint", str(older), "--trust-checkpoint", "--task", "jigsaw", *out]) == 2
    assert "--task jigsaw does not match the checkpoint's task rotation" in one_error_line(capsys)
    assert (tmp_path / "older.pt.orig").exists()
