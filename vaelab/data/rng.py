"""Dedicated, seeded random number generators for data handling.

Every random choice of the data package (split permutations, static binarization, batch order)
draws from its own :class:`torch.Generator`, seeded from a tuple of integers, e.g.
``(seed, epoch)``. Nothing touches the global RNG, so a run resumed from a checkpoint sees exactly
the same batches, whatever else consumed random numbers in between.
"""

from __future__ import annotations

import numpy as np
import torch

__all__ = ["derived_generator", "derived_seed"]

_MASK64 = (1 << 64) - 1


def derived_seed(*keys: int) -> int:
    """A well-mixed 63-bit seed from integer keys (any sign), via :class:`numpy.random.SeedSequence`.

    Distinct key tuples give unrelated seeds: ``(s, 0)`` and ``(s, 1)`` share no structure, unlike
    ``s + epoch``.
    """
    entropy = [int(k) & _MASK64 for k in keys]
    (state,) = np.random.SeedSequence(entropy).generate_state(1, dtype=np.uint64)
    return int(state) >> 1  # torch.Generator.manual_seed accepts [0, 2**63) on every backend


def derived_generator(*keys: int) -> torch.Generator:
    """A CPU :class:`torch.Generator` seeded by :func:`derived_seed` of ``keys``."""
    g = torch.Generator()
    g.manual_seed(derived_seed(*keys))
    return g
