"""ssl-bench: its measures run every task end to end, split the step's time, write portable records and
tables, and take bad options as one line. No test reads a timing beyond "it was measured"."""

from __future__ import annotations

import json
import math

import pytest
import torch

from selfsup.bench.pipeline import measure_pipeline
from selfsup.cli.bench import PRETEXT_TASKS, main as bench_main, task_config, build_parser
from selfsup.engine import Trainer

SMALL = ["--batch-size", "8", "--workers", "0", "--device", "cpu", "--precision", "fp32", "--width", "0.25"]
TASK_SIZES = {"rotation": "16", "jigsaw": "48", "context": "48", "counting": "32", "colorization": "16",
              "deepcluster": "16"}
TASK_SETS = {
    "jigsaw": ["--set", "pretext.num_permutations=10", "--set", "pretext.fc6_dim=16", "--set", "pretext.fc7_dim=16"],
    "deepcluster": ["--set", "pretext.num_clusters=6", "--set", "pretext.mlp_dim=32", "--set", "pretext.head_pool=1"],
}


def pipeline_args(task: str, folder, *extra: str) -> list[str]:
    return ["pipeline", "--task", task, "--data", str(folder / "train"), *SMALL, "--image-size", TASK_SIZES[task],
            *TASK_SETS.get(task, []), *extra]


@pytest.mark.parametrize("task", PRETEXT_TASKS)
def test_pipeline_measures_every_task_and_splits_the_end_to_end_step(task, tiny_folder):
    args = build_parser().parse_args(pipeline_args(task, tiny_folder, "--steps", "3", "--rounds", "2"))
    result = measure_pipeline(task_config(args, task), steps=3, rounds=2, warmup=1)
    assert result.task == task and result.steps_per_side == 3
    assert result.end_to_end_img_s > 0 and result.step_only_img_s > 0
    assert math.isclose(result.efficiency, result.end_to_end_img_s / result.step_only_img_s)
    assert len(result.efficiency_per_round) == 2 and all(e > 0 for e in result.efficiency_per_round)
    parts = result.end_to_end_ms
    assert set(parts) == {"loader_wait", "to_device", "pretext_inputs", "rest_of_step"}
    assert all(value >= 0 for value in parts.values())
    # the parts are consecutive intervals of the step: their sum is the step's time
    assert math.isclose(sum(parts.values()), 1000 * 8 / result.end_to_end_img_s, rel_tol=1e-6)


def test_pipeline_steps_train_the_model_as_the_trainer_does(tiny_folder, monkeypatch):
    steps = []
    train_step = Trainer.train_step

    def counted(self, images, labels):
        steps.append((self.global_step, tuple(images.shape)))
        return train_step(self, images, labels)

    monkeypatch.setattr(Trainer, "train_step", counted)
    args = build_parser().parse_args(pipeline_args("rotation", tiny_folder))
    measure_pipeline(task_config(args, "rotation"), steps=4, rounds=2, warmup=1)
    # 1 + 1 warm-up steps, then 4 a side; each at the next global step (the step generator differs)
    assert [step for step, _ in steps] == list(range(10))
    assert {shape for _, shape in steps} == {(8, 3, 16, 16)}


def test_ssl_bench_pipeline_writes_a_portable_record_and_a_table(tiny_folder, tmp_path, capsys):
    record, table = tmp_path / "bench.json", tmp_path / "bench.md"
    status = bench_main(pipeline_args("counting", tiny_folder, "--steps", "2", "--json", str(record),
                                      "--table", str(table)))
    assert status == 0
    out = capsys.readouterr().out
    assert "| counting |" in out
    saved = json.loads(record.read_text())
    assert saved["kind"] == "bench_pipeline" and saved["rows"][0]["task"] == "counting"
    assert {"command", "git_commit", "machine"} <= set(saved)
    text = table.read_text()
    assert "ssl-bench pipeline" in text and "| counting |" in text and "efficiency" in text


def test_ssl_bench_threads_compares_thread_counts_idle_and_busy(tiny_folder, capsys):
    before = torch.get_num_threads()
    status = bench_main(["threads", "--task", "rotation", "--data", str(tiny_folder / "train"), *SMALL,
                         "--image-size", "16", "--counts", "1,2", "--busy", "1", "--steps", "2", "--rounds", "1"])
    assert status == 0
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| rotation |")]
    assert len(rows) == 4  # 2 counts x (idle, busy)
    assert sum("busy (1 spinning processes)" in row for row in rows) == 2
    assert torch.get_num_threads() == before


@pytest.mark.parametrize("argv, named", [
    (["pipeline", "--steps", "0"], "--steps 0"),
    (["pipeline", "--task", "nope"], "--task"),
    (["--threads", "0", "pipeline"], "--threads"),
    (["threads", "--counts", "0"], "--counts"),
])
def test_bad_options_are_one_line_with_exit_2(argv, named, capsys):
    assert bench_main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:") and named in err[0], err


