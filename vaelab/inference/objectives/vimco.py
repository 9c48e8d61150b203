r"""``vimco``: the K-sample importance-weighted bound of a discrete latent, with VIMCO's
per-sample leave-one-out control variates (Mnih & Rezende 2016).

With K draws :math:`h_1, \dots, h_K \sim q_φ(h \mid x)` per data point (``objective.num_particles
= K ≥ 2``, unrelaxed categorical guide) and weights
:math:`\log w_k = \log p_θ(x, h_k) - \log q_φ(h_k \mid x)`:

.. math::

    \hat L = \log \frac1K \sum_{k=1}^{K} w_k, \qquad
    \hat\nabla = \sum_{j=1}^{K} \hat L(h_j \mid h_{-j})\, \nabla_φ \log q_φ(h_j \mid x)
        + \sum_{j=1}^{K} \tilde w_j \nabla \log w_j,

:math:`\tilde w_j = w_j / \sum_k w_k`, where the learning signal of draw j subtracts the bound
with :math:`w_j` replaced by the geometric mean of the others (Mnih & Rezende 2016, eq. 10):

.. math:: \hat L(h_j \mid h_{-j}) = \hat L - \log \frac1K \Big(\sum_{i \ne j} w_i
    + \hat f_{-j}\Big), \qquad
    \log \hat f_{-j} = \frac{1}{K-1} \sum_{i \ne j} \log w_i .

The subtracted term does not depend on :math:`h_j`, so :math:`\hat\nabla` is unbiased for
:math:`\nabla\, \mathbb{E}[\hat L]`, the gradient of the K-sample bound (IWAE_K of the discrete
model, :math:`\le \log p_θ(x)`); the loss is :math:`-\hat L` summed over the batch.

.. note:: ``objective.beta`` must be 1, as for ``iwae``: a KL weight has no meaning inside an
    importance-weighted bound (a KL warm-up still tempers the weights while it lasts).

References:
  1. A. Mnih, D. J. Rezende. *Variational Inference for Monte Carlo Objectives*. ICML 2016.
  2. Y. Burda, R. Grosse, R. Salakhutdinov. *Importance Weighted Autoencoders*. ICLR 2016.

Example::

    objective = build_objective(ObjectiveConfig(name="vimco", num_particles=5), vae)
    loss = objective.loss_and_grads(vae.model, vae.guide, x)  # −Σ_n IWAE_5(x_n), one draw
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from vaelab.inference.objectives._score import (
    ScoreELBO,
    check_discrete,
    guide_logits,
    log_joint,
    log_q,
    sample_one_hot,
)
from vaelab.inference.objectives.registry import OBJECTIVES
from vaelab.registry import ConfigError

__all__ = ["VIMCO", "build_vimco", "vimco_signal"]


def vimco_signal(log_w: Tensor) -> Tensor:
    r""":math:`\hat L(h_j \mid h_{-j})` for every draw j of ``log_w (K, B)`` (no gradient):
    the bound minus the bound with :math:`\log w_j` replaced by the mean of the others, ``(K, B)``.
    """
    log_w = log_w.detach()
    K = log_w.shape[0]
    geo = (log_w.sum(0, keepdim=True) - log_w) / (K - 1)  # (K, B): log f̂_{−j}
    swapped = log_w.unsqueeze(0).repeat(K, 1, 1)  # (K, K, B): row j is log w with ...
    index = torch.arange(K, device=log_w.device)
    swapped[index, index] = geo  # ... entry j replaced by log f̂_{−j}
    bound = torch.logsumexp(log_w, 0)  # (B,); the log K cancels in the difference
    return bound - torch.logsumexp(swapped, 1)  # (K, B)


class VIMCO(ScoreELBO):
    """The K-sample bound with VIMCO's leave-one-out learning signals (module docstring).

    :param num_particles: K ≥ 2 draws per data point.
    """

    name = "vimco"

    def surrogate_and_bound(self, model, guide, args, kwargs) -> tuple[Tensor, Tensor]:
        q = guide_logits(guide, args, kwargs, self.name)
        K = self.num_particles
        h = sample_one_hot(q.logits, K)  # (K, B, N, C)
        log_w = log_joint(model, h, args, kwargs) - log_q(h, q.logits, q)  # (K, B)
        bound = torch.logsumexp(log_w, 0) - math.log(K)  # (B,): Σ_j w̃_j ∇ log w_j
        score = log_q(h, q.logits)  # (K, B): ∇ log q(h_j | x), not β-scaled
        surrogate = bound.sum() + (vimco_signal(log_w) * score).sum()
        return surrogate, bound.sum()


@OBJECTIVES.register("vimco")
def build_vimco(cfg, vae) -> VIMCO:
    """VIMCO: the K-sample bound, K = ``objective.num_particles`` ≥ 2, with leave-one-out
    learning signals (Mnih & Rezende 2016); categorical latents."""
    check_discrete(cfg, vae, "vimco")
    if cfg.num_particles < 2:
        raise ConfigError(
            f"objective.num_particles = {cfg.num_particles}: 'vimco' needs K ≥ 2 draws (each "
            "draw's control variate uses the others); set objective.num_particles = 5")
    if cfg.beta != 1.0:
        raise ConfigError(
            f"objective.beta = {cfg.beta}: 'vimco' is an importance-weighted bound, where a KL "
            "weight has no meaning; set objective.beta = 1 or use 'reinforce_loo' for a "
            "β-weighted ELBO")
    return VIMCO(num_particles=cfg.num_particles)
