"""Speed measures of the training pipeline, each the ratio of two sides timed interleaved in one process, so
that a busy or throttled machine slows both alike.

- :func:`measure_pipeline`: end-to-end steps (next batch from the task's loader, to the device, the training
  step) against the same training step on a batch already on the device. ``efficiency = end-to-end img/s /
  step-only img/s``: 1.0 when the loader keeps up with the step. The end-to-end steps are split into loader
  wait, transfer to the device, pretext inputs (the task's forward up to its first encoder call) and the rest.
- :func:`measure_threads`: end-to-end img/s per torch thread count, idle and beside spinning processes.
- :func:`measure_epoch_share`: a task's epoch preparation (DeepCluster's clustering) against its steps.
- :func:`measure_precision`: the training step under fp32 against bf16 autocast, and what ``auto`` chooses.

The data side of the tile and patch tasks is measured in :mod:`selfsup.bench.data_side`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from selfsup.checkpoint import seed_everything
from selfsup.config import PretrainConfig
from selfsup.data.decoded import DecodedSource
from selfsup.distributed import DistInfo, pick_device
from selfsup.engine import Trainer
from selfsup.epoch import resolve_precision
from selfsup.pretraining import build_pretraining, loader_workers, new_trainer


def synchronize(device: torch.device) -> None:
    """Waits for the device's queued work, so that a clock read next covers it."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@dataclass
class StepTimes:
    """Seconds summed over timed steps (``count`` steps of ``images`` images in all)."""

    count: int = 0
    images: int = 0
    total: float = 0.0
    parts: dict[str, float] = field(default_factory=dict)

    def add(self, images: int, total: float, **parts: float) -> None:
        self.count += 1
        self.images += images
        self.total += total
        for name, seconds in parts.items():
            self.parts[name] = self.parts.get(name, 0.0) + seconds

    def merge(self, other: StepTimes) -> None:
        self.count += other.count
        self.images += other.images
        self.total += other.total
        for name, seconds in other.parts.items():
            self.parts[name] = self.parts.get(name, 0.0) + seconds

    @property
    def images_per_s(self) -> float:
        return self.images / max(self.total, 1e-12)

    def ms_per_step(self) -> dict[str, float]:
        return {name: 1000 * seconds / max(self.count, 1) for name, seconds in self.parts.items()}


class _FirstEncoderCall:
    """Clock time of the encoder's first forward call after :meth:`arm`: where the task's input-making ends."""

    def __init__(self, trainer: Trainer) -> None:
        self.device = trainer.device
        self.at: float | None = None
        self.armed = False
        encoder = getattr(trainer.model, "encoder", None)
        self.handle = encoder.register_forward_pre_hook(self._hook) if encoder is not None else None

    def _hook(self, module: torch.nn.Module, inputs: Any) -> None:
        if self.armed:
            synchronize(self.device)
            self.at, self.armed = time.perf_counter(), False

    def arm(self) -> None:
        self.at, self.armed = None, True

    def close(self) -> None:
        if self.handle is not None:
            self.handle.remove()


class _Batches:
    """The trainer's loader, epoch after epoch, with the task's epoch preparation (clustering) untimed
    between epochs; yields ``(images, labels)`` on the device as the Trainer's loop makes them."""

    def __init__(self, trainer: Trainer) -> None:
        self.trainer = trainer
        self.relabel = trainer.model.batch_labels if trainer.model.relabels_batches else None
        self.iterator: Iterator | None = None
        self.epoch = 0
        self.prepare_seconds: list[float] = []  # the task's preparation of each epoch started (e.g. clustering)
        self.prepare_metrics: list[dict[str, float]] = []

    def _start_epoch(self) -> None:
        self.trainer.epoch = self.epoch
        started = time.perf_counter()
        plan = self.trainer.plan_epoch()
        self.prepare_seconds.append(time.perf_counter() - started)
        self.prepare_metrics.append(dict(self.trainer.epoch_metrics))
        self.trainer.sampler.set_epoch(self.epoch, 0, plan.order)
        self.iterator = iter(self.trainer.loader)
        self.epoch += 1

    def next_raw(self) -> Any:
        if self.iterator is None:
            self._start_epoch()
        try:
            return next(self.iterator)
        except StopIteration:
            self._start_epoch()
            return next(self.iterator)

    def to_device(self, batch: Any) -> tuple[torch.Tensor, torch.Tensor]:
        return self.trainer.batch_inputs(batch, self.relabel)