@pytest.mark.parametrize("task, size, piece_shape", [("jigsaw", 64, (9, 3, 18, 18)), ("context", 64, (2, 3, 18, 18))])
def test_data_side_compares_the_batched_inputs_with_a_per_sample_reference_of_the_same_geometry(task, size,
                                                                                                 piece_shape):
    from selfsup.bench.data_side import measure_data_side, reference_context, reference_jigsaw
    from selfsup.presets import load_preset

    options = load_preset("demo", task)["pretext"]
    result = measure_data_side(task, "demo", size, options, batch_size=3, rounds=1, device=torch.device("cpu"))
    assert result.piece == piece_shape[-1] and result.device == "cpu"
    assert result.batched_ms_per_image > 0 and result.per_sample_pil_ms_per_image > 0
    assert math.isclose(result.ratio, result.batched_ms_per_image / result.per_sample_pil_ms_per_image)
    # the reference makes what the task feeds, one sample at a time: same pieces, normalised per channel
    import numpy as np
    from PIL import Image

    from selfsup.models import build_encoder
    from selfsup.pretext import new_task
    from selfsup.pretext.context import config_geometry

    built = new_task(task, build_encoder("alexnet_small", width=0.25), options)
    crop = Image.fromarray((np.random.default_rng(0).random((size, size, 3)) * 255).astype(np.uint8))
    rng = np.random.default_rng(1)
    if task == "jigsaw":
        made = reference_jigsaw(crop, built.cfg, built.permutations.numpy(), rng)
    else:
        made = reference_context(crop, built.cfg, config_geometry(built.cfg, size), rng)
    assert made.shape == piece_shape and made.dtype == torch.float32
    assert float(made.flatten(-2).mean(-1).abs().max()) < 0.05  # channels centred, as the task's are


def test_ssl_bench_data_and_probe_write_their_tables(tiny_folder, tmp_path, capsys):
    table = tmp_path / "data.md"
    assert bench_main(["data", "--task", "jigsaw", "--scale", "demo", "--batch-size", "2", "--rounds", "1",
                       "--table", str(table)]) == 0
    assert "| jigsaw | demo | 64 | 18 | cpu |" in table.read_text()
    record = tmp_path / "probe.json"
    probe_args = "--epochs 1 --batch-size 8 --image-size 16 --width 0.25 --workers 0"
    assert bench_main(["probe", "--data", str(tiny_folder), "--layer", "conv2", "--probe-args", probe_args,
                       "--json", str(record)]) == 0
    rows = json.loads(record.read_text())["rows"]
    assert [row["freeze"] for row in rows] == ["all", "conv2"]
    assert rows[0]["dims"] > rows[1]["dims"] > 0
    assert rows[0]["ratio_all_vs_one"] == pytest.approx(rows[0]["total_s"] / rows[1]["total_s"])
    assert all(row["total_s"] > 0 and row["total_s"] >= row["head_epochs_s"] >= 0 for row in rows)
    assert all(row["head_step_ms"] > 0 and row["head_step_floor_ms"] > 0 for row in rows)
    at_floor = [row["total_s"] - row["head_epochs_s"] * (1 - row["head_step_floor_ms"] / row["head_step_ms"]) for row in rows]
    assert rows[0]["ratio_heads_at_floor"] == pytest.approx(at_floor[0] / at_floor[1])
    out = capsys.readouterr().out
    assert "| all |" in out and "With head epochs at that floor the runs would take" in out


def test_deepcluster_share_times_whole_epochs_and_their_clustering_step(tiny_folder, tmp_path):
    record = tmp_path / "dc.json"
    assert bench_main(["deepcluster", "--data", str(tiny_folder / "train"), *SMALL, "--image-size", "16",
                       *TASK_SETS["deepcluster"], "--set", "pretext.reassign_every=1", "--epochs", "2",
                       "--json", str(record)]) == 0
    [row] = json.loads(record.read_text())["rows"]
    assert row["task"] == "deepcluster" and row["epochs"] == 2 and row["steps_per_epoch"] == 5
    assert row["prepare_s"] > 0 and row["steps_s"] > 0
    assert row["outside_share"] == pytest.approx(row["prepare_s"] / (row["prepare_s"] + row["steps_s"]))
    assert len(row["prepare_metrics"]) == 2 and all("cluster_s" in m for m in row["prepare_metrics"])


def test_ssl_bench_precision_times_fp32_and_bf16_steps_and_says_what_auto_runs(tiny_folder, tmp_path, capsys):
    from selfsup.epoch import resolve_precision

    record = tmp_path / "precision.json"
    status = bench_main(["precision", "--task", "rotation", "--data", str(tiny_folder / "train"), *SMALL,
                         "--image-size", "16", "--steps", "2", "--rounds", "2", "--json", str(record)])
    assert status == 0
    assert "| rotation |" in capsys.readouterr().out
    row = json.loads(record.read_text())["rows"][0]
    assert row["fp32_img_s"] > 0 and row["bf16_img_s"] > 0
    assert math.isclose(row["bf16_vs_fp32"], row["bf16_img_s"] / row["fp32_img_s"])
    assert row["auto_runs"] == resolve_precision("auto", torch.device("cpu"))
