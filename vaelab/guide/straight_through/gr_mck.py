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

**Binary latents** (C = 2). The softmax reads only the gap :math:`Δ = U_1 - U_0 = a + L`,
:math:`a = θ_1 - θ_0`, L a standard logistic (a difference of two Gumbels), and D says its sign
s (+1 for class 1, −1 for class 0). Given D, sΔ is a logistic of location b = s·a truncated
below at 0, drawn by inverting its CDF with one uniform v ∈ (0, 1]
(:func:`conditional_logit_gap`),

.. math:: sΔ = \mathrm{softplus}(b) - \log v + \log\bigl(u + v\, σ(-b)\bigr), \qquad
    u = 1 - v,

with :math:`u + v σ(-b) = 1 - v σ(b)` written so that it stays exact where σ(b) rounds to 1,
and sΔ clamped at the truncation point 0 (which only the rounding of an extreme b with u = 0
could cross). The same law as the gap of two conditional Gumbels, from one uniform draw where
those take two exponentials (each a float64 uniform): GR-MC1000 at 9.7× a Gumbel-softmax step
instead of 29× (``benchmarks/estimators.py``).

References:
  1. M. B. Paulus, C. J. Maddison, A. Krause. *Rao-Blackwellizing the Straight-Through
     Gumbel-Softmax Gradient Estimator*. ICLR 2021 (arXiv:2010.04838).
"""

from __future__ import annotations

import torch
from torch import Tensor

from vaelab.guide.straight_through.base import register_estimator
from vaelab.model.distributions import exponential

__all__ = ["conditional_gumbel", "conditional_logit_gap", "gr_mck"]


def _conditioned(theta: Tensor, one_hot: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    r"""What every draw given D shares, shifted by m = max θ (softmax and G ignore the shift):
    θ' = θ − m, :math:`w = e^{-θ'}` with 0 at D's class (capped at the largest float, so that
    :math:`E w` is never NaN), :math:`1/Z' = e^{-\mathrm{logsumexp}\,θ'}` ``(..., 1)`` and D's
    index ``(..., 1)``."""
    shifted = theta - theta.amax(-1, keepdim=True)  # (..., C), ≤ 0
    inv_z = torch.exp(-shifted.logsumexp(-1, keepdim=True))  # (..., 1)
    w = torch.exp(-shifted).masked_fill_(one_hot > 0, 0.0)  # (..., C)
    w.clamp_(max=torch.finfo(w.dtype).max)  # e^{-θ'} overflows where θ' < -88 (float32)
    return shifted, w, inv_z, one_hot.argmax(-1, keepdim=True)


def _perturbed(shared: tuple[Tensor, Tensor, Tensor, Tensor], k: int) -> Tensor:
    r"""k draws of :math:`U - m`, ``(k, ..., C)``: with :math:`t_j = E_j w_j + E_i / Z'`,
    :math:`U_j - m = -\log t_j` for every j (at D's class :math:`w_i = 0` gives
    :math:`\log Z' - \log E_i`), the module docstring's two cases in one expression."""
    _, w, inv_z, index = shared
    e = exponential((k, *w.shape), w)  # E, torch's exponential_ draws
    e_i = e.gather(-1, index.expand(k, *index.shape))  # (k, ..., 1): E_i
    return torch.addcmul(e_i * inv_z, e, w).log_().neg_()  # (k, ..., C)


@torch.no_grad()
def conditional_gumbel(logits: Tensor, one_hot: Tensor, num_samples: int) -> Tensor:
    r"""K draws of :math:`G \mid \arg\max(θ + G) = D`, ``(K, ..., C)`` (no gradient).

    :param logits: θ, ``(..., C)``.
    :param one_hot: D, ``(..., C)``.
    :param num_samples: K.
    """
    shared = _conditioned(logits.detach(), one_hot)
    return _perturbed(shared, num_samples) - shared[0]  # G = (U − m) − (θ − m)


