r"""One statistic over seeds, shared by ``vaelab compare`` and ``vaelab reproduce``'s tables.

For the values :math:`x_1, \ldots, x_n` of a metric, one per seed: the mean
:math:`\bar x = \frac1n \sum_i x_i`, the sample standard deviation
:math:`s = \sqrt{\sum_i (x_i - \bar x)^2 / (n - 1)}`, the standard error :math:`s / \sqrt n`
and :math:`n` (:func:`stat`; sd and se need :math:`n \ge 2`). :func:`across_seeds` is the rule of
a figure that also has a standard error of its own (over the test images): one seed, that
error; several, the spread of the seeds.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

__all__ = ["Stat", "across_seeds", "stat"]


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
