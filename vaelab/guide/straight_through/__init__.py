r"""Straight-through gradient estimators for categorical latents, options of the ``relaxed``
guide family (``guide.family.estimator``, with ``kl = "categorical"``).

The decoder sees the one-hot sample :math:`D \sim \mathrm{Cat}(\mathrm{softmax}(\ell))` in the
forward pass; each estimator is the Jacobian of its own surrogate in the backward pass
(:mod:`~vaelab.guide.straight_through.base`):

* ``gapped_st``: Gapped straight-through, Fan et al. 2022
  (:mod:`~vaelab.guide.straight_through.gapped`);
* ``gr_mck``: Rao-Blackwellized ST Gumbel-softmax, Paulus et al. 2021
  (:mod:`~vaelab.guide.straight_through.gr_mck`);
* ``reinmax``: ReinMax, Liu et al. 2023 (:mod:`~vaelab.guide.straight_through.reinmax`).

The plain straight-through Gumbel-softmax (``estimator = "straight_through"``, or ``hard =
true``; Jang et al. 2017) lives in :mod:`vaelab.model.distributions.straight_through`.
"""

from vaelab.guide.straight_through import gapped, gr_mck, reinmax
from vaelab.guide.straight_through.base import (
    ESTIMATORS,
    Estimator,
    StraightThroughCategorical,
    Surrogate,
    carry_gradient,
    register_estimator,
    softmax_jacobian,
)

__all__ = [
    "ESTIMATORS",
    "Estimator",
    "StraightThroughCategorical",
    "Surrogate",
    "carry_gradient",
    "gapped",
    "gr_mck",
    "register_estimator",
    "reinmax",
    "softmax_jacobian",
]
