"""Pretraining under faults: exact resume for every task, resume checks the config, a diverging run stops
with one line and never saves non-finite weights, one run per output folder, killed writes cleaned up."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

import selfsup.engine as engine
from selfsup.checkpoint import atomic_save, load_checkpoint
from selfsup.cli.pretrain import main as pretrain_main
from selfsup.outputs import RunLock

COMMON = ["--epochs", "2", "--batch-size", "8", "--workers", "0", "--device", "cpu", "--precision", "fp32",
          "--checkpoint-every", "2", "--width", "0.25"]
# Each task as small as it goes, with dropout on wherever the task has it (resume used to miss it).
TASK_ARGS = {
    "rotation": ["--image-size", "16"],
    "jigsaw": ["--image-size", "48", "--set", "pretext.num_permutations=10", "--set", "pretext.fc6_dim=16",
               "--set", "pretext.fc7_dim=16", "--set", "pretext.dropout=0.5"],
    "context": ["--image-size", "48"],
    "counting": ["--image-size", "32"],
    "colorization": ["--image-size", "16"],
    "deepcluster": ["--image-size", "16", "--set", "pretext.num_clusters=6", "--set", "pretext.mlp_dim=32",
                    "--set", "pretext.head_pool=1", "--set", "pretext.reassign_every=1", "--set", "pretext.dropout=0.5"],
}
STOP_AT_STEP = 8  # epoch 2, step 3 of 5 (43 pretraining images at batch 8)


class Stopped(BaseException):
    """Stands for a kill: raised right after a checkpoint, it unwinds without any clean-up of ours."""


def error_lines(capsys: pytest.CaptureFixture) -> list[str]:
    """The ``error:`` lines on stderr (the start-up banner may come before them); never a traceback."""
    err = capsys.readouterr().err
    assert "Traceback" not in err, err
    return [line for line in err.splitlines() if line.startswith("error:")]


def run_args(task: str, folder: Path, out: Path, *extra: str) -> list[str]:
    return ["--task", task, "--data", str(folder), *COMMON, *TASK_ARGS[task], "--out", str(out), *extra]


def stop_after_checkpoint_at(monkeypatch: pytest.MonkeyPatch, step: int) -> None:
    save = engine.Trainer._save_checkpoint

    def save_then_stop(self):
        save(self)
        if self.global_step == step:
            raise Stopped

    monkeypatch.setattr(engine.Trainer, "_save_checkpoint", save_then_stop)


def tensors(state: dict, prefix: str = "") -> dict[str, torch.Tensor]:
    """Every tensor of a nested checkpoint entry, by path."""
    found = {}
    for key, value in state.items():
        if isinstance(value, torch.Tensor):
            found[f"{prefix}{key}"] = value
        elif isinstance(value, dict):
            found.update(tensors(value, f"{prefix}{key}."))
    return found


@pytest.mark.parametrize("task", list(TASK_ARGS))
def test_stopped_run_resumes_to_the_same_tensors(task, tiny_folder, tmp_path, monkeypatch):
    folder = tiny_folder / "train"
    assert pretrain_main(run_args(task, folder, tmp_path / "reference")) == 0

    with monkeypatch.context() as patch:
        stop_after_checkpoint_at(patch, STOP_AT_STEP)
        with pytest.raises(Stopped):
            pretrain_main(run_args(task, folder, tmp_path / "stopped"))
    middle = load_checkpoint(tmp_path / "stopped" / "last.pt")
    assert (middle["epoch"], middle["global_step"]) == (1, STOP_AT_STEP)
    # whatever drew from the global generators since (here: a different seed) must not matter
    torch.manual_seed(12345)
    np.random.seed(12345)
    assert pretrain_main(run_args(task, folder, tmp_path / "stopped", "--resume")) == 0

    expected = load_checkpoint(tmp_path / "reference" / "last.pt")
    resumed = load_checkpoint(tmp_path / "stopped" / "last.pt")
    for part in ("model", "optimizer", "scheduler"):
        want, got = tensors(expected[part]), tensors(resumed[part])
        assert want.keys() == got.keys()
        for name in want:
            assert torch.equal(want[name], got[name]), f"{part}.{name}"
    assert expected["scheduler"]["last_epoch"] == resumed["scheduler"]["last_epoch"]


def test_resume_refuses_a_changed_config_and_lists_the_differences(tiny_folder, tmp_path, capsys):
    out = tmp_path / "run"
    args = run_args("rotation", tiny_folder / "train", out)
    assert pretrain_main([*args, "--epochs", "1"]) == 0
    before = (out / "last.pt").read_bytes()
    capsys.readouterr()

    assert pretrain_main([*args, "--resume", "--lr", "0.5", "--seed", "3"]) == 2
    err = error_lines(capsys)
    assert len(err) == 1 and "optim.lr: 0.05 -> 0.5" in err[0] and "train.seed: 0 -> 3" in err[0], err
    assert "--accept-config-changes" in err[0]

    # the task, the encoder and the batch size cannot change at all
    for changed in (["--task", "counting"], ["--batch-size", "4"], ["--arch", "resnet18_small"]):
        assert pretrain_main([*args, "--resume", "--accept-config-changes", *changed]) == 2
        err = error_lines(capsys)
        assert len(err) == 1 and "cannot change" in err[0], err
    assert (out / "last.pt").read_bytes() == before

    # epochs may change: that is how a run is extended
    assert pretrain_main([*args, "--resume"]) == 0


def test_accepted_config_changes_take_effect_and_are_recorded(tiny_folder, tmp_path):
    out = tmp_path / "run"
    args = run_args("rotation", tiny_folder / "train", out, "--set", "optim.schedule=constant")
    assert pretrain_main([*args, "--epochs", "1"]) == 0
    assert pretrain_main([*args, "--resume", "--lr", "0.2", "--accept-config-changes"]) == 0
    state = load_checkpoint(out / "last.pt")
    assert [group["lr"] for group in state["optimizer"]["param_groups"]] == [0.2] * len(state["optimizer"]["param_groups"])
    assert state["resumed_with_changes"] == [{"field": "optim.lr", "checkpoint": 0.05, "now": 0.2}]


def diverge_at_step_7(monkeypatch: pytest.MonkeyPatch) -> None:
    """Training step 7 gets NaN images, so its loss and gradients are NaN."""
    forward = engine.Trainer.train_step

    def nan_loss_at_step_7(self, images, labels):
        if self.global_step == 7:
            images = images * float("nan")
        return forward(self, images, labels)

    monkeypatch.setattr(engine.Trainer, "train_step", nan_loss_at_step_7)


def test_a_diverging_run_stops_with_one_line_and_keeps_the_last_good_checkpoint(tiny_folder, tmp_path, capsys,
                                                                                 monkeypatch):
    out = tmp_path / "run"
    diverge_at_step_7(monkeypatch)
    assert pretrain_main(run_args("rotation", tiny_folder / "train", out)) == 2
    [err] = error_lines(capsys)
    assert err.startswith("error: training diverged at step 7") and "optim.lr" in err, err
    state = load_checkpoint(out / "last.pt")  # would refuse non-finite weights
    assert state["global_step"] == 6


def test_deferred_host_syncs_train_the_same_weights_and_still_stop_a_diverged_run(tiny_folder, tmp_path, capsys,
                                                                                  monkeypatch):
    """On an accelerator the loop reads device values every train.log_every steps instead of every step
    (forced here on the CPU): the same training, and a divergence still stops the run before any checkpoint
    holds the diverged weights."""
    every_step = tmp_path / "every_step"
    assert pretrain_main(run_args("rotation", tiny_folder / "train", every_step)) == 0
    monkeypatch.setattr(engine.Trainer, "_host_sync_interval", lambda self: 3)
    deferred = tmp_path / "deferred"
    assert pretrain_main(run_args("rotation", tiny_folder / "train", deferred)) == 0
    a, b = load_checkpoint(every_step / "last.pt"), load_checkpoint(deferred / "last.pt")
    assert all(torch.equal(a["model"][name], b["model"][name]) for name in a["model"])
    assert [e["loss"] for e in a["history"]] == [e["loss"] for e in b["history"]]

    diverge_at_step_7(monkeypatch)
    capsys.readouterr()
    diverged = tmp_path / "diverged"
    assert pretrain_main(run_args("rotation", tiny_folder / "train", diverged)) == 2
    [err] = error_lines(capsys)
    # checked at step 9 (every 3 steps); the checkpoint due at step 8 checked first and was not written
    assert err.startswith("error: training diverged between steps 6 and 7") and "optim.lr" in err, err
    assert load_checkpoint(diverged / "last.pt")["global_step"] == 6


def test_weights_that_overflow_are_not_saved(tiny_folder, tmp_path, capsys, monkeypatch):
    out = tmp_path / "run"
    step = torch.optim.SGD.step
    calls = []

    def overflow_at_step_4(self, *args, **kwargs):
        result = step(self, *args, **kwargs)
        calls.append(1)
        if len(calls) == 4:  # finite gradients, but the update before a checkpoint overflows one weight
            with torch.no_grad():
                self.param_groups[0]["params"][0].fill_(float("inf"))
        return result

    monkeypatch.setattr(torch.optim.SGD, "step", overflow_at_step_4)
    assert pretrain_main(run_args("rotation", tiny_folder / "train", out)) == 2
    [err] = error_lines(capsys)
    assert "became non-finite" in err and "last good state" in err, err
    assert load_checkpoint(out / "last.pt")["global_step"] == 2


def test_a_second_run_on_a_busy_folder_is_refused(tiny_folder, tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    with RunLock(out):
        assert pretrain_main(run_args("rotation", tiny_folder / "train", out)) == 2
    err = error_lines(capsys)
    assert len(err) == 1 and "in use by another run" in err[0] and str(os.getpid()) in err[0], err
    assert not (out / "last.pt").exists()


def test_temporaries_of_a_killed_write_are_removed_on_the_next_start(tiny_folder, tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    stale = out / ".last.pt.x1y2z3.tmp"
    stale.write_bytes(b"half a checkpoint")
    assert pretrain_main(run_args("rotation", tiny_folder / "train", out, "--epochs", "1")) == 0
    assert not stale.exists()
    assert f"removed {stale}" in capsys.readouterr().err


def test_an_older_pickled_checkpoint_resumes_only_with_trust_and_is_converted(tiny_folder, tmp_path, capsys):
    out = tmp_path / "run"
    args = run_args("rotation", tiny_folder / "train", out)
    assert pretrain_main([*args, "--epochs", "1"]) == 0
    state = load_checkpoint(out / "last.pt")
    # what checkpoints held before: numpy's RNG state as a tuple with an array, torch's version object
    state["rng"]["numpy"] = np.random.get_state()
    state["machine"]["torch"] = torch.__version__
    torch.save(state, out / "last.pt")
    capsys.readouterr()

    assert pretrain_main([*args, "--resume"]) == 2
    err = error_lines(capsys)
    assert len(err) == 1 and "refused" in err[0] and "--trust-checkpoint" in err[0], err

    assert pretrain_main([*args, "--resume", "--trust-checkpoint"]) == 0
    assert (out / "last.pt.orig").is_file()
    assert load_checkpoint(out / "last.pt")["epoch"] == 2


def test_a_checkpoint_with_non_finite_weights_is_refused(tmp_path):
    path = tmp_path / "last.pt"
    atomic_save({"model": {"encoder.conv1.weight": torch.tensor([1.0, float("nan")])}}, path)
    with pytest.raises(Exception, match="non-finite weights in 1 tensor"):
        load_checkpoint(path)
