"""Portable records: paths below the record's checkout are stored relative to the record's folder."""

import json
from pathlib import Path

from selfsup.probes.records import load_records, portable, resolve_path, write_record
from selfsup.probes.report import build_report

from test_report import linear_record


def checkout(tmp_path):
    repo = tmp_path / "repo"
    (repo / ".git").mkdir(parents=True)
    (repo / "runs" / "rot").mkdir(parents=True)
    (repo / "runs" / "rot" / "last.pt").write_bytes(b"")
    return repo


def test_paths_below_the_checkout_are_stored_relative_to_the_record_folder(tmp_path):
    repo = checkout(tmp_path)
    ckpt = str(repo / "runs" / "rot" / "last.pt")
    out = repo / "experiments" / "records" / "probe.json"
    record = linear_record("rotation", (35.0, 50.0, 47.5), checkpoint=ckpt)
    record.update(data="/scratch/cifar10", figure=str(out.with_suffix(".png")),
                  command=f"ssl-probe --checkpoint {ckpt} --data /scratch/cifar10 --out {out}",
                  splits={"notes": [f"weights at {repo / 'runs'}.", "see https://example.org/a/b"]})
    write_record(record, out)
    stored = json.loads(out.read_text())
    assert stored["checkpoint"] == "../../runs/rot/last.pt"
    assert stored["figure"] == "probe.png"
    # outside the checkout: kept as the user gave it
    assert stored["data"] == "/scratch/cifar10"
    assert stored["command"] == "ssl-probe --checkpoint ../../runs/rot/last.pt --data /scratch/cifar10 --out probe.json"
    assert stored["splits"]["notes"] == ["weights at ../../runs.", "see https://example.org/a/b"]
    assert record["checkpoint"] == ckpt  # the caller's record is not rewritten
    loaded = load_records([out])[0][0]
    assert resolve_path(loaded, loaded["checkpoint"]) == ckpt
    assert resolve_path(loaded, "random") == "random" and resolve_path(loaded, "<runs>/x/last.pt") == "<runs>/x/last.pt"


def test_a_relative_checkpoint_is_taken_from_the_working_folder_and_home_paths_become_tilde(tmp_path, monkeypatch):
    repo = checkout(tmp_path)
    monkeypatch.chdir(repo)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    record = linear_record("rotation", (35.0, 50.0, 47.5), checkpoint="runs/rot/last.pt")
    record["data"] = "demo"
    record["splits"] = {"test": f"folder {tmp_path / 'home' / '.cache' / 'selfsup' / 'test'} (1,000 images)"}
    out = write_record(record, repo / "experiments" / "probe.json")
    stored = json.loads(out.read_text())
    assert stored["checkpoint"] == "../runs/rot/last.pt" and stored["data"] == "demo"
    assert stored["splits"]["test"] == "folder ~/.cache/selfsup/test (1,000 images)"


def test_records_copied_to_another_clone_still_join_their_pretraining_summary(tmp_path):
    repo = checkout(tmp_path)
    folder = repo / "experiments" / "records"
    ckpt = str(repo / "runs" / "rot" / "last.pt")
    summary = {"kind": "pretrain", "checkpoint": ckpt, "command": f"ssl-pretrain --out {ckpt}", "epochs": 2,
               "steps": 10, "wall_time_s": 120.0, "images_per_s": 50.0}
    write_record(summary, folder / "pretrain_rotation.json")
    write_record(linear_record("rotation", (35.0, 50.0, 47.5), checkpoint=ckpt), folder / "probe_rotation.json")
    clone = tmp_path / "clone"
    folder.rename(clone)  # a fresh clone elsewhere: only relative paths survive the move
    assert str(tmp_path) not in "".join(file.read_text() for file in clone.glob("*.json"))
    report = build_report(load_records([clone])[0], title="t", command="c")
    assert "## Pretraining runs" in report and "`ssl-pretrain --out ../../runs/rot/last.pt`" in report


def test_portable_leaves_names_numbers_and_paths_outside_a_checkout_alone():
    folder = Path("/r/experiments/records")
    assert portable({"a": [1, 2.5, None, "random", "1/2"]}, folder, Path("/r")) == {"a": [1, 2.5, None, "random", "1/2"]}
    # outside any checkout a record keeps its absolute paths
    assert portable({"checkpoint": "/runs/x/last.pt"}, folder, None) == {"checkpoint": "/runs/x/last.pt"}


def test_the_command_names_the_console_script_also_when_run_as_a_cli_file(monkeypatch):
    """torchrun -m selfsup.cli.pretrain makes argv[0] the module's path: the record still says ssl-pretrain."""
    import selfsup.cli.pretrain
    from selfsup.provenance import command_line

    monkeypatch.setattr("sys.argv", [selfsup.cli.pretrain.__file__, "--task", "jigsaw", "--out", "runs/a b"])
    assert command_line() == "ssl-pretrain --task jigsaw --out 'runs/a b'"
    monkeypatch.setattr("sys.argv", ["/usr/local/bin/ssl-probe", "--freeze", "all"])
    assert command_line() == "ssl-probe --freeze all"
    monkeypatch.setattr("sys.argv", ["experiments/fair_tasks.py", "--seeds", "2"])
    assert command_line() == "fair_tasks.py --seeds 2"


def test_the_machine_names_the_cpu_and_whether_it_multiplies_bf16_in_hardware(monkeypatch):
    """Two hosts with the same core count can differ in bf16 matrix products (3x in a probe's head step):
    records and bench tables say which CPU made them; records written before they said so still read."""
    import torch

    from selfsup.provenance import machine_description, machine_text

    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False, raising=False)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: True, raising=False)
    machine = machine_description(torch.device("cpu"))
    assert isinstance(machine["cpu"], str) and machine["cpu"] and machine["cpu_bf16_matmul"] is True
    assert f"{machine['cpu']} (with bf16 matrix products in hardware), " in machine_text(machine)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False, raising=False)
    assert "(no bf16 matrix products in hardware)" in machine_text(machine_description(torch.device("cpu")))
    older = {"platform": "linux", "cpu_count": 2, "torch_threads": 2, "torch": "2.x", "device": "cpu"}
    assert machine_text(older) == "linux, 2 CPU cores, 2 torch threads, torch 2.x, device cpu"
