"""DeepCluster: the Sobel front-end, the epoch-level clustering step through the engine's hooks,
assignments kept across resumes, and the same clustering under torchrun."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from selfsup.checkpoint import load_checkpoint
from selfsup.cli.pretrain import main as pretrain_main
from selfsup.config import ConfigError, from_dict
from selfsup.data.crops import CenterCrop
from selfsup.data.sources import open_splits
from selfsup.distributed import DistInfo
from selfsup.epoch import EpochContext
from selfsup.models import build_encoder
from selfsup.probes.frozen import load_frozen
from selfsup.pretext.deepcluster import DeepClusterConfig, DeepClusterTask, auto_num_clusters, sobel_input

REPO = Path(__file__).resolve().parents[1]
TINY = ["--task", "deepcluster", "--batch-size", "8", "--workers", "0", "--image-size", "16", "--width", "0.25",
        "--device", "cpu", "--set", "pretext.num_clusters=6", "--set", "pretext.mlp_dim=32",
        "--set", "pretext.head_pool=1", "--set", "pretext.reassign_every=1"]
PREPARED = ("extract_s", "cluster_s", "kmeans_objective", "empty_clusters", "nmi_labels")


def test_sobel_front_end_sees_edges_not_colour():
    flat = torch.full((2, 3, 12, 12), 0.3)
    flat[1] = torch.tensor([0.9, 0.1, 0.5]).view(3, 1, 1)  # a different flat colour
    out = sobel_input(flat)
    assert out.shape == (2, 2, 12, 12)
    inner = out[..., 1:-1, 1:-1]  # borders see the zero padding
    assert inner.abs().max() < 1e-5
    edge = torch.zeros(1, 3, 12, 12)
    edge[..., 6:] = 1.0  # a vertical edge: horizontal gradient only
    grad = sobel_input(edge)[0, :, 1:-1, 1:-1]
    assert grad[0].abs().max() > 1 and grad[1].abs().max() < 1e-5


def test_number_of_clusters_follows_the_data_size():
    assert auto_num_clusters(5_000) == 100
    assert auto_num_clusters(50_000) == 1_000
    assert auto_num_clusters(1_281_167) == 10_000
    assert auto_num_clusters(40) == 40
    cfg = DeepClusterTask.fit_to_data(from_dict(DeepClusterConfig, {}), 5_000)
    assert cfg.num_clusters == 100
    with pytest.raises(ConfigError, match="pretext.num_clusters = 80 is invalid: the data has only 50 images"):
        DeepClusterTask.fit_to_data(from_dict(DeepClusterConfig, {"num_clusters": 80}), 50)


def _task_and_context(tiny_folder, epoch: int = 0) -> tuple[DeepClusterTask, EpochContext]:
    torch.manual_seed(0)
    cfg = from_dict(DeepClusterConfig, {"num_clusters": 5, "mlp_dim": 16, "head_pool": 1})
    task = DeepClusterTask(build_encoder("alexnet_small", in_channels=2, width=0.25), cfg)
    source = open_splits(str(tiny_folder), None).pretrain
    context = EpochContext(
        epoch=epoch, device=torch.device("cpu"), dist=DistInfo(0, 1, 0, torch.device("cpu")), source=source,
        feature_view=CenterCrop(16), batch_size=8, workers=0, precision="fp32", seed=0,
        reset_optimizer_state=lambda params: None,
    )
    return task, context


def test_prepare_epoch_clusters_once_per_epoch_and_a_restored_assignment_is_reused(tiny_folder):
    task, context = _task_and_context(tiny_folder)
    plan = task.prepare_epoch(context)
    n = len(context.source)
    assert set(PREPARED) <= set(plan.metrics) and plan.metrics["empty_clusters"] >= 0
    assert task.assignment.shape == (n,) and int(task.assignment.max()) < 5
    assert sorted(np.unique(task.assignment.numpy())) == list(range(5))  # empty clusters were repaired
    assert plan.order.shape == (n,) and int(plan.order.max()) < n
    labels = task.batch_labels(plan.order[:8], torch.full((8,), -1))
    assert torch.equal(labels, task.assignment[plan.order[:8]])

    again = task.prepare_epoch(context)  # e.g. a resume inside epoch 0: same assignment, same order
    assert again.metrics == {} and torch.equal(again.order, plan.order)

    restored, _ = _task_and_context(tiny_folder)
    restored.load_state_dict(task.state_dict())  # sizes the assignment buffer from the checkpoint
    assert torch.equal(restored.assignment, task.assignment)
    assert torch.equal(restored.prepare_epoch(context).order, plan.order)

    context.epoch = 1
    nxt = task.prepare_epoch(context)
    assert "nmi_previous" in nxt.metrics and 0.0 <= nxt.metrics["nmi_previous"] <= 1.0


def test_top_layer_is_reinitialised_at_every_reassignment(tiny_folder):
    task, context = _task_and_context(tiny_folder)
    reset = []
    context.reset_optimizer_state = lambda params: reset.append(len(list(params)))
    task.prepare_epoch(context)
    with torch.no_grad():
        task.top.weight.fill_(1.0)
    context.epoch = 1
    task.prepare_epoch(context)
    assert task.top.weight.std() < 0.05 and task.top.bias.abs().max() == 0
    assert reset == [2, 2]  # weight and bias forget their momentum each time


def test_cli_run_logs_clustering_and_its_checkpoint_probes_through_sobel(tiny_folder, tmp_path):
    out = tmp_path / "run"
    assert pretrain_main([*TINY, "--data", str(tiny_folder), "--epochs", "2", "--out", str(out)]) == 0
    history = json.loads((out / "summary.json").read_text())["history"]
    assert all(set(PREPARED) <= set(entry) for entry in history)
    assert "nmi_previous" in history[1]
    state = load_checkpoint(out / "last.pt")
    assert state["task"]["options"]["num_clusters"] == 6 and state["encoder"]["in_channels"] == 2
    assert state["model"]["assignment"].shape == (48,) and int(state["model"]["assignment_epoch"]) == 1
    frozen = load_frozen(str(out / "last.pt"), arch="alexnet_small", width=None, image_size=None, seed=0)
    images = torch.rand(2, 3, 16, 16)
    assert torch.allclose(frozen.input_fn(images), sobel_input(images))
    random = load_frozen("random", arch="alexnet_small", width=0.25, image_size=16, seed=0, input_task="deepcluster")
    assert random.input_fn(images).shape == (2, 2, 16, 16)


def test_torchrun_two_processes_cluster_like_one(tiny_folder, tmp_path):
    single = tmp_path / "single"
    assert pretrain_main([*TINY, "--data", str(tiny_folder), "--epochs", "1", "--out", str(single)]) == 0
    ddp = tmp_path / "ddp"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
         "-m", "selfsup.cli.pretrain", *TINY, "--data", str(tiny_folder), "--epochs", "1", "--out", str(ddp)],
        capture_output=True, text=True, timeout=600, env=env,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    # The epoch-0 assignment clusters the initial weights' features: each process extracted its shard,
    # the rows were gathered in source order, rank 0 clustered and broadcast the result.
    one = load_checkpoint(single / "last.pt")["model"]["assignment"]
    two = load_checkpoint(ddp / "last.pt")["model"]["assignment"]
    assert torch.equal(one, two)
    first = [json.loads((run / "summary.json").read_text())["history"][0] for run in (single, ddp)]
    assert first[0]["nmi_labels"] == pytest.approx(first[1]["nmi_labels"])
    assert first[0]["kmeans_objective"] == pytest.approx(first[1]["kmeans_objective"], rel=1e-4)


def test_reuse_features_clusters_the_banked_training_features_and_passes_only_unseen_images(tiny_folder):
    task, context = _task_and_context(tiny_folder)
    task.cfg.reuse_features = True
    n = len(context.source)
    first = task.prepare_epoch(context)  # nothing banked yet: a full pass
    assert first.metrics["passed_images"] == n
    task.train()
    seen = first.order[:16]
    images = torch.rand(16, 3, 16, 16)
    labels = task.batch_labels(seen, torch.full((16,), -1))
    task(images, labels)  # a training step banks its features under the batch's indices
    banked = task.feature_epoch >= 0
    assert int(banked.sum()) == len(set(seen.tolist())) and bool((task.feature_epoch[seen] == 0).all())
    expected = task.feature_bank[seen].clone()

    context.epoch = 1
    captured = {}
    original = task._banked_rows

    def spy(num_samples):
        captured["banked"] = original(num_samples)
        return captured["banked"]

    task._banked_rows = spy
    second = task.prepare_epoch(context)
    assert second.metrics["passed_images"] == n - int(banked.sum())  # only the images no step has seen
    assert torch.equal(captured["banked"], banked)
    assert torch.equal(task.feature_bank[seen], expected)  # clustering reads the bank, does not rewrite it


def test_reuse_features_resumes_to_the_same_tensors_and_is_refused_under_torchrun(tiny_folder, tmp_path, monkeypatch):
    from test_resume import Stopped, run_args, stop_after_checkpoint_at, tensors

    folder = tiny_folder / "train"
    extra = ("--set", "pretext.reuse_features=true", "--epochs", "3")
    assert pretrain_main(run_args("deepcluster", folder, tmp_path / "reference", *extra)) == 0
    with monkeypatch.context() as patch:
        stop_after_checkpoint_at(patch, 8)
        with pytest.raises(Stopped):
            pretrain_main(run_args("deepcluster", folder, tmp_path / "stopped", *extra))
    assert pretrain_main(run_args("deepcluster", folder, tmp_path / "stopped", *extra, "--resume")) == 0
    expected = load_checkpoint(tmp_path / "reference" / "last.pt")
    resumed = load_checkpoint(tmp_path / "stopped" / "last.pt")
    want, got = tensors(expected["model"]), tensors(resumed["model"])
    assert int((want["feature_epoch"] >= 0).sum()) > 0
    assert want.keys() == got.keys() and all(torch.equal(want[k], got[k]) for k in want)
    passed = [epoch["passed_images"] for epoch in expected["history"]]
    assert passed[0] == 43 and all(p < 43 for p in passed[1:])  # 43 pretraining images, then only unseen ones

    task, context = _task_and_context(tiny_folder)
    task.cfg.reuse_features = True
    context.dist = DistInfo(0, 2, 0, torch.device("cpu"))
    with pytest.raises(ConfigError, match="reuse_features = true is invalid with several processes"):
        task.prepare_epoch(context)


def test_feature_views_decoded_once_are_served_from_memory_with_the_same_tensors(tiny_folder, monkeypatch):
    import selfsup.epoch as epoch
    from selfsup.data.loading import ViewCache

    task, context = _task_and_context(tiny_folder)
    context.view_cache = ViewCache(len(context.source), 2**30)
    decoded = list(context.shard_batches())
    calls = []
    monkeypatch.setattr(epoch, "eval_loader", lambda *args, **kwargs: calls.append(1) or [])
    cached = list(context.shard_batches())
    assert calls == []  # nothing decoded the second time
    assert torch.equal(torch.cat([b.images for b in cached]), torch.cat([b.images for b in decoded]))
    assert torch.equal(torch.cat([b.indices for b in cached]), torch.cat([b.indices for b in decoded]))
    assert torch.equal(torch.cat([b.labels for b in cached]), torch.cat([b.labels for b in decoded]))
    subset = [3, 7, 20]
    assert torch.equal(next(iter(context.shard_batches(subset))).indices, torch.tensor(subset))

    small = ViewCache(len(context.source), 100)  # views larger than the cap are not kept
    context.view_cache = small
    monkeypatch.undo()
    list(context.shard_batches())
    assert small.disabled and small.images is None
