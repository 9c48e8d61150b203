r"""``iwae``: the importance-weighted bound IWAE_K, per data point.

.. math::

    \mathcal{L}_K(x_n) = \mathbb{E}_{z_{1:K} \sim q_φ(z \mid x_n)}
        \Big[\log \frac{1}{K} \sum_{k=1}^{K} w_{kn}\Big],
    \qquad w_{kn} = \frac{p_θ(x_n, z_{kn})}{q_φ(z_{kn} \mid x_n)}

estimated with one draw of K particles per point (``objective.num_particles``) and
differentiated pathwise:
:math:`\nabla \mathcal{L}_K = \mathbb{E}\big[\sum_k \tilde w_{kn} \nabla \log w_{kn}\big]`,
:math:`\tilde w_{kn} = w_{kn} / \sum_j w_{jn}`. The bound rises with K, equals the ELBO at K = 1
and tends to :math:`\log p_θ(x_n)` as K → ∞ (Burda et al. 2016).

The logsumexp is taken **per data point** whatever the plate structure: sites outside the
``"data"`` plate (global latents) are drawn once per step and shared by all particles and
points; their log-ratio :math:`\log p(s) - \log q(s)` enters once as a one-sample ELBO term,
outside the per-point logsumexp (see :mod:`~vaelab.inference.objectives._particles`). Pyro's
``RenyiELBO(alpha=0)`` is the same bound only when every site is inside the data plate.

.. note:: ``objective.beta`` must be 1: a KL weight has no meaning inside an importance-weighted
    bound. A KL warm-up (``train.warmup_epochs``) still scales :math:`\log p(z) - \log q(z)`
    inside each weight by β < 1 during the warm-up, a tempered bound that becomes IWAE_K at β = 1.

.. note:: The encoder gradient's signal-to-noise ratio falls like :math:`1/\sqrt{K}`
    (Rainforth et al. 2018); ``iwae_dreg`` fixes that.

References:
  1. Y. Burda, R. Grosse, R. Salakhutdinov. *Importance Weighted Autoencoders*. ICLR 2016.
  2. T. Rainforth, A. Kosiorek, T. A. Le, C. Maddison, M. Igl, F. Wood, Y. W. Teh. *Tighter
     Variational Bounds are Not Necessarily Better*. ICML 2018.

Example::

    objective = build_objective(ObjectiveConfig(name="iwae", num_particles=50), vae)
    loss = objective.loss_and_grads(vae.model, vae.guide, x)  # −Σ_n IWAE_50(x_n)
"""

from __future__ import annotations

import math

import torch

from vaelab.inference.objectives._particles import (
    ParticleELBO,
    Particles,
    require_reparameterized,
)
from vaelab.inference.objectives.registry import OBJECTIVES
from vaelab.registry import ConfigError

__all__ = ["IWAE", "build_iwae", "check_iw_config"]


def iwae_bound(log_w: torch.Tensor) -> torch.Tensor:
    r"""Per-point :math:`\log \frac1K \sum_k w_{kn}` from ``log_w (K, B)``, shape ``(B,)``."""
    return torch.logsumexp(log_w, dim=0) - math.log(log_w.shape[0])


class IWAE(ParticleELBO):
    r"""IWAE_K summed over the batch (pathwise gradient).

    :param num_particles: K, importance samples per data point.
    :param max_plate_nesting: plates in the model.
    """

    name = "iwae"

    def surrogate_and_bound(self, p: Particles) -> tuple[torch.Tensor, torch.Tensor]:
        bound = iwae_bound(p.log_w).sum() + p.global_  # ()
        return bound, bound


def check_iw_config(cfg, vae, name: str) -> None:
    """Refuse what an importance-weighted objective cannot do: β ≠ 1, JIT, a non-reparameterized
    guide family."""
    if cfg.beta != 1.0:
        raise ConfigError(
            f"objective.beta = {cfg.beta}: objective {name!r} is an importance-weighted bound, "
            "where a KL weight has no meaning; set objective.beta = 1 or use 'trace', "
            "'mean_field' or 'stl' for a β-weighted ELBO"
        )
    if cfg.jit:
        raise ConfigError(
            f"objective.jit = true: no JIT for objective {name!r} (the Python-level cost is a "
            "small part of a K-particle step); set objective.jit = false"
        )
    require_reparameterized(name, vae=vae)


@OBJECTIVES.register("iwae")
def build_iwae(cfg, vae) -> IWAE:
    """IWAE_K with K = ``objective.num_particles`` (Burda et al. 2016)."""
    check_iw_config(cfg, vae, "iwae")
    return IWAE(num_particles=cfg.num_particles)
