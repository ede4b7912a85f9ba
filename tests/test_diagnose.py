"""ssl-diagnose: records of the trivial solvers beside chance (and a checkpoint's network), one-line errors."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from PIL import Image

from selfsup.cli.diagnose import main as diagnose_main
from selfsup.cli.pretrain import main as pretrain_main
from selfsup.diagnose.diagnosis import diagnose
from selfsup.diagnose.solvers import fit_split
from selfsup.diagnose.tasks import FIT_FRACTION

TINY_RUN = ["--epochs", "1", "--max-steps", "2", "--batch-size", "8", "--workers", "0", "--device", "cpu",
            "--precision", "fp32", "--width", "0.25", "--set", "data.decoded_cache_gb=0"]
TINY_TASK = {
    "rotation": ["--image-size", "16"],
    "jigsaw": ["--image-size", "48", "--set", "pretext.num_permutations=10", "--set", "pretext.fc6_dim=16",
               "--set", "pretext.fc7_dim=16"],
}


@pytest.fixture(scope="module")
def checkpoints(tiny_folder: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A two-step run of rotation and of jigsaw on the tiny folder's train split: their last.pt."""
    runs = {}
    for task, extra in TINY_TASK.items():
        out = tmp_path_factory.mktemp(f"run_{task}")
        assert pretrain_main(["--task", task, "--data", str(tiny_folder), *TINY_RUN, *extra, "--out", str(out)]) == 0
        runs[task] = out / "last.pt"
    return runs


def one_error_line(capsys: pytest.CaptureFixture) -> str:
    """The command's only ``error:`` line on stderr; before it only progress lines, never a traceback."""
    err = capsys.readouterr().err.strip().splitlines()
    errors = [line for line in err if line.startswith("error:")]
    assert len(errors) == 1 and err[-1] == errors[0], err
    assert all(line.startswith(("ssl-diagnose: ", "error:")) for line in err), err
    return errors[0]


def read_record(path: Path) -> dict:
    record = json.loads(path.read_text())
    assert record["kind"] == "diagnose"
    for key in ("task", "options", "data", "images", "rows", "command", "git_commit", "machine"):
        assert key in record, key
    return record


@pytest.mark.parametrize("task, chances", [("rotation", [0.25, 0.25]), ("counting", [0.5]),
                                           ("jigsaw", [0.01, 0.01])])
def test_a_record_holds_each_solver_beside_chance(task, chances, tiny_folder, tmp_path, capsys):
    out = tmp_path / "diagnose.json"
    assert diagnose_main(["--task", task, "--data", str(tiny_folder), "--images", "12", "--threads", "1",
                          "--json", str(out)]) == 0
    captured = capsys.readouterr()
    record = read_record(out)
    assert record["task"] == task and record["images"] == 12 and record["checkpoint"] is None
    assert record["data"]["split"] == "test"  # the tiny folder's test/ sub-folder: never pretrained on
    assert [row["chance"] for row in record["rows"]] == pytest.approx(chances)
    for row in record["rows"]:
        assert math.isfinite(row["value"]) and 0 <= row["value"] <= 1
        assert row["network"] is None  # no checkpoint, no network
        assert row["solver"] in captured.out and row["cue"] in captured.out
    # a line per stage on stderr, the table (and nothing else) on stdout
    assert "loading 12 held-out images" in captured.err and captured.err.count("solver") >= len(chances)
    assert captured.out.startswith("ssl-diagnose: ") and "| chance | network" in captured.out


def test_the_demo_options_and_seed_are_the_runs(tiny_folder, tmp_path):
    out = tmp_path / "jigsaw.json"
    assert diagnose_main(["--task", "jigsaw", "--data", str(tiny_folder), "--images", "12", "--seed", "3",
                          "--json", str(out)]) == 0
    record = read_record(out)
    assert record["options"]["num_permutations"] == 100  # the demo preset's, as ssl-pretrain --task jigsaw
    assert record["image_size"] == 64 and record["seed"] == 3
    raw, fed = record["rows"]
    assert "raw tiles" in raw["note"] and "standardised" in fed["note"]


def test_a_checkpoint_of_another_task_is_one_line(checkpoints, tiny_folder, capsys):
    rotation = checkpoints["rotation"]
    assert diagnose_main(["--task", "jigsaw", "--checkpoint", str(rotation), "--data", str(tiny_folder)]) == 2
    assert one_error_line(capsys) == (f"error: --checkpoint {rotation} is a rotation checkpoint; --task jigsaw needs "
                                      "a jigsaw one (or leave --task out)")


@pytest.mark.parametrize("argv, expected", [
    ([], "give --task"),
    (["--task", "rotation", "--images", "3"], "--images 3 is invalid"),
    (["--task", "supervised"], "invalid choice"),
    (["--checkpoint", "missing/last.pt"], "checkpoint not found: missing/last.pt"),
])
def test_mistakes_are_one_line(argv, expected, tiny_folder, capsys):
    assert diagnose_main([*argv, "--data", str(tiny_folder)]) == 2
    assert expected in one_error_line(capsys)


