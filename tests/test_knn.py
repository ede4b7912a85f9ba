"""Weighted kNN evaluation (faiss and torch search) and the kNN monitor of ssl-pretrain."""

import json
import math

import numpy as np
import pytest
import torch
from PIL import Image

from selfsup.cli.pretrain import main as pretrain_main
from selfsup.data.crops import CenterCrop
from selfsup.data.sources import open_splits
from selfsup.errors import ConfigError
from selfsup.models import build_encoder
from selfsup.models.normalization import normalize_rgb
from selfsup.clustering import faiss_available
from selfsup.probes.knn import KnnMonitor, knn_accuracy, knn_predict, select_k, topk_accuracy

BACKENDS = [
    pytest.param("faiss", marks=pytest.mark.skipif(not faiss_available(), reason="faiss is not installed")),
    "torch",
]
TINY_RUN = ["--epochs", "1", "--batch-size", "8", "--workers", "0", "--image-size", "16", "--width", "0.25",
            "--set", "pretext.head_hidden=16", "--device", "cpu", "--task", "rotation"]


def random_data(n_train=60, n_query=25, dim=8, num_classes=4, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return (torch.randn(n_train, dim, generator=gen), torch.randint(0, num_classes, (n_train,), generator=gen),
            torch.randn(n_query, dim, generator=gen), torch.randint(0, num_classes, (n_query,), generator=gen))


def reference_scores(train, train_labels, query, num_classes, k, temperature):
    """The weighted vote written out plainly, one query at a time."""
    rows = []
    for q in query.tolist():
        sims = []
        for x, label in zip(train.tolist(), train_labels.tolist()):
            norms = math.sqrt(sum(a * a for a in q)) * math.sqrt(sum(b * b for b in x))
            cosine = sum(a * b for a, b in zip(q, x)) / norms
            sims.append((cosine, label))
        sims.sort(key=lambda pair: pair[0], reverse=True)
        votes = [0.0] * num_classes
        for cosine, label in sims[:k]:
            votes[label] += math.exp(cosine / temperature)
        rows.append([v / sum(votes) for v in votes])
    return torch.tensor(rows)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("k,temperature", [(1, 0.07), (7, 0.07), (20, 0.5)])
def test_scores_match_a_brute_force_reference(backend, k, temperature):
    train, train_labels, query, _ = random_data()
    scores = knn_predict(train, train_labels, query, 4, k=k, temperature=temperature, backend=backend)
    expected = reference_scores(train, train_labels, query, 4, k, temperature)
    assert scores.shape == (25, 4)
    assert torch.allclose(scores, expected, atol=1e-5)


def test_faiss_and_torch_agree_on_larger_data():
    if not faiss_available():
        pytest.skip("faiss is not installed")
    train, train_labels, query, query_labels = random_data(n_train=3000, n_query=400, dim=32, num_classes=10)
    by_faiss = knn_predict(train, train_labels, query, 10, backend="faiss")
    by_torch = knn_predict(train, train_labels, query, 10, backend="torch")
    assert torch.allclose(by_faiss, by_torch, atol=1e-5)
    assert knn_accuracy(train, train_labels, query, query_labels, 10, backend="faiss") == \
        knn_accuracy(train, train_labels, query, query_labels, 10, backend="torch")


def test_top1_and_top5_rank_the_class_scores():
    scores = torch.tensor([
        [0.05, 0.4, 0.3, 0.1, 0.08, 0.07, 0.0],  # label 1: top-1
        [0.05, 0.4, 0.3, 0.1, 0.08, 0.07, 0.0],  # label 4: 4th best, top-5 only
        [0.05, 0.4, 0.3, 0.1, 0.08, 0.07, 0.0],  # label 0: 6th best, neither
        [0.6, 0.4, 0.0, 0.0, 0.0, 0.0, 0.0],     # label 5: among the top 5 scores but got no vote
    ])
    assert topk_accuracy(scores, torch.tensor([1, 4, 0, 5])) == {"top1": 25.0, "top5": 50.0}


@pytest.mark.parametrize("backend", BACKENDS)
def test_accuracy_agrees_with_the_reference_ranking(backend):
    train, train_labels, query, query_labels = random_data(num_classes=8)
    expected = reference_scores(train, train_labels, query, 8, 10, 0.07)
    order = expected.argsort(dim=1, descending=True)
    voted = expected.gather(1, order) > 0
    top1 = sum(int(order[i, 0] == query_labels[i]) for i in range(len(query)))
    top5 = sum(int(any(order[i, j] == query_labels[i] and voted[i, j] for j in range(5))) for i in range(len(query)))
    got = knn_accuracy(train, train_labels, query, query_labels, 8, k=10, backend=backend)
    assert got == pytest.approx({"top1": 100 * top1 / len(query), "top5": 100 * top5 / len(query)})


@pytest.mark.parametrize("backend", BACKENDS)
def test_k_larger_than_the_training_set_is_clamped(backend):
    train, train_labels, query, _ = random_data(n_train=12)
    clamped = knn_predict(train, train_labels, query, 4, k=500, backend=backend)
    assert torch.allclose(clamped, knn_predict(train, train_labels, query, 4, k=12, backend=backend))
    assert torch.allclose(clamped, reference_scores(train, train_labels, query, 4, 12, 0.07), atol=1e-5)


@pytest.mark.parametrize(
    "kwargs,message",
    [
        ({"k": 0}, "k = 0 is invalid: must be an integer >= 1"),
        ({"k": -3}, "k = -3 is invalid: must be an integer >= 1"),
        ({"k": 2.5}, "k = 2.5 is invalid: must be an integer >= 1"),
        ({"temperature": 0.0}, "temperature = 0.0 is invalid: must be a finite number > 0"),
        ({"temperature": -0.07}, "temperature = -0.07 is invalid: must be a finite number > 0"),
        ({"backend": "annoy"}, "backend = 'annoy' is invalid: allowed values are auto, faiss, torch"),
    ],
)
def test_invalid_arguments_are_refused_with_their_value(kwargs, message):
    train, train_labels, query, _ = random_data()
    with pytest.raises(ConfigError) as info:
        knn_predict(train, train_labels, query, 4, **kwargs)
    assert message in str(info.value)


def test_labels_outside_the_classes_are_refused():
    train, train_labels, query, _ = random_data()
    with pytest.raises(ValueError, match=r"train_labels must lie in \[0, 2\]"):
        knn_predict(train, train_labels, query, 3)


def test_select_k_scores_every_k_like_knn_accuracy():
    train, train_labels, val, val_labels = random_data(n_train=200, n_query=80, num_classes=3, seed=1)
    ks = [1, 5, 20, 100, 500]
    best, top1 = select_k(train, train_labels, val, val_labels, 3, ks, temperature=0.1, backend="torch")
    for k in ks:
        assert top1[k] == knn_accuracy(train, train_labels, val, val_labels, 3, k, 0.1, backend="torch")["top1"]
    assert top1[best] == max(top1.values()) and best == next(k for k in ks if top1[k] == top1[best])
    with pytest.raises(ValueError, match=r"ks = \[\] is invalid"):
        select_k(train, train_labels, val, val_labels, 3, [])


def test_monitor_restores_train_mode_and_leaves_batchnorm_statistics_alone(tiny_folder):
    splits = open_splits(str(tiny_folder))
    encoder = build_encoder("alexnet_small", width=0.25).train()
    before = {name: buffer.clone() for name, buffer in encoder.named_buffers()}
    monitor = KnnMonitor(encoder, normalize_rgb, splits.train, splits.val, CenterCrop(16), layer="conv3",
                         batch_size=16, workers=0)
    scores = monitor.evaluate(torch.device("cpu"))
    assert 0.0 <= scores["top1"] <= scores["top5"] <= 100.0
    assert encoder.training
    for name, buffer in encoder.named_buffers():
        assert torch.equal(buffer, before[name]), name


def test_pretrain_logs_the_knn_monitor(tiny_folder, tmp_path, capsys):
    out = tmp_path / "run"
    assert pretrain_main(["--data", str(tiny_folder), *TINY_RUN, "--out", str(out), "--set", "train.knn_every=1"]) == 0
    final = json.loads((out / "summary.json").read_text())["final"]
    assert 0.0 <= final["knn_top1"] <= final["knn_top5"] <= 100.0
    assert "knn_top1" in capsys.readouterr().err

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(out / "tb"))
    events.Reload()
    assert [e.value for e in events.Scalars("knn/top1")] == pytest.approx([final["knn_top1"]])


