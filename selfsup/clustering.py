"""Clustering pieces of DeepCluster (Caron et al., ECCV 2018), as pure functions on numpy arrays.

Each epoch DeepCluster embeds the whole dataset, PCA-whitens and L2-normalises the features,
clusters them with k-means, repairs empty clusters, and trains the network to predict the cluster
ids, drawing images so that every cluster is seen equally often (otherwise the network could
predict the giant cluster that k-means tends to produce for every image). NMI between the
assignments of consecutive epochs, and against the true labels, tracks the training.

Features go in and out as float32 arrays because faiss only accepts C-contiguous float32; the faiss
paths follow the authors' code and scikit-learn / numpy stand in when faiss is not installed.
"""

from __future__ import annotations

import functools
import importlib.metadata
import logging
import time
from dataclasses import dataclass

import numpy as np

log = logging.getLogger(__name__)

_BACKENDS = ("auto", "faiss", "sklearn")
_PCA_BACKENDS = ("auto", "faiss", "numpy")
_INITS = ("random", "k-means++")


def faiss_available() -> bool:
    """Whether faiss can be imported; faiss is optional, so every caller checks before using it."""
    try:
        import faiss  # noqa: F401
    except ImportError:
        return False
    return True


def faiss_gpu_available() -> bool:
    """Whether faiss was built with GPU support *and* sees a GPU (faiss-cpu has neither)."""
    if not faiss_available():
        return False
    import faiss

    return hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0


FAISS_DISTRIBUTIONS = ("faiss-cpu", "faiss-gpu-cu12", "faiss-gpu-cu11", "faiss-gpu")


def installed_faiss_distributions() -> list[str]:
    found = []
    for name in FAISS_DISTRIBUTIONS:
        try:
            importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
        found.append(name)
    return found


def faiss_setup_advice(cuda_available: bool) -> str | None:
    """Why k-means will not use a GPU that torch sees, with the fix; None when nothing is wrong.

    faiss-cpu (the default dependency) and faiss-gpu-cu12 (the ``[gpu]`` extra) both install the
    ``faiss`` package folder, so with both installed whichever pip wrote last is what imports.
    """
    if not cuda_available or faiss_gpu_available():
        return None
    installed = installed_faiss_distributions()
    if any(name.startswith("faiss-gpu") for name in installed):
        return (f"{' and '.join(installed)} are installed and share the faiss folder, and the CPU build won: "
                "run `pip install --force-reinstall --no-deps faiss-gpu-cu12` to put the GPU build back")
    return "k-means runs on the CPU: this faiss has no GPU support (`pip install selfsup[gpu]`, see README)"


def _as_features(features: np.ndarray) -> np.ndarray:
    """A 2-D C-contiguous float32 view/copy, the only layout faiss accepts."""
    array = np.ascontiguousarray(features, dtype=np.float32)
    if array.ndim != 2:
        raise ValueError(f"features must be a 2-D (n_samples, n_features) array, got shape {array.shape}")
    return array


def _resolve(backend: str, choices: tuple[str, ...], fallback: str) -> str:
    """Turn "auto" into faiss when importable, and fail early when faiss is asked for but missing."""
    if backend not in choices:
        raise ValueError(f"unknown backend {backend!r}, expected one of {choices}")
    if backend == "auto":
        return "faiss" if faiss_available() else fallback
    if backend == "faiss" and not faiss_available():
        raise ValueError("backend 'faiss' was requested but faiss is not installed (pip install faiss-cpu)")
    return backend


def pca_whiten(features: np.ndarray, dim: int, eps: float = 1e-5, *, backend: str = "auto") -> np.ndarray:
    """Centre, project on the top-``dim`` principal components and whiten to ~identity covariance.

    DeepCluster whitens before k-means so that no single direction of large variance dominates the
    Euclidean distances. ``dim`` is clipped to ``min(dim, n_samples, n_features)``; ``eps`` is added
    to every eigenvalue (of the covariance, normalised by ``n``) before dividing by its square root, so
    near-null directions are not blown up. ``backend`` is "faiss" (``faiss.PCAMatrix`` with
    ``eigen_power=-0.5``, as the authors' code), "numpy" (eigendecomposition of the covariance), or
    "auto" (faiss when importable). Both give the same output up to the sign of each component.
    """
    x = _as_features(features)
    n, d = x.shape
    if dim < 1:
        raise ValueError(f"dim must be >= 1, got {dim}")
    dim = min(dim, n, d)
    if _resolve(backend, _PCA_BACKENDS, "numpy") == "faiss":
        return _pca_whiten_faiss(x, dim, eps)
    return _pca_whiten_numpy(x, dim, eps)