def _gap_shared(theta: Tensor, one_hot: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    r"""For C = 2: the sign s ``(...)`` (+1 where D is class 1), softplus(b) and σ(−b), b = s (θ_1 −
    θ_0), each ``(...)``."""
    s = one_hot[..., 1] * 2.0 - 1.0
    b = s * (theta[..., 1] - theta[..., 0])
    return s, torch.nn.functional.softplus(b), torch.sigmoid(-b)


def _signed_gaps(shared: tuple[Tensor, Tensor, Tensor], k: int) -> Tensor:
    r"""k draws of sΔ given D, ``(k, ...)`` (the module docstring's inverse CDF): u is torch's
    ``rand`` in [0, 1), consumed in order along k, and v = 1 − u in (0, 1] (exact)."""
    _, softplus_b, sigma_neg_b = shared
    u = torch.rand((k, *sigma_neg_b.shape), dtype=sigma_neg_b.dtype, device=sigma_neg_b.device)
    v = torch.sub(1.0, u)  # (k, ...)
    gap = torch.addcmul(u, v, sigma_neg_b, out=u).log_()  # log(u + v σ(−b)) = log(1 − v σ(b))
    return gap.sub_(v.log_()).add_(softplus_b).clamp_min_(0.0)  # sΔ ≥ 0


@torch.no_grad()
def conditional_logit_gap(logits: Tensor, one_hot: Tensor, num_samples: int) -> Tensor:
    r"""K draws of the gap :math:`Δ = U_1 - U_0` of the perturbed logits given
    :math:`D = \arg\max(θ + G)`, for C = 2: ``(K, ...)`` (no gradient).

    :param logits: θ, ``(..., 2)``.
    :param one_hot: D, ``(..., 2)``.
    :param num_samples: K.
    """
    shared = _gap_shared(logits.detach(), one_hot)
    return _signed_gaps(shared, num_samples) * shared[0]


#: conditional Gumbels drawn and reduced this many at a time, so that no ``(K, ..., C)`` tensor
#: is ever held (the draws are those of one ``(K, ..., C)`` call: the stream is consumed along K)
CHUNK = 64


@register_estimator("gr_mck", options=("num_gumbels",))
def gr_mck(logits: Tensor, one_hot: Tensor, temperature: Tensor, num_gumbels: int = 10) -> Tensor:
    r"""GR-MCK surrogate :math:`\bar s = \frac1K \sum_k s_k`, :math:`s_k =
    \mathrm{softmax}((θ + G^{(k)})/τ)`, ``(..., C)``, with the Jacobian of that mean,

    .. math:: \frac{\partial \bar s}{\partial θ} = \frac1τ \Bigl(\operatorname{diag}(\bar s)
        - \frac1K \sum_k s_k s_k^\top\Bigr),

    built from the two moments (accumulated over chunks of :data:`CHUNK` draws, with no
    gradient) instead of differentiating K softmaxes: memory ``(..., C, C)``, not
    ``(K, ..., C)``. τ is a constant of the step (a schedule's value)."""
    theta = logits.detach()
    with torch.no_grad():
        if theta.shape[-1] == 2:
            mean, second = _binary_moments(_gap_shared(theta, one_hot), temperature, num_gumbels)
        else:
            mean, second = _moments(_conditioned(theta, one_hot), temperature, num_gumbels)
    delta = logits - theta  # (..., C): 0 forward, identity backward
    jvp = mean * delta - (second @ delta.unsqueeze(-1)).squeeze(-1)  # (diag s̄ − M) δ
    return mean + jvp / temperature


def _moments(shared: tuple[Tensor, Tensor, Tensor, Tensor], temperature: Tensor, K: int
             ) -> tuple[Tensor, Tensor]:
    r""":math:`\bar s` ``(..., C)`` and :math:`\frac1K \sum_k s_k s_k^\top` ``(..., C, C)``."""
    mean = torch.zeros_like(shared[1])
    second = mean.new_zeros(*mean.shape, mean.shape[-1])
    for start in range(0, K, CHUNK):
        s = (_perturbed(shared, min(CHUNK, K - start)) / temperature).softmax(-1)  # (k, ..., C)
        mean += s.sum(0)
        second += (s.unsqueeze(-1) * s.unsqueeze(-2)).sum(0)
    return mean / K, second / K


def _binary_moments(shared: tuple[Tensor, Tensor, Tensor], temperature: Tensor, K: int
                    ) -> tuple[Tensor, Tensor]:
    r""":func:`_moments` for C = 2, where :math:`s_k = (1 - p_k, p_k)` with :math:`p_k =
    σ(Δ_k/τ)`, Δ_k the conditional logit gap (:func:`conditional_logit_gap`): everything from
    :math:`\sum p_k` and :math:`\sum p_k^2` (torch's softmax over a last dimension of 2 is a
    tenth of its speed on wide rows)."""
    sign = shared[0]
    sum_p = torch.zeros_like(sign)  # (...,)
    sum_pp = torch.zeros_like(sum_p)
    scale = sign / temperature  # Δ/τ = (sΔ) · s/τ
    for start in range(0, K, CHUNK):
        p = torch.sigmoid_(_signed_gaps(shared, min(CHUNK, K - start)).mul_(scale))  # (k, ...)
        sum_p += p.sum(0)
        sum_pp += p.square_().sum(0)
    p, pp = sum_p / K, sum_pp / K  # E p, E p²
    mean = torch.stack([1.0 - p, p], -1)  # (..., 2)
    off = p - pp  # E p (1 − p)
    second = torch.stack([torch.stack([1.0 - 2.0 * p + pp, off], -1),
                          torch.stack([off, pp], -1)], -2)  # (..., 2, 2)
    return mean, second
