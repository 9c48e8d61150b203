r"""``relax``: RELAX (Grathwohl et al. 2018) for categorical latents, with a learned control
variate on the relaxed sample.

For the unrelaxed categorical guide (``guide.family = "categorical"``) with normalized logits
:math:`θ = \log\mathrm{softmax}(\ell(x))` (per variable, ``(N, K)``), one draw per data point:

.. math::

    z = θ - \log(-\log u), \qquad b = H(z) = \mathrm{one\_hot}(\arg\max_k z_k), \qquad
    \tilde z \sim p(z \mid b),

:math:`\tilde z` the Gumbels conditioned on the argmax b (fresh uniforms v:
:math:`\tilde z_b = -\log(-\log v_b)`, :math:`\tilde z_k = -\log(-\log v_k\, e^{-θ_k} -
\log v_b)` for k ≠ b; Tucker et al. 2017, App. C), and the learning signal
:math:`f(b) = \log p_θ(x, b) - \log q_φ(b \mid x)`. The gradient with respect to the logits is

.. math::

    \hat g_\ell = \big[f(b) - c_ρ(\tilde z)\big]\, \nabla_\ell \log q(b)
        + \nabla_\ell c_ρ(z) - \nabla_\ell c_ρ(\tilde z), \qquad
    c_ρ(z) = f(σ_λ(z)) + r_ρ(σ_λ(z)),

unbiased for any differentiable c (Grathwohl et al. 2018, eq. 8), where
:math:`σ_λ(z) = \mathrm{softmax}(z / λ)` is the relaxed sample, f at a simplex point is the
model scored there (decoder reading the soft vector, :math:`\log p(s) - \log q(s)` extended
linearly: :math:`\sum s \log π - \sum s\, θ`), and :math:`r_ρ` a network of the relaxed sample. It
reaches the encoder as :math:`\hat g_\ell^\top \partial \ell / \partial φ`; the decoder and
prior get :math:`\nabla_θ \log p_θ(x, b)`; the loss is :math:`-f(b)`.

:math:`ρ` is trained, at each step, by the same optimizer on the single-sample variance proxy
:math:`\sum_{n} \lVert \hat g_\ell(x_n) \rVert^2` (its gradient in ρ by double
backpropagation; :math:`\mathbb E[\hat g]` does not depend on ρ, so this is the gradient of the
variance; Grathwohl et al. 2018, eq. 5), per data point on the logits rather than on all encoder
weights. Only ρ receives this gradient.

**Where ρ lives.** :math:`r_ρ` is the MLP of the guide family's
:class:`~vaelab.guide.relaxed.Baseline` (``vae.inference.posterior.baseline.net``, input
N K, widths ``guide.family.baseline_hidden_sizes``), the network that ``graph`` uses as its NVIL
baseline: it is built with every categorical-family VAE, so the guide's ``pyro.module``
registers it, the optimizer (over ``vae.parameters()``) steps it, checkpoints hold it, and a
checkpoint loads into a VAE built from the config alone (``vaelab evaluate``) — no new module,
no change to seeded initializations or checkpoint keys. One objective trains it per run; its
running mean ``center`` is not used here.

.. note:: The paper also learns the temperature λ and a scale η of :math:`f(σ_λ(z))` by the
    variance objective; here :math:`η = 1` and :math:`λ` = ``model.latent.temperature`` (the
    relaxation temperature of the categorical latent, unused otherwise by this guide family)
    are fixed. REBAR (Tucker et al. 2017) is the case :math:`r_ρ = 0` with learned η, λ: not
    provided.

References:
  1. W. Grathwohl, D. Choi, Y. Wu, G. Roeder, D. Duvenaud. *Backpropagation through the Void:
     Optimizing Control Variates for Black-Box Gradient Estimation*. ICLR 2018.
  2. G. Tucker, A. Mnih, C. J. Maddison, D. Lawson, J. Sohl-Dickstein. *REBAR: Low-Variance,
     Unbiased Gradient Estimates for Discrete Latent Variable Models*. NeurIPS 2017.

Example::

    objective = build_objective(ObjectiveConfig(name="relax"), vae)
    loss = objective.loss_and_grads(vae.model, vae.guide, x)  # −Σ_n f(b_n)
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vaelab.inference.objectives._score import (
    GuideLogits,
    ScoreELBO,
    check_discrete,
    guide_logits,
    log_joint,
    log_q,
    sample_one_hot,
)
from vaelab.inference.objectives.registry import OBJECTIVES
from vaelab.registry import ConfigError

__all__ = ["RELAX", "build_relax", "conditional_gumbel", "uniform"]


def uniform(like: Tensor) -> Tensor:
    """U(0, 1) noise the shape of ``like``, kept off 0 and 1 (finite Gumbels)."""
    eps = torch.finfo(like.dtype).eps
    return torch.rand_like(like).clamp(torch.finfo(like.dtype).tiny, 1.0 - eps)


def conditional_gumbel(theta: Tensor, b: Tensor, v: Tensor) -> Tensor:
    r""":math:`\tilde z \sim p(z \mid b)`: Gumbels with locations ``theta (..., K)`` (normalized
    log-probabilities) conditioned on their argmax being the one-hot ``b``, from uniforms ``v``;
    reparameterized in θ given b (module docstring)."""
    log_v = torch.log(v)  # (..., K), < 0
    log_neg_log_vb = torch.log(-(log_v * b).sum(-1, keepdim=True))  # (..., 1): log(−log v_b)
    top = -log_neg_log_vb  # z̃_b, Gumbel(0) (the max of Gumbel(θ) with Σ e^θ = 1)
    # z̃_k = −log(e^{−θ_k}(−log v_k) + (−log v_b)), in log space
    others = -torch.logaddexp(torch.log(-log_v) - theta, log_neg_log_vb)
    return torch.where(b > 0, top, others)  # (..., K)


class RELAX(ScoreELBO):
    """RELAX with :math:`c_ρ(z) = f(σ_λ(z)) + r_ρ(σ_λ(z))` (module docstring).

    :param control: :math:`r_ρ`, a module ``(..., N K) → (..., 1)`` whose parameters are
        trained by the variance proxy.
    :param temperature: λ of the relaxed sample :math:`\\mathrm{softmax}(z / λ)`.
    """

    name = "relax"

    def __init__(self, control: nn.Module, temperature: float):
        super().__init__(num_particles=1)
        self.control, self.temperature = control, temperature

    def control_variate(self, model, s: Tensor, theta: Tensor, q: GuideLogits, args, kwargs
                        ) -> Tensor:
        r""":math:`c_ρ` at relaxed samples ``s (M, B, N, K)``: ``(M, B)``."""
        f_s = log_joint(model, s, args, kwargs, soft=True) - log_q(s, theta, q)  # (M, B)
        return f_s + self.control(s.flatten(-2)).squeeze(-1)  # (M, B)

    def logit_grad(self, model, q: GuideLogits, args, kwargs) -> tuple[Tensor, Tensor]:
        r"""(:math:`\hat g_\ell` ``(B, N, K)`` with ρ's graph, f(b) ``(B,)`` with the decoder's)."""
        ell = q.logits.detach().requires_grad_()  # (B, N, K)
        theta = ell.log_softmax(-1)
        z = theta - torch.log(-torch.log(uniform(theta)))  # (B, N, K)
        b = F.one_hot(z.argmax(-1), theta.shape[-1]).to(theta.dtype)  # (B, N, K)
        z_tilde = conditional_gumbel(theta, b, uniform(theta))  # (B, N, K)
        s = torch.softmax(torch.stack([z, z_tilde]) / self.temperature, -1)  # (2, B, N, K)
        c = self.control_variate(model, s, theta, q, args, kwargs)  # (2, B)
        dc_z, dc_tilde = (torch.autograd.grad(c[i].sum(), ell, create_graph=True)[0]
                          for i in (0, 1))  # (B, N, K) each
        f_b = (log_joint(model, b.unsqueeze(0), args, kwargs)
               - log_q(b.unsqueeze(0), theta.detach(), q))[0]  # (B,)
        score = b - theta.detach().exp()  # ∇_ℓ log q(b), (B, N, K)
        g = (f_b.detach() - c[1]).unsqueeze(-1).unsqueeze(-1) * score + dc_z - dc_tilde
        return g, f_b

    def surrogate_and_bound(self, model, guide, args, kwargs) -> tuple[Tensor, Tensor]:
        q = guide_logits(guide, args, kwargs, self.name)
        if not torch.is_grad_enabled():  # the value only: f at one draw b ~ q
            b = sample_one_hot(q.logits, 1)  # (1, B, N, K)
            f_b = log_joint(model, b, args, kwargs) - log_q(b, q.logits, q)  # (1, B)
            return f_b.sum(), f_b.sum()
        g, f_b = self.logit_grad(model, q, args, kwargs)
        params = [p for p in self.control.parameters() if p.requires_grad]
        variance = g.pow(2).sum()  # the single-sample variance proxy Σ_n ‖ĝ_n‖²
        var_grads = torch.autograd.grad(variance, params, allow_unused=True)
        descend = sum(((vg.detach() * p).sum() for vg, p in zip(var_grads, params)
                       if vg is not None), g.new_zeros(()))
        # encoder: ĝ through the logits; decoder and prior: ∇ log p(x, b); ρ: −∇ variance
        surrogate = f_b.sum() + (g.detach() * q.logits).sum() - descend
        return surrogate, f_b.sum()


@OBJECTIVES.register("relax")
def build_relax(cfg, vae) -> RELAX:
    """RELAX (Grathwohl et al. 2018) with a learned control variate (the guide family's
    baseline network) on the relaxed sample; categorical latents."""
    check_discrete(cfg, vae, "relax")
    baseline = getattr(vae.inference.posterior, "baseline", None)
    if baseline is None:
        raise ConfigError("objective.name = 'relax' needs guide.family = 'categorical' (its "
                          "baseline network is RELAX's control variate)")
    if cfg.num_particles != 1:
        raise ConfigError(f"objective.num_particles = {cfg.num_particles}: 'relax' is a "
                          "single-sample estimator; set objective.num_particles = 1")
    return RELAX(baseline.net, temperature=vae.latent.opts.temperature)
