r"""ReinMax, Liu et al. 2023 [1]: a second-order (Heun) straight-through estimator.

For one categorical :math:`D \sim \mathrm{Cat}(π_0)`, :math:`π_0 = \mathrm{softmax}(θ)`,
the gradient of :math:`\mathbb{E}[f(D)]` is a sum of differences :math:`f(I_i) - f(I_j)` over
pairs of classes. Straight-through replaces each difference by a first-order Taylor term
(forward Euler); ReinMax by the trapezoid (Heun's method) of the two end-point slopes, exact
when f is quadratic [1, Sec. 4]. With

.. math:: π_1 = \tfrac12\bigl(D + \mathrm{softmax}(θ / τ)\bigr), \qquad
    J(p) = \mathrm{diag}(p) - p p^\top,

the estimate is

.. math:: \hat g_{\text{ReinMax}} = \Bigl(2 J(π_1) - \tfrac12 J(π_0)\Bigr)
    \frac{\partial f}{\partial z}\Big|_{z = D},

the backward pass of the authors' code (microsoft/ReinMax, ``reinmax/reinmax.py``,
``ReinMaxCore.backward``). At τ = 1 its expectation is the exact gradient for every f quadratic
in D (for f linear in D, and for straight-through with :math:`π_0`, already at first order).
The authors require τ ≥ 1 ("ReinMax prefers to set the temperature larger or equal to 1"); so
does this family (``min_temperature``).

References:
  1. L. Liu, C. Dong, X. Liu, B. Yu, J. Gao. *Bridging Discrete and Backpropagation:
     Straight-Through and Beyond*. NeurIPS 2023 (arXiv:2304.08612).
"""

from __future__ import annotations

from torch import Tensor

from vaelab.guide.straight_through.base import register_estimator, softmax_jacobian

__all__ = ["reinmax"]


@register_estimator("reinmax", min_temperature=1.0)
def reinmax(logits: Tensor, one_hot: Tensor, temperature: Tensor) -> Tensor:
    r"""ReinMax surrogate, value 0, Jacobian :math:`2 J(π_1) - \frac12 J(π_0)`, ``(..., K)``."""
    theta = logits.detach()
    pi_0 = theta.softmax(-1)  # (..., K)
    pi_1 = 0.5 * (one_hot + (theta / temperature).softmax(-1))  # (..., K)
    return 2.0 * softmax_jacobian(pi_1, logits) - 0.5 * softmax_jacobian(pi_0, logits)
