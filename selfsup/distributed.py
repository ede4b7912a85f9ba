"""Process-group set-up for ``torchrun``: gloo on CPU, nccl on CUDA; a no-op for one process."""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from selfsup.errors import DeviceError


@dataclass(frozen=True)
class DistInfo:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def pick_device(preference: str, local_rank: int = 0, option: str = "--device") -> torch.device:
    """The device for ``preference`` (auto, cpu or cuda). ``cuda`` on a machine where torch sees no CUDA
    device, or a ``local_rank`` past the last GPU, is a DeviceError naming ``option`` (``--device`` or
    the config field ``train.device``)."""
    if preference == "cpu":
        return torch.device("cpu")
    if torch.cuda.is_available():
        count = torch.cuda.device_count()
        if local_rank >= count:
            raise DeviceError(f"process LOCAL_RANK={local_rank} needs GPU {local_rank}, but torch sees {count} CUDA "
                              f"device(s): start at most {count} processes per machine (torchrun --nproc-per-node)")
        return torch.device("cuda", local_rank)
    if preference == "cuda":
        given = f"{option} cuda" if option.startswith("--") else f"{option} = cuda"
        raise DeviceError(f"{given} is unavailable: torch sees no CUDA device on this machine; use auto or cpu")
    return torch.device("cpu")


def init_distributed(device_preference: str = "auto") -> DistInfo:
    """Joins the process group that ``torchrun`` describes in the environment, if any; ``device_preference``
    is the config's ``train.device``."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = pick_device(device_preference, local_rank, option="train.device")
    if world_size > 1 and not dist.is_initialized():
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return DistInfo(rank=rank, world_size=world_size, local_rank=local_rank, device=device)


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def shutdown() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
