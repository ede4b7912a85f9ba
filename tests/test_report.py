"""ssl-report: tables and charts rebuilt from records alone."""

import json
import re

from selfsup.cli.report import main as report_main
from selfsup.errors import ConfigError, DataError
from selfsup.probes.records import check_selection, load_records, SelectionError
from selfsup.probes.report import build_report

import pytest

LAYERS = ("conv1", "conv2", "conv3")


def linear_record(method, scores, *, checkpoint="ckpt/last.pt", in_channels=3, size=32, forced=False, seed=None,
                  test_images=None):
    record = {
        "kind": "linear_probe", "method": method, "checkpoint": "random" if method == "random" else checkpoint,
        "encoder": {"arch": "alexnet_small", "in_channels": in_channels}, "image_size": size, "data": "demo",
        "selection_split": "test" if forced else "val", "forced_test_selection": forced, "reported_split": "test",
        "protocol": {"name": "common", "epochs": 30, "batch_size": 192, "lr": 0.01, "gamma": 0.1,
                     "milestones": [10, 20], "momentum": 0.9, "weight_decay": 5e-4},
        "layers": {layer: {"test_top1": s, "val_top1": s} for layer, s in zip(LAYERS, scores)},
        "command": f"ssl-probe --checkpoint {method}", "git_commit": "abc1234", "wall_time_s": 30.0,
        "machine": {"platform": "linux", "cpu_count": 2, "torch_threads": 2, "torch": "2.x", "device": "cpu"},
    }
    if seed is not None:
        record["protocol"]["seed"] = seed
    if test_images is not None:
        record["splits"] = {"test": f"folder data/test ({test_images:,} images, 10 classes)"}
    return record


def write(folder, name, record):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / name).write_text(json.dumps(record))


def test_records_round_trip_into_the_table_with_delta_against_the_matching_random_row(tmp_path):
    write(tmp_path, "random_rgb.json", linear_record("random", (30.0, 40.0, 41.0)))
    write(tmp_path, "random_l.json", linear_record("random", (20.0, 25.0, 26.0), in_channels=1))
    write(tmp_path, "rotation.json", linear_record("rotation", (35.0, 50.0, 47.5)))
    write(tmp_path, "colorization.json", linear_record("colorization", (22.0, 31.0, 30.0), checkpoint="c/last.pt",
                                                       in_channels=1))
    (tmp_path / "unrelated.json").write_text(json.dumps({"not": "a record"}))
    records, skipped = load_records([tmp_path])
    assert len(records) == 4
    assert skipped == [(str(tmp_path / "unrelated.json"), "not a record (no kind field)")]
    report = build_report(records, title="t", command="ssl-report x", order=["rotation", "colorization"])
    lines = report.splitlines()
    rotation = next(line for line in lines if line.startswith("| rotation |"))
    # no test-set size in these records: the spread of a one-seed difference is unknown, and says so
    assert rotation.startswith("| rotation | 35.00 | 50.00 | 47.50 | 50.00 | +9.00 ± n/a (1 seed; vs random init "
                               "(RGB input, 32 px))")
    colorization = next(line for line in lines if line.startswith("| colorization |"))
    assert "+5.00 ± n/a (1 seed; vs random init (L input, 32 px))" in colorization  # 31 - 26: the L-input random row
    assert lines.index(rotation) < lines.index(colorization)  # --order
    assert "ssl-probe --checkpoint rotation" in report and "†" not in report


def test_one_seed_per_side_gives_delta_with_the_binomial_standard_error_on_the_test_set(tmp_path):
    write(tmp_path, "random.json", linear_record("random", (30.0, 40.0, 41.0), test_images=10_000))
    write(tmp_path, "rotation.json", linear_record("rotation", (35.0, 50.0, 47.5), test_images=10_000))
    report = build_report(load_records([tmp_path])[0], title="t", command="c")
    # sqrt(0.50 * 0.50 / 10,000 + 0.41 * 0.59 / 10,000) = 0.70 points
    assert "| rotation | 35.00 | 50.00 | 47.50 | 50.00 | +9.00 ± 0.70 (1 seed; vs random init (RGB input, 32 px)) |" in report
    assert "Welch's t-test" in report and "binomial standard error" in report


