import subprocess
from pathlib import Path
import sys

import pytest

from selfsup.cli.pretrain import parse_config
from selfsup.config import ConfigError, PretrainConfig, from_dict


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
        from_dict(PretrainConfig, values)
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


@pytest.mark.parametrize("preset", sorted((Path(__file__).resolve().parents[1] / "experiments").glob("*.yaml")), ids=lambda p: p.name)
def test_every_committed_preset_is_valid(preset):
    cfg = parse_config(["--config", str(preset)])
    assert cfg.task