@dataclass
class PipelineResult:
    task: str
    arch: str
    image_size: int
    batch_size: int
    device: str
    workers: int
    decoding: str  # where training images are decoded: see decoding_path
    channels_last: bool
    precision: str
    steps_per_side: int
    end_to_end_img_s: float
    step_only_img_s: float
    efficiency: float
    efficiency_per_round: list[float]  # the same ratio in each alternating block: its spread is the noise
    end_to_end_ms: dict[str, float]  # per step: loader_wait, to_device, pretext_inputs, rest_of_step
    step_only_ms: float

    def row(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


class PipelineSession:
    """A task's training set up as ssl-pretrain sets it up (nothing is written), stepped one batch at a time,
    either end to end or on a batch kept on the device. The model trains through every step."""

    def __init__(self, cfg: PretrainConfig, scratch: Path) -> None:
        seed_everything(cfg.train.seed)
        self.cfg = cfg
        self.device = pick_device(cfg.train.device, option="train.device")
        dist_info = DistInfo(rank=0, world_size=1, local_rank=0, device=self.device)
        setup = build_pretraining(cfg, workers=loader_workers(cfg, dist_info))
        self.trainer = new_trainer(cfg, setup, dist_info, scratch, {"config": {}})
        self.trainer.model.train()
        self.batches = _Batches(self.trainer)
        self.encoder_call = _FirstEncoderCall(self.trainer)
        self.kept: tuple[torch.Tensor, torch.Tensor] | None = None

    def full_step(self, times: StepTimes | None = None) -> None:
        """Next batch from the loader, to the device, the training step; its batch is kept for :meth:`kept_step`."""
        started = time.perf_counter()
        raw = self.batches.next_raw()
        loaded = time.perf_counter()
        images, labels = self.batches.to_device(raw)
        synchronize(self.device)
        moved = time.perf_counter()
        self.encoder_call.arm()
        self._step(images, labels)
        done = time.perf_counter()
        inputs_made = self.encoder_call.at if self.encoder_call.at is not None else moved
        self.kept = (images, labels)
        if times is not None:
            times.add(len(images), done - started, loader_wait=loaded - started, to_device=moved - loaded,
                      pretext_inputs=inputs_made - moved, rest_of_step=done - inputs_made)

    def kept_step(self, times: StepTimes | None = None) -> None:
        """The training step on the last full step's batch, already on the device."""
        if self.kept is None:
            raise RuntimeError("kept_step before any full_step")
        started = time.perf_counter()
        self._step(*self.kept)
        if times is not None:
            times.add(len(self.kept[0]), time.perf_counter() - started)

    def _step(self, images: torch.Tensor, labels: torch.Tensor) -> None:
        outputs = self.trainer.train_step(images, labels)
        float(outputs["loss"])  # the training loop's per-step read of the loss
        self.trainer.global_step += 1

    def close(self) -> None:
        self.encoder_call.close()
        self.batches.iterator = None  # the loader's workers stop now, not at the next task's


@contextlib.contextmanager
def pipeline_session(cfg: PretrainConfig) -> Iterator[PipelineSession]:
    with tempfile.TemporaryDirectory(prefix="ssl-bench-") as scratch:
        session = PipelineSession(cfg, Path(scratch))
        try:
            yield session
        finally:
            session.close()


def split_rounds(steps: int, rounds: int) -> list[int]:
    """``steps`` as ``rounds`` near-equal blocks."""
    return [steps // rounds + (r < steps % rounds) for r in range(rounds)]


def measure_pipeline(cfg: PretrainConfig, *, steps: int, rounds: int, warmup: int = 2) -> PipelineResult:
    """End-to-end against step-only throughput of ``cfg``'s training, ``steps`` timed steps a side in ``rounds``
    alternating blocks, after ``warmup`` untimed steps of each."""
    end_to_end, step_only = StepTimes(), StepTimes()
    per_round = []
    with pipeline_session(cfg) as session:
        for _ in range(warmup):
            session.full_step()
            session.kept_step()
        for count in split_rounds(steps, rounds):
            block_full, block_kept = StepTimes(), StepTimes()
            for _ in range(count):
                session.full_step(block_full)
            for _ in range(count):
                session.kept_step(block_kept)
            per_round.append(block_full.images_per_s / block_kept.images_per_s)
            end_to_end.merge(block_full)
            step_only.merge(block_kept)
    return PipelineResult(
        task=cfg.task, arch=cfg.model.arch, image_size=cfg.data.image_size, batch_size=cfg.train.batch_size,
        device=str(session.device), workers=session.trainer.workers, decoding=decoding_path(session.trainer),
        channels_last=session.trainer.channels_last, precision=cfg.train.precision, steps_per_side=steps,
        end_to_end_img_s=end_to_end.images_per_s, step_only_img_s=step_only.images_per_s,
        efficiency=end_to_end.images_per_s / step_only.images_per_s, efficiency_per_round=per_round,
        end_to_end_ms=end_to_end.ms_per_step(), step_only_ms=1000 * step_only.total / max(step_only.count, 1),
    )


def decoding_path(trainer: Trainer) -> str:
    """"gpu jpeg" (nvJPEG in the training process), "decoded cache" (pixels read from a memory map in the loader
    workers) or "workers" (each file decoded by a loader worker)."""
    if trainer.crop_size is not None:
        return "gpu jpeg"
    return "decoded cache" if isinstance(trainer.source, DecodedSource) else "workers"


@dataclass
class EpochShareResult:
    task: str
    epochs: int
    warmup_epochs: int
    steps_per_epoch: int
    prepare_s: float  # per epoch: the task's preparation (feature pass, PCA, k-means)
    steps_s: float  # per epoch: its end-to-end training steps
    outside_share: float  # prepare / (prepare + steps)
    prepare_metrics: list[dict[str, float]]
    options: dict[str, Any]

    def row(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def measure_epoch_share(cfg: PretrainConfig, *, epochs: int, warmup_epochs: int = 0) -> EpochShareResult:
    """Whole epochs of ``cfg``'s training: the seconds of each epoch's preparation by the task (DeepCluster's
    clustering step) against the seconds of its training steps, end to end; ``warmup_epochs`` are run first,
    untimed (e.g. the first epoch of a run that reuses its training features, which has none yet)."""
    steps = StepTimes()
    with pipeline_session(cfg) as session:
        per_epoch = session.trainer.steps_per_epoch
        for _ in range(warmup_epochs * per_epoch):
            session.full_step()
        for _ in range(epochs * per_epoch):
            session.full_step(steps)
        prepare = session.batches.prepare_seconds[warmup_epochs : warmup_epochs + epochs]
        metrics = session.batches.prepare_metrics[warmup_epochs : warmup_epochs + epochs]
        options = dataclasses.asdict(session.trainer.model.cfg)
    prepare_s, steps_s = sum(prepare) / epochs, steps.total / epochs
    return EpochShareResult(cfg.task, epochs, warmup_epochs, per_epoch, prepare_s, steps_s, prepare_s / (prepare_s + steps_s),
                            metrics, options)


@contextlib.contextmanager
def busy_cores(count: int) -> Iterator[None]:
    """``count`` other processes spinning on the CPU meanwhile (a shared machine's other jobs)."""
    spinners = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(count)]
    try:
        time.sleep(0.5)  # let them start spinning
        yield
    finally:
        for spinner in spinners:
            spinner.kill()
        for spinner in spinners:
            spinner.wait()


def measure_threads(cfg: PretrainConfig, *, thread_counts: list[int], busy: int, steps: int, rounds: int,
                    warmup: int = 2) -> list[dict[str, Any]]:
    """End-to-end img/s of ``cfg``'s training at each torch thread count, the counts interleaved in ``rounds``
    blocks; once on the machine as it is ("idle") and once beside ``busy`` spinning processes. The thread
    policy (passive OpenMP waiting) is whatever the environment set when torch loaded."""
    rows = []
    before = torch.get_num_threads()
    with pipeline_session(cfg) as session:
        for load, spinners in (("idle", 0), (f"busy ({busy} spinning processes)", busy)):
            with busy_cores(spinners):
                times = {count: StepTimes() for count in thread_counts}
                for count in thread_counts:
                    torch.set_num_threads(count)
                    for _ in range(warmup):
                        session.full_step()
                for block in split_rounds(steps, rounds):
                    for count in thread_counts:
                        torch.set_num_threads(count)
                        for _ in range(block):
                            session.full_step(times[count])
            fastest = max(t.images_per_s for t in times.values())
            rows += [{"task": cfg.task, "load": load, "threads": count, "end_to_end_img_s": t.images_per_s,
                      "vs_fastest": t.images_per_s / fastest, "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", ""),
                      "device": str(session.device)} for count, t in times.items()]
    torch.set_num_threads(before)
    return rows


def measure_precision(cfg: PretrainConfig, *, steps: int, rounds: int, warmup: int = 2) -> dict[str, Any]:
    """Step-only img/s of ``cfg``'s training under fp32 and under bf16 autocast, ``steps`` timed steps each in
    ``rounds`` alternating blocks on one batch kept on the device (the loader is not what differs), after
    ``warmup`` untimed steps of each; and the precision ``auto`` runs on this device."""
    times = {"fp32": StepTimes(), "bf16": StepTimes()}
    with pipeline_session(cfg) as session:
        session.full_step()
        trainer_cfg = session.trainer.cfg
        try:
            for precision in times:
                trainer_cfg.precision = precision
                for _ in range(warmup):
                    session.kept_step()
            for count in split_rounds(steps, rounds):
                for precision, timed in times.items():
                    trainer_cfg.precision = precision
                    for _ in range(count):
                        session.kept_step(timed)
        finally:
            trainer_cfg.precision = cfg.train.precision
    fp32, bf16 = (times[p].images_per_s for p in ("fp32", "bf16"))
    return {"task": cfg.task, "arch": cfg.model.arch, "image_size": cfg.data.image_size,
            "batch_size": cfg.train.batch_size, "device": str(session.device), "steps_per_side": steps,
            "fp32_img_s": fp32, "bf16_img_s": bf16, "bf16_vs_fp32": bf16 / fp32,
            "auto_runs": resolve_precision("auto", session.device)}
