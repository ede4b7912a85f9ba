"""Evaluation feeds each encoder what its training fed it: the scale of its task, its colour handling, and
BatchNorm statistics re-estimated on the probe's training split. One test per rule; each fails without it."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch

import selfsup.cli.probe as probe_cli
import selfsup.probes.finetune_run as finetune_run
import selfsup.probes.context as probe_context
from selfsup.cli.finetune import main as finetune_main
from selfsup.models import build_encoder
from selfsup.pretext import TASKS, new_task
from selfsup.pretext.context import ContextTask, normalize_per_patch
from selfsup.probes.bn import named_batchnorms, reestimate_bn_statistics
from selfsup.probes.frozen import load_frozen

TRAINED_AT = 48  # context's smallest crop for its default geometry
FAST = ["--epochs", "2", "--batch-size", "12", "--workers", "0", "--device", "cpu"]


def save_checkpoint(path: Path, task_name: str, options: dict, image_size: int, in_channels: int = 3) -> Path:
    """An ssl-pretrain checkpoint of an untrained ``task_name`` (what load_frozen reads of one)."""
    torch.manual_seed(0)
    encoder = build_encoder("alexnet_small", in_channels=in_channels, width=0.25)
    task = new_task(task_name, encoder, options)
    state = {"encoder": {"arch": "alexnet_small", "in_channels": in_channels, "width": 0.25},
             "task": {"name": task_name, "options": dataclasses.asdict(task.cfg), "num_classes": None},
             "model": task.state_dict(), "image_size": image_size, "data": {}}
    torch.save(state, path)
    return path


@pytest.fixture(scope="module")
def context_checkpoint(tmp_path_factory) -> Path:
    return save_checkpoint(tmp_path_factory.mktemp("context") / "last.pt", "context", {}, TRAINED_AT)


# ------------------------------------------------------------------------------------------ scale


def test_probe_size_is_the_checkpoint_tasks_scale_unless_overridden(context_checkpoint, monkeypatch):
    frozen = load_frozen(str(context_checkpoint), arch="alexnet_small", width=None, image_size=None, seed=0)
    assert (frozen.image_size, frozen.image_size_source) == (TRAINED_AT, "checkpoint task scale")
    # the size comes from the task's declaration, not from the crop size alone
    monkeypatch.setattr(ContextTask, "content_scale", classmethod(lambda cls, cfg: 0.75))
    frozen = load_frozen(str(context_checkpoint), arch="alexnet_small", width=None, image_size=None, seed=0)
    assert (frozen.image_size, frozen.image_size_source) == (36, "checkpoint task scale")
    frozen = load_frozen(str(context_checkpoint), arch="alexnet_small", width=None, image_size=40, seed=0)
    assert (frozen.image_size, frozen.image_size_source) == (40, "--image-size")


def test_finetuning_takes_the_same_scale(context_checkpoint, tiny_folder, tmp_path, monkeypatch):
    monkeypatch.setattr(ContextTask, "content_scale", classmethod(lambda cls, cfg: 0.75))
    out = tmp_path / "finetune.json"
    assert finetune_main(["--checkpoint", str(context_checkpoint), "--data", str(tiny_folder), "--epochs", "1",
                          "--batch-size", "12", "--workers", "0", "--device", "cpu", "--out", str(out)]) == 0
    record = json.loads(out.read_text())
    assert record["image_size"] == 36 == record["protocol"]["probe_image_size"]
    assert record["protocol"]["probe_image_size_source"] == "checkpoint task scale"


def test_every_task_declares_its_scale_relative_to_its_training_crop():
    # tiles, patches and counting views are unresized pieces of the crop: whole images at the crop size
    for task_cls in TASKS.values():
        cfg = task_cls.Config()
        assert task_cls.eval_image_size(cfg, 64) == round(64 * task_cls.content_scale(cfg)) == 64


# ------------------------------------------------------------------------------------------ colour


def test_context_with_dropped_colours_is_evaluated_on_one_channel(context_checkpoint):
    frozen = load_frozen(str(context_checkpoint), arch="alexnet_small", width=None, image_size=None, seed=0)
    images = torch.rand(4, 3, 20, 20, generator=torch.Generator().manual_seed(0))
    fed = frozen.input_fn(images)
    # what training fed the trunk: one standardised channel, the dropped ones flat at the noise's mean (0)
    assert torch.allclose(fed[:, 1], normalize_per_patch(images)[:, 1])
    assert fed[:, [0, 2]].abs().max() < 1e-5


def test_context_that_kept_colours_is_evaluated_on_all_three(tmp_path):
    path = save_checkpoint(tmp_path / "last.pt", "context", {"color_mode": "project"}, TRAINED_AT)
    frozen = load_frozen(str(path), arch="alexnet_small", width=None, image_size=None, seed=0)
    images = torch.rand(2, 3, 20, 20, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(frozen.input_fn(images), normalize_per_patch(images))


@pytest.mark.parametrize("task_name, options, channels", [
    ("colorization", {}, 1),  # L only
    ("deepcluster", {"num_clusters": 4, "mlp_dim": 8, "head_pool": 1}, 2),  # Sobel gradients of grey
])
def test_probes_feed_one_channel_tasks_through_their_input_mapping(task_name, options, channels, tmp_path):
    path = save_checkpoint(tmp_path / "last.pt", task_name, options, 16, in_channels=channels)
    frozen = load_frozen(str(path), arch="alexnet_small", width=None, image_size=None, seed=0)
    images = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    fed = frozen.input_fn(images)
    assert fed.shape[1] == channels and torch.equal(fed, frozen.task.encoder_input(images))


# ------------------------------------------------------------------------------------------ BatchNorm


def test_reestimated_statistics_are_those_of_the_data():
    torch.manual_seed(0)
    encoder = build_encoder("alexnet_small", width=0.25).eval()
    data = torch.rand(10, 3, 24, 24) * 0.5 + 0.25
    norms = named_batchnorms(encoder)
    seen: dict[str, torch.Tensor] = {}
    hooks = [bn.register_forward_pre_hook(lambda m, inputs, name=name: seen.__setitem__(name, inputs[0]))
             for name, bn in norms]

    def direct(name: str) -> tuple[torch.Tensor, torch.Tensor]:
        x = seen[name].transpose(0, 1).flatten(1).double()
        return x.mean(dim=1), x.var(dim=1)

    # the first BatchNorm's input does not depend on any statistics: unequal batches give its exact moments
    with torch.no_grad():
        encoder(data)
    first, first_bn = direct(norms[0][0]), norms[0][1]
    assert reestimate_bn_statistics(encoder, lambda x: x, [data[:7], data[7:]], torch.device("cpu")) == 10
    assert not encoder.training
    assert torch.allclose(first_bn.running_mean.double(), first[0], atol=1e-5)
    assert torch.allclose(first_bn.running_var.double(), first[1], rtol=1e-4)
    # in one batch every BatchNorm gets the moments of its input in a training-mode pass over the data
    assert reestimate_bn_statistics(encoder, lambda x: x, [data], torch.device("cpu")) == 10
    for _, bn in norms:
        bn.train()
    with torch.no_grad():
        encoder(data)
    encoder.eval()
    for handle in hooks:
        handle.remove()
    for name, bn in norms:
        mean, var = direct(name)
        assert torch.allclose(bn.running_mean.double(), mean, atol=1e-5), name
        assert torch.allclose(bn.running_var.double(), var, rtol=1e-4, atol=1e-6), name


def spy_features(monkeypatch) -> list[tuple[torch.Tensor, object]]:
    """(first BatchNorm's running mean, input mapping) of every feature extraction of ssl-probe."""
    calls = []
    extract = probe_context.extract_features

    def spy(encoder, input_fn, *args, **kwargs):
        calls.append((named_batchnorms(encoder)[0][1].running_mean.clone(), input_fn))
        return extract(encoder, input_fn, *args, **kwargs)

    monkeypatch.setattr(probe_context, "extract_features", spy)
    return calls


@pytest.mark.parametrize("bn_stats", ["train", "checkpoint"])
def test_probe_features_use_the_statistics_asked_for(bn_stats, context_checkpoint, tiny_folder, tmp_path, monkeypatch):
    calls = spy_features(monkeypatch)
    out = tmp_path / "probe.json"
    assert probe_cli.main(["--checkpoint", str(context_checkpoint), "--data", str(tiny_folder), "--freeze", "conv2",
                           "--bn-stats", bn_stats, *FAST, "--out", str(out)]) == 0
    record = json.loads(out.read_text())
    assert record["protocol"]["bn_stats"]["used"] == bn_stats
    assert record["protocol"]["probe_image_size"] == TRAINED_AT == record["image_size"]
    assert record["protocol"]["probe_image_size_source"] == "checkpoint task scale"
    stored = named_batchnorms(load_frozen(str(context_checkpoint), arch="alexnet_small", width=None, image_size=None,
                                          seed=0).encoder)[0][1].running_mean
    assert len(calls) == 3  # train, val, test
    for running_mean, input_fn in calls:
        assert torch.equal(running_mean, stored) == (bn_stats == "checkpoint")
        # ... and the features are computed from what the trunk saw in training (one colour channel)
        assert input_fn(torch.rand(1, 3, 8, 8))[:, [0, 2]].abs().max() < 1e-5


def test_auto_chooses_on_val_and_records_both_scores(context_checkpoint, tiny_folder, tmp_path):
    out = tmp_path / "probe.json"
    assert probe_cli.main(["--checkpoint", str(context_checkpoint), "--data", str(tiny_folder), "--freeze", "conv2",
                           "--image-size", "40", *FAST, "--out", str(out)]) == 0
    record = json.loads(out.read_text())
    bn = record["protocol"]["bn_stats"]
    scores = bn["val_top1"]
    assert bn["option"] == "auto" and set(scores) == {"train", "checkpoint"}
    assert bn["used"] == ("train" if scores["train"] > scores["checkpoint"] else "checkpoint")
    quick_seconds = bn["quick_probe"]["head_epochs_s"]  # its heads' time, which ssl-bench probe counts
    assert isinstance(quick_seconds, float) and quick_seconds >= 0
    assert record["protocol"]["probe_image_size"] == 40 == record["image_size"]
    assert record["protocol"]["probe_image_size_source"] == "--image-size"


@pytest.mark.parametrize("bn_stats", ["train", "checkpoint"])
def test_finetuning_starts_from_the_statistics_asked_for(bn_stats, context_checkpoint, tiny_folder, tmp_path,
                                                         monkeypatch):
    seen = []
    fit = finetune_run.fit

    def spy(model, *args, **kwargs):
        seen.append(named_batchnorms(model.encoder)[0][1].running_mean.clone())
        return fit(model, *args, **kwargs)

    monkeypatch.setattr(finetune_run, "fit", spy)
    out = tmp_path / "finetune.json"
    assert finetune_main(["--checkpoint", str(context_checkpoint), "--data", str(tiny_folder), "--freeze", "conv5",
                          "--bn-stats", bn_stats, "--epochs", "1", "--batch-size", "12", "--workers", "0",
                          "--device", "cpu", "--out", str(out)]) == 0
    stored = named_batchnorms(load_frozen(str(context_checkpoint), arch="alexnet_small", width=None, image_size=None,
                                          seed=0).encoder)[0][1].running_mean
    assert torch.equal(seen[0], stored) == (bn_stats == "checkpoint")
    assert json.loads(out.read_text())["protocol"]["bn_stats"]["used"] == bn_stats


def test_auto_reuses_the_quick_probes_features_of_whole_splits_and_probes_as_if_told(context_checkpoint, tiny_folder,
                                                                                     tmp_path, monkeypatch):
    calls = spy_features(monkeypatch)
    common = ["--checkpoint", str(context_checkpoint), "--data", str(tiny_folder), "--freeze", "conv2", *FAST]
    assert probe_cli.main([*common, "--out", str(tmp_path / "auto.json")]) == 0
    auto = json.loads((tmp_path / "auto.json").read_text())
    # the quick probe: train and val under each statistics (4); then only test is new (the tiny splits are whole)
    assert len(calls) == 5
    used = auto["protocol"]["bn_stats"]["used"]
    assert probe_cli.main([*common, "--bn-stats", used, "--out", str(tmp_path / "told.json")]) == 0
    told = json.loads((tmp_path / "told.json").read_text())
    assert auto["layers"] == told["layers"]  # reused features probe exactly as freshly computed ones
