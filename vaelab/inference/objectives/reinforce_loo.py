r"""``reinforce_loo``: REINFORCE with the leave-one-out baseline over K samples, for discrete
latents with the unrelaxed categorical guide (``guide.family = "categorical"``).

With K draws :math:`z_1, \dots, z_K \sim q_φ(z \mid x)` per data point (``objective.num_particles
= K ≥ 2``) and the learning signal :math:`f(z) = \log p_θ(x, z) - \log q_φ(z \mid x)`, each draw's
baseline is the mean signal of the *other* K − 1 draws (Kool, van Hoof & Welling 2019):

.. math::

    \hat{\mathcal L} = \frac1K \sum_{k=1}^{K} f(z_k), \qquad
    \hat\nabla_φ = \frac1K \sum_{k=1}^{K} \Big(f(z_k) - \frac{1}{K-1}\sum_{j \ne k} f(z_j)\Big)
        \nabla_φ \log q_φ(z_k \mid x)
      = \frac{1}{K-1} \sum_{k=1}^{K} \big(f(z_k) - \bar f\big) \nabla_φ \log q_φ(z_k \mid x),

and :math:`\hat\nabla_θ = \frac1K \sum_k \nabla_θ \log p_θ(x, z_k)` for the decoder and the
prior. The baseline of draw k is independent of :math:`z_k`, so the estimator is unbiased for the
gradient of the ELBO, with no parameter to learn; the loss is :math:`-\hat{\mathcal L}`, an
unbiased estimate of the negative ELBO (β-weighted as the model and guide sites say).

References:
  1. W. Kool, H. van Hoof, M. Welling. *Buy 4 REINFORCE Samples, Get a Baseline for Free!*
     ICLR Workshop on Deep Reinforcement Learning Meets Structured Prediction, 2019.
  2. R. J. Williams. *Simple Statistical Gradient-Following Algorithms for Connectionist
     Reinforcement Learning*. Machine Learning 1992.

Example::

    objective = build_objective(ObjectiveConfig(name="reinforce_loo", num_particles=4), vae)
    loss = objective.loss_and_grads(vae.model, vae.guide, x)  # −Σ_n (1/4) Σ_k f(z_kn)
"""

from __future__ import annotations

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

__all__ = ["ReinforceLOO", "build_reinforce_loo", "leave_one_out_mean"]


def leave_one_out_mean(f: Tensor) -> Tensor:
    r""":math:`b_k = \frac{1}{K-1} \sum_{j \ne k} f_j` along dim 0 of ``f (K, B)``."""
    K = f.shape[0]
    return (f.sum(0, keepdim=True) - f) / (K - 1)  # (K, B)


class ReinforceLOO(ScoreELBO):
    """REINFORCE with the leave-one-out baseline (see the module docstring).

    :param num_particles: K ≥ 2 draws per data point.
    """

    name = "reinforce_loo"

    def surrogate_and_bound(self, model, guide, args, kwargs) -> tuple[Tensor, Tensor]:
        q = guide_logits(guide, args, kwargs, self.name)
        z = sample_one_hot(q.logits, self.num_particles)  # (K, B, N, C)
        f = log_joint(model, z, args, kwargs) - log_q(z, q.logits.detach(), q)  # (K, B)
        signal = f.detach() - leave_one_out_mean(f.detach())  # (K, B)
        score = log_q(z, q.logits)  # (K, B): ∇ log q(z_k | x), not β-scaled
        bound = f.mean(0).sum()  # (): decoder and prior gradients
        return bound + (signal * score).mean(0).sum(), bound


@OBJECTIVES.register("reinforce_loo")
def build_reinforce_loo(cfg, vae) -> ReinforceLOO:
    """REINFORCE with the leave-one-out baseline over K = ``objective.num_particles`` ≥ 2
    draws (Kool et al. 2019); categorical latents."""
    check_discrete(cfg, vae, "reinforce_loo")
    if cfg.num_particles < 2:
        raise ConfigError(
            f"objective.num_particles = {cfg.num_particles}: 'reinforce_loo' needs K ≥ 2 draws "
            "(each draw's baseline is the mean of the others); set objective.num_particles = 4")
    return ReinforceLOO(num_particles=cfg.num_particles)

