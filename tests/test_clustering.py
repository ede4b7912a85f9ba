from __future__ import annotations

import math

import numpy as np
import pytest

from selfsup import clustering
from selfsup.clustering import (
    KMeansResult,
    faiss_available,
    kmeans,
    l2_normalize,
    nmi,
    pca_whiten,
    split_empty_clusters,
    uniform_cluster_order,
)


def correlated_features(n: int = 400, d: int = 12, seed: int = 0) -> np.ndarray:
    """Strongly correlated, off-centre, badly scaled features: whitening has work to do."""
    rng = np.random.default_rng(seed)
    return (rng.standard_normal((n, d)) @ rng.standard_normal((d, d)) * 3 + 5).astype(np.float32)


def gaussian_blobs(per_blob: int = 40, k: int = 5, d: int = 16, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((k, d)) * 10
    labels = np.repeat(np.arange(k), per_blob)
    return (centres[labels] + rng.standard_normal((len(labels), d))).astype(np.float32), labels


def covariance(x: np.ndarray) -> np.ndarray:
    return np.cov(x.astype(np.float64).T, bias=True)


BACKENDS = ["numpy", pytest.param("faiss", marks=pytest.mark.skipif(not faiss_available(), reason="faiss missing"))]


@pytest.mark.parametrize("backend", BACKENDS)
def test_pca_whitening_gives_centred_identity_covariance(backend):
    out = pca_whiten(correlated_features(), 6, backend=backend)
    assert out.dtype == np.float32 and out.shape == (400, 6) and out.flags.c_contiguous
    np.testing.assert_allclose(out.mean(axis=0), 0.0, atol=1e-3)
    np.testing.assert_allclose(covariance(out), np.eye(6), atol=1e-2)


@pytest.mark.skipif(not faiss_available(), reason="faiss missing")
def test_faiss_and_numpy_whitening_agree_up_to_component_signs():
    x = correlated_features()
    a, b = pca_whiten(x, 6, backend="faiss"), pca_whiten(x, 6, backend="numpy")
    signs = np.sign((a * b).sum(axis=0))
    np.testing.assert_allclose(a, b * signs, atol=1e-2)


@pytest.mark.parametrize("backend", BACKENDS)
def test_pca_dim_is_clipped_to_samples_and_features(backend):
    assert pca_whiten(correlated_features(n=50, d=8), 64, backend=backend).shape == (50, 8)
    assert pca_whiten(correlated_features(n=6, d=8), 64, backend=backend).shape == (6, 6)


def test_pca_rejects_unknown_backend():
    with pytest.raises(ValueError, match="backend"):
        pca_whiten(correlated_features(), 4, backend="torch")


def test_l2_normalize_gives_unit_rows_and_keeps_zero_rows():
    x = np.array([[3.0, 4.0], [0.0, 0.0], [-1e-3, 0.0]])
    out = l2_normalize(x)
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, [[0.6, 0.8], [0.0, 0.0], [-1.0, 0.0]], rtol=1e-6)


def test_uniform_sampler_balances_very_unbalanced_clusters():
    # One cluster of 900 and nine of 10; ids 3 and 7 are unused (empty clusters are skipped).
    assignment = np.concatenate([np.zeros(900, dtype=np.int64), np.repeat([1, 2, 4, 5, 6, 8, 9, 10, 11], 10)])
    order = uniform_cluster_order(assignment, 1000, seed=0)
    assert order.dtype == np.int64 and len(order) == 1000
    counts = np.bincount(assignment[order], minlength=12)
    assert counts[[3, 7]].tolist() == [0, 0]
    assert sorted(set(counts[counts > 0].tolist())) == [100]  # 1000 / 10 clusters exactly
    # The big cluster is drawn without replacement, the small ones with it (each member ~10 times).
    assert len(np.unique(order[assignment[order] == 0])) == 100