def test_several_seeds_per_side_give_mean_std_and_welch_test_against_random(tmp_path):
    for seed, (random_best, rotation_best, close_best) in enumerate(((40.0, 50.0, 40.5), (41.0, 51.0, 42.5),
                                                                     (42.5, 52.0, 41.0))):
        write(tmp_path, f"random_{seed}.json", linear_record("random", (30.0, random_best, 35.0), seed=seed))
        write(tmp_path, f"rotation_{seed}.json", linear_record("rotation", (35.0, rotation_best, 47.5), seed=seed))
        write(tmp_path, f"jigsaw_{seed}.json", linear_record("jigsaw", (30.0, close_best, 35.0), seed=seed,
                                                             checkpoint="j/last.pt"))
    report = build_report(load_records([tmp_path])[0], title="t", command="c", order=["rotation", "jigsaw"])
    # conv2 per seed: rotation 50, 51, 52 (mean 51, var 1); random 40, 41, 42.5 (mean 41.17, var 1.58)
    # Δ = 9.83 ± sqrt(1/3 + 1.58/3) = 0.93; Welch t = 10.6 on about 3.8 degrees of freedom
    rotation = next(line for line in report.splitlines() if line.startswith("| rotation |"))
    assert rotation.startswith("| rotation | 35.00 ± 0.00 | 51.00 ± 1.00 | 47.50 ± 0.00 | 51.00 ± 1.00 | +9.83 ± 0.93 * "
                               "(Welch p = 0.001, 3 vs 3 seeds; vs random init (RGB input, 32 px)) |")
    # jigsaw 40.5, 42.5, 41 against random 40, 41, 42.5: not significant
    assert "| 41.33 ± 1.04 | +0.17 ± 0.94 n.s. (Welch p = 0.869, 3 vs 3 seeds; vs random init" in report
    assert "| random init (RGB input, 32 px) | 30.00 ± 0.00 | 41.17 ± 1.26 | 35.00 ± 0.00 | 41.17 ± 1.26 |  |" in report


def detection_record(method, ap, *, data, checkpoint="ckpt/last.pt"):
    record = linear_record(method, (), checkpoint=checkpoint, size=128)
    mean = sum(ap.values()) / len(ap)
    record.update(kind="detection", data=data, protocol={
        "detector": "torchvision Faster R-CNN", "backbone": "conv5", "epochs": 8, "batch_size": 4,
        "optimizer": {"lr": 0.02}, "freeze": "none", "batchnorm": "frozen", "rescale": None, "frontend": "fold: none"})
    record["layers"] = {"conv5": {"best_epoch": 7, "val_mAP": mean, "test_mAP": mean, "test_mAP_area": mean + 1,
                                  "test_AP": ap, "test_AP_area": ap}}
    return record


def test_detection_records_give_a_column_per_data_set_and_per_class_tables_with_delta(tmp_path):
    write(tmp_path, "rand_f.json", detection_record("random", {"apple": 40.0, "banana": 20.0}, data="/x/fruits_voc"))
    write(tmp_path, "rot_f.json", detection_record("rotation", {"apple": 50.0, "banana": 40.0}, data="/x/fruits_voc"))
    write(tmp_path, "rand_r.json", detection_record("random", {"raccoon": 30.0}, data="/x/raccoon_voc"))
    write(tmp_path, "rot_r.json", detection_record("rotation", {"raccoon": 45.5}, data="/x/raccoon_voc"))
    report = build_report(load_records([tmp_path])[0], title="t", command="c")
    assert "| method | detection mAP (fruits_voc) | detection mAP (raccoon_voc) |" in report
    assert "| rotation | 45.00 (conv5) | 45.50 (conv5) |" in report
    assert "## Detection on fruits_voc: AP per class (test, IoU 0.5)" in report
    # mAP has no binomial standard error: one seed per side leaves the spread unknown, and says so
    assert ("| rotation | conv5 | 50.00 | 40.00 | 45.00 | 46.00 | +15.00 ± n/a (1 seed; vs random init (RGB input, "
            "128 px)) |") in report
    assert "| rotation | conv5 | 45.50 | 45.50 | 46.50 | +15.50 ± n/a (1 seed; vs random init (RGB input, 128 px)) |" in report
    assert "8 epochs x batch 4" in report


