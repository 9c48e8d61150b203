r"""One statistic over seeds, shared by ``vaelab compare`` and ``vaelab reproduce``'s tables.

For the values :math:`x_1, \ldots, x_n` of a metric, one per seed: the mean
:math:`\bar x = \frac1n \sum_i x_i`, the sample standard deviation
:math:`s = \sqrt{\sum_i (x_i - \bar x)^2 / (n - 1)}`, the standard error :math:`s / \sqrt n`
and :math:`n` (:func:`stat`; sd and se need :math:`n \ge 2`). :func:`across_seeds` is the rule of
a figure that also has a standard error of its own (over the test images): one seed, that
error; several, the spread of the seeds. :func:`t_interval` is the rule of a *comparison*
across seeds (a paired difference per seed): :math:`\bar x \pm t_{0.975,\,n-1}\, s / \sqrt n`,
the two-sided 95 % Student-t interval of the mean difference.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

__all__ = ["Stat", "across_seeds", "stat", "t_interval", "t_quantile_975"]

#: :math:`t_{0.975,\,\nu}` for ν = 1..30 degrees of freedom (the standard table, 3 decimals)
_T975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179,
         2.160, 2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064,
         2.060, 2.056, 2.052, 2.048, 2.045, 2.042)


@dataclass
class Stat:
    """Mean, standard deviation (ddof = 1), standard error and count of a metric over seeds
    (``sd`` and ``se`` are None for one value)."""

    mean: float | None
    sd: float | None
    se: float | None
    n: int


def stat(values: list[float]) -> Stat:
    """:class:`Stat` of ``values``."""
    n = len(values)
    if n == 0:
        return Stat(None, None, None, 0)
    mean = sum(values) / n
    if n == 1:
        return Stat(mean, None, None, 1)
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    return Stat(mean, sd, sd / math.sqrt(n), n)


def across_seeds(values: list[float], stderrs: list[float]) -> tuple[float, float]:
    """A figure over seeds: with one seed, its value ± its own standard error ``stderrs[0]``
    (over the images); with several, the mean of the seeds' values ± their sample standard
    deviation (:func:`stat`)."""
    s = stat(values)
    assert s.mean is not None, "a figure over no seed"
    if s.n == 1:
        return s.mean, stderrs[0]
    assert s.sd is not None
    return s.mean, s.sd


def t_quantile_975(df: int) -> float:
    r"""The 97.5 % quantile of Student's t with ``df`` ≥ 1 degrees of freedom: the table for
    ν ≤ 30, beyond it the first terms of its expansion about the normal quantile
    :math:`z = 1.95996` (Cornish-Fisher): :math:`z + (z^3 + z) / (4ν) + (5z^5 + 16z^3 + 3z) /
    (96ν^2)` (error below 1e-3 for ν > 30)."""
    if df < 1:
        raise ValueError(f"a t quantile needs at least 1 degree of freedom, got {df}")
    if df <= len(_T975):
        return _T975[df - 1]
    z = 1.959964
    return z + (z ** 3 + z) / (4 * df) + (5 * z ** 5 + 16 * z ** 3 + 3 * z) / (96 * df ** 2)


def t_interval(values: list[float]) -> tuple[float, float, int]:
    r"""(mean, half-width, n) of the 95 % t-interval :math:`\bar x \pm t_{0.975,\,n-1}\,
    s / \sqrt n` of ``values`` (n ≥ 2: one value has no spread)."""
    s = stat(values)
    if s.n < 2:
        raise ValueError(f"a t-interval needs at least 2 values, got {s.n}")
    assert s.mean is not None and s.se is not None
    return s.mean, t_quantile_975(s.n - 1) * s.se, s.n
