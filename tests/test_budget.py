"""Equal pretraining budgets: a run ends at whichever of its epochs, --max-steps and --max-minutes ends
first, the lr schedule is fitted to that budget, and the checkpoint and summary say which one ended it."""

from __future__ import annotations

import itertools
import json
import math
from pathlib import Path

import pytest
import torch

import selfsup.engine as engine
from selfsup import training_budget
from selfsup.checkpoint import load_checkpoint
from selfsup.cli.pretrain import main as pretrain_main
from selfsup.config import OptimConfig
from selfsup.optim import lr_factor
from test_resume import Stopped, tensors

# as tests/test_resume.py's rotation runs: 43 pretraining images at batch 8, 5 steps per epoch
COMMON = ["--task", "rotation", "--epochs", "2", "--batch-size", "8", "--workers", "0", "--device", "cpu",
          "--precision", "fp32", "--checkpoint-every", "2", "--width", "0.25", "--image-size", "16"]
STEPS_PER_EPOCH = 5


def run_args(folder: Path, out: Path, *extra: str) -> list[str]:
    return ["--data", str(folder / "train"), *COMMON, "--out", str(out), *extra]


def summary_of(out: Path) -> dict:
    return json.loads((out / "summary.json").read_text())


def next_lr(state: dict) -> float:
    """The lr the checkpoint's optimiser would take at its next step."""
    return state["optimizer"]["param_groups"][0]["lr"]


# ------------------------------------------------------------------ the schedule


def test_epochs_only_schedules_are_unchanged():
    # lr_factor's values before budgets existed, to the last bit
    cosine = OptimConfig(schedule="cosine", warmup_epochs=1.0)
    assert [lr_factor(s, 10, 4, cosine) for s in (0, 9, 10, 25, 39)] == [0.1, 1.0, 1.0, 0.5, 0.002739052315863355]
    cosine = OptimConfig(schedule="cosine", warmup_epochs=0.5)
    assert [lr_factor(s, 7, 3, cosine) for s in (0, 4, 10, 20)] == [
        0.2857142857142857, 0.9979871469976196, 0.6965125158269618, 0.008035205700685166]
    step = OptimConfig(schedule="step", milestones=[1.0, 3.0], gamma=0.1)
    assert [lr_factor(s, 10, 4, step) for s in (0, 9, 10, 29, 30)] == [1.0, 1.0, 0.1, 0.1, 0.010000000000000002]
    assert lr_factor(7, 10, 4, OptimConfig(schedule="constant")) == 1.0
    # budgets of 0 are no budgets
    assert [lr_factor(s, 7, 3, cosine, max_steps=0, time_progress=0.0) for s in range(21)] == [
        lr_factor(s, 7, 3, cosine) for s in range(21)]


def test_a_step_budget_ends_the_cosine_and_keeps_epoch_milestones():
    cosine = OptimConfig(schedule="cosine", warmup_epochs=1.0)
    # 4 epochs of 10 steps, budget 20 steps: warm-up over epoch 1, the cosine over steps 10..20
    assert lr_factor(9, 10, 4, cosine, max_steps=20) == 1.0
    assert lr_factor(15, 10, 4, cosine, max_steps=20) == pytest.approx(0.5)
    assert lr_factor(19, 10, 4, cosine, max_steps=20) == pytest.approx(0.5 * (1 + math.cos(math.pi * 0.9)))
    assert lr_factor(20, 10, 4, cosine, max_steps=20) == pytest.approx(0.0, abs=1e-12)
    # a step budget beyond the epochs changes nothing: the epochs end first
    assert [lr_factor(s, 10, 4, cosine, max_steps=100) for s in range(40)] == [lr_factor(s, 10, 4, cosine)
                                                                              for s in range(40)]
    step = OptimConfig(schedule="step", milestones=[1.0], gamma=0.1)
    assert [lr_factor(s, 10, 4, step, max_steps=15) for s in (9, 10)] == [1.0, 0.1]


def test_a_time_budget_ends_the_cosine_when_the_time_runs_out():
    cosine = OptimConfig(schedule="cosine")
    # progress is the larger of steps (2 of 40) and time (half the budget) ...
    assert lr_factor(2, 10, 4, cosine, time_progress=0.5) == pytest.approx(0.5)
    # ... whichever is ahead
    assert lr_factor(30, 10, 4, cosine, time_progress=0.5) == pytest.approx(0.5 * (1 + math.cos(math.pi * 0.75)))
    assert lr_factor(2, 10, 4, cosine, time_progress=1.0) == pytest.approx(0.0, abs=1e-12)
    assert lr_factor(2, 10, 4, cosine, time_progress=3.0) == pytest.approx(0.0, abs=1e-12)


# ------------------------------------------------------------------ runs


def test_max_steps_ends_the_run_at_that_step_with_the_schedule_ended(tiny_folder, tmp_path, capsys):
    out = tmp_path / "run"
    assert pretrain_main(run_args(tiny_folder, out, "--max-steps", "7")) == 0  # epoch 2, step 2 of 5
    summary = summary_of(out)
    assert summary["steps"] == 7 and summary["ended_by"] == "max_steps"
    assert summary["budget"] == {"epochs": 2, "max_steps": 7, "max_minutes": 0.0}
    assert summary["final"]["partial"] and summary["final"]["steps_in_epoch"] == 2 and "loss" in summary["final"]
    state = load_checkpoint(out / "last.pt")
    assert (state["global_step"], state["epoch"], state["step_in_epoch"]) == (7, 1, 2)
    assert state["ended_by"] == "max_steps" and state["budget"]["max_steps"] == 7
    # the cosine reaches its end at the budget, not at the epochs' end (lr 0.05 is the demo preset's peak)
    assert next_lr(state) == pytest.approx(0.0, abs=1e-12)
    assert "ended by        max_steps at step 7 (budgets: 2 epochs, 7 steps)" in capsys.readouterr().out


