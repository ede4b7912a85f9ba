"""The training loop shared by every pretext task. It knows nothing about any task: a task is an
``nn.Module`` whose forward maps ``(images, labels, generator)`` to a dict holding ``loss`` and
scalar metrics, and may offer ``example_images`` for TensorBoard.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from selfsup.checkpoint import atomic_save, load_checkpoint, rng_state, set_rng_state
from selfsup.config import OptimConfig, TrainConfig
from selfsup.data.loading import BadFileLog, EpochBatchSampler, train_loader
from selfsup.data.sources import ImageSource
from selfsup.distributed import DistInfo, all_reduce_sum
from selfsup.optim import build_optimizer, build_scheduler

log = logging.getLogger(__name__)

CHECKPOINT_NAME = "last.pt"
SUMMARY_NAME = "summary.json"


def autocast_context(precision: str, device: torch.device):
    use_bf16 = precision == "bf16" or (precision == "auto" and device.type == "cuda")
    if not use_bf16:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16)


def step_generator(seed: int, step: int, rank: int, device: torch.device) -> torch.Generator:
    """Randomness of on-device pretext inputs, reproducible per (seed, step, rank) across resumes."""
    gen = torch.Generator(device=device)
    gen.manual_seed((seed * 1_000_003 + step) * 64 + rank)
    return gen


@dataclass
class EpochMeter:
    """Sums of loss/metrics weighted by batch size; all-reduced across processes at epoch end."""

    names: tuple[str, ...] = ()
    sums: torch.Tensor | None = None

    def add(self, outputs: dict[str, torch.Tensor], count: int) -> None:
        if self.sums is None:
            self.names = tuple(outputs)
            self.sums = torch.zeros(len(self.names) + 1, dtype=torch.float64)
        values = torch.tensor([float(outputs[n]) for n in self.names] + [1.0], dtype=torch.float64)
        self.sums += values * count

    def averages(self) -> dict[str, float]:
        if self.sums is None:
            return {}
        total = all_reduce_sum(self.sums.clone())
        return {name: float(total[i] / total[-1]) for i, name in enumerate(self.names)}

    def state(self) -> dict[str, Any]:
        return {"names": self.names, "sums": self.sums}

    def load(self, state: dict[str, Any]) -> None:
        self.names, self.sums = tuple(state["names"]), state["sums"]


class Trainer:
    """Runs ``epochs`` over ``source`` with checkpoints, logs and resumption.

    ``record`` is stored in every checkpoint and summary (config, what the task and encoder are),
    so that anything reading a checkpoint can rebuild the model without other files.
    """

    def __init__(
        self,
        model: nn.Module,
        source: ImageSource,
        transform,
        *,
        train_cfg: TrainConfig,
        optim_cfg: OptimConfig,
        workers: int,
        out_dir: Path,
        dist_info: DistInfo,
        record: dict[str, Any],
        channels_last: bool = False,
    ) -> None:
        self.cfg = train_cfg
        self.dist = dist_info
        self.device = dist_info.device
        self.out_dir = Path(out_dir)
        self.record = record
        self.channels_last = channels_last
        self.model = model.to(self.device)
        if channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.sampler = EpochBatchSampler(
            len(source), train_cfg.batch_size, rank=dist_info.rank, world_size=dist_info.world_size, seed=train_cfg.seed
        )
        self.loader = train_loader(source, transform, self.sampler, workers=workers, pin_memory=self.device.type == "cuda")
        self.steps_per_epoch = self.sampler.steps_per_epoch
        self.total_steps = self.steps_per_epoch * train_cfg.epochs
        self.optimizer = build_optimizer(self.model, optim_cfg)
        self.scheduler = build_scheduler(self.optimizer, optim_cfg, self.steps_per_epoch, train_cfg.epochs)
        self.grad_clip = optim_cfg.grad_clip
        self.trainable = (
            DistributedDataParallel(self.model, device_ids=[self.device.index] if self.device.type == "cuda" else None)
            if dist_info.enabled
            else self.model
        )
        self.global_step = 0
        self.epoch = 0
        self.step_in_epoch = 0
        self.history: list[dict[str, Any]] = []
        self.bad_files = BadFileLog()
        self.meter = EpochMeter()
        self.elapsed_before = 0.0
        self.images_seen = 0
        self.writer = None

    # ---------------------------------------------------------------- checkpoints
    @property
    def checkpoint_path(self) -> Path:
        return self.out_dir / CHECKPOINT_NAME

    def state_dict(self) -> dict[str, Any]:
        return {
            **self.record,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "epoch": self.epoch,
            "step_in_epoch": self.step_in_epoch,
            "global_step": self.global_step,
            "epochs": self.cfg.epochs,
            "history": self.history,
            "meter": self.meter.state(),
            "bad_files": sorted(self.bad_files.messages),
            "elapsed_s": self.elapsed_before + (time.perf_counter() - self._started),
            "images_seen": self.images_seen,
            "rng": rng_state(),
        }

    def _save_checkpoint(self) -> None:
        if self.dist.is_main:
            atomic_save(self.state_dict(), self.checkpoint_path)

    def resume(self) -> bool:
        if not self.checkpoint_path.is_file():
            log.warning("--resume: no checkpoint at %s, starting from scratch", self.checkpoint_path)
            return False
        state = load_checkpoint(self.checkpoint_path)
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.epoch, self.step_in_epoch = state["epoch"], state["step_in_epoch"]
        self.global_step = state["global_step"]
        self.history = state["history"]
        self.meter.load(state["meter"])
        self.bad_files.messages = set(state["bad_files"])
        self.elapsed_before = state["elapsed_s"]
        self.images_seen = state["images_seen"]
        set_rng_state(state["rng"])
        if self.dist.is_main:
            print(f"resumed from {self.checkpoint_path}: epoch {self.epoch + 1}, step {self.global_step}", file=sys.stderr)
        return True

    # ---------------------------------------------------------------- logging
    def _open_writer(self) -> None:
        if self.dist.is_main:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(str(self.out_dir / "tb"), purge_step=self.global_step or None)

    def _log_images(self, images: torch.Tensor) -> None:
        example = getattr(self.model, "example_images", None)
        if self.writer is None or example is None:
            return
        from torchvision.utils import make_grid

        was_training = self.model.training
        self.model.eval()
        with torch.no_grad():
            shown = example(images, step_generator(self.cfg.seed, self.global_step, 0, self.device))
        self.model.train(was_training)
        grid = make_grid(shown.images.float().clamp(0, 1).cpu(), nrow=shown.per_row)
        self.writer.add_image("inputs", grid, self.global_step)

    # ---------------------------------------------------------------- training
    def _train_step(self, images: torch.Tensor, labels: torch.Tensor) -> dict[str, torch.Tensor]:
        gen = step_generator(self.cfg.seed, self.global_step, self.dist.rank, self.device)
        with autocast_context(self.cfg.precision, self.device):
            outputs = self.trainable(images, labels, gen)
        loss = outputs["loss"]
        if not torch.isfinite(loss):
            raise FloatingPointError(
                f"loss became {float(loss)} at step {self.global_step}; lower optim.lr or set optim.grad_clip"
            )
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if self.grad_clip:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.grad_clip)
        self.optimizer.step()
        self.scheduler.step()
        return {name: value.detach() for name, value in outputs.items()}

    def _sync_buffers(self) -> None:
        # DDP broadcasts BN statistics at each forward; doing it at epoch end too makes every
        # rank hold rank 0's model exactly when a checkpoint is written.
        if self.dist.enabled:
            for buffer in self.model.buffers():
                dist.broadcast(buffer, src=0)

    def fit(self) -> dict[str, Any]:
        self._started = time.perf_counter()
        if self.cfg.resume:
            self.resume()
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self._open_writer()
        interactive = sys.stderr.isatty()
        run_start_step = self.global_step
        while self.epoch < self.cfg.epochs:
            self.sampler.set_epoch(self.epoch, self.step_in_epoch)
            self.model.train()
            bar = tqdm(
                total=self.steps_per_epoch,
                initial=self.step_in_epoch,
                desc=f"epoch {self.epoch + 1}/{self.cfg.epochs}",
                unit="step",
                disable=not self.dist.is_main,
                mininterval=0.5 if interactive else 30.0,
                dynamic_ncols=True,
            )
            window_start, window_images = time.perf_counter(), 0
            for batch in self.loader:
                self.bad_files.add(batch.bad_files)
                images = batch.images.to(self.device, non_blocking=True).float().div_(255)
                if self.channels_last:
                    images = images.contiguous(memory_format=torch.channels_last)
                labels = batch.labels.to(self.device, non_blocking=True)
                if self.step_in_epoch == 0:
                    self._log_images(images)
                outputs = self._train_step(images, labels)
                count = images.shape[0] * self.dist.world_size
                self.meter.add(outputs, images.shape[0])
                self.global_step += 1
                self.step_in_epoch += 1
                self.images_seen += count
                window_images += count
                now = time.perf_counter()
                rate = window_images / max(now - window_start, 1e-9)
                remaining = self.total_steps - self.global_step
                bar.set_postfix(
                    loss=f"{float(outputs['loss']):.3f}",
                    **{k: f"{float(v):.3f}" for k, v in outputs.items() if k != "loss"},
                    img_s=f"{rate:.0f}",
                    eta=_format_seconds(remaining * self.cfg.batch_size / max(rate, 1e-9)),
                    refresh=False,
                )
                bar.update(1)
                if self.writer is not None and self.global_step % self.cfg.log_every == 0:
                    for name, value in outputs.items():
                        self.writer.add_scalar(f"train/{name}", float(value), self.global_step)
                    self.writer.add_scalar("train/lr", self.optimizer.param_groups[0]["lr"], self.global_step)
                    self.writer.add_scalar("train/images_per_s", rate, self.global_step)
                    window_start, window_images = now, 0
                if (
                    self.cfg.checkpoint_every
                    and self.global_step % self.cfg.checkpoint_every == 0
                    and self.step_in_epoch < self.steps_per_epoch
                ):
                    self._save_checkpoint()
            bar.close()
            self._end_epoch()
        if self.writer is not None:
            self.writer.close()
        summary = self._summary(run_start_step)
        if self.dist.is_main:
            (self.out_dir / SUMMARY_NAME).write_text(json.dumps(summary, indent=2, default=str))
        return summary

    def _end_epoch(self) -> None:
        averages = self.meter.averages()
        elapsed = self.elapsed_before + time.perf_counter() - self._started
        entry = {"epoch": self.epoch + 1, "step": self.global_step, **averages, "elapsed_s": round(elapsed, 1)}
        self.history.append(entry)
        if self.writer is not None:
            for name, value in averages.items():
                self.writer.add_scalar(f"epoch/{name}", value, self.epoch + 1)
            self.writer.flush()
        if self.dist.is_main:
            shown = "  ".join(f"{k} {v:.4f}" for k, v in averages.items())
            print(f"epoch {self.epoch + 1}/{self.cfg.epochs}: {shown}", file=sys.stderr)
        self.epoch += 1
        self.step_in_epoch = 0
        self.meter = EpochMeter()
        self._sync_buffers()
        self._save_checkpoint()

    def _summary(self, run_start_step: int) -> dict[str, Any]:
        elapsed = self.elapsed_before + time.perf_counter() - self._started
        final = self.history[-1] if self.history else {}
        return {
            **{k: v for k, v in self.record.items()},
            "checkpoint": str(self.checkpoint_path),
            "epochs": self.cfg.epochs,
            "steps": self.global_step,
            "final": final,
            "history": self.history,
            "images_seen": self.images_seen,
            "images_per_s": round(self.images_seen / max(elapsed, 1e-9), 1),
            "wall_time_s": round(elapsed, 1),
            "bad_files_skipped": self.bad_files.count,
            "bad_files": sorted(self.bad_files.messages)[:100],
            "world_size": self.dist.world_size,
            "device": str(self.device),
        }


def _format_seconds(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "?"
    seconds = int(seconds)
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"
