"""The fixed permutation sets of the 3x3 puzzle's tiles that jigsaw classifies (Noroozi & Favaro, ECCV 2016):
``n`` of the 9! orders chosen greedily for maximal Hamming distance, generated once per ``(n, seed)`` and then
read from the on-disk cache."""

from __future__ import annotations

import functools
import itertools
import logging
import math
from pathlib import Path

import numpy as np
from torch import Tensor

from selfsup.checkpoint import atomic_file
from selfsup.data import cache_root

log = logging.getLogger(__name__)

GRID = 3
NUM_TILES = GRID * GRID
NUM_ALL_PERMUTATIONS = math.factorial(NUM_TILES)


@functools.lru_cache(maxsize=1)
def _all_permutations() -> np.ndarray:
    """All 9! permutations in lexicographic order, one per row (uint8 keeps it at 3 MB)."""
    return np.array(list(itertools.permutations(range(NUM_TILES))), dtype=np.uint8)


def hamming_permutations(n: int, seed: int) -> np.ndarray:
    """``n`` permutations of the 9 tiles chosen greedily for maximal Hamming distance (n x 9, int64).

    Starts from a random permutation and repeatedly adds the candidate (out of all 9!) whose
    minimum Hamming distance to the chosen set is largest; ties are broken by the seeded RNG, so
    the set depends on ``(n, seed)`` only. A chosen permutation has distance 0 to the set and any
    two distinct ones differ in >= 2 positions, so nothing is picked twice.
    """
    if not 1 <= n <= NUM_ALL_PERMUTATIONS:
        raise ValueError(f"a permutation set of the 9 tiles has 1..{NUM_ALL_PERMUTATIONS} members, got {n}")
    candidates = _all_permutations()
    columns = np.ascontiguousarray(candidates.T)  # one contiguous row per tile position: fast compares
    rng = np.random.default_rng(seed)
    min_distance = np.full(len(candidates), NUM_TILES + 1, dtype=np.int8)
    distance = np.empty(len(candidates), dtype=np.int8)
    differs = np.empty(len(candidates), dtype=bool)
    chosen = np.empty(n, dtype=np.int64)
    pick = int(rng.integers(len(candidates)))
    for i in range(n):
        chosen[i] = pick
        distance.fill(0)
        for position in range(NUM_TILES):
            np.not_equal(columns[position], columns[position, pick], out=differs)
            distance += differs
        np.minimum(min_distance, distance, out=min_distance)
        ties = np.flatnonzero(min_distance == min_distance.max())
        pick = int(ties[rng.integers(len(ties))])
    return candidates[chosen].astype(np.int64)


def hamming_stats(permutations: np.ndarray | Tensor) -> tuple[int, float]:
    """(minimum, mean) Hamming distance over all pairs of distinct members of the set."""
    perms = np.asarray(permutations)
    if len(perms) < 2:
        raise ValueError("Hamming distances need at least two permutations")
    distances = (perms[:, None, :] != perms[None, :, :]).sum(-1)
    pairs = distances[np.triu_indices(len(perms), k=1)]
    return int(pairs.min()), float(pairs.mean())


def permutation_cache_dir() -> Path:
    """``permutations/`` under the cache root (`selfsup.data.cache_root`)."""
    return cache_root() / "permutations"


def _is_permutation_set(perms: np.ndarray, n: int) -> bool:
    if perms.shape != (n, NUM_TILES) or not np.issubdtype(perms.dtype, np.integer):
        return False
    return bool((np.sort(perms, axis=1) == np.arange(NUM_TILES)).all()) and len(np.unique(perms, axis=0)) == n


def permutation_set(n: int, seed: int) -> np.ndarray:
    """The greedy maximal-Hamming set of ``n`` permutations for ``seed``, from the on-disk cache.

    The cache file is written atomically (temporary file + rename), so concurrent runs never read a
    half-written set; a damaged or unreadable file is regenerated, an unwritable cache only warned about.
    """
    path = permutation_cache_dir() / f"hamming_{n}_seed{seed}.npy"
    perms = None
    if path.is_file():
        try:
            perms = np.load(path, allow_pickle=False)
        except (OSError, ValueError) as exc:
            log.warning("permutation cache %s is unreadable (%s); regenerating it", path, exc)
        if perms is not None and not _is_permutation_set(perms, n):
            log.warning("permutation cache %s does not hold %d distinct permutations; regenerating it", path, n)
            perms = None
    source = f"cache {path}"
    if perms is None:
        perms = hamming_permutations(n, seed)
        source = "generated"
        try:
            with atomic_file(path) as handle:
                np.save(handle, perms)
            source = f"generated, cached at {path}"
        except OSError as exc:
            log.warning("could not cache the permutation set at %s: %s", path, exc)
    if n > 1:
        low, mean = hamming_stats(perms)
        log.info("jigsaw permutation set: %d permutations (seed %d), Hamming distance min %d, mean %.3f (%s)",
                 n, seed, low, mean, source)
    return perms.astype(np.int64)