def test_detection_seeds_are_summarised_and_compared_seed_by_seed(tmp_path):
    for seed, (random_ap, rotation_ap) in enumerate(((30.0, 40.0), (34.0, 41.0))):
        for method, ap in (("random", random_ap), ("rotation", rotation_ap)):
            record = detection_record(method, {"raccoon": ap}, data="/x/raccoon_voc")
            record["protocol"]["seed"] = seed
            write(tmp_path, f"{method}_{seed}.json", record)
    report = build_report(load_records([tmp_path])[0], title="t", command="c")
    assert "| rotation | 40.50 ± 0.71 (conv5, 2 seeds) |" in report
    assert ("| rotation | conv5, seed 1 | 41.00 | 41.00 | 42.00 | +7.00 ± n/a (1 seed; vs random init (RGB input, "
            "128 px)) |") in report
    # means over seeds: 40.5 ± 0.71 against 32 ± 2.83, Δ 8.50 ± sqrt(0.5/2 + 8/2) = 2.06
    assert ("| rotation | conv5, mean of 2 seeds | 40.50 | 40.50 ± 0.71 | 41.50 | +8.50 ± 2.06 n.s. (Welch p = 0.130, "
            "2 vs 2 seeds; vs random init (RGB input, 128 px)) |") in report


def test_forced_test_selection_is_marked_in_every_table(tmp_path):
    write(tmp_path, "rotation.json", linear_record("rotation", (35.0, 50.0, 47.5), forced=True))
    report = build_report(load_records([tmp_path])[0], title="t", command="c")
    assert "| rotation | 35.00† | 50.00† | 47.50† | 50.00† |" in report
    assert "selected on the **test** split" in report and "(FORCED)" in report


