"""Seeds derived from a run's seed. Every random stream of a run (crops, epoch order, pretext inputs, k-means,
probe shuffles, low-shot draws) is seeded with ``mix_seed(purpose, run seed, where in the run...)``, so a run
repeats exactly, a resumed run continues exactly, and two purposes never share a stream by accident."""

from __future__ import annotations

import zlib

# A prime above any step, epoch or index count of one part: (a, b) and (a', b') with b, b' below it differ.
_MULTIPLIER = 1_000_003
_MASK = 2**63 - 1  # non-negative and within int64: what torch, numpy and Python generators all accept


def mix_seed(purpose: str, *parts: int) -> int:
    """A seed in [0, 2**63) for ``purpose`` (a short fixed name, e.g. ``"epoch order"``) at ``parts`` (run seed
    first, then epoch, step, index...). The same arguments give the same seed in every process and session."""
    mixed = zlib.crc32(purpose.encode())
    for part in parts:
        mixed = (mixed * _MULTIPLIER + int(part)) & _MASK
    return mixed
