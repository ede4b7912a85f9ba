"""The training loop shared by every pretext task. It knows nothing about any task: it asks the task what
``selfsup.pretext.base.PretextTask`` declares (``forward(images, labels, generator)`` to a dict holding ``loss``
and scalar metrics, ``takes_uint8``, ``example_images`` for TensorBoard, the epoch hook ``prepare_epoch`` and,
where ``relabels_batches``, ``batch_labels``), never which task it is.

A kNN monitor (``selfsup.probes.knn.KnnMonitor``, built by the caller from the encoder and the
task's input mapping) may measure the encoder every ``train.knn_every`` epochs. The trainer's checkpoints,
budgets and reports are its parts in `selfsup.training_checkpoint`, `selfsup.training_budget` and
`selfsup.training_log`.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from selfsup import training_budget
from selfsup.checkpoint import atomic_file
from selfsup.config import OptimConfig, TrainConfig
from selfsup.data.device_decode import batch_images, device_decode_loader
from selfsup.data.images import unit_float
from selfsup.data.loading import Batch, BadFileLog, EpochBatchSampler, ViewCache, train_loader
from selfsup.data.source_kinds import ImageSource
from selfsup.distributed import DistInfo
from selfsup.epoch import EpochContext, EpochPlan, autocast_context
from selfsup.errors import DataError, TrainingDivergedError
from selfsup.optim import build_optimizer, build_scheduler
from selfsup.seeds import mix_seed
from selfsup.training_budget import TrainerBudgets
from selfsup.training_checkpoint import TrainerCheckpoints
from selfsup.training_log import SUMMARY_NAME, EpochMeter, Monitor, TrainerLog, format_seconds

# Decoded whole-source views kept in memory up to this size (CIFAR-10's 50,000 centre crops of 32 px: 150 MB);
# larger sets are decoded at every pass.
VIEW_CACHE_BYTES = 2 * 2**30


def step_generator(seed: int, step: int, rank: int, device: torch.device) -> torch.Generator:
    """Randomness of on-device pretext inputs, reproducible per (seed, step, rank) across resumes."""
    gen = torch.Generator(device=device)
    gen.manual_seed(mix_seed("pretext inputs", seed, step, rank))
    return gen


def seed_step(seed: int, step: int, rank: int) -> None:
    """Seeds torch's global generators (CPU and CUDA) for one training step: dropout masks then depend on
    (seed, step, rank) alone, not on whatever drew from those generators before (a resume that rebuilds
    the data loader, a clustering pass), so a resumed run repeats the uninterrupted one exactly."""
    torch.manual_seed(mix_seed("global generators", seed, step, rank))


class Trainer(TrainerCheckpoints, TrainerBudgets, TrainerLog):
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
        feature_view=None,
        knn_monitor: Monitor | None = None,
        trust_checkpoint: bool = False,
        decode_on_device: bool = False,
        lens_lr: float | None = None,
    ) -> None:
        """``feature_view``: the deterministic transform of whole-source passes in ``prepare_epoch``;
        ``knn_monitor``: run every ``train_cfg.knn_every`` epochs (None = no monitor);
        ``decode_on_device``: JPEGs are decoded and cropped on the device (``transform`` is then a RandomCrop and
        ``source`` a folder of files; see selfsup.data.device_decode);
        ``trust_checkpoint``: a resume may convert an older, pickled checkpoint (see ``load_checkpoint``);
        ``lens_lr``: the constant lr of the Adam that trains an adversarial lens in front of the task's encoder
        (selfsup.models.lens), which the task's optimiser leaves out."""
        self.trust_checkpoint = trust_checkpoint
        self.optim_cfg = optim_cfg
        self.cfg = train_cfg
        self.source = source
        self.feature_view = feature_view
        self.knn_monitor = knn_monitor
        self.workers = workers
        self.dist = dist_info
        self.device = dist_info.device
        self.out_dir = Path(out_dir)
        self.record = record
        self.channels_last = channels_last
        self.model = model.to(self.device)
        if self.device.type == "cuda":
            # crop sizes are fixed within a run: cuDNN's autotuning pays for itself after a few steps
            torch.backends.cudnn.benchmark = True
        if channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.sampler = EpochBatchSampler(
            len(source), train_cfg.batch_size, rank=dist_info.rank, world_size=dist_info.world_size, seed=train_cfg.seed
        )
        pin = self.device.type == "cuda"
        self.crop_size = transform.size if decode_on_device else None
        self.loader = (device_decode_loader(source, transform, self.sampler, workers=workers, pin_memory=pin)
                       if decode_on_device else train_loader(
                           source, transform, self.sampler, workers=workers, pin_memory=pin,
                           channels_last=channels_last and not self.model.takes_uint8,
                           background_workers=self.device.type == "cpu"))
        self.steps_per_epoch = self.sampler.steps_per_epoch
        self.total_steps = self.steps_per_epoch * train_cfg.epochs
        lens = getattr(getattr(self.model, "encoder", None), "lens", None)
        self.lens = lens if lens is not None and lens.adversarial else None
        if self.lens is not None and lens_lr is None:
            raise ValueError("the task's encoder has an adversarial lens: give lens_lr for its optimiser")
        self.optimizer = build_optimizer(self.model, optim_cfg, leave_out=self.lens)
        self.lens_optimizer = None if self.lens is None else torch.optim.Adam(self.lens.parameters(), lr=lens_lr)
        self.elapsed_before = 0.0
        self._started = training_budget.clock()  # fit() restarts it; set here for steps taken outside fit (ssl-bench)
        self.step_elapsed = 0.0  # the run's seconds after its latest step: the time budget's measure
        self.ended_by: str | None = None
        self.scheduler = build_scheduler(
            self.optimizer, optim_cfg, self.steps_per_epoch, train_cfg.epochs, max_steps=train_cfg.max_steps,
            time_progress=self._time_progress if train_cfg.max_minutes else None,
        )
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
        self.images_seen = 0
        self.writer = None
        self.epoch_metrics: dict[str, float] = {}
        # decoded feature views for tasks that pass over the whole source every epoch (DeepCluster)
        self.view_cache = ViewCache(len(source), VIEW_CACHE_BYTES)
        self.sync_every = self._host_sync_interval()
        # all steps' losses and gradient norms finite since the last check (on the device; see train_step)
        self.finite_since_check = torch.ones((), dtype=torch.bool, device=self.device)
        self.steps_checked = 0  # global step of the last finiteness check

    def _host_sync_interval(self) -> int:
        """Steps between the loop's reads of device values (divergence check, progress bar). On a CPU reading
        is free: every step, and a diverged step is never applied. On an accelerator a read waits for the
        device to finish its queue, so it happens every ``train.log_every`` steps, when logs are written
        anyway, and at checkpoints and epoch ends."""
        return 1 if self.device.type == "cpu" else max(1, self.cfg.log_every)

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
    def plan_epoch(self) -> EpochPlan:
        """The task's preparation of the current epoch (``prepare_epoch``), or a plain shuffle's plan."""
        context = EpochContext(
            epoch=self.epoch, device=self.device, dist=self.dist, source=self.source, feature_view=self.feature_view,
            batch_size=self.sampler.local_batch, workers=self.workers, precision=self.cfg.precision,
            seed=self.cfg.seed, reset_optimizer_state=self._reset_optimizer_state, view_cache=self.view_cache,
        )
        plan = self.model.prepare_epoch(context) or EpochPlan()
        # A run resumed inside an epoch keeps that epoch's metrics from the checkpoint when the hook
        # had nothing to redo (e.g. DeepCluster reuses its saved assignment).
        if plan.metrics or self.step_in_epoch == 0:
            self.epoch_metrics = dict(plan.metrics)
        if self.epoch_metrics and self.dist.is_main:
            shown = "  ".join(f"{k} {v:.4g}" for k, v in self.epoch_metrics.items())
            print(f"epoch {self.epoch + 1}/{self.cfg.epochs} prepared: {shown}", file=sys.stderr)
            if self.writer is not None:
                for name, value in self.epoch_metrics.items():
                    self.writer.add_scalar(f"epoch/{name}", value, self.epoch + 1)
        return plan

    def _reset_optimizer_state(self, params: Iterable[nn.Parameter]) -> None:
        """Forgets momentum (and Adam moments) of ``params``, e.g. of a layer that was re-initialised."""
        for param in params:
            self.optimizer.state.pop(param, None)

    def batch_inputs(self, batch: Batch, relabel: Callable | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """A loader's batch on the device as the task takes it (uint8 where it ``takes_uint8``, else float in
        [0, 1]; channels_last when the model is), and its labels (through ``relabel``, the task's batch_labels)."""
        images = batch_images(batch, self.device, self.crop_size)
        if not self.model.takes_uint8:
            if self.channels_last:  # laid out while still one byte a value
                images = images.contiguous(memory_format=torch.channels_last)
            images = unit_float(images)
        labels = batch.labels.to(self.device, non_blocking=True)
        if relabel is not None:
            labels = relabel(batch.indices.to(self.device, non_blocking=True), labels)
        return images, labels

    def train_step(self, images: torch.Tensor, labels: torch.Tensor) -> dict[str, torch.Tensor]:
        """One optimiser step on a batch already on the device; the detached outputs of the task."""
        gen = step_generator(self.cfg.seed, self.global_step, self.dist.rank, self.device)
        seed_step(self.cfg.seed, self.global_step, self.dist.rank)
        with autocast_context(self.cfg.precision, self.device):
            outputs = self.trainable(images, labels, gen)
        loss = outputs["loss"]
        self.optimizer.zero_grad(set_to_none=True)
        if self.lens is not None:
            self.lens_optimizer.zero_grad(set_to_none=True)
            self.lens.weigh_loss(loss)
            outputs = {**outputs, "lens_change": self.lens.last_change}
        loss.backward()
        if self.grad_clip:  # the task's gradients; the lens's Adam normalises its own
            clipped = [p for group in self.optimizer.param_groups for p in group["params"]]
            grad_norm = torch.nn.utils.clip_grad_norm_(clipped, self.grad_clip)
        else:
            norms = [torch.linalg.vector_norm(p.grad.float()) for p in self.model.parameters() if p.grad is not None]
            grad_norm = torch.linalg.vector_norm(torch.stack(norms)) if norms else torch.zeros((), device=self.device)
        finite = torch.isfinite(loss.detach().float()) & torch.isfinite(grad_norm)
        if self.sync_every == 1:
            # one host sync for both checks, before the step: the weights stay as they were
            if not bool(finite):
                raise TrainingDivergedError(
                    f"training diverged at step {self.global_step} (epoch {self.epoch + 1}): loss "
                    f"{float(loss.detach()):.4g}, gradient norm {float(grad_norm):.4g}; {self._divergence_advice()}"
                )
        else:  # read at the next check (check_finite); the step is taken meanwhile
            self.finite_since_check &= finite
        self.optimizer.step()
        if self.lens is not None:
            self.lens_optimizer.step()
        # before the schedule moves on: the next lr and the decision to stop see the same time
        self.step_elapsed = self._shared_elapsed()
        self.scheduler.step()
        return {name: value.detach() for name, value in outputs.items()}

    def _divergence_advice(self) -> str:
        return (f"lower optim.lr (now {self.optim_cfg.lr:g}) or set optim.grad_clip; {self._kept_text()}")

    def check_finite(self) -> None:
        """Raises TrainingDivergedError when a step since the last check had a non-finite loss or gradient
        (only with deferred checks: ``sync_every > 1``). Its weights were then applied, so no checkpoint may
        follow: the last good one stays on disk."""
        if self.sync_every > 1 and not bool(self.finite_since_check):
            raise TrainingDivergedError(
                f"training diverged between steps {self.steps_checked} and {self.global_step - 1} (epoch "
                f"{self.epoch + 1}): a non-finite loss or gradient norm; {self._divergence_advice()}")
        self.steps_checked = self.global_step

    def _sync_buffers(self) -> None:
        # DDP broadcasts BN statistics at each forward; doing it at epoch end too makes every
        # rank hold rank 0's model exactly when a checkpoint is written.
        if self.dist.enabled:
            for buffer in self.model.buffers():
                dist.broadcast(buffer, src=0)

    def fit(self) -> dict[str, Any]:
        self._started = training_budget.clock()
        if self.cfg.resume:
            self.resume()
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self._open_writer()
        interactive = sys.stderr.isatty()
        run_start_step = self.global_step
        relabel = self.model.batch_labels if self.model.relabels_batches else None
        # a resumed run may have nothing left: its epochs done or its budget spent
        self.ended_by = self._budget_ended(self.step_elapsed)
        while self.ended_by is None:
            plan = self.plan_epoch()
            self.sampler.set_epoch(self.epoch, self.step_in_epoch, plan.order)
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
            try:  # an error mid-epoch must start on a line of its own, not after the bar
                self._run_epoch(bar, relabel)
            finally:
                bar.close()
            if self.step_in_epoch == self.steps_per_epoch:
                self._end_epoch()
            else:  # a budget ended the run inside the epoch: checkpoint its position, as mid-epoch saves do
                self._sync_buffers()
                self._save_checkpoint()
        if self.writer is not None:
            self.writer.close()
        summary = self._summary(run_start_step)
        if self.dist.is_main:
            with atomic_file(self.out_dir / SUMMARY_NAME, "w") as handle:
                handle.write(json.dumps(summary, indent=2, default=str))
        return summary

    def _run_epoch(self, bar: tqdm, relabel: Callable | None) -> None:
        """The rest of the current epoch's steps, with progress, logs and mid-epoch checkpoints."""
        window_start, window_images = training_budget.clock(), 0
        for batch in self.loader:
            if len(batch.labels) == 0:  # replace_bad found no readable image in the whole source
                raise DataError(f"no readable image in {self.source.describe()}: every file failed to "
                                f"decode, e.g. {batch.bad_files[0] if batch.bad_files else 'unknown'}")
            images, labels = self.batch_inputs(batch, relabel)
            self.bad_files.add(batch.bad_files)  # after decoding: a JPEG the device could not decode is one
            if self.step_in_epoch == 0:
                self._log_images(unit_float(images))
            outputs = self.train_step(images, labels)
            count = images.shape[0] * self.dist.world_size
            self.meter.add(outputs, images.shape[0])
            self.global_step += 1
            self.step_in_epoch += 1
            self.images_seen += count
            window_images += count
            now = training_budget.clock()
            rate = window_images / max(now - window_start, 1e-9)
            if self.global_step % self.sync_every == 0:
                self.check_finite()
                bar.set_postfix(
                    loss=f"{float(outputs['loss']):.3f}",
                    **{k: f"{float(v):.3f}" for k, v in outputs.items() if k != "loss"},
                    img_s=f"{rate:.0f}",
                    eta=format_seconds(self._seconds_left(rate)),
                    refresh=False,
                )
            bar.update(1)
            if self.writer is not None and self.global_step % self.cfg.log_every == 0:
                for name, value in outputs.items():
                    self.writer.add_scalar(f"train/{name}", float(value), self.global_step)
                self.writer.add_scalar("train/lr", self.optimizer.param_groups[0]["lr"], self.global_step)
                self.writer.add_scalar("train/images_per_s", rate, self.global_step)
                window_start, window_images = now, 0
            self.ended_by = self._budget_ended(self.step_elapsed)
            if self.ended_by is not None:
                break
            if (
                self.cfg.checkpoint_every
                and self.global_step % self.cfg.checkpoint_every == 0
                and self.step_in_epoch < self.steps_per_epoch
            ):
                self._save_checkpoint()
            if self.cfg.keep_every and self.global_step % self.cfg.keep_every == 0:
                self._save_checkpoint(self.checkpoint_path.with_name(f"step_{self.global_step:06d}.pt"))

    def _end_epoch(self) -> None:
        averages = self.meter.averages()
        knn, knn_seconds = {}, 0.0
        if self.knn_monitor is not None and self._knn_due():
            knn, knn_seconds = self._run_knn_monitor(self.knn_monitor)
        elapsed = self._elapsed()
        entry = {"epoch": self.epoch + 1, "step": self.global_step, **averages, **self.epoch_metrics, **knn,
                 "elapsed_s": round(elapsed, 1)}
        self.history.append(entry)
        if self.writer is not None:
            for name, value in averages.items():
                self.writer.add_scalar(f"epoch/{name}", value, self.epoch + 1)
            for name, value in knn.items():
                self.writer.add_scalar(f"knn/{name.removeprefix('knn_')}", value, self.epoch + 1)
            self.writer.flush()
        if self.dist.is_main:
            shown = "  ".join(f"{k} {v:.4f}" for k, v in averages.items())
            if knn:
                shown += "  " + "  ".join(f"{k} {v:.2f}" for k, v in knn.items()) + f"  (kNN {knn_seconds:.1f} s)"
            print(f"epoch {self.epoch + 1}/{self.cfg.epochs}: {shown}", file=sys.stderr)
        self.epoch += 1
        self.step_in_epoch = 0
        self.meter = EpochMeter()
        self._sync_buffers()
        if self.ended_by is None:  # the epoch's end (a kNN pass) may have used up the time budget
            self.ended_by = self._budget_ended(self._shared_elapsed())
        self._save_checkpoint()