def test_pretrain_on_unlabelled_data_skips_the_monitor(tmp_path, capsys):
    folder = tmp_path / "unlabelled"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(16):
        Image.fromarray((rng.random((24, 24, 3)) * 255).astype(np.uint8)).save(folder / f"{i:02d}.png")
    out = tmp_path / "run"
    assert pretrain_main(["--data", str(folder), *TINY_RUN, "--out", str(out), "--set", "train.knn_every=1"]) == 0
    assert "kNN monitor off" in capsys.readouterr().err
    assert "knn_top1" not in json.loads((out / "summary.json").read_text())["final"]


def test_an_unknown_knn_layer_is_refused_by_name(tiny_folder, tmp_path, capsys):
    argv = ["--data", str(tiny_folder), *TINY_RUN, "--out", str(tmp_path / "run"),
            "--set", "train.knn_every=1", "--set", "train.knn_layer=fc9"]
    assert pretrain_main(argv) == 2
    assert "train.knn_layer = 'fc9' is invalid: layers of alexnet_small are conv1, conv2" in capsys.readouterr().err


def test_without_faiss_auto_falls_back_to_torch_and_faiss_is_refused(monkeypatch):
    import selfsup.probes.knn as knn

    monkeypatch.setattr(knn, "faiss_available", lambda: False)
    train, train_labels, query, _ = random_data()
    expected = reference_scores(train, train_labels, query, 4, 7, 0.07)
    assert torch.allclose(knn.knn_predict(train, train_labels, query, 4, k=7), expected, atol=1e-5)
    with pytest.raises(ValueError, match="backend = 'faiss' is invalid: faiss is not installed"):
        knn.knn_predict(train, train_labels, query, 4, backend="faiss")