def test_cli_writes_markdown_and_chart(tmp_path, capsys):
    write(tmp_path / "records", "random.json", linear_record("random", (30.0, 40.0, 41.0)))
    write(tmp_path / "records", "rotation.json", linear_record("rotation", (35.0, 50.0, 47.5)))
    out = tmp_path / "report.md"
    assert report_main([str(tmp_path / "records"), "--out", str(out), "--published"]) == 0
    assert "published: rotation (AlexNet, ImageNet)" in out.read_text()
    png = out.with_suffix(".png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000


def test_cli_without_records_is_a_one_line_error(tmp_path, capsys):
    (tmp_path / "x.json").write_text("{}")
    assert report_main([str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert f"warning: skipped {tmp_path / 'x.json'}: not a record (no kind field)" in err
    assert f"error: no usable records in {tmp_path}: 1 JSON file skipped" in err


def without_checkpoint():
    record = linear_record("jigsaw", (1.0, 2.0, 3.0))
    del record["checkpoint"]
    return json.dumps(record).encode()


@pytest.mark.parametrize("content, reason", [
    (json.dumps(linear_record("jigsaw", (1.0, 2.0, 3.0)))[:-40].encode(), "not valid JSON (line 1, column "),
    (b'{"kind": "linear_probe", "method": "caf\xe9"}', "not UTF-8 text (byte 0xe9 at offset 39)"),
    (without_checkpoint(), "linear_probe record without checkpoint"),
    (b'[{"kind": "linear_probe"}]', "not a JSON object (a list)"),
], ids=["truncated", "not-utf8", "no-checkpoint", "not-an-object"])
def test_unusable_files_are_named_in_a_warning_and_the_table_keeps_the_rest(tmp_path, capsys, content, reason):
    write(tmp_path, "random.json", linear_record("random", (30.0, 40.0, 41.0)))
    write(tmp_path, "rotation.json", linear_record("rotation", (35.0, 50.0, 47.5)))
    bad = tmp_path / "jigsaw" / "probe.json"
    bad.parent.mkdir()
    bad.write_bytes(content)
    records, skipped = load_records([tmp_path])
    warnings = capsys.readouterr().err.splitlines()
    assert len(warnings) == 1 and warnings[0].startswith(f"warning: skipped {bad}: {reason}")
    assert [path for path, _ in skipped] == [str(bad)] and warnings[0].endswith(skipped[0][1])
    report = build_report(records, title="t", command="c")
    assert "| rotation | 35.00 | 50.00 | 47.50 | 50.00 | +9.00" in report and "jigsaw" not in report


def test_only_unusable_files_is_a_data_error_that_counts_them(tmp_path, capsys):
    (tmp_path / "a.json").write_text('{"kind": "knn", ')
    (tmp_path / "b.json").write_text("[]")
    with pytest.raises(DataError, match=re.escape(f"no usable records in {tmp_path}: 2 JSON files skipped")):
        load_records([tmp_path])
    assert capsys.readouterr().err.count("warning: skipped") == 2
    with pytest.raises(DataError, match="no such record file or folder"):
        load_records([tmp_path / "missing"])
    with pytest.raises(DataError, match="no evaluation records found"):
        build_report([], title="t", command="c")


def test_test_split_selection_needs_force():
    check_selection("val", False)
    check_selection("test", True)
    with pytest.raises(SelectionError, match="--force-test-selection"):
        check_selection("test", False)
    with pytest.raises(ConfigError, match="allowed values are val, test"):
        check_selection("train", False)
    assert issubclass(SelectionError, ConfigError)  # ssl-probe, ssl-finetune, ssl-detect: one line, exit 2


def test_probes_of_another_pooling_are_other_rows_compared_with_random_pooled_alike(tmp_path):
    def pooled(record, pool):
        record["pool_preset"] = pool
        return record

    write(tmp_path, "random.json", linear_record("random", (30.0, 40.0, 41.0)))
    write(tmp_path, "random_global.json", pooled(linear_record("random", (10.0, 12.0, 14.0)), "global"))
    write(tmp_path, "rotation.json", linear_record("rotation", (35.0, 50.0, 47.5)))
    write(tmp_path, "rotation_global.json", pooled(linear_record("rotation", (20.0, 30.0, 33.0)), "global"))
    records, _ = load_records([tmp_path])
    lines = build_report(records, title="t", command="ssl-report x").splitlines()
    rows = [line for line in lines if line.startswith("| rotation")]
    assert len(rows) == 2, rows
    auto = next(line for line in rows if "global" not in line.split("|")[1])
    pooled_row = next(line for line in rows if "global pool" in line.split("|")[1])
    assert "+9.00" in auto and "(RGB input, 32 px))" in auto
    assert "+19.00" in pooled_row and "(RGB input, 32 px, global pool))" in pooled_row  # 33 - 14


def test_a_random_encoder_fed_like_the_task_is_its_baseline(tmp_path):
    def fed_like(record, task):
        record["pretraining"] = {"task": {"name": "random", "input": task}}
        return record

    write(tmp_path, "random.json", fed_like(linear_record("random", (30.0, 40.0, 41.0)), "rotation"))
    write(tmp_path, "random_context.json", fed_like(linear_record("random", (20.0, 22.0, 24.0)), "context"))
    write(tmp_path, "context.json", linear_record("context", (25.0, 30.0, 28.0), checkpoint="ctx/last.pt"))
    write(tmp_path, "rotation.json", linear_record("rotation", (35.0, 50.0, 47.5)))
    records, _ = load_records([tmp_path])
    lines = build_report(records, title="t", command="ssl-report x").splitlines()
    assert any(line.startswith("| random init (RGB input as context, 32 px) |") for line in lines)
    context = next(line for line in lines if line.startswith("| context |"))
    assert "+6.00" in context and "vs random init (RGB input as context, 32 px)" in context  # 30 - 24
    rotation = next(line for line in lines if line.startswith("| rotation |"))
    assert "+9.00" in rotation and "vs random init (RGB input, 32 px)" in rotation


def test_seeds_of_one_pretraining_config_are_one_row_with_mean_and_std(tmp_path):
    def seeded(record, seed):
        config = {"task": "rotation", "train": {"seed": seed, "out": f"runs/s{seed}", "epochs": 4}, "data": {"workers": 1}}
        record["pretraining"] = {"task": {"name": "rotation"}, "config": config}
        record["protocol"]["seed"] = seed
        return record

    for seed, scores in enumerate(((35.0, 50.0, 47.0), (37.0, 52.0, 49.0), (36.0, 51.0, 48.0))):
        write(tmp_path, f"rotation_{seed}.json",
              seeded(linear_record("rotation", scores, checkpoint=f"runs/s{seed}/last.pt"), seed))
        write(tmp_path, f"random_{seed}.json", seeded(linear_record("random", (30.0 + seed, 40.0, 41.0)), seed))
    records, _ = load_records([tmp_path])
    lines = build_report(records, title="t", command="ssl-report x").splitlines()
    rows = [line for line in lines if line.startswith("| rotation")]
    assert len(rows) == 1 and "51.00 ± 1.00" in rows[0], rows


def test_knn_seeds_get_mean_std_per_layer_and_a_delta_against_random_knn(tmp_path):
    def knn(record):
        record.update(kind="knn", protocol={"name": "knn", "ks": [10, 20], "temperature": 0.07,
                                            "seed": record["protocol"].get("seed")})
        for entry in record["layers"].values():
            entry["k"] = 10
        return record

    for seed in range(3):
        write(tmp_path, f"rotation_{seed}.json", knn(linear_record("rotation", (30.0, 50.0 + seed, 40.0), seed=seed)))
        write(tmp_path, f"random_{seed}.json", knn(linear_record("random", (30.0, 40.0, 44.0 + seed), seed=seed)))
    report = build_report(load_records([tmp_path])[0], title="t", command="c")
    knn_table = report.split("## kNN top-1 per layer")[1].split("##")[0]
    # rotation: conv2 51 ± 1 (the layer of its best mean val top-1, also in the main table's kNN column);
    # random's best layer is conv3, 45 ± 1: Δ +6.00 ± sqrt(1/3 + 1/3)
    assert "| rotation | 30.00 ± 0.00 | 51.00 ± 1.00 | 40.00 ± 0.00 | 51.00 ± 1.00 | +6.00 ± 0.82 * " in knn_table
    assert "| random init (RGB input, 32 px) | 30.00 ± 0.00 | 40.00 ± 0.00 | 45.00 ± 1.00 | 45.00 ± 1.00 |  |" in knn_table
    assert "51.00 ± 1.00 (conv2)" in report.split("## kNN")[0]
    assert "- total wall time: 3 min (0 pretraining runs 0 min, 6 evaluation runs 3 min)" in report  # 30 s each


def test_records_of_one_runs_also_protocols_count_its_wall_time_once(tmp_path):
    for name, shared in (("linear", None), ("global", "one forward pass with the linear probe run, --also")):
        record = linear_record("rotation", (30.0, 50.0, 40.0))
        if shared:
            record.update(pool_preset="global")
            record["protocol"]["shared_pass"] = shared
        write(tmp_path, f"{name}.json", record)
    report = build_report(load_records([tmp_path])[0], title="t", command="c")
    assert "- total wall time: 0 min (0 pretraining runs 0 min, 1 evaluation run 0 min)" in report


def test_a_run_ended_by_its_time_budget_shows_its_partial_epoch_and_why_it_ended():
    from selfsup.probes.report.runs import epochs_text, pretext_progress

    summary = {"epochs": 10000, "ended_by": "max_minutes", "history": [],
               "final": {"epoch": 1, "step": 343, "steps_in_epoch": 343, "partial": True, "acc": 0.152}}
    assert epochs_text(summary) == "0 + 343 steps (ended by max_minutes)"
    assert pretext_progress(summary) == "acc 15.2% (its only, partial epoch)"
    summary.update(history=[{"epoch": 1, "acc": 0.10}], final={"epoch": 2, "steps_in_epoch": 5, "partial": True, "acc": 0.2})
    assert epochs_text(summary) == "1 + 5 steps (ended by max_minutes)"
    assert pretext_progress(summary) == "acc 10.0% (epoch 1) → 20.0%"
    assert epochs_text({"epochs": 4, "ended_by": "epochs", "final": {"epoch": 4}}) == "4"


def diagnose_record(task="jigsaw", checkpoint="runs/jigsaw/last.pt"):
    """An ssl-diagnose record as diagnose() writes it: two solver rows, two ablations (one not applicable)."""
    def row(cue, value, network):
        return {"solver": "border matching, no fit", "cue": cue, "metric": "acc", "value": value, "chance": 0.01,
                "scored": 400, "network": network, "extra": {}, "network_extra": {"loss": 2.0}, "note": ""}

    def ablation(name, before, after):
        return {"name": name, "cue": "edge continuity", "metric": "acc", "chance": 0.01, "scored": 400,
                "network_before": before, "network_after": after, "network_extra": {}, "solver": None,
                "solver_before": None, "solver_after": None, "note": ""}

    return {"kind": "diagnose", "task": task, "checkpoint": checkpoint, "images": 400,
            "data": {"spec": "demo", "split": "test"}, "encoder": {"arch": "alexnet_small", "width": 1.0},
            "rows": [row("tile borders (raw)", 0.608, 0.455), row("tile borders (fed)", 0.138, 0.455)],
            "ablations": [ablation("tile borders masked (2 px)", 0.455, 0.212),
                          ablation("colour channels aligned to green", None, None)],
            "command": "ssl-diagnose --checkpoint runs/jigsaw/last.pt", "git_commit": "abc1234", "wall_time_s": 60.0,
            "machine": {"platform": "linux", "cpu_count": 2, "torch_threads": 1, "torch": "2.x", "device": "cpu"}}


def test_diagnose_records_get_their_own_table_beside_the_probe_tables(tmp_path):
    write(tmp_path, "random.json", linear_record("random", (30.0, 40.0, 41.0)))
    write(tmp_path, "jigsaw.json", linear_record("jigsaw", (35.0, 50.0, 47.5)))
    write(tmp_path, "diagnose_jigsaw.json", diagnose_record())
    records, skipped = load_records([tmp_path])
    assert len(records) == 3 and not skipped
    report = build_report(records, title="t", command="c")
    # the diagnosis is no method row of the probe table
    assert sum(line.startswith("| jigsaw |") for line in report.splitlines()) == 2
    assert "## Shortcut diagnostics" in report
    assert ("| jigsaw | runs/jigsaw/last.pt | 400 | acc 45.5% | tile borders (raw): acc 60.8% | 1.0% | tile borders "
            "masked (2 px): 45.5% → 21.2%; colour channels aligned to green: not applicable |") in report
    assert "- diagnose jigsaw: `ssl-diagnose --checkpoint runs/jigsaw/last.pt` — 1.0 min" in report


def test_a_report_of_diagnose_records_alone_and_a_diagnosis_without_checkpoint(tmp_path, capsys):
    record = diagnose_record("counting", checkpoint=None) | {"ablations": []}
    for row in record["rows"]:
        row["network"] = None  # no checkpoint, no network
    write(tmp_path, "diagnose.json", record)
    out = tmp_path / "report.md"
    assert report_main([str(tmp_path / "diagnose.json"), "--out", str(out)]) == 0
    text = out.read_text()
    assert "from 1 ssl-diagnose records" in text
    assert "| counting | none (demo preset) | 400 | n/a (no checkpoint) | tile borders (raw): acc 60.8% | 1.0% | none |" in text
    assert "no per-layer records: no chart" in capsys.readouterr().err
    broken = diagnose_record()
    del broken["rows"]
    write(tmp_path, "broken.json", broken)
    _, skipped = load_records([tmp_path])
    assert skipped == [(str(tmp_path / "broken.json"), "diagnose record without rows")]


def test_the_input_a_row_was_fed_is_what_its_task_declares():
    from selfsup.pretext.base import KEPT_CHANNEL, LIGHTNESS, PER_IMAGE, RGB, SOBEL
    from selfsup.probes.report.rows import fed_as, input_kind

    def trained(task, options, in_channels=3):
        record = linear_record(task, (1.0, 2.0, 3.0), in_channels=in_channels)
        record["pretraining"] = {"task": {"name": task, "options": options}}
        return record

    def random_like(task, in_channels=3):
        record = linear_record("random", (1.0, 2.0, 3.0), in_channels=in_channels)
        record["pretraining"] = {"task": {"name": "random", "input": task}}
        return record

    assert input_kind(trained("deepcluster", {"sobel": False})) == RGB
    assert input_kind(trained("deepcluster", {}, in_channels=2)) == SOBEL
    assert input_kind(trained("context", {"color_mode": "none"})) == PER_IMAGE
    assert input_kind(random_like("context")) == KEPT_CHANNEL and input_kind(random_like("jigsaw")) == PER_IMAGE
    # no task this version declares: the mapping the channels name
    assert input_kind(trained("from_the_future", {})) == RGB
    assert input_kind(linear_record("random", (1.0,), in_channels=1)) == LIGHTNESS
    # rows say which task a random encoder was fed like, unless the default or the channels say it already
    assert [fed_as(random_like(task, channels)) for task, channels in (
        ("rotation", 3), ("colorization", 1), ("deepcluster", 2), ("counting", 3), ("jigsaw", 3))] == [
        None, None, None, "counting", "jigsaw"]


def test_a_method_without_a_random_encoder_fed_like_it_is_compared_with_the_plain_rgb_one(tmp_path):
    def with_task(record, task):
        record["pretraining"] = {"task": task}
        return record

    write(tmp_path, "random.json", with_task(linear_record("random", (30.0, 40.0, 41.0)),
                                             {"name": "random", "input": "rotation"}))
    write(tmp_path, "random_counting.json", with_task(linear_record("random", (20.0, 22.0, 24.0)),
                                                      {"name": "random", "input": "counting"}))
    write(tmp_path, "jigsaw.json", with_task(linear_record("jigsaw", (25.0, 50.0, 28.0), checkpoint="j/last.pt"),
                                             {"name": "jigsaw", "options": {}}))
    lines = build_report(load_records([tmp_path])[0], title="t", command="ssl-report x").splitlines()
    jigsaw = next(line for line in lines if line.startswith("| jigsaw |"))
    assert "+9.00" in jigsaw and "vs random init (RGB input, 32 px))" in jigsaw  # 50 - 41, not the counting row
    assert any(line.startswith("| random init (RGB input as counting, 32 px) |") for line in lines)
