r"""``arm``: the Augment-REINFORCE-Merge (ARM) estimator for binary latents (Yin & Zhou 2019).

A categorical latent of K = 2 classes (``model.latent = {name = "categorical", num_classes =
2}``, ``guide.family = "categorical"``) is a vector of N Bernoulli variables
:math:`b_n = [z_n = e_2]` with logits :math:`α_n = \ell_{n2} - \ell_{n1}`. For one uniform vector
:math:`u \sim U(0, 1)^N` per data point, ARM evaluates the learning signal
:math:`f(b) = \log p_θ(x, b) - \log q_φ(b \mid x)` at an antithetic pair and estimates

.. math::

    \nabla_{α} \mathbb{E}_{q}[f(b)] \approx
        \big(f(b^{(1)}) - f(b^{(2)})\big)\,\big(u - \tfrac12\big), \qquad
    b^{(1)} = \mathbb 1[u > σ(-α)], \quad b^{(2)} = \mathbb 1[u < σ(α)]

(Yin & Zhou 2019, Theorem 1), unbiased; the gradient reaches the encoder through α. Both
:math:`b^{(1)}` and :math:`b^{(2)}` are marginally draws of :math:`q_φ(b \mid x)`, so the
decoder and prior get :math:`\frac12 \sum_i \nabla_θ \log p_θ(x, b^{(i)})` and the loss is
:math:`-\frac12 \big(f(b^{(1)}) + f(b^{(2)})\big)`, an unbiased estimate of the negative ELBO.
Any other latent is refused (ConfigError). ``disarm`` has the same inputs and never a larger
variance.

References:
  1. M. Yin, M. Zhou. *ARM: Augment-REINFORCE-Merge Gradient for Stochastic Binary Networks*.
     ICLR 2019.
  2. Z. Dong, A. Mnih, G. Tucker. *DisARM: An Antithetic Gradient Estimator for Binary Latent
     Variables*. NeurIPS 2020.

Example::

    objective = build_objective(ObjectiveConfig(name="arm"), vae)
    loss = objective.loss_and_grads(vae.model, vae.guide, x)
"""

from __future__ import annotations

import torch
from torch import Tensor

from vaelab.inference.objectives._score import (
    ScoreELBO,
    check_discrete,
    guide_logits,
    log_joint,
    log_q,
)
from vaelab.inference.objectives.registry import OBJECTIVES
from vaelab.registry import ConfigError

__all__ = ["ARM", "AntitheticELBO", "antithetic_pair", "arm_grad", "binary_logit", "build_arm",
           "check_binary", "one_hot_binary"]


def check_binary(cfg, vae, name: str) -> None:
    """Refuse (one line) anything but a categorical latent of 2 classes with the categorical
    guide."""
    check_discrete(cfg, vae, name)
    K = vae.latent.num_classes
    if K != 2:
        raise ConfigError(
            f"objective.name = {name!r} is for binary latents: it needs model.latent = "
            f"{{name = 'categorical', num_classes = 2}} (got num_classes = {K}); use "
            "'reinforce_loo', 'vimco' or 'relax' for more classes")


def binary_logit(logits: Tensor) -> Tensor:
    r""":math:`α = \ell_2 - \ell_1`, the Bernoulli logit of class 2, from ``logits (..., N, 2)``:
    ``(..., N)``."""
    return logits[..., 1] - logits[..., 0]


def antithetic_pair(alpha: Tensor, u: Tensor) -> tuple[Tensor, Tensor]:
    r""":math:`b^{(1)} = \mathbb 1[u > σ(-α)]`, :math:`b^{(2)} = \mathbb 1[u < σ(α)]` (0/1 floats,
    the shape of ``u``), each marginally Bernoulli(σ(α))."""
    return (u > torch.sigmoid(-alpha)).to(u.dtype), (u < torch.sigmoid(alpha)).to(u.dtype)


def one_hot_binary(b: Tensor) -> Tensor:
    """0/1 values ``(..., N)`` → one-hot categorical values ``(..., N, 2)`` (1 is class 2)."""
    return torch.stack([1.0 - b, b], dim=-1)


def arm_grad(f1: Tensor, f2: Tensor, u: Tensor, b1: Tensor, b2: Tensor, alpha: Tensor) -> Tensor:
    r"""ARM: :math:`(f(b^{(1)}) - f(b^{(2)}))(u - \frac12)`, ``f (B,)``, ``u (B, N)`` →
    ``(B, N)``."""
    return (f1 - f2).unsqueeze(-1) * (u - 0.5)


class AntitheticELBO(ScoreELBO):
    """One antithetic pair per data point; :attr:`logit_grad` turns it into ∇α (ARM here)."""

    name = "arm"
    #: (f1, f2, u, b1, b2, α) → the estimate of ∇_α E_q[f], ``(B, N)``
    logit_grad = staticmethod(arm_grad)

    def surrogate_and_bound(self, model, guide, args, kwargs) -> tuple[Tensor, Tensor]:
        q = guide_logits(guide, args, kwargs, self.name)
        if q.logits.shape[-1] != 2:
            raise ConfigError(f"objective.name = {self.name!r} is for binary latents (2 "
                              f"classes); the guide has {q.logits.shape[-1]}")
        alpha = binary_logit(q.logits)  # (B, N), with the encoder's graph
        u = torch.rand_like(alpha.detach())  # (B, N)
        b1, b2 = antithetic_pair(alpha.detach(), u)  # (B, N) each
        z = one_hot_binary(torch.stack([b1, b2]))  # (2, B, N, 2)
        f = log_joint(model, z, args, kwargs) - log_q(z, q.logits.detach(), q)  # (2, B)
        fd = f.detach()
        g = self.logit_grad(fd[0], fd[1], u, b1, b2, alpha.detach())  # (B, N)
        bound = f.mean(0).sum()  # (): decoder and prior gradients
        return bound + (g * alpha).sum(), bound


class ARM(AntitheticELBO):
    """ARM (Yin & Zhou 2019), see the module docstring."""


@OBJECTIVES.register("arm")
def build_arm(cfg, vae) -> ARM:
    """ARM (Yin & Zhou 2019) for binary latents (categorical, 2 classes)."""
    check_binary(cfg, vae, "arm")
    return ARM(num_particles=1)
