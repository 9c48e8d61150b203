r"""``stl``: the ELBO with the "sticking the landing" gradient estimator.

The bound is the ELBO, estimated with K = ``objective.num_particles`` draws,

.. math::

    \mathcal{L}(x_n) = \mathbb{E}_{q_φ(z \mid x_n)}\big[\log p_θ(x_n \mid z)
        + β \log p(z) - β \log q_φ(z \mid x_n)\big];

its reparameterized gradient splits into a path term and a score term,
:math:`\nabla_φ \log q_φ(z)\,|_{z\ \mathrm{fixed}}`, whose expectation is zero. STL drops the
score term by evaluating :math:`\log q_{\bar φ}(z_φ(ε))` with the guide's parameters detached
(but not its sample):

.. math::

    \hat\nabla_φ = \frac1K \sum_k \frac{\partial}{\partial z}\Big[\log p_θ(x_n, z)
        - \log q_{\bar φ}(z \mid x_n)\Big]_{z = z_{kn}} \frac{\partial z_{kn}}{\partial φ}

an unbiased estimator of the ELBO's gradient whose variance is **zero** when q = p(z | x) (the
bracket is then the constant log p(x_n)). θ's gradient is unchanged.

β (``objective.beta`` or a warm-up) scales :math:`\log p(z) - \log q(z)` through the sites'
scales, as in ``trace``; the zero-variance property holds at β = 1.

.. note:: The dropped term has zero mean for any reparameterized guide (it is the score
    :math:`\mathbb{E}_q[\nabla_φ \log q_φ(z)] = 0`), so STL is unbiased; the guide family must
    let its parameters be detached (see
    :func:`~vaelab.inference.objectives._particles.stop_gradient_params`). Global sites (outside
    the data plate) are drawn once per step and shared by the particles, as in ``iwae``.

References:
  1. G. Roeder, Y. Wu, D. Duvenaud. *Sticking the Landing: Simple, Lower-Variance Gradient
     Estimators for Variational Inference*. NeurIPS 2017.

Example::

    objective = build_objective(ObjectiveConfig(name="stl"), vae)
"""

from __future__ import annotations

import torch

from vaelab.inference.objectives._particles import (
    ParticleELBO,
    Particles,
    require_reparameterized,
)
from vaelab.inference.objectives.registry import OBJECTIVES
from vaelab.registry import ConfigError

__all__ = ["STL", "build_stl"]


class STL(ParticleELBO):
    r"""The K-sample ELBO, gradient with the score term of :math:`\log q` removed.

    :param num_particles: K, draws per data point (averaged, not importance-weighted).
    :param max_plate_nesting: plates in the model.
    """

    name = "stl"
    stop_guide_params = True

    def surrogate_and_bound(self, p: Particles) -> tuple[torch.Tensor, torch.Tensor]:
        elbo = p.log_w.mean(0).sum() + p.global_  # () mean over particles, sum over points
        return elbo, elbo


@OBJECTIVES.register("stl")
def build_stl(cfg, vae) -> STL:
    """ELBO with the sticking-the-landing gradient (Roeder et al. 2017)."""
    if cfg.jit:
        raise ConfigError("objective.jit = true: no JIT for objective 'stl'; set it to false")
    require_reparameterized("stl", vae=vae)
    return STL(num_particles=cfg.num_particles)