def test_keep_every_keeps_a_loadable_checkpoint_at_each_multiple_of_its_steps(tiny_folder, tmp_path):
    out = tmp_path / "run"
    assert pretrain_main(run_args(tiny_folder, out, "--max-steps", "7", "--keep-every", "3")) == 0
    assert sorted(path.name for path in out.glob("step_*.pt")) == ["step_000003.pt", "step_000006.pt"]
    kept = load_checkpoint(out / "step_000006.pt")
    assert kept["global_step"] == 6 and kept["config"]["train"]["keep_every"] == 3
    last = load_checkpoint(out / "last.pt")
    assert last["global_step"] == 7
    # a kept checkpoint is a snapshot: its weights differ from the last one's
    assert not all(torch.equal(kept["model"][name], value) for name, value in last["model"].items())


def test_the_epochs_end_the_run_when_they_come_first(tiny_folder, tmp_path):
    out = tmp_path / "run"
    assert pretrain_main(run_args(tiny_folder, out, "--max-steps", "100", "--max-minutes", "60")) == 0
    summary = summary_of(out)
    assert summary["steps"] == 2 * STEPS_PER_EPOCH and summary["ended_by"] == "epochs"
    assert "partial" not in summary["final"]
    assert load_checkpoint(out / "last.pt")["ended_by"] == "epochs"


def test_max_minutes_ends_the_run(tiny_folder, tmp_path, monkeypatch):
    ticks = itertools.count()
    monkeypatch.setattr(training_budget, "clock", lambda: 60.0 * next(ticks))  # every look at the clock: one minute on
    out = tmp_path / "run"
    assert pretrain_main(run_args(tiny_folder, out, "--max-minutes", "4.5")) == 0
    summary = summary_of(out)
    assert summary["ended_by"] == "max_minutes" and 1 <= summary["steps"] < 2 * STEPS_PER_EPOCH
    assert summary["wall_time_s"] >= 4.5 * 60
    state = load_checkpoint(out / "last.pt")
    assert state["ended_by"] == "max_minutes" and state["global_step"] == summary["steps"]
    # the cosine followed the time: it ended with the budget, long before the epochs' end
    assert next_lr(state) == pytest.approx(0.0, abs=1e-12)


def test_a_resumed_step_budget_run_equals_an_uninterrupted_one(tiny_folder, tmp_path, monkeypatch):
    budget = ["--epochs", "3", "--max-steps", "8"]
    assert pretrain_main(run_args(tiny_folder, tmp_path / "reference", *budget)) == 0

    save = engine.Trainer._save_checkpoint

    def save_then_stop(self):
        save(self)
        if self.global_step == 4:
            raise Stopped

    with monkeypatch.context() as patch:
        patch.setattr(engine.Trainer, "_save_checkpoint", save_then_stop)
        with pytest.raises(Stopped):
            pretrain_main(run_args(tiny_folder, tmp_path / "stopped", *budget))
    assert load_checkpoint(tmp_path / "stopped" / "last.pt")["ended_by"] is None
    torch.manual_seed(12345)
    assert pretrain_main(run_args(tiny_folder, tmp_path / "stopped", *budget, "--resume")) == 0

    expected = load_checkpoint(tmp_path / "reference" / "last.pt")
    resumed = load_checkpoint(tmp_path / "stopped" / "last.pt")
    assert expected["global_step"] == resumed["global_step"] == 8 and resumed["ended_by"] == "max_steps"
    for part in ("model", "optimizer", "scheduler"):
        want, got = tensors(expected[part]), tensors(resumed[part])
        assert want.keys() == got.keys()
        for name in want:
            assert torch.equal(want[name], got[name]), f"{part}.{name}"
    assert next_lr(expected) == next_lr(resumed)


def test_a_run_ended_by_its_budget_resumes_with_a_larger_one(tiny_folder, tmp_path):
    out = tmp_path / "run"
    assert pretrain_main(run_args(tiny_folder, out, "--max-steps", "3")) == 0
    # the same budget: nothing is left to do
    assert pretrain_main(run_args(tiny_folder, out, "--max-steps", "3", "--resume")) == 0
    assert (summary_of(out)["steps"], summary_of(out)["ended_by"]) == (3, "max_steps")
    # a larger budget is not a config change to accept: the run continues
    assert pretrain_main(run_args(tiny_folder, out, "--max-steps", "6", "--resume")) == 0
    assert (summary_of(out)["steps"], summary_of(out)["ended_by"]) == (6, "max_steps")
    assert pretrain_main(run_args(tiny_folder, out, "--max-steps", "0", "--resume")) == 0
    summary = summary_of(out)
    assert (summary["steps"], summary["ended_by"]) == (2 * STEPS_PER_EPOCH, "epochs")
    assert [entry["epoch"] for entry in summary["history"]] == [1, 2]


@pytest.mark.parametrize(("flag", "value", "message"), [
    ("--max-steps", "-1", "train.max_steps = -1 is invalid: must be >= 0"),
    ("--max-minutes", "-1", "train.max_minutes = -1.0 is invalid: must be >= 0.0"),
    ("--max-minutes", "nan", "train.max_minutes = nan is invalid: must be a finite number"),
])
def test_invalid_budgets_are_refused_at_start_up(tiny_folder, tmp_path, capsys, flag, value, message):
    out = tmp_path / "run"
    assert pretrain_main(run_args(tiny_folder, out, flag, value)) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert [line for line in err.splitlines() if line.startswith("error:")] == [f"error: {message}"]
    assert not (out / "last.pt").exists()
