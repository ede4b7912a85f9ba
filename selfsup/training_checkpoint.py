"""The training run's checkpoints: what ``last.pt`` holds, writing it (never with non-finite weights) and
resuming from it, which refuses a changed config unless the change is one a resume may take.

`TrainerCheckpoints` is a part of `selfsup.engine.Trainer`, kept here so that the loop reads on its own.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Any

from selfsup.checkpoint import atomic_save, load_checkpoint, nonfinite_tensors, rng_state, set_rng_state
from selfsup.config import FIXED_ON_RESUME, RESUMABLE_CHANGES, config_differences
from selfsup.errors import CheckpointError, ConfigError, TrainingDivergedError

log = logging.getLogger(__name__)

CHECKPOINT_NAME = "last.pt"


class TrainerCheckpoints:
    """Saving and resuming `selfsup.engine.Trainer`'s state; it reads the trainer's model, optimiser, schedule,
    counters and config, and its budget's clock (``_budget``, ``_elapsed``)."""

    @property
    def checkpoint_path(self) -> Path:
        return self.out_dir / CHECKPOINT_NAME

    def state_dict(self) -> dict[str, Any]:
        return {
            **self.record,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            **({} if self.lens_optimizer is None else {"lens_optimizer": self.lens_optimizer.state_dict()}),
            "epoch": self.epoch,
            "step_in_epoch": self.step_in_epoch,
            "global_step": self.global_step,
            "epochs": self.cfg.epochs,
            "budget": self._budget(),
            "ended_by": self.ended_by,
            "history": self.history,
            "meter": self.meter.state(),
            "bad_files": sorted(self.bad_files.messages),
            "elapsed_s": self._elapsed(),
            "images_seen": self.images_seen,
            "epoch_metrics": self.epoch_metrics,
            "rng": rng_state(),
        }

    def _save_checkpoint(self, path: Path | None = None) -> None:
        """Writes the training state to ``path`` (default: last.pt)."""
        self.check_finite()
        if not self.dist.is_main:
            return
        bad = nonfinite_tensors(self.model.state_dict())
        if bad:  # the optimiser can overflow finite gradients into infinite weights
            raise TrainingDivergedError(
                f"training diverged at step {self.global_step}: {len(bad)} weight tensor(s) became non-finite "
                f"(e.g. {bad[0]}); they were not saved ({self._kept_text()}); "
                f"lower optim.lr (now {self.optim_cfg.lr:g}) or set optim.grad_clip"
            )
        atomic_save(self.state_dict(), path or self.checkpoint_path)

    def _kept_text(self) -> str:
        if self.checkpoint_path.is_file():
            return f"{self.checkpoint_path} keeps the last good state"
        return "no checkpoint had been written yet"

    def _check_resumed_config(self, saved: dict[str, Any]) -> None:
        """Refuses a resume whose config differs from the checkpoint's beyond ``RESUMABLE_CHANGES``, unless
        ``train.accept_config_changes``; then the record lists the accepted differences."""
        if "config" not in saved:
            raise CheckpointError(f"{self.checkpoint_path} holds no config: it is not an ssl-pretrain checkpoint")
        changed = [d for d in config_differences(saved["config"], self.record["config"]) if d[0] not in RESUMABLE_CHANGES]
        if not changed:
            return
        listed = "; ".join(f"{name}: {before!r} -> {after!r}" for name, before, after in changed)
        fixed = [name for name, _, _ in changed if name.startswith(FIXED_ON_RESUME)]
        if fixed:
            raise ConfigError(f"--resume: {', '.join(fixed)} cannot change when resuming {self.checkpoint_path} "
                              f"(the weights and the epoch position depend on them); differences: {listed}")
        if not self.cfg.accept_config_changes:
            raise ConfigError(f"--resume: the config differs from {self.checkpoint_path}'s ({listed}); resume with "
                              "the same config, or pass --accept-config-changes to continue with the new values")
        self.record["resumed_with_changes"] = [
            {"field": name, "checkpoint": before, "now": after} for name, before, after in changed
        ]
        print(f"resuming with changed config: {listed}", file=sys.stderr)

    def resume(self) -> bool:
        if not self.checkpoint_path.is_file():
            log.warning("--resume: no checkpoint at %s, starting from scratch", self.checkpoint_path)
            return False
        state = load_checkpoint(self.checkpoint_path, trust=self.trust_checkpoint)
        self._check_resumed_config(state)
        # load_state_dict restores the checkpoint's hyper-parameters; accepted optim.* changes must win
        fresh_groups = [{k: v for k, v in group.items() if k != "params"} for group in self.optimizer.param_groups]
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        if self.lens_optimizer is not None:
            self.lens_optimizer.load_state_dict(state["lens_optimizer"])
        if any(change["field"].startswith("optim.") for change in self.record.get("resumed_with_changes", [])):
            self._apply_optim_config(fresh_groups)
        self.epoch, self.step_in_epoch = state["epoch"], state["step_in_epoch"]
        self.global_step = state["global_step"]
        self.history = state["history"]
        self.meter.load(state["meter"])
        self.bad_files.messages = set(state["bad_files"])
        self.elapsed_before = self.step_elapsed = state["elapsed_s"]
        self.images_seen = state["images_seen"]
        self.epoch_metrics = state.get("epoch_metrics", {})
        set_rng_state(state["rng"])
        if self.dist.is_main:
            print(f"resumed from {self.checkpoint_path}: epoch {self.epoch + 1}, step {self.global_step}", file=sys.stderr)
        return True

    def _apply_optim_config(self, fresh_groups: list[dict[str, Any]]) -> None:
        """Puts the new config's hyper-parameters into the resumed optimiser and schedule: the next step
        runs at the new peak lr times the schedule's factor at that step."""
        factor = self.scheduler.lr_lambdas[0](self.scheduler.last_epoch)
        for group, fresh in zip(self.optimizer.param_groups, fresh_groups):
            group.update(fresh)
            group["lr"] = fresh["initial_lr"] * factor
        self.scheduler.base_lrs = [fresh["initial_lr"] for fresh in fresh_groups]
