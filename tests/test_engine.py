"""The shared training engine: exact resumption after a kill, and torchrun data parallelism."""

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import torch

from selfsup.cli.pretrain import main as pretrain_main

TINY_RUN = ["--epochs", "3", "--batch-size", "8", "--workers", "0", "--image-size", "16", "--width", "0.25",
            "--set", "pretext.head_hidden=16", "--device", "cpu"]
REPO = Path(__file__).resolve().parents[1]


def model_state(run_dir: Path) -> dict[str, torch.Tensor]:
    return torch.load(run_dir / "last.pt", map_location="cpu", weights_only=False)["model"]


def test_killed_run_resumes_to_the_same_weights(tiny_folder, tmp_path):
    common = ["--data", str(tiny_folder), *TINY_RUN, "--checkpoint-every", "2"]
    reference = tmp_path / "reference"
    assert pretrain_main([*common, "--out", str(reference)]) == 0

    # Kill the process (SIGKILL, no clean-up) right after its first mid-epoch checkpoint at step 4 of 6 per epoch.
    killed = tmp_path / "killed"
    script = textwrap.dedent(f"""
        import os, signal, sys
        import selfsup.engine as engine
        save = engine.Trainer._save_checkpoint
        def save_then_die(self):
            save(self)
            if self.global_step == 8:  # epoch 2, step 2 of 6
                os.kill(os.getpid(), signal.SIGKILL)
        engine.Trainer._save_checkpoint = save_then_die
        from selfsup.cli.pretrain import main
        sys.exit(main({[*common, "--out", str(killed)]!r}))
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    state = torch.load(killed / "last.pt", map_location="cpu", weights_only=False)
    assert (state["global_step"], state["epoch"], state["step_in_epoch"]) == (8, 1, 2)

    assert pretrain_main([*common, "--out", str(killed), "--resume"]) == 0
    expected, resumed = model_state(reference), model_state(killed)
    assert expected.keys() == resumed.keys()
    for key in expected:
        assert torch.allclose(expected[key].float(), resumed[key].float(), rtol=0, atol=1e-6), key
    summary = json.loads((killed / "summary.json").read_text())
    assert summary["steps"] == 18 and summary["precision"] in ("fp32", "bf16")


def test_torchrun_two_processes_match_one_process(tiny_folder, tmp_path):
    single = tmp_path / "single"
    assert pretrain_main(["--data", str(tiny_folder), *TINY_RUN, "--out", str(single)]) == 0

    ddp = tmp_path / "ddp"
    ranks = tmp_path / "ranks"
    ranks.mkdir()
    # Each rank also saves its own final weights to a test-owned folder so they can be compared.
    script = tmp_path / "ddp_run.py"
    script.write_text(textwrap.dedent(f"""
        import os, sys, torch
        import selfsup.engine as engine
        fit = engine.Trainer.fit
        def fit_and_dump(self):
            summary = fit(self)
            torch.save(self.model.state_dict(), {str(ranks)!r} + f"/rank{{self.dist.rank}}.pt")
            return summary
        engine.Trainer.fit = fit_and_dump
        from selfsup.cli.pretrain import main
        sys.exit(main(sys.argv[1:]))
    """))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", str(script),
         "--data", str(tiny_folder), *TINY_RUN, "--out", str(ddp)],
        capture_output=True, text=True, timeout=600, env=env,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]

    rank0 = torch.load(ranks / "rank0.pt", weights_only=False)
    rank1 = torch.load(ranks / "rank1.pt", weights_only=False)
    for key in rank0:
        assert torch.equal(rank0[key], rank1[key]), key

    # rank 0 alone writes: one checkpoint, one summary, one TensorBoard event file (and holds the run lock)
    written = sorted(p.relative_to(ddp).as_posix() for p in ddp.rglob("*") if p.is_file())
    assert [w for w in written if not w.startswith("tb/")] == [".lock", "config.yaml", "last.pt", "summary.json"]
    assert len([w for w in written if w.startswith("tb/")]) == 1
    summary = json.loads((ddp / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["steps"] == 18

    # Same global batches, so only per-process BatchNorm statistics differ (4 vs 8 images per batch):
    # the per-epoch loss agrees within 15% and the trend is the same.
    single_loss = [e["loss"] for e in json.loads((single / "summary.json").read_text())["history"]]
    ddp_loss = [e["loss"] for e in summary["history"]]
    for a, b in zip(single_loss, ddp_loss):
        assert abs(a - b) <= 0.15 * a, (single_loss, ddp_loss)
    assert ddp_loss[-1] < ddp_loss[0]


def test_precision_auto_is_bf16_where_the_device_multiplies_bf16_in_hardware(monkeypatch):
    """On a CPU that emulates bf16, bf16 autocast made a demo training step ~3x slower than fp32: auto runs fp32
    there, and bf16 on CUDA and on CPUs with AVX512-BF16 or AMX; an explicit precision is taken as given."""
    from selfsup.epoch import autocast_context, resolve_precision

    cpu = torch.device("cpu")
    for avx512_bf16, amx, expected in ((False, False, "fp32"), (True, False, "bf16"), (False, True, "bf16")):
        monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: avx512_bf16, raising=False)
        monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx, raising=False)
        assert resolve_precision("auto", cpu) == expected
        assert resolve_precision("fp32", cpu) == "fp32" and resolve_precision("bf16", cpu) == "bf16"
        with autocast_context("auto", cpu):
            dtype = torch.mm(torch.ones(2, 2), torch.ones(2, 2)).dtype
        assert dtype == (torch.bfloat16 if expected == "bf16" else torch.float32)
    assert resolve_precision("auto", torch.device("cuda")) == "bf16"
