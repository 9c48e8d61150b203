r"""``renyi``: the Rényi α-bound (variational Rényi bound), per data point.

.. math::

    \mathcal{L}_α(x_n) = \frac{1}{1 - α}\,
        \mathbb{E}_{z_{1:K} \sim q_φ(z \mid x_n)}
        \Big[\log \frac{1}{K} \sum_{k=1}^{K} w_{kn}^{\,1-α}\Big],
    \qquad w_{kn} = \frac{p_θ(x_n, z_{kn})}{q_φ(z_{kn} \mid x_n)}, \quad α \ne 1

with K = ``objective.num_particles`` and α = ``objective.alpha``. α = 0 is IWAE_K exactly; α → 1
tends to the ELBO. For 0 ≤ α < 1 the K-sample estimate is a stochastic lower bound of
:math:`\log p_θ(x_n)` for every K; for α < 0 (whose K → ∞ limit is an upper bound) or α > 1 it
is not guaranteed to bound anything at finite K. At K = 1 every α gives the one-sample ELBO.
Gradients are pathwise:
:math:`\nabla \mathcal{L}_α = \mathbb{E}\big[\sum_k \tilde w^{(α)}_{kn} \nabla \log w_{kn}\big]`,
:math:`\tilde w^{(α)}_{kn} \propto w_{kn}^{1-α}`.

As for ``iwae``, the logsumexp is per data point whatever the plate structure (Pyro's
``RenyiELBO`` becomes a joint bound over the batch when a site is outside the data plate, pyro
#3104, #3123); global sites enter once as a one-sample ELBO term.

References:
  1. Y. Li, R. E. Turner. *Rényi Divergence Variational Inference*. NeurIPS 2016.

Example::

    objective = build_objective(ObjectiveConfig(name="renyi", alpha=0.5, num_particles=10), vae)
"""

from __future__ import annotations

import math

import torch

from vaelab.inference.objectives._particles import ParticleELBO, Particles
from vaelab.inference.objectives.iwae import check_iw_config
from vaelab.inference.objectives.registry import OBJECTIVES
from vaelab.registry import ConfigError

__all__ = ["RenyiBound", "build_renyi", "renyi_bound"]


def renyi_bound(log_w: torch.Tensor, alpha: float) -> torch.Tensor:
    r"""Per-point :math:`\frac{1}{1-α} \log \frac1K \sum_k w_{kn}^{1-α}` from ``log_w (K, B)``."""
    one_minus_alpha = 1.0 - alpha
    K = log_w.shape[0]
    return (torch.logsumexp(one_minus_alpha * log_w, dim=0) - math.log(K)) / one_minus_alpha


class RenyiBound(ParticleELBO):
    r"""The α-bound summed over the batch.

    :param alpha: α ≠ 1.
    :param num_particles: K.
    :param max_plate_nesting: plates in the model.
    """

    name = "renyi"

    def __init__(self, alpha: float = 0.0, num_particles: int = 2, max_plate_nesting: int = 1):
        if alpha == 1.0:
            raise ValueError("the Rényi bound needs α ≠ 1 (α = 1 is the ELBO: use 'trace')")
        super().__init__(num_particles=num_particles, max_plate_nesting=max_plate_nesting)
        self.alpha = alpha

    def surrogate_and_bound(self, p: Particles) -> tuple[torch.Tensor, torch.Tensor]:
        bound = renyi_bound(p.log_w, self.alpha).sum() + p.global_  # ()
        return bound, bound


@OBJECTIVES.register("renyi")
def build_renyi(cfg, vae) -> RenyiBound:
    """Rényi α-bound with α = ``objective.alpha`` and K = ``objective.num_particles``."""
    if cfg.alpha == 1.0:
        raise ConfigError(
            "objective.alpha = 1: the Rényi bound is defined for α ≠ 1 (α → 1 is the ELBO); "
            "use objective.name = 'trace' or 'mean_field' for the ELBO, or α = 0 for IWAE"
        )
    check_iw_config(cfg, vae, "renyi")
    return RenyiBound(alpha=cfg.alpha, num_particles=cfg.num_particles)
