"""Weighted k-nearest-neighbour classification of frozen features (Wu et al., CVPR 2018,
"Unsupervised Feature Learning via Non-Parametric Instance Discrimination"), as DINO's
``eval_knn.py`` and solo-learn's ``WeightedKNNClassifier`` evaluate self-supervised encoders:

- features are L2-normalised, so the inner product is the cosine similarity;
- the ``k`` most similar training features vote for their label with weight ``exp(sim / T)``;
- a query's class scores are the summed votes, ranked for top-1 / top-5.

Defaults: ``k = 200`` and ``T = 0.07``, the values of Wu et al. (their code evaluates with
``kNN(..., 200, nce_t=0.07)``). DINO keeps T = 0.07 but reports k = 20 on ImageNet (its
``--nb_knn`` sweeps 10, 20, 100, 200) and solo-learn defaults to k = 20; :func:`select_k` picks k
on a val split among that same sweep, so protocols that select k are not tied to the default.

Search runs in faiss (``IndexFlatIP``, exact; on the GPU when faiss has GPU support and the
features are on CUDA) or, without faiss or with ``backend="torch"``, as a chunked matmul + topk in
torch. Both are exact searches and give the same neighbours up to ties in similarity.

This module is also the kNN monitor of ``ssl-pretrain`` (:class:`KnnMonitor`).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import ContextManager

import torch
import torch.nn.functional as F
from torch import Tensor

from selfsup.data.images import unit_float
from selfsup.data.loading import eval_loader
from selfsup.data.sources import ImageSource, IndexedSource
from selfsup.errors import ConfigError, DataError
from selfsup.models import Encoder
from selfsup.clustering import faiss_available

DEFAULT_K = 200
DEFAULT_TEMPERATURE = 0.07
# DINO's sweep of k (eval_knn.py --nb_knn: 10, 20, 100, 200) with 50 between; ssl-probe's --knn-k default
DEFAULT_KS = (10, 20, 50, 100, 200)
BACKENDS = ("auto", "faiss", "torch")
# similarity-matrix elements per chunk of the torch search (64 MiB of float32)
_CHUNK_ELEMENTS = 1 << 24


def _resolve_backend(backend: str) -> str:
    if backend not in BACKENDS:
        raise ConfigError(f"backend = {backend!r} is invalid: allowed values are {', '.join(BACKENDS)}")
    if backend == "auto":
        return "faiss" if faiss_available() else "torch"
    if backend == "faiss" and not faiss_available():
        raise ConfigError("backend = 'faiss' is invalid: faiss is not installed (pip install faiss-cpu), use 'torch'")
    return backend


def _check_k(k: int) -> None:
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ConfigError(f"k = {k!r} is invalid: must be an integer >= 1")


def _check_temperature(temperature: float) -> None:
    if not temperature > 0 or not math.isfinite(temperature):
        raise ConfigError(f"temperature = {temperature!r} is invalid: must be a finite number > 0")


def _check_inputs(train_features: Tensor, train_labels: Tensor, query_features: Tensor, num_classes: int) -> None:
    if train_features.dim() != 2 or query_features.dim() != 2:
        raise ValueError(
            f"features must be 2-D (samples x dims): got train {tuple(train_features.shape)}, "
            f"query {tuple(query_features.shape)}"
        )
    if train_features.shape[1] != query_features.shape[1]:
        raise ValueError(
            f"train and query features differ in dimension: {train_features.shape[1]} vs {query_features.shape[1]}"
        )
    if len(train_features) == 0 or len(query_features) == 0:
        raise ValueError(
            f"kNN needs at least one training and one query feature: "
            f"got {len(train_features)} training and {len(query_features)} query features"
        )
    if train_labels.shape != (len(train_features),):
        raise ValueError(
            f"train_labels must hold one label per training feature: got shape {tuple(train_labels.shape)} "
            f"for {len(train_features)} features"
        )
    if num_classes < 1:
        raise ValueError(f"num_classes = {num_classes} is invalid: must be >= 1")
    if len(train_labels) and (int(train_labels.min()) < 0 or int(train_labels.max()) >= num_classes):
        raise ValueError(
            f"train_labels must lie in [0, {num_classes - 1}] (num_classes = {num_classes}): "
            f"got values from {int(train_labels.min())} to {int(train_labels.max())}"
        )


def _search_torch(train: Tensor, query: Tensor, k: int) -> tuple[Tensor, Tensor]:
    rows = max(1, _CHUNK_ELEMENTS // len(train))
    sims, indices = [], []
    for start in range(0, len(query), rows):
        top = (query[start : start + rows] @ train.t()).topk(k, dim=1)
        sims.append(top.values)
        indices.append(top.indices)
    return torch.cat(sims), torch.cat(indices)


def _search_faiss(train: Tensor, query: Tensor, k: int) -> tuple[Tensor, Tensor]:
    import faiss

    index = faiss.IndexFlatIP(train.shape[1])
    if train.is_cuda and hasattr(faiss, "StandardGpuResources"):
        resources = faiss.StandardGpuResources()
        index = faiss.index_cpu_to_gpu(resources, train.device.index or 0, index)
    # faiss takes C-contiguous float32 numpy arrays, on the host even for a GPU index
    index.add(train.detach().cpu().contiguous().numpy())
    sims, indices = index.search(query.detach().cpu().contiguous().numpy(), k)
    return torch.from_numpy(sims).to(query.device), torch.from_numpy(indices).to(query.device)


def _neighbours(train_features: Tensor, query_features: Tensor, k: int, backend: str) -> tuple[Tensor, Tensor]:
    """Cosine similarities and indices of the ``k`` nearest training features of every query, best first."""
    train = F.normalize(train_features.float(), dim=1)
    query = F.normalize(query_features.float().to(train.device), dim=1)
    if _resolve_backend(backend) == "faiss":
        return _search_faiss(train, query, k)
    return _search_torch(train, query, k)


def _vote(sims: Tensor, neighbour_labels: Tensor, num_classes: int, temperature: float) -> Tensor:
    # exp(sim / T) normalised per query: softmax computes it without overflow at small temperatures
    weights = torch.softmax(sims / temperature, dim=1)
    scores = torch.zeros(len(sims), num_classes, dtype=weights.dtype, device=weights.device)
    return scores.scatter_add_(1, neighbour_labels, weights)


def knn_predict(
    train_features: Tensor,
    train_labels: Tensor,
    query_features: Tensor,
    num_classes: int,
    k: int = DEFAULT_K,
    temperature: float = DEFAULT_TEMPERATURE,
    backend: str = "auto",
) -> Tensor:
    """Class scores (queries x classes) of the weighted kNN vote, each row summing to 1.

    Row ``q``, column ``c``: the sum of ``exp(sim / temperature)`` over the neighbours of class ``c``
    among the ``k`` nearest training features (cosine similarity), divided by the same sum over all
    ``k`` neighbours. ``k`` larger than the training set is clamped to its size (every training
    feature votes). ``backend``: "faiss", "torch" or "auto" (faiss when installed). The scores are
    on ``query_features``' device.
    """
    _check_k(k)
    _check_temperature(temperature)
    _check_inputs(train_features, train_labels, query_features, num_classes)
    k = min(k, len(train_features))
    sims, indices = _neighbours(train_features, query_features, k, backend)
    labels = train_labels.to(indices.device)[indices]
    return _vote(sims, labels, num_classes, temperature).to(query_features.device)


def topk_accuracy(scores: Tensor, labels: Tensor) -> dict[str, float]:
    """Top-1 and top-5 (percent) of kNN class scores. A class that got no vote never counts as a
    top-5 hit: with fewer than 5 voting classes the rest of the ranking is arbitrary (DINO counts
    only the first k predictions when k < 5 for the same reason)."""
    labels = labels.to(scores.device)
    if len(labels) != len(scores):
        raise ValueError(f"got {len(labels)} labels for {len(scores)} queries")
    if len(labels) == 0:
        raise ValueError("no queries to score: the query set is empty")
    top = scores.topk(min(5, scores.shape[1]), dim=1)
    hits = (top.indices == labels[:, None]) & (top.values > 0)
    count = len(labels)
    return {"top1": 100.0 * int(hits[:, 0].sum()) / count, "top5": 100.0 * int(hits.any(dim=1).sum()) / count}


def knn_accuracy(
    train_features: Tensor,
    train_labels: Tensor,
    query_features: Tensor,
    query_labels: Tensor,
    num_classes: int,
    k: int = DEFAULT_K,
    temperature: float = DEFAULT_TEMPERATURE,
    backend: str = "auto",
) -> dict[str, float]:
    """``{"top1": ..., "top5": ...}`` in percent of the weighted kNN classifier on the queries."""
    scores = knn_predict(train_features, train_labels, query_features, num_classes, k, temperature, backend)
    return topk_accuracy(scores, query_labels)


def select_k(
    train_features: Tensor,
    train_labels: Tensor,
    val_features: Tensor,
    val_labels: Tensor,
    num_classes: int,
    ks: Sequence[int] = DEFAULT_KS,
    temperature: float = DEFAULT_TEMPERATURE,
    backend: str = "auto",
) -> tuple[int, dict[int, float]]:
    """The k of ``ks`` with the best val top-1, and the val top-1 of every k (ties go to the first k
    listed). One search for the largest k serves every k: the nearest k are a prefix of it."""
    if not ks:
        raise ConfigError("ks = [] is invalid: give at least one k")
    for k in ks:
        _check_k(k)
    _check_temperature(temperature)
    _check_inputs(train_features, train_labels, val_features, num_classes)
    largest = min(max(ks), len(train_features))
    sims, indices = _neighbours(train_features, val_features, largest, backend)
    labels = train_labels.to(indices.device)[indices]
    top1: dict[int, float] = {}
    for k in ks:
        used = min(k, largest)
        scores = _vote(sims[:, :used], labels[:, :used], num_classes, temperature)
        top1[k] = topk_accuracy(scores, val_labels)["top1"]
    best = max(top1, key=lambda k: (top1[k], -list(ks).index(k)))
    return best, top1


def random_subset(source: ImageSource, limit: int, seed: int) -> ImageSource:
    """At most ``limit`` images of ``source`` drawn at random with ``seed`` (in source order, which
    keeps file reads local); ``source`` itself when it is not larger (or ``limit`` is 0)."""
    if limit <= 0 or len(source) <= limit:
        return source
    chosen = torch.randperm(len(source), generator=torch.Generator().manual_seed(seed))[:limit]
    name = f"{limit:,} random images (seed {seed}) of {source.describe()}"
    return IndexedSource(source, chosen.sort().values.numpy(), name)


@dataclass
class KnnMonitor:
    """kNN accuracy of an encoder during pretraining: globally average-pooled features of ``layer``
    for the deterministic ``view`` of ``train`` (the neighbours) and ``val`` (the queries).

    ``input_fn`` maps [0, 1] RGB batches to the encoder's input (the task's ``encoder_input``), so
    the monitor knows nothing about the task. It runs in eval mode without gradients and restores
    the encoder's previous mode.
    """

    encoder: Encoder
    input_fn: Callable[[Tensor], Tensor]
    train: ImageSource
    val: ImageSource
    view: Callable
    layer: str
    batch_size: int
    workers: int
    k: int = DEFAULT_K
    temperature: float = DEFAULT_TEMPERATURE

    def __post_init__(self) -> None:
        _check_k(self.k)
        _check_temperature(self.temperature)
        self.num_classes = len(self.train.classes)

    @torch.no_grad()
    def _features(self, source: ImageSource, device: torch.device, autocast: Callable[[], ContextManager],
                  on_bad: Callable[[list[str]], None]) -> tuple[Tensor, Tensor]:
        loader = eval_loader(source, self.view, batch_size=self.batch_size, workers=self.workers,
                             pin_memory=device.type == "cuda")
        features, labels = [], []
        for batch in loader:
            on_bad(batch.bad_files)
            if batch.images.numel() == 0:
                continue
            images = unit_float(batch.images.to(device, non_blocking=True))
            with autocast():
                maps = self.encoder.forward_taps(self.input_fn(images), [self.layer])[self.layer]
            features.append(maps.float().flatten(2).mean(dim=2) if maps.dim() > 2 else maps.float())
            labels.append(batch.labels.to(device))
        if not features:
            raise DataError(f"the kNN monitor found no readable image in {source.describe()}")
        return torch.cat(features), torch.cat(labels)

    def evaluate(
        self,
        device: torch.device,
        autocast: Callable[[], ContextManager] = contextlib.nullcontext,
        on_bad: Callable[[list[str]], None] = lambda messages: None,
    ) -> dict[str, float]:
        """``{"top1", "top5"}`` in percent on ``val``; ``autocast()`` is the run's autocast context and
        ``on_bad`` receives the messages of unreadable files, which are left out."""
        was_training = self.encoder.training
        self.encoder.eval()
        try:
            train_features, train_labels = self._features(self.train, device, autocast, on_bad)
            val_features, val_labels = self._features(self.val, device, autocast, on_bad)
        finally:
            self.encoder.train(was_training)
        return knn_accuracy(train_features, train_labels, val_features, val_labels, self.num_classes,
                            self.k, self.temperature)
