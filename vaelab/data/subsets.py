"""The one rule for taking N points of a split: evenly spread over it, never its first N.

The binarized MNIST test file is sorted by digit, so its first 1000 images are 980 zeros and 20
ones; every subset vaelab takes (``data.limit``, ``train.valid_limit``, ``eval.limit`` /
``--limit``, the experiments, the report's reconstructions) uses :func:`spread_indices`.
"""

from __future__ import annotations

from typing import Literal

import torch

__all__ = ["common_positions", "spread_indices", "subset_indices"]


def spread_indices(n: int, limit: int | None) -> torch.Tensor:
    r"""Indices of ``limit`` points spread evenly over ``n``, in increasing order, ``(m,)``.

    .. math:: i_j = \operatorname{round}\Big(j \, \frac{n - 1}{m - 1}\Big), \quad j = 0..m-1,
       \qquad m = \min(\text{limit}, n)

    (``linspace(0, n − 1, m)`` rounded), so the first and the last point are always kept and the
    indices are distinct. ``limit=None`` (or ``limit >= n``) keeps every point.
    """
    if limit is None or limit >= n:
        return torch.arange(n)
    if limit <= 0:
        raise ValueError(f"a subset needs a positive size, got {limit}")
    return torch.linspace(0, n - 1, limit, dtype=torch.float64).round().long()  # (limit,)


def common_positions(n: int, limit_a: int | None, limit_b: int | None
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    """The points of a split of ``n`` that both :func:`spread_indices` subsets hold, as their
    positions in each: ``(pos_a, pos_b)``, ``(m,)`` each, in increasing order of the point, so
    that ``values_a[pos_a]`` and ``values_b[pos_b]`` are the same ``m`` points. Two evaluations
    of different ``eval.limit`` (2000 test images and all 10,000, say) pair on these."""
    at = {j: i for i, j in enumerate(spread_indices(n, limit_a).tolist())}
    pairs = [(at[j], i) for i, j in enumerate(spread_indices(n, limit_b).tolist()) if j in at]
    return (torch.tensor([a for a, _ in pairs], dtype=torch.long),
            torch.tensor([b for _, b in pairs], dtype=torch.long))


def subset_indices(n: int, limit: int | None, rule: Literal["spread", "first"] = "spread"):
    """:func:`spread_indices`, or the first ``limit`` (``rule = "first"``: configs saved before
    version 2 meant that, and keep meaning it)."""
    if rule == "first":
        return torch.arange(n if limit is None else min(limit, n))
    return spread_indices(n, limit)
