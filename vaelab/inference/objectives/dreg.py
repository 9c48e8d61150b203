r"""``iwae_dreg``: IWAE_K with doubly reparameterized gradients (DReG).

The bound is IWAE_K (see :mod:`~vaelab.inference.objectives.iwae`); only the encoder's gradient
estimator changes. Writing :math:`z_{kn} = z_φ(ε_{kn}, x_n)` and
:math:`\tilde w_{kn} = w_{kn} / \sum_j w_{jn}`,

.. math::

    \nabla_θ \mathcal{L}_K &= \mathbb{E}\Big[\sum_k \tilde w_{kn}\,
        \nabla_θ \log p_θ(x_n, z_{kn})\Big] \qquad \text{(as IWAE)}

    \nabla_φ \mathcal{L}_K &= \mathbb{E}\Big[\sum_k \tilde w_{kn}^{\,2}\,
        \frac{\partial \log w_{kn}}{\partial z_{kn}}
        \frac{\partial z_{kn}}{\partial φ}\Big],
    \qquad \log w_{kn} = \log p_θ(x_n, z_{kn}) - \log q_{\bar φ}(z_{kn} \mid x_n)

where :math:`\bar φ` is φ with its gradient stopped: the score term
:math:`-\nabla_φ \log q_φ(z)` of the IWAE estimator is replaced by its reparameterized
expectation, which yields the squared weights (Tucker et al. 2019, eq. 6). The encoder
gradient's SNR no longer falls like :math:`1/\sqrt{K}`, and it is exactly zero when
q = p(z | x).

Implementation: one forward pass gives :math:`\log w` with :math:`\log q_{\bar φ}`; the surrogate
:math:`\sum_{k,n} \mathrm{sg}(\tilde w_{kn}) \log w_{kn}` has the IWAE gradient for θ, and a
gradient hook on each latent sample :math:`z_{kn}` multiplies the gradient reaching it by
:math:`\mathrm{sg}(\tilde w_{kn})`, turning the path term into :math:`\tilde w^2`. Parameters
reached without passing through z (a prior that shares the encoder, such as the VampPrior) keep
the IWAE weight :math:`\tilde w`, which is what the derivation gives for them.

.. note:: The guide family must let its parameters be detached (``Normal``, ``StudentT`` and other
    tensor-parameterized families; see
    :func:`~vaelab.inference.objectives._particles.stop_gradient_params`). Global sites (outside
    the data plate) get the path-only (STL) gradient of their one-sample ELBO term. No JIT:
    tensor hooks are not recorded by ``torch.jit.trace``. ``objective.beta`` must be 1 (a
    warm-up β < 1 tempers the weights, as for ``iwae``).

References:
  1. G. Tucker, D. Lawson, S. Gu, C. Maddison. *Doubly Reparameterized Gradient Estimators for
     Monte Carlo Objectives*. ICLR 2019.
  2. Y. Burda, R. Grosse, R. Salakhutdinov. *Importance Weighted Autoencoders*. ICLR 2016.

Example::

    objective = build_objective(ObjectiveConfig(name="iwae_dreg", num_particles=50), vae)
"""

from __future__ import annotations

import torch

from vaelab.inference.objectives._particles import ParticleELBO, Particles
from vaelab.inference.objectives.iwae import check_iw_config, iwae_bound
from vaelab.inference.objectives.registry import OBJECTIVES

__all__ = ["IWAEDReG", "build_iwae_dreg"]


class IWAEDReG(ParticleELBO):
    r"""IWAE_K with the doubly reparameterized encoder gradient.

    :param num_particles: K.
    :param max_plate_nesting: plates in the model.
    """

    name = "iwae_dreg"
    stop_guide_params = True

    def surrogate_and_bound(self, p: Particles) -> tuple[torch.Tensor, torch.Tensor]:
        log_w = p.log_w  # (K, B), log q with detached guide parameters
        bound = iwae_bound(log_w).sum() + p.global_  # () same value as IWAE
        if not log_w.requires_grad:
            return bound, bound
        w_norm = torch.softmax(log_w.detach(), dim=0)  # (K, B) normalized weights w̃
        for z in p.local_values:  # (K, B, *event)
            if z.requires_grad:
                extra = z.dim() - w_norm.dim()
                scale = w_norm.reshape(*w_norm.shape, *([1] * extra))  # (K, B, 1, ...)
                z.register_hook(lambda g, scale=scale: g * scale)
        surrogate = (w_norm * log_w).sum() + p.global_
        return surrogate, bound


@OBJECTIVES.register("iwae_dreg")
def build_iwae_dreg(cfg, vae) -> IWAEDReG:
    """IWAE_K with doubly reparameterized gradients (Tucker et al. 2019)."""
    check_iw_config(cfg, vae, "iwae_dreg")
    return IWAEDReG(num_particles=cfg.num_particles)