def _pca_whiten_faiss(x: np.ndarray, dim: int, eps: float) -> np.ndarray:
    import faiss

    n, d = x.shape
    pca = faiss.PCAMatrix(d, dim, -0.5)
    # faiss's eigenvalues are sums over the training points, not means, so its whitened output has
    # covariance I / n_train; and it silently trains on a subsample of max_points_per_d * d points.
    # Train on all points so n_train == n, then scale eps up and the output back by sqrt(n).
    pca.max_points_per_d = -(-n // d)
    pca.epsilon = eps * n
    pca.train(x)
    return np.ascontiguousarray(pca.apply(x) * np.float32(np.sqrt(n)), dtype=np.float32)


def _pca_whiten_numpy(x: np.ndarray, dim: int, eps: float) -> np.ndarray:
    # Eigendecomposition of the d x d covariance rather than an SVD of the n x d data: cheaper when
    # n >> d, DeepCluster's case. float64 for accuracy; this path makes a float64 copy of the data,
    # which is fine for the small runs that go without faiss.
    centred = x.astype(np.float64)
    centred -= centred.mean(axis=0)
    eigenvalues, eigenvectors = np.linalg.eigh(centred.T @ centred / len(centred))
    top = np.argsort(eigenvalues)[::-1][:dim]
    projection = eigenvectors[:, top] / np.sqrt(np.clip(eigenvalues[top], 0.0, None) + eps)
    return (centred @ projection).astype(np.float32)


def l2_normalize(features: np.ndarray) -> np.ndarray:
    """Rows scaled to unit L2 norm (all-zero rows stay zero), as DeepCluster does after whitening."""
    x = _as_features(features)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.maximum(norms, np.finfo(np.float32).tiny)


@dataclass
class KMeansResult:
    """One k-means run: the (repaired) assignment and centroids, with what it cost and how it went."""

    assignment: np.ndarray  # int64, one cluster id per sample, in [0, k)
    centroids: np.ndarray  # k x d float32
    objective: float  # sum of squared distances of the samples to their assigned centroid, after repair
    empty_clusters: int  # clusters that were empty before repair (after repair there are none)
    backend: str  # "faiss-gpu", "faiss-cpu" or "sklearn"
    seconds: float


def kmeans(
    features: np.ndarray,
    k: int,
    *,
    seed: int = 0,
    niter: int = 20,
    backend: str = "auto",
    max_points_per_centroid: int = 100_000,
    init: str = "random",
) -> KMeansResult:
    """Lloyd k-means, then nearest-centroid assignment of every sample and empty-cluster repair.

    ``backend``: "faiss" (on the GPU when faiss has one), "sklearn" (``KMeans`` with ``n_init=1``),
    or "auto" (faiss when importable). Centroids are trained on at most
    ``k * max_points_per_centroid`` random samples (faiss's own subsampling rule, applied to
    scikit-learn too so both backends see the same amount of data) but every sample is assigned.

    ``init``: "random" (k random samples: DeepCluster's and faiss's default, cheap) or "k-means++"
    (far more robust on small problems, but in faiss it costs tens of Lloyd iterations and needs
    faiss >= 1.13). Both backends use the same strategy so their results are comparable.
    """
    x = _as_features(features)
    n, d = x.shape
    if not 1 <= k <= n:
        raise ValueError(f"k-means needs 1 <= k <= number of samples, got k={k} for {n} samples")
    if init not in _INITS:
        raise ValueError(f"unknown init {init!r}, expected one of {_INITS}")
    start = time.perf_counter()
    backend_seed = seed & 0x7FFF_FFFF  # faiss takes a C int and scikit-learn a 32-bit seed
    if _resolve(backend, _BACKENDS, "sklearn") == "faiss":
        centroids, assignment, name = _kmeans_faiss(x, k, backend_seed, niter, max_points_per_centroid, init)
    else:
        centroids, assignment, name = _kmeans_sklearn(x, k, backend_seed, niter, max_points_per_centroid, init)
    assignment, centroids, empty = split_empty_clusters(x, assignment, centroids, k, seed=seed)
    return KMeansResult(
        assignment=assignment,
        centroids=centroids,
        objective=_objective(x, assignment, centroids),
        empty_clusters=empty,
        backend=name,
        seconds=time.perf_counter() - start,
    )


def _kmeans_faiss(
    x: np.ndarray, k: int, seed: int, niter: int, max_points_per_centroid: int, init: str
) -> tuple[np.ndarray, np.ndarray, str]:
    import faiss

    gpu = faiss_gpu_available()
    _warn_about_faiss_setup()
    options = {"niter": niter, "seed": seed, "max_points_per_centroid": max_points_per_centroid}
    if init == "k-means++":
        if not hasattr(faiss, "ClusteringInitMethod_KMEANS_PLUS_PLUS"):
            raise ValueError(f"init='k-means++' needs faiss >= 1.13, this is faiss {faiss.__version__}")
        options["init_method"] = faiss.ClusteringInitMethod_KMEANS_PLUS_PLUS
    # gpu=1: one GPU, like the authors' single GpuIndexFlatL2 (True would shard over all GPUs).
    model = faiss.Kmeans(x.shape[1], k, gpu=1 if gpu else False, **options)
    model.train(x)
    _, assignment = model.assign(x)
    return model.centroids, assignment.astype(np.int64), "faiss-gpu" if gpu else "faiss-cpu"


@functools.lru_cache(maxsize=1)
def _warn_about_faiss_setup() -> None:
    """Once per process, so that clustering every epoch does not repeat it."""
    try:
        import torch
    except ImportError:
        return
    advice = faiss_setup_advice(torch.cuda.is_available())
    if advice:
        log.warning(advice)


def _kmeans_sklearn(
    x: np.ndarray, k: int, seed: int, niter: int, max_points_per_centroid: int, init: str
) -> tuple[np.ndarray, np.ndarray, str]:
    from sklearn.cluster import KMeans

    train = x
    if len(x) > k * max_points_per_centroid:
        rng = np.random.default_rng(seed)
        train = x[np.sort(rng.choice(len(x), k * max_points_per_centroid, replace=False))]
    model = KMeans(n_clusters=k, init=init, n_init=1, max_iter=niter, random_state=seed).fit(train)
    # predict(), not labels_: labels_ come from before the last centroid update, and only cover the subsample.
    return model.cluster_centers_.astype(np.float32), model.predict(x).astype(np.int64), "sklearn"


def _objective(x: np.ndarray, assignment: np.ndarray, centroids: np.ndarray, chunk: int = 65_536) -> float:
    """Sum of squared sample-to-centroid distances, in chunks so a 1M x 4096 dataset fits in memory."""
    total = 0.0
    for begin in range(0, len(x), chunk):
        diff = x[begin : begin + chunk].astype(np.float64) - centroids[assignment[begin : begin + chunk]]
        total += float(np.einsum("ij,ij->", diff, diff))
    return total


def split_empty_clusters(
    features: np.ndarray,
    assignment: np.ndarray,
    centroids: np.ndarray,
    k: int,
    *,
    seed: int = 0,
    eps: float = 1e-4,
) -> tuple[np.ndarray, np.ndarray, int]:
    """Give every empty cluster half of a non-empty one (the DeepCluster paper's fix).

    An empty cluster would be a class with no training image, and k-means would keep it empty.
    Each empty cluster, in id order, takes a copy of the centroid of a cluster drawn with probability
    proportional to its size (among clusters with >= 2 members); the two centroids are moved by
    ``+-eps`` along a random sign vector, and the donor's points go to the nearer of the two
    (decided on the sign of their offset along that vector, which is exact where float32 distances
    to centroids ``2 * eps`` apart would tie). If every point lands on one side, the point nearest to
    the other side moves over, so both halves are non-empty.

    Returns ``(assignment, centroids, number of clusters that were empty)``: new int64 / float32
    arrays, deterministic for a seed. Every cluster in ``[0, k)`` is non-empty afterwards as long as
    there are at least ``k`` samples.
    """
    x = _as_features(features)
    assignment = np.asarray(assignment, dtype=np.int64).copy()
    centroids = np.asarray(centroids, dtype=np.float64).copy()
    if assignment.shape != (len(x),) or centroids.shape != (k, x.shape[1]):
        raise ValueError(
            f"expected {len(x)} assignments and {k} x {x.shape[1]} centroids, "
            f"got {assignment.shape} and {centroids.shape}"
        )
    if len(assignment) and (assignment.min() < 0 or assignment.max() >= k):
        raise ValueError(f"cluster ids must lie in [0, {k})")
    rng = np.random.default_rng(seed)
    sizes = np.bincount(assignment, minlength=k)
    empty = np.flatnonzero(sizes == 0)
    for target in empty:
        donors = np.flatnonzero(sizes >= 2)
        if len(donors) == 0:  # fewer samples than clusters: nothing left to split
            break
        donor = rng.choice(donors, p=sizes[donors] / sizes[donors].sum())
        direction = rng.choice([-1.0, 1.0], size=x.shape[1])
        shared = centroids[donor].copy()
        centroids[donor] = shared + eps * direction
        centroids[target] = shared - eps * direction
        members = np.flatnonzero(assignment == donor)
        # Nearer to (c + eps*s) than to (c - eps*s) exactly when the offset from c points along s.
        offset = (x[members].astype(np.float64) - shared) @ direction
        to_target = offset < 0
        if not to_target.any():
            to_target[np.argmin(offset)] = True
        elif to_target.all():
            to_target[np.argmax(offset)] = False
        assignment[members[to_target]] = target
        sizes[target] = int(to_target.sum())
        sizes[donor] -= sizes[target]
    return assignment, centroids.astype(np.float32), len(empty)


def uniform_cluster_order(assignment: np.ndarray, num_samples: int, *, seed: int) -> np.ndarray:
    """``num_samples`` dataset indices drawn so that every non-empty cluster is equally represented.

    DeepCluster's sampler: k-means on CNN features yields very unbalanced clusters, and training on
    them as they are lets the network predict the biggest clusters everywhere. Each non-empty
    cluster gets ``num_samples // n_nonempty`` draws, and the remainder goes one each to randomly
    chosen clusters; within a cluster, indices are drawn without replacement when it has enough
    members and with replacement otherwise. The result is shuffled (int64, deterministic per seed).
    """
    assignment = np.asarray(assignment)
    if assignment.ndim != 1 or len(assignment) == 0:
        raise ValueError("assignment must be a non-empty 1-D array of cluster ids")
    if num_samples < 0:
        raise ValueError(f"num_samples must be >= 0, got {num_samples}")
    rng = np.random.default_rng(seed)
    clusters = np.unique(assignment)
    shares = np.full(len(clusters), num_samples // len(clusters))
    shares[rng.choice(len(clusters), num_samples % len(clusters), replace=False)] += 1
    order = []
    for cluster, share in zip(clusters, shares):
        members = np.flatnonzero(assignment == cluster)
        order.append(rng.choice(members, share, replace=len(members) < share))
    result = np.concatenate(order).astype(np.int64)
    rng.shuffle(result)
    return result


def nmi(a: np.ndarray, b: np.ndarray) -> float:
    """Normalized mutual information (arithmetic mean normalisation), invariant to relabelling.

    DeepCluster reports it between consecutive epochs' assignments (stability) and between the
    assignment and the true labels. Positions where ``b < 0`` (unknown labels) are left out; nan
    when none are left.
    """
    from sklearn.metrics import normalized_mutual_info_score

    a, b = np.asarray(a), np.asarray(b)
    if a.shape != b.shape or a.ndim != 1:
        raise ValueError(f"nmi needs two 1-D arrays of the same length, got shapes {a.shape} and {b.shape}")
    known = b >= 0
    if not known.any():
        return float("nan")
    return float(normalized_mutual_info_score(a[known], b[known], average_method="arithmetic"))
