r"""Gapped straight-through (GST), Fan et al. 2022 [1].

GST keeps the two properties of the straight-through Gumbel-softmax estimator that [1] finds
essential, *consistency* (the surrogate's argmax is the sample D) and a *gap* between the sampled
class and the others, with a deterministic perturbation instead of Gumbel noise. Given D (class
i) and the logits θ (the perturbation is computed from stopgrad(θ)), let
:math:`θ_{\max} = \max_k θ_k`; the moved logits are

.. math::

    \tilde θ_i = θ_i + (θ_{\max} - θ_i), \qquad
    \tilde θ_j = θ_j - \max\bigl(0,\ θ_j - θ_{\max} + δ\bigr) \quad (j \ne i),

so the sampled class sits at the top and every other class at least δ below it, and the
surrogate is :math:`s = \mathrm{softmax}(\tilde θ / τ)`, its Jacobian the tempered softmax
Jacobian at the moved point:

.. math:: \hat g_{\text{GST}} = \tfrac1τ J\bigl(\mathrm{softmax}(\tilde θ/τ)\bigr)^{\!\top}
    \frac{\partial f}{\partial z}\Big|_{z=D}, \qquad J(p) = \mathrm{diag}(p) - p p^\top.

No resampling: given D the estimate is deterministic (one function evaluation, no extra noise).
The gap δ (option ``gap``) is a constant (GST-1.0: δ = 1) or ``"p"``, the adaptive
:math:`δ = -\log(1 - π_i)/π_i` with :math:`π_i = \mathrm{softmax}(θ)_i` (GST-p), as in the
authors' code (chijames/GST, ``model/basic.py``, ``gst_mover``). Biased, like ST-GS.

References:
  1. T.-H. Fan, T.-C. Chi, A. I. Rudnicky, P. J. Ramadge. *Training Discrete Deep Generative
     Models via Gapped Straight-Through Estimator*. ICML 2022 (arXiv:2206.07235).
"""

from __future__ import annotations

from typing import Literal

from torch import Tensor

from vaelab.guide.straight_through.base import register_estimator

__all__ = ["gapped_logits", "gapped_st"]


def gapped_logits(logits: Tensor, one_hot: Tensor, gap: float | Literal["p"] = 1.0) -> Tensor:
    r"""The moved logits :math:`\tilde θ = θ + m(\mathrm{stopgrad}(θ), D)`, ``(..., K)``.

    :param logits: θ, ``(..., K)``.
    :param one_hot: D, ``(..., K)``.
    :param gap: δ > 0, or ``"p"`` for :math:`δ = -\log(1 - π_i)/π_i`.
    """
    theta = logits.detach()  # the move has no gradient
    theta_max = theta.max(-1, keepdim=True).values  # (..., 1)
    delta: Tensor | float = gap if gap != "p" else 0.0
    if gap == "p":
        p_i = (one_hot * theta.softmax(-1)).sum(-1, keepdim=True) * (1 - 1e-5)  # (..., 1)
        delta = -(-p_i).log1p() / p_i
    up = (theta_max - theta) * one_hot  # the sampled class to the top
    down = (theta - theta_max + delta).clamp(min=0.0) * (1 - one_hot)  # the others δ below it
    return logits + (up - down)


@register_estimator("gapped_st", options=("gap",))
def gapped_st(logits: Tensor, one_hot: Tensor, temperature: Tensor,
              gap: float | Literal["p"] = 1.0) -> Tensor:
    r"""GST surrogate :math:`\mathrm{softmax}(\tilde θ / τ)`, ``(..., K)``."""
    return (gapped_logits(logits, one_hot, gap) / temperature).softmax(-1)