def test_uniform_sampler_spreads_the_remainder_and_is_deterministic():
    assignment = np.repeat(np.arange(4), [50, 3, 20, 7])
    order = uniform_cluster_order(assignment, 103, seed=3)
    assert len(order) == 103
    assert sorted(np.bincount(assignment[order]).tolist()) == [25, 26, 26, 26]
    np.testing.assert_array_equal(order, uniform_cluster_order(assignment, 103, seed=3))
    assert not np.array_equal(order, uniform_cluster_order(assignment, 103, seed=4))
    assert not np.array_equal(np.sort(order), order)  # shuffled, not grouped by cluster


def test_split_empty_clusters_fills_every_cluster_and_counts_the_empty_ones():
    x, _ = gaussian_blobs(per_blob=20, k=3, d=4)
    k = 6
    assignment = np.repeat([0, 2, 5], 20)  # clusters 1, 3, 4 are empty
    centroids = np.zeros((k, 4), dtype=np.float32)
    for c in (0, 2, 5):
        centroids[c] = x[assignment == c].mean(axis=0)
    new_assignment, new_centroids, empty = split_empty_clusters(x, assignment, centroids, k, seed=0)
    assert empty == 3
    assert new_assignment.dtype == np.int64 and new_centroids.dtype == np.float32
    assert np.bincount(new_assignment, minlength=k).min() >= 1
    # Each split cluster is half of one blob: points only move to the clusters that were empty.
    moved = new_assignment != assignment
    assert set(new_assignment[moved].tolist()) <= {1, 3, 4}
    # A filled cluster's centroid is a copy of a blob's, moved by eps = 1e-4 per split (a cluster
    # filled by an earlier split can itself be split again).
    for c in (1, 3, 4):
        assert min(np.abs(new_centroids[c] - centroids[blob]).max() for blob in (0, 2, 5)) <= 3.1e-4
    again = split_empty_clusters(x, assignment, centroids, k, seed=0)
    np.testing.assert_array_equal(again[0], new_assignment)


def test_split_empty_clusters_separates_identical_points():
    # All points coincide, so the perturbed centroids tie for every point: one must still move over.
    x = np.ones((5, 3), dtype=np.float32)
    assignment, centroids, empty = split_empty_clusters(x, np.zeros(5, dtype=np.int64), np.ones((2, 3), np.float32), 2)
    assert empty == 1
    assert sorted(np.bincount(assignment, minlength=2).tolist()) == [1, 4]


def test_split_empty_clusters_without_empty_clusters_changes_nothing():
    x, labels = gaussian_blobs(per_blob=5, k=3, d=4)
    centroids = np.stack([x[labels == c].mean(axis=0) for c in range(3)])
    assignment, new_centroids, empty = split_empty_clusters(x, labels, centroids, 3)
    assert empty == 0
    np.testing.assert_array_equal(assignment, labels)
    np.testing.assert_array_equal(new_centroids, centroids)


def test_nmi_known_cases():
    assert nmi(np.array([0, 0, 1, 1, 2, 2]), np.array([5, 5, 3, 3, 9, 9])) == pytest.approx(1.0)
    # Every cluster of a holds each label of b once: independent.
    assert nmi(np.array([0, 0, 1, 1]), np.array([0, 1, 0, 1])) == pytest.approx(0.0, abs=1e-12)
    # a = [0, 0, 1, 1], b = [0, 0, 0, 1]: MI / mean(H(a), H(b)), by hand.
    h_a = math.log(2)
    h_b = -(0.75 * math.log(0.75) + 0.25 * math.log(0.25))
    mi = 0.5 * math.log(0.5 / (0.5 * 0.75)) + 0.25 * math.log(0.25 / (0.5 * 0.75)) + 0.25 * math.log(0.25 / (0.5 * 0.25))
    assert nmi(np.array([0, 0, 1, 1]), np.array([0, 0, 0, 1])) == pytest.approx(mi / ((h_a + h_b) / 2))


