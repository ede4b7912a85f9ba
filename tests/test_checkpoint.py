"""Atomic files: a failed write keeps the previous file, a finished one gets ordinary permissions."""

import errno
import io
import os
import random
from pathlib import Path

import numpy as np
import pytest
import torch

from selfsup import checkpoint
from selfsup.checkpoint import (atomic_file, atomic_save, load_checkpoint, remove_stale_temporaries, rng_state,
                                set_rng_state)
from selfsup.errors import CheckpointError, OutputError


def test_failed_write_keeps_the_previous_file_and_leaves_no_temporary(tmp_path):
    path = tmp_path / "record.json"
    path.write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_file(path, "w") as handle:
            handle.write("half")
            raise RuntimeError("killed")
    assert path.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["record.json"]


def test_written_files_get_the_permissions_of_a_plain_open(tmp_path):
    mask = os.umask(0o022)
    try:
        atomic_save({"step": 3}, tmp_path / "last.pt")
        assert (tmp_path / "last.pt").stat().st_mode & 0o777 == 0o644
        assert load_checkpoint(tmp_path / "last.pt") == {"step": 3}
    finally:
        os.umask(mask)


class _RunsCode:
    """Unpickling this calls ``Path.touch`` on the marker: stands for any code a pickle can run."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_a_checkpoint_that_would_run_code_is_refused_and_runs_nothing(tmp_path):
    marker = tmp_path / "marker"
    path = tmp_path / "evil.pt"
    torch.save({"model": {}, "payload": _RunsCode(marker)}, path)
    with pytest.raises(CheckpointError, match="refused.*--trust-checkpoint"):
        load_checkpoint(path)
    assert not marker.exists()


@pytest.mark.parametrize("content", [b"", b"not a checkpoint", b"PK\x03\x04truncated zip"])
def test_unreadable_files_are_named_in_one_line(tmp_path, content):
    path = tmp_path / "last.pt"
    path.write_bytes(content)
    with pytest.raises(CheckpointError, match=f"checkpoint {path} cannot be read") as caught:
        load_checkpoint(path)
    assert "\n" not in str(caught.value)


def test_a_truncated_checkpoint_is_named(tmp_path):
    path = tmp_path / "last.pt"
    atomic_save({"model": {"w": torch.ones(1000)}}, path)
    path.write_bytes(path.read_bytes()[:500])
    with pytest.raises(CheckpointError, match="cannot be read"):
        load_checkpoint(path)


def test_other_payloads_are_refused(tmp_path):
    torch.save([1, 2, 3], tmp_path / "list.pt")
    with pytest.raises(CheckpointError, match="holds a list"):
        load_checkpoint(tmp_path / "list.pt")
    with pytest.raises(CheckpointError, match="not found"):
        load_checkpoint(tmp_path / "missing.pt")
    with pytest.raises(CheckpointError, match="not a file"):
        load_checkpoint(tmp_path)


def test_saving_refuses_anything_but_tensors_and_plain_types(tmp_path):
    with pytest.raises(TypeError, match=r"checkpoint\['machine'\]\['torch'\] is a torch.torch_version.TorchVersion"):
        atomic_save({"machine": {"torch": torch.__version__}}, tmp_path / "last.pt")
    with pytest.raises(TypeError, match="numpy.ndarray"):
        atomic_save({"rng": np.zeros(3)}, tmp_path / "last.pt")
    assert not (tmp_path / "last.pt").exists()


def test_rng_state_round_trips_through_a_safe_load(tmp_path):
    random.seed(1), np.random.seed(2), torch.manual_seed(3)
    atomic_save({"rng": rng_state()}, tmp_path / "last.pt")
    expected = (random.random(), np.random.rand(), torch.rand(1))
    random.seed(7), np.random.seed(7), torch.manual_seed(7)
    set_rng_state(load_checkpoint(tmp_path / "last.pt")["rng"])
    assert (random.random(), np.random.rand(), torch.rand(1)) == expected


def test_a_full_disk_is_one_line_and_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / "last.pt"
    atomic_save({"step": 1}, path)
    before = path.read_bytes()
    real_fdopen = os.fdopen

    class FullDisk(io.RawIOBase):
        def __init__(self, handle):
            self.handle = handle

        def write(self, data):
            raise OSError(errno.ENOSPC, "No space left on device")

        def fileno(self):
            return self.handle.fileno()

        def close(self):
            self.handle.close()

    monkeypatch.setattr(checkpoint.os, "fdopen", lambda fd, mode: FullDisk(real_fdopen(fd, mode)))
    with pytest.raises(OutputError, match=f"cannot write {path}: No space left on device; the previous file is kept"):
        atomic_save({"step": 2, "weights": torch.ones(100_000)}, path)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]


def test_stale_temporaries_are_removed(tmp_path):
    (tmp_path / ".last.pt.abc.tmp").write_bytes(b"half")
    (tmp_path / "keep.tmp").write_bytes(b"not ours")
    assert [p.name for p in remove_stale_temporaries(tmp_path)] == [".last.pt.abc.tmp"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keep.tmp"]
