r"""Gumbel-Rao Monte Carlo (GR-MCK), the Rao-Blackwellized straight-through Gumbel-softmax
estimator of Paulus, Maddison & Krause 2021 [1].

ST-GS uses :math:`\hat g_{\text{ST}} = (\partial_θ\, \mathrm{softmax}((θ + G)/τ))^\top
\partial_z f(D)` with :math:`D = \mathrm{one\_hot}(\arg\max(θ + G))`. Since f sees only D,
conditioning on D keeps the mean and cannot raise the variance (Rao-Blackwell) [1, Sec. 3]:

.. math:: \hat g_{\text{GR}} = \mathbb{E}\bigl[\hat g_{\text{ST}} \mid D\bigr]
    \approx \Bigl(\partial_θ\, \frac1K \sum_{k=1}^{K}
    \mathrm{softmax}\bigl((θ + G^{(k)})/τ\bigr)\Bigr)^{\!\top} \partial_z f(D),
    \qquad G^{(k)} \overset{iid}{\sim} G \mid D,

with the Gumbels treated as constants (only the softmax is differentiated) and one evaluation of
f. The conditional Gumbels (:func:`conditional_gumbel`) come from the max-and-truncation view of
Gumbel-max [1, App.]: with :math:`E_k \sim \mathrm{Exp}(1)` iid, :math:`\log Z =
\mathrm{logsumexp}(θ)` and D = class i, the perturbed logits :math:`U = θ + G` are

.. math:: U_i = \log Z - \log E_i, \qquad
    U_j = -\log\bigl(E_j e^{-θ_j} + E_i e^{-\log Z}\bigr) \quad (j \ne i),

i.e. :math:`U_i \sim \mathrm{Gumbel}(\log Z)` (the max) and :math:`U_j` a
:math:`\mathrm{Gumbel}(θ_j)` truncated below :math:`U_i`. K = 1 has the law of ST-GS; every K
has its mean. Option ``num_gumbels`` is K (the authors' code chijames/GST ``rao_gumbel`` uses
100).

References:
  1. M. B. Paulus, C. J. Maddison, A. Krause. *Rao-Blackwellizing the Straight-Through
     Gumbel-Softmax Gradient Estimator*. ICLR 2021 (arXiv:2010.04838).
"""

from __future__ import annotations

import torch
from torch import Tensor

from vaelab.guide.straight_through.base import register_estimator

__all__ = ["conditional_gumbel", "gr_mck"]


@torch.no_grad()
def conditional_gumbel(logits: Tensor, one_hot: Tensor, num_samples: int) -> Tensor:
    r"""K draws of :math:`G \mid \arg\max(θ + G) = D`, ``(K, ..., C)`` (no gradient).

    :param logits: θ, ``(..., C)``.
    :param one_hot: D, ``(..., C)``.
    :param num_samples: K.
    """
    theta = logits.detach()
    log_e = torch.empty((num_samples, *theta.shape), dtype=theta.dtype,
                        device=theta.device).exponential_().log()  # (K, ..., C): log E
    log_e_i = (one_hot * log_e).sum(-1, keepdim=True)  # (K, ..., 1)
    log_z = theta.logsumexp(-1, keepdim=True)  # (..., 1)
    u_max = log_z - log_e_i  # (K, ..., 1): U_i ~ Gumbel(log Z)
    u_rest = -torch.logaddexp(log_e - theta, -u_max)  # (K, ..., C): truncated below U_i
    u = torch.where(one_hot > 0, u_max, u_rest)  # (K, ..., C)
    return u - theta


@register_estimator("gr_mck", options=("num_gumbels",))
def gr_mck(logits: Tensor, one_hot: Tensor, temperature: Tensor, num_gumbels: int = 10) -> Tensor:
    r"""GR-MCK surrogate :math:`\frac1K \sum_k \mathrm{softmax}((θ + G^{(k)})/τ)`, ``(..., C)``."""
    g = conditional_gumbel(logits, one_hot, num_gumbels)  # (K, ..., C)
    return ((logits + g) / temperature).softmax(-1).mean(0)