def test_nmi_ignores_unknown_labels():
    a = np.array([0, 0, 1, 1, 1, 0])
    assert nmi(a, np.array([2, 2, 7, 7, -1, -1])) == pytest.approx(1.0)
    assert math.isnan(nmi(a, np.full(6, -1)))


def test_sklearn_kmeans_finds_well_separated_blobs():
    x, labels = gaussian_blobs()
    result = kmeans(x, 5, backend="sklearn", init="k-means++", seed=0)
    assert isinstance(result, KMeansResult) and result.backend == "sklearn"
    assert result.assignment.dtype == np.int64 and result.centroids.shape == (5, 16)
    assert result.centroids.dtype == np.float32 and result.empty_clusters == 0
    assert nmi(result.assignment, labels) == pytest.approx(1.0)
    # Within-blob noise is unit-variance in 16 dims: about 16 per sample.
    assert result.objective == pytest.approx(16 * len(x), rel=0.2)


def test_faiss_and_sklearn_give_the_same_clustering():
    faiss = pytest.importorskip("faiss")
    if not hasattr(faiss, "ClusteringInitMethod_KMEANS_PLUS_PLUS"):
        pytest.skip("this faiss has no k-means++ initialisation")
    x, labels = gaussian_blobs()
    by_faiss = kmeans(x, 5, backend="faiss", init="k-means++", seed=0)
    by_sklearn = kmeans(x, 5, backend="sklearn", init="k-means++", seed=0)
    assert by_faiss.backend in {"faiss-cpu", "faiss-gpu"}
    assert nmi(by_faiss.assignment, by_sklearn.assignment) == pytest.approx(1.0)
    assert nmi(by_faiss.assignment, labels) == pytest.approx(1.0)
    assert by_faiss.objective == pytest.approx(by_sklearn.objective, rel=1e-4)


def test_auto_backend_uses_faiss_when_installed():
    result = kmeans(gaussian_blobs(per_blob=10)[0], 3, seed=1)
    assert result.backend.startswith("faiss") == faiss_available()
    assert np.bincount(result.assignment, minlength=3).min() >= 1


def test_without_faiss_auto_falls_back_and_explicit_faiss_fails_clearly(monkeypatch):
    monkeypatch.setattr(clustering, "faiss_available", lambda: False)
    x = correlated_features(n=30, d=4)
    assert kmeans(x, 2, seed=0).backend == "sklearn"
    np.testing.assert_allclose(covariance(pca_whiten(x, 3)), np.eye(3), atol=1e-2)
    for call in (lambda: kmeans(x, 2, backend="faiss"), lambda: pca_whiten(x, 3, backend="faiss")):
        with pytest.raises(ValueError, match="faiss is not installed"):
            call()


def test_kmeans_rejects_k_larger_than_the_number_of_samples():
    with pytest.raises(ValueError, match=r"k=11 for 10 samples"):
        kmeans(np.zeros((10, 2), dtype=np.float32), 11, backend="sklearn")
    with pytest.raises(ValueError, match=r"k=0"):
        kmeans(np.zeros((10, 2), dtype=np.float32), 0, backend="sklearn")


def test_faiss_setup_advice_names_the_fix(monkeypatch):
    from selfsup import clustering

    assert clustering.faiss_setup_advice(cuda_available=False) is None
    monkeypatch.setattr(clustering, "faiss_gpu_available", lambda: False)
    monkeypatch.setattr(clustering, "installed_faiss_distributions", lambda: ["faiss-cpu", "faiss-gpu-cu12"])
    assert "--force-reinstall --no-deps faiss-gpu-cu12" in clustering.faiss_setup_advice(cuda_available=True)
    monkeypatch.setattr(clustering, "installed_faiss_distributions", lambda: ["faiss-cpu"])
    assert "selfsup[gpu]" in clustering.faiss_setup_advice(cuda_available=True)
    monkeypatch.setattr(clustering, "faiss_gpu_available", lambda: True)
    assert clustering.faiss_setup_advice(cuda_available=True) is None
