"""DeepCluster (Caron, Bojanowski, Joulin & Douze, ECCV 2018).

Before every epoch (or every ``reassign_every`` epochs) the features of the whole training set are
extracted without augmentation (AlexNet: fc7 after ReLU; ResNet: the pooled last stage), PCA-whitened
to 256 dimensions, L2-normalised and clustered with k-means; the cluster ids become the labels of the
epoch, sampled uniformly over the non-empty clusters, and the classifier on top is re-initialised
because its classes have changed meaning. A fixed Sobel front-end (grey + horizontal and vertical
gradients, 2 channels) removes colour, which k-means would otherwise cluster on.

The engine hosts this through its task-agnostic hooks: ``prepare_epoch`` (the clustering step, which
returns the epoch's sampling order) and ``batch_labels`` (source index -> pseudo-label). The current
assignment is a buffer of the module, so checkpoints hold it and ``--resume`` inside an epoch does not
recluster.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from selfsup.config import ConfigError, option
from selfsup.data.images import unit_float
from selfsup.epoch import EpochContext, EpochPlan
from selfsup.models import Encoder
from selfsup.models.normalization import normalize_rgb
from selfsup.pretext.base import (RGB, SOBEL, SOBEL_X, Examples, InputMapping, PretextFC, PretextTask, accuracy,
                                  linear_layers)
from selfsup.clustering import kmeans, l2_normalize, nmi, pca_whiten, uniform_cluster_order
from selfsup.seeds import mix_seed

MAX_AUTO_CLUSTERS = 10_000  # the paper's k for ImageNet
MIN_AUTO_CLUSTERS = 100


@dataclass
class DeepClusterConfig:
    num_clusters: int = option(
        0, "k of k-means; 0 = auto: one cluster per 50 training images, at least 100 and at most 10000 "
        "(paper: 10000 on ImageNet's 1.28 M images)", min=0)
    pca_dim: int = option(256, "PCA dimensions kept (and whitened) before k-means (paper: 256)", min=1)
    kmeans_iters: int = option(20, "k-means iterations (faiss's default; the paper's code: 20)", min=1)
    kmeans_backend: str = option("auto", "auto = faiss (on the GPU when faiss-gpu is installed), else scikit-learn",
                                 choices=("auto", "faiss", "sklearn"))
    reassign_every: int = option(1, "recluster every N epochs (paper: 1)", min=1)
    sobel: bool = option(True, "fixed Sobel front-end: grey + 2 gradient channels (paper: on)")
    head_pool: int = option(6, "adaptive max-pool side of the last feature map before fc6 (paper: 6, AlexNet's pool5)",
                            min=1)
    mlp_dim: int = option(
        -1, "units of fc6 and fc7, whose output is clustered; 0 = none (cluster the globally pooled last stage), "
        "-1 = auto: 4096 for AlexNet encoders (paper), 0 for ResNets", min=-1)
    dropout: float = option(0.5, "dropout before fc6 and fc7 (paper: 0.5)", min=0.0, max=0.99)
    reuse_features: bool = option(
        False, "cluster the features the training steps already computed (each image's latest, from its latest "
        "training forward pass) and pass only images never trained on; NOT the paper's: those features are of "
        "augmented crops, under dropout, and up to a few epochs old (paper: off, a fresh pass every epoch)")


def auto_num_clusters(num_samples: int) -> int:
    return min(num_samples, MAX_AUTO_CLUSTERS, max(MIN_AUTO_CLUSTERS, num_samples // 50))


def sobel_input(images: Tensor) -> Tensor:
    """[0, 1] RGB -> grey of the normalised image and its two Sobel gradients (N x 2 x H x W)."""
    grey = normalize_rgb(images).mean(dim=1, keepdim=True)
    kernel_x = grey.new_tensor(SOBEL_X)
    kernels = torch.stack([kernel_x, kernel_x.t()]).unsqueeze(1)
    return F.conv2d(grey, kernels, padding=1)


def _is_resnet(encoder: Encoder) -> bool:
    return "res5" in encoder.layer_names


class DeepClusterTask(PretextTask):
    name = "deepcluster"
    Config = DeepClusterConfig
    relabels_batches = True  # trains on the cluster ids of the last clustering

    @classmethod
    def input_mapping(cls, cfg: DeepClusterConfig) -> InputMapping:
        return InputMapping(SOBEL if cfg.sobel else RGB)

    @classmethod
    def encoder_channels(cls, cfg: DeepClusterConfig) -> int:
        return 2 if cfg.sobel else 3

    @classmethod
    def fit_to_data(cls, cfg: DeepClusterConfig, num_samples: int) -> DeepClusterConfig:
        k = cfg.num_clusters or auto_num_clusters(num_samples)
        if k > num_samples:
            raise ConfigError(f"pretext.num_clusters = {k} is invalid: the data has only {num_samples} images")
        return replace(cfg, num_clusters=k)

    def __init__(self, encoder: Encoder, cfg: DeepClusterConfig) -> None:
        super().__init__(encoder, cfg)
        if cfg.num_clusters < 1:
            raise ValueError("DeepClusterTask needs a resolved number of clusters (see fit_to_data)")
        if encoder.in_channels != self.encoder_channels(cfg):
            raise ValueError(f"deepcluster with sobel={cfg.sobel} needs an encoder with {self.encoder_channels(cfg)} "
                             f"input channels, not {encoder.in_channels}")
        channels = encoder.out_channels(encoder.layer_names[-1])
        mlp_dim = cfg.mlp_dim if cfg.mlp_dim >= 0 else (0 if _is_resnet(encoder) else 4096)
        if mlp_dim:
            self.pool = nn.AdaptiveMaxPool2d(cfg.head_pool)
            self.features = nn.Sequential(
                nn.Flatten(), nn.Dropout(cfg.dropout), nn.Linear(channels * cfg.head_pool**2, mlp_dim),
                nn.ReLU(inplace=True), nn.Dropout(cfg.dropout), nn.Linear(mlp_dim, mlp_dim), nn.ReLU(inplace=True),
            )
        else:
            self.pool = nn.AdaptiveAvgPool2d(1)
            self.features = nn.Flatten()
        self.top = nn.Linear(mlp_dim or channels, cfg.num_clusters)
        # source index -> cluster id of the current assignment; sized on the first clustering
        self.register_buffer("assignment", torch.empty(0, dtype=torch.long))
        self.register_buffer("assignment_epoch", torch.tensor(-1))
        # reuse_features: source index -> its latest training features (bfloat16) and the epoch they are from
        # (-1 = none yet); in the checkpoint, so that a resumed run clusters what the uninterrupted one would
        self.register_buffer("feature_bank", torch.empty(0, mlp_dim or channels, dtype=torch.bfloat16))
        self.register_buffer("feature_epoch", torch.empty(0, dtype=torch.long))
        self._batch_indices: Tensor | None = None
        self._epoch = 0

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                              error_msgs):
        for name in ("assignment", "feature_bank", "feature_epoch"):
            key = prefix + name
            if key in state_dict:  # the buffer's size is the dataset's, unknown until then
                setattr(self, name, torch.empty_like(state_dict[key], device=getattr(self, name).device))
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                                      error_msgs)
        for name in ("feature_bank", "feature_epoch"):  # checkpoints from before reuse_features have no bank
            if prefix + name in missing_keys:
                missing_keys.remove(prefix + name)

    def encoder_input(self, images: Tensor) -> Tensor:
        return sobel_input(images) if self.cfg.sobel else normalize_rgb(images)

    def cluster_features(self, images: Tensor) -> Tensor:
        """What k-means clusters: fc7 (AlexNet) or the pooled last stage (ResNet), float32."""
        return self.features(self.pool(self.encoder(self.encoder_input(images)))).float()

    # ------------------------------------------------------------------ the epoch-level step
    def prepare_epoch(self, context: EpochContext) -> EpochPlan:
        epoch, seed = context.epoch, context.seed
        self._epoch = epoch
        if self.cfg.reuse_features and context.dist.enabled:
            raise ConfigError("pretext.reuse_features = true is invalid with several processes (each would hold "
                              "only its own images' features): turn it off under torchrun")
        num_samples = len(context.source)
        reuse = int(self.assignment_epoch) == epoch or (
            self.assignment.numel() == num_samples and epoch % self.cfg.reassign_every != 0
        )
        metrics: dict[str, float] = {}
        if not reuse:
            metrics = self._recluster(context)
        order = uniform_cluster_order(self.assignment.cpu().numpy(), num_samples, seed=mix_seed("cluster order", seed, epoch))
        return EpochPlan(order=torch.from_numpy(order), metrics=metrics)

    def _recluster(self, context: EpochContext) -> dict[str, float]:
        started = time.perf_counter()
        was_training = self.training
        self.eval()
        num_samples = len(context.source)
        banked = self._banked_rows(num_samples)
        # with reuse_features, only the images no training step has seen yet are passed again
        wanted = None if banked is None else torch.nonzero(~banked).squeeze(1).tolist()
        rows, labels, indices = [], [], []
        if wanted is None or wanted:
            with torch.no_grad(), context.autocast():
                for batch in context.shard_batches(wanted):
                    images = unit_float(batch.images.to(context.device, non_blocking=True))
                    rows.append(self.cluster_features(images).cpu())
                    labels.append(batch.labels)
                    indices.append(batch.indices)
        self.train(was_training)
        passed = len(context.source) if wanted is None else len(wanted)
        if rows:
            index = torch.cat(indices)
            fresh = context.gather_rows(torch.cat(rows), index)
            fresh_labels = context.gather_rows(torch.cat(labels), index)
        else:
            fresh, fresh_labels = torch.empty(0, self.feature_bank.shape[1]), torch.empty(0, dtype=torch.long)
        if len(fresh) != passed:
            raise ValueError(f"clustering needs every training image; {passed - len(fresh)} "
                             "could not be read (see the skipped-file messages)")
        if banked is None:
            features, true_labels = fresh, fresh_labels
        else:
            features = self.feature_bank.float().cpu()
            features[~banked] = fresh
            true_labels = torch.tensor([context.source.label(i) for i in range(num_samples)], dtype=torch.long)
        extract_s = time.perf_counter() - started

        result = None
        if context.dist.is_main:
            reduced = l2_normalize(pca_whiten(features.numpy().astype(np.float32), self.cfg.pca_dim))
            result = kmeans(reduced, self.cfg.num_clusters, seed=mix_seed("k-means", context.seed, context.epoch),
                            niter=self.cfg.kmeans_iters, backend=self.cfg.kmeans_backend)
        result = context.broadcast(result)
        previous = self.assignment.cpu().numpy() if self.assignment.numel() == len(features) else None
        assignment = torch.from_numpy(result.assignment).long()
        self.assignment = assignment.to(self.assignment_epoch.device)
        self.assignment_epoch.fill_(context.epoch)
        self._reset_top(context)

        metrics = {
            "extract_s": round(extract_s, 2),
            "passed_images": float(passed),
            "cluster_s": round(result.seconds, 2),
            "kmeans_objective": float(result.objective),
            "empty_clusters": float(result.empty_clusters),
            "nonempty_clusters": float(np.unique(result.assignment).size),
        }
        if previous is not None:
            metrics["nmi_previous"] = nmi(result.assignment, previous)
        if bool((true_labels >= 0).any()):
            metrics["nmi_labels"] = nmi(result.assignment, true_labels.numpy())
        return metrics

    def _banked_rows(self, num_samples: int) -> Tensor | None:
        """With reuse_features: which images have training features in the bank (sizing the bank on first
        use); None when the option is off or no training step has banked anything yet (a full pass)."""
        if not self.cfg.reuse_features:
            return None
        if self.feature_epoch.numel() != num_samples:
            device = self.feature_bank.device
            self.feature_bank = torch.zeros(num_samples, self.feature_bank.shape[1], dtype=torch.bfloat16, device=device)
            self.feature_epoch = torch.full((num_samples,), -1, dtype=torch.long, device=device)
            return None
        banked = (self.feature_epoch >= 0).cpu()
        return banked if bool(banked.any()) else None

    def _reset_top(self, context: EpochContext) -> None:
        # The classes changed meaning: a fresh top layer (N(0, 0.01), zero bias, as the paper's code),
        # drawn from (seed, epoch) so every process draws the same one, and no stale momentum.
        gen = torch.Generator().manual_seed(mix_seed("new top layer", context.seed, context.epoch))
        with torch.no_grad():
            self.top.weight.copy_(torch.randn(self.top.weight.shape, generator=gen) * 0.01)
            self.top.bias.zero_()
        context.reset_optimizer_state(self.top.parameters())

    # ------------------------------------------------------------------ training step
    def detector_fc(self) -> PretextFC | None:
        if not isinstance(self.pool, nn.AdaptiveMaxPool2d):  # the global-pool head has no fc layers
            return None
        return PretextFC(self.cfg.head_pool, linear_layers(self.features), "deepcluster fc6, fc7")

    def batch_labels(self, indices: Tensor, labels: Tensor) -> Tensor:
        if self.assignment.numel() == 0:
            raise RuntimeError("deepcluster trains on cluster ids; prepare_epoch has not clustered yet")
        self._batch_indices = indices  # the training step that follows banks its features under these
        return self.assignment.to(indices.device)[indices]

    def forward(self, images: Tensor, labels: Tensor, generator: torch.Generator | None = None) -> dict[str, Tensor]:
        features = self.cluster_features(images)
        if self.cfg.reuse_features and self.training and self._batch_indices is not None:
            index = self._batch_indices.to(self.feature_bank.device)
            self.feature_bank[index] = features.detach().to(self.feature_bank.device, torch.bfloat16)
            self.feature_epoch[index] = self._epoch
            self._batch_indices = None
        logits = self.top(features)
        loss = F.cross_entropy(logits, labels)
        return {"loss": loss, "acc": accuracy(logits.detach(), labels)}

    def example_images(self, images: Tensor, generator: torch.Generator | None = None) -> Examples:
        shown = images[:4]
        with torch.no_grad():
            predicted = self.top(self.cluster_features(shown)).argmax(dim=1)
        views: list[Tensor] = []
        captions: list[str] = []
        for i in range(shown.shape[0]):
            views.append(shown[i])
            captions.append(f"image; predicted cluster {int(predicted[i])} of {self.cfg.num_clusters}")
            if self.cfg.sobel:
                gradients = sobel_input(shown[i : i + 1])[0, :2]
                scale = gradients.abs().amax().clamp_min(1e-6)
                for axis, gradient in zip(("horizontal", "vertical"), gradients):
                    views.append((0.5 + 0.5 * gradient / scale).expand(3, -1, -1))
                    captions.append(f"fed: Sobel {axis} gradient of grey")
        per_row = 3 if self.cfg.sobel else 1
        return Examples(torch.stack(views).clamp(0, 1), captions, per_row=per_row)
