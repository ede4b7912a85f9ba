"""Atomic files: a failed write keeps the previous file, a finished one gets ordinary permissions."""

import os

import pytest

from selfsup.checkpoint import atomic_file, atomic_save, load_checkpoint


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
