r"""``disarm``: the DisARM estimator for binary latents (Dong, Mnih & Tucker 2020).

Same setting and antithetic pair as ``arm`` (:mod:`~vaelab.inference.objectives.arm`): a
categorical latent of 2 classes, Bernoulli logits :math:`α_n`, one :math:`u \sim U(0,1)^N` per
data point, :math:`b^{(1)} = \mathbb 1[u > σ(-α)]`, :math:`b^{(2)} = \mathbb 1[u < σ(α)]`.
DisARM integrates u out of ARM given the pair :math:`(b^{(1)}, b^{(2)})` (Dong et al. 2020,
eq. 5):

.. math::

    \nabla_{α_n} \mathbb{E}_{q}[f(b)] \approx \frac12 \big(f(b^{(1)}) - f(b^{(2)})\big)\,
        (-1)^{b^{(2)}_n}\, \mathbb 1\big[b^{(1)}_n \ne b^{(2)}_n\big]\, σ(|α_n|),

the conditional expectation of the ARM estimate, so it is unbiased and its variance is never
larger than ARM's (Rao-Blackwellization, per coordinate). It is zero for the variables where
the pair agrees. Decoder, prior and loss as in ``arm``.

References:
  1. Z. Dong, A. Mnih, G. Tucker. *DisARM: An Antithetic Gradient Estimator for Binary Latent
     Variables*. NeurIPS 2020.
  2. M. Yin, M. Zhou. *ARM: Augment-REINFORCE-Merge Gradient for Stochastic Binary Networks*.
     ICLR 2019.

Example::

    objective = build_objective(ObjectiveConfig(name="disarm"), vae)
    loss = objective.loss_and_grads(vae.model, vae.guide, x)
"""

from __future__ import annotations

import torch
from torch import Tensor

from vaelab.inference.objectives.arm import AntitheticELBO, check_binary
from vaelab.inference.objectives.registry import OBJECTIVES

__all__ = ["DisARM", "build_disarm", "disarm_grad"]


def disarm_grad(f1: Tensor, f2: Tensor, u: Tensor, b1: Tensor, b2: Tensor,
                alpha: Tensor) -> Tensor:
    r"""DisARM: :math:`\frac12 (f(b^{(1)}) - f(b^{(2)})) (-1)^{b^{(2)}} \mathbb 1[b^{(1)} \ne
    b^{(2)}] σ(|α|)`, ``f (B,)``, ``b, α (B, N)`` → ``(B, N)`` (u is not used)."""
    differ = (b1 != b2).to(alpha.dtype)  # (B, N)
    sign = 1.0 - 2.0 * b2  # (−1)^{b2}
    return 0.5 * (f1 - f2).unsqueeze(-1) * sign * differ * torch.sigmoid(alpha.abs())


class DisARM(AntitheticELBO):
    """DisARM (Dong et al. 2020), see the module docstring."""

    name = "disarm"
    logit_grad = staticmethod(disarm_grad)


@OBJECTIVES.register("disarm")
def build_disarm(cfg, vae) -> DisARM:
    """DisARM (Dong, Mnih & Tucker 2020) for binary latents (categorical, 2 classes)."""
    check_binary(cfg, vae, "disarm")
    return DisARM(num_particles=1)