@pytest.mark.parametrize("task", ["rotation", "jigsaw"])
def test_a_checkpoint_is_scored_beside_its_solvers(task, checkpoints, tiny_folder, tmp_path, capsys):
    out = tmp_path / "diagnose.json"
    # --task left out: the checkpoint's
    assert diagnose_main(["--checkpoint", str(checkpoints[task]), "--data", str(tiny_folder), "--images", "12",
                          "--threads", "1", "--json", str(out)]) == 0
    record = read_record(out)
    state = torch.load(checkpoints[task], map_location="cpu", weights_only=True)
    assert record["task"] == task and record["options"] == state["task"]["options"]
    assert record["image_size"] == state["image_size"]
    for row in record["rows"]:
        assert 0 <= row["network"] <= 1 and math.isfinite(row["network_extra"]["loss"])
    table = capsys.readouterr().out
    assert f"{100 * record['rows'][0]['network']:.1f}%" in table.split("\n")[3]  # the first row's network column
    if task == "rotation":  # fitted solvers: the network is scored on the solvers' half, not on all the images
        assert [row["scored"] for row in record["rows"]] == [12 - fit_split(12, FIT_FRACTION)] * 2
    else:
        assert [row["scored"] for row in record["rows"]] == [12, 12]
        # both jigsaw rows score the network on the same puzzles
        assert record["rows"][0]["network"] == record["rows"][1]["network"]
    # the run's seeds: the same images, crops and pretext inputs again, so the same numbers
    again = diagnose(checkpoint=str(checkpoints[task]), data=str(tiny_folder), images=12)
    assert again["seed"] == state["config"]["train"]["seed"] and again["rows"] == record["rows"]


@pytest.mark.parametrize("task, names", [
    ("rotation", ["low-pass (4x4 px, upsampled)", "high-pass (image less its low-pass, over its mean colour)"]),
    ("jigsaw", ["tile borders masked (1 px)", "colour channels aligned to green"]),
])
def test_a_checkpoint_is_scored_again_with_each_cue_ablated_and_the_png_shows_the_inputs(task, names, checkpoints,
                                                                                          tiny_folder, tmp_path,
                                                                                          capsys):
    out, png = tmp_path / "diagnose.json", tmp_path / "ablated.png"
    assert diagnose_main(["--checkpoint", str(checkpoints[task]), "--data", str(tiny_folder), "--images", "12",
                          "--threads", "1", "--json", str(out), "--png", str(png)]) == 0
    record = read_record(out)
    assert [a["name"] for a in record["ablations"]] == names
    scored_row = record["rows"][-1]  # the region statistics / standardised tiles: the row the ablations start from
    for ablation in record["ablations"]:
        # before: the network on exactly the inputs of its row; after: on the same inputs with the cue destroyed
        assert ablation["network_before"] == scored_row["network"] and ablation["scored"] == scored_row["scored"]
        assert 0 <= ablation["network_after"] <= 1
        assert ablation["network_extra"]["loss_after"] != ablation["network_extra"]["loss_before"]
    if task == "jigsaw":
        masked, aligned = record["ablations"]
        assert masked["solver_before"] == scored_row["value"] and masked["solver_after"] <= 1 / 12 + 1e-6
        assert aligned["solver"] is None
    table = capsys.readouterr().out
    assert "| network before | network after |" in table and all(name in table for name in names)
    assert table.rstrip().endswith(f"wrote {png}")
    with Image.open(png) as image:
        # a row per example (4 of them), a column for the inputs and one per ablation, 134 px a cell
        assert image.width == 6 + 3 * 134 and image.height > 4 * 134
    assert record["png"] == str(png)


def test_without_a_checkpoint_there_are_no_ablations_but_the_png_shows_them(tiny_folder, tmp_path):
    png = tmp_path / "counting.png"
    record = diagnose("counting", data=str(tiny_folder), images=12, png_path=str(png))
    assert record["ablations"] == []
    with Image.open(png) as image:  # D x, its tiles, both equalised
        assert image.width == 6 + 4 * 134


@pytest.mark.parametrize("argv, expected", [
    (["--task", "colorization", "--png", "x.png"], "--png shows the inputs with each cue ablated; colorization has "
                                                   "no cue ablations"),
    (["--task", "rotation", "--png", "x.jpg"], "--png x.jpg is invalid: give a file name ending in .png"),
])
def test_png_mistakes_are_one_line(argv, expected, tiny_folder, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert diagnose_main([*argv, "--data", str(tiny_folder)]) == 2
    assert expected in one_error_line(capsys)
    assert not list(tmp_path.iterdir())
