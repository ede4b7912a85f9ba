"""Device choice: a CUDA device asked for where there is none is one line naming the option."""

import pytest
import torch

from selfsup.distributed import init_distributed, pick_device
from selfsup.errors import DeviceError


def test_cuda_without_a_cuda_device_names_the_option(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert pick_device("auto") == torch.device("cpu") and pick_device("cpu") == torch.device("cpu")
    with pytest.raises(DeviceError, match="--device cuda is unavailable: torch sees no CUDA device"):
        pick_device("cuda")
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    with pytest.raises(DeviceError, match="train.device = cuda is unavailable: torch sees no CUDA device"):
        init_distributed("cuda")


def test_a_local_rank_past_the_last_gpu_is_refused(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert pick_device("auto", local_rank=1) == torch.device("cuda", 1)
    with pytest.raises(DeviceError, match="LOCAL_RANK=2 needs GPU 2, but torch sees 2 CUDA device"):
        pick_device("cuda", local_rank=2)
    assert pick_device("cpu", local_rank=2) == torch.device("cpu")
