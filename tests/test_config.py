import subprocess
from pathlib import Path
import sys

import pytest

from selfsup.cli.pretrain import parse_config
from selfsup.config import ConfigError, PretrainConfig, config_differences, from_dict, to_dict
from selfsup.pretext import check_pretrain_config


def test_defaults_are_valid_and_are_the_demo_preset():
    cfg = from_dict(PretrainConfig, {})
    assert cfg.task == "rotation" and cfg.data.data == "demo" and cfg.model.arch == "alexnet_small"


@pytest.mark.parametrize(
    "values,message",
    [
        ({"optim": {"lr": -1}}, "optim.lr = -1 is invalid: must be > 0.0"),
        ({"optim": {"optimizer": "rmsprop"}}, "optim.optimizer = 'rmsprop' is invalid: allowed values are sgd, nesterov, adam, adamw"),
        ({"train": {"epochs": 0}}, "train.epochs = 0 is invalid: must be >= 1"),
        ({"train": {"batch_size": "many"}}, "train.batch_size = 'many' is invalid: expected int"),
        ({"optim": {"lrr": 0.1}}, "unknown config field optim.lrr"),
        ({"task": "sudoku"}, "task = 'sudoku' is invalid: allowed values are "),
        ({"model": {"arch": "vgg"}}, "model.arch = 'vgg' is invalid: allowed values are alexnet"),
        ({"pretext": {"head_hidden": -3}}, "pretext.head_hidden = -3 is invalid: must be >= 0"),
        ({"pretext": {"tiles": 9}}, "unknown config field pretext.tiles"),
        ({"optim": {"schedule": "step"}}, "optim.milestones = [] is invalid with optim.schedule = step"),
    ],
)
def test_invalid_values_name_field_value_and_what_is_allowed(values, message):
    with pytest.raises(ConfigError) as info:
        check_pretrain_config(from_dict(PretrainConfig, values))  # the names and task options: where the registries live
    assert message in str(info.value)


def test_yaml_then_flags_then_set_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("optim:\n  lr: 0.2\n  schedule: step\n  milestones: [2, 4]\ntrain:\n  epochs: 9\n")
    cfg = parse_config(["--config", str(path), "--epochs", "3", "--set", "optim.lr=0.3", "--set", "optim.milestones=[1]"])
    assert cfg.train.epochs == 3 and cfg.optim.lr == 0.3 and cfg.optim.milestones == [1.0]


def test_cli_reports_a_bad_value_in_one_line_without_traceback(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "selfsup.cli.pretrain", "--lr", "-0.5", "--out", str(tmp_path)],
        capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip() == "error: optim.lr = -0.5 is invalid: must be > 0.0"


def test_cli_reports_a_missing_data_path_in_one_line(tmp_path):
    missing = tmp_path / "nowhere"
    proc = subprocess.run(
        [sys.executable, "-m", "selfsup.cli.pretrain", "--data", str(missing), "--out", str(tmp_path / "o")],
        capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and str(missing) in last


ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize(
    "preset", sorted([*(ROOT / "experiments").rglob("*.yaml"), *(ROOT / "selfsup" / "presets").glob("*/*.yaml")]),
    ids=lambda p: f"{p.parent.name}/{p.name}",
)
def test_every_committed_preset_is_valid(preset):
    # experiment budgets (experiments/*_tasks/) are layered on the demo preset, as their script runs them
    layered = ["--preset", "demo"] if preset.parent.name.endswith("_tasks") else []
    cfg = parse_config(["--config", str(preset), *layered])
    assert cfg.task


@pytest.mark.parametrize("task", ["jigsaw", "context", "counting", "colorization", "deepcluster"])
def test_a_task_alone_gets_its_demo_preset_and_flags_still_win(task):
    from selfsup.presets import load_preset

    preset = load_preset("demo", task)
    assert preset, f"no demo preset for {task}"
    cfg = parse_config(["--task", task])
    assert cfg.data.image_size == preset.get("data", {}).get("image_size", 32)
    assert cfg.train.epochs == preset.get("train", {}).get("epochs", 4)
    assert parse_config(["--task", task, "--epochs", "7"]).train.epochs == 7
    assert parse_config(["--task", task, "--preset", "none", "--image-size", "64"]).pretext == {}


def test_a_config_file_replaces_the_demo_preset(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("task: jigsaw\n")
    assert parse_config(["--config", str(path)]).pretext == {}
    assert parse_config(["--config", str(path), "--preset", "demo"]).pretext["num_permutations"] == 100


def test_an_unknown_preset_is_refused_by_name():
    with pytest.raises(ConfigError, match="--preset = 'tiny' is invalid: allowed values are none, demo"):
        parse_config(["--task", "jigsaw", "--preset", "tiny"])


@pytest.mark.parametrize("value", ["nan", "inf", float("nan"), float("-inf")])
def test_non_finite_numbers_are_rejected_naming_the_field(value):
    with pytest.raises(ConfigError, match=r"optim.lr = .* is invalid: must be a finite number"):
        from_dict(PretrainConfig, {"optim": {"lr": value}})
    with pytest.raises(ConfigError, match="optim.milestones"):
        from_dict(PretrainConfig, {"optim": {"schedule": "step", "milestones": [1.0, value]}})


@pytest.mark.parametrize("args", [["--lr", "nan"], ["--set", "optim.lr=.nan"], ["--set", "optim.grad_clip=.inf"]])
def test_non_finite_numbers_from_the_command_line_are_rejected(args):
    with pytest.raises(ConfigError, match="must be a finite number"):
        parse_config(args)


def test_config_differences_name_every_changed_field():
    old = to_dict(from_dict(PretrainConfig, {}))
    new = to_dict(from_dict(PretrainConfig, {"optim": {"lr": 0.5}, "pretext": {"head_hidden": 8}}))
    assert config_differences(old, new) == [("optim.lr", 0.05, 0.5), ("pretext.head_hidden", None, 8)]
    assert config_differences(old, old) == []
