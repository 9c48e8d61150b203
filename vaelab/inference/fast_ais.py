r"""AIS without tracing: the log joint :math:`\log f_T(z) = \log p(z) + \log p_θ(x \mid z)` of a
vaelab VAE computed from its prior, decoder and likelihood directly, so the values (to float
rounding) and the draws are the traced :class:`~vaelab.inference.ais.LogJoint`'s.

Every leapfrog step of :func:`~vaelab.inference.ais.ais` evaluates the log joint and its
gradient in z; on the C·B rows of one batch (4 chains × 100 points in the ``iwae_static``
recipe's AIS) the Pyro trace of the model costs as much as the decoder itself.
``benchmarks/ais.py`` measures both against a hand-written torch HMC AIS with the same draws.

With L Gaussian layers (``model.layers``) z is the layers' values concatenated bottom first,
:math:`z = [z_1, \dots, z_L]` (the traced ``LogJoint``'s layout: its sites by name, z_1 … z_L),
and

.. math:: \log f_T(z) = \log p(z_L) + \sum_{l=1}^{L-1} \log \mathcal N\big(z_l; μ_l(z_{l+1}),
    σ_l(z_{l+1})^2\big) + \log p_θ(x \mid z_1 [, \dots, z_L]),

from the guide (``base = "guide"``) :math:`\log f_0(z) = \log q(z_{1:L} \mid x)` by the guide's
own walk with the values given (:mod:`vaelab.inference.fused_hierarchy`; what it reads of x alone
computed once per batch).

Example::

    lj = FusedLogJoint(vae, x, num_chains=16)
    r = ais(*vae.eval_pair(), x, num_chains=16, log_joint=lj)
"""

from __future__ import annotations

import torch
from torch.nn.functional import binary_cross_entropy_with_logits

from vaelab.inference.ais import AIS_BASE, LogJoint, _Terms
from vaelab.inference.fused_hierarchy import (
    covered,
    diagonal_normal,
    encode_guide,
    guide_log_q,
    log_prior,
    normal_score,
    prior_density,
)

__all__ = ["FusedLogJoint"]


class FusedLogJoint(LogJoint):
    """:class:`~vaelab.inference.ais.LogJoint` of ``vae`` on the batch ``x (B, D)`` whose model
    terms skip the trace: for the VAE's one continuous latent site ``"z"`` (any prior, decoder
    and likelihood; the Bernoulli one as ``binary_cross_entropy_with_logits``, equal to float
    rounding), and for several Gaussian layers that
    :func:`~vaelab.inference.fused_hierarchy.covered` accepts (z = [z_1, …, z_L]; from the
    guide, its log q too); other models use the traced terms. The (top) prior is built once
    per batch, and a diagonal normal one's gradient is taken in closed form. The base draw
    and the one-site guide's ``q(z | x)`` (``base = "guide"``) come from the traced guide,
    once per batch.

    :param vae: a :class:`~vaelab.vae.VAE` with a continuous latent.
    :param x: the data batch, the ``args`` of :func:`~vaelab.inference.ais.ais`.
    """

    def __init__(self, vae, x: torch.Tensor, num_chains: int, base: str = AIS_BASE):
        if not vae.latent.continuous:
            raise ValueError("AIS needs a continuous latent")
        sites = list(getattr(vae, "sites", ["z"]))
        model, guide = vae.eval_pair()
        super().__init__(model, guide, (x,), {}, num_chains, base,
                         sites if len(sites) > 1 else "z")
        self.vae, self.x = vae, x
        self.layered = len(sites) > 1 and covered(vae)
        self.fused = self.layered or self.sites == ["z"]  # else the traced terms
        g, q = vae.generative, vae.inference
        if self.layered:
            self.widths = list(g.latent_dims)  # the traced layout: z_1 … z_L, bottom first
        with torch.no_grad():
            # log p(z) (of z_L with layers) decided once per batch: a learned prior's mixture
            # (VampPrior's pseudo-input encoding) is not recomputed at every leapfrog step
            p_top = g.prior(None) if self.fused else None
            self.log_p_top = None if p_top is None else prior_density(p_top)
            self.guide_enc = (encode_guide(q, q.tx(x)) if self.layered and base == "guide"
                              else None)
        normal = None if p_top is None or self.layered else diagonal_normal(p_top)
        #: ``z → (log p(z), ∇ log p(z))`` in closed form for one site with a diagonal normal
        #: prior (no backward pass through the prior), else ``None``
        self.prior_score = None if normal is None else normal_score(*normal)

    def __call__(self, z: torch.Tensor) -> _Terms:
        """Both ends and their gradients at ``z (C, B, d)`` in one backward pass: each term
        reads its own leaf copy of z, so one ``autograd.grad`` of their sum returns each term's
        gradient separately (the traced :class:`LogJoint` runs one backward per term); a
        diagonal normal prior's gradient in closed form."""
        if not self.fused:
            return super().__call__(z)
        with torch.enable_grad():
            z_lik = z.detach().requires_grad_(True)
            log_lik = self._log_lik_at(z_lik)
            terms, leaves = [log_lik], [z_lik]
            if self.prior_score is None:
                leaves.append(z.detach().requires_grad_(True))
                terms.append(self._log_prior(leaves[-1]))
            if self.base == "guide":
                leaves.append(z.detach().requires_grad_(True))
                terms.append(self.q_z.log_prob(leaves[-1]) if self.q_z is not None
                             else self._guide_log_q(leaves[-1]))  # (C, B)
            grads = torch.autograd.grad(torch.stack([t.sum() for t in terms]).sum(), leaves)
        if self.prior_score is None:
            log_prior, grad_prior = terms[1].detach(), grads[1]
        else:
            log_prior, grad_prior = self.prior_score(z)
        log_fT, grad_fT = log_prior + log_lik.detach(), grad_prior + grads[0]
        if self.base == "guide":
            return _Terms(terms[-1].detach(), log_fT, grads[-1], grad_fT)
        return _Terms(log_prior, log_fT, grad_prior, grad_fT)

    def _log_prior(self, z: torch.Tensor) -> torch.Tensor:
        """log p(z) ``(C, B)`` (with layers: the top prior and every conditional)."""
        assert self.log_p_top is not None
        if self.layered:
            return log_prior(self.vae, self._layers(z), self.log_p_top)
        return self.log_p_top(z)

    def _log_lik_at(self, z: torch.Tensor) -> torch.Tensor:
        """log p(x | z) ``(C, B)`` at the joined ``z``, differentiable in z."""
        g = self.vae.generative
        if self.layered:
            return self._log_lik(g.decoder(g.decoder_input(self._layers(z))))
        return self._log_lik(g.decoder(g.latent.decoder_input(z)))

    def _log_lik(self, params: torch.Tensor) -> torch.Tensor:
        """log p(x | z) ``(C, B)`` at the decoder's output ``params (C, B, ·)``."""
        g = self.vae.generative
        p_x = g.likelihood(params)  # batch (C, B)
        if type(g.likelihood).__name__ == "BernoulliLikelihood":
            # Σ_d softplus(ℓ_d) − x_d ℓ_d in one kernel with a one-kernel backward, instead
            # of BernoulliImage's batched contraction (to float rounding the same value)
            logits = p_x.logits  # (C, B, D), the likelihood's clamp applied
            return -binary_cross_entropy_with_logits(
                logits, self.x.expand_as(logits), reduction="none").sum(-1)
        return p_x.log_prob(self.x)  # (C, B)

    def _guide_log_q(self, z: torch.Tensor) -> torch.Tensor:
        """log q(z_1, …, z_L | x) ``(C, B)`` by the guide's walk, differentiable in z."""
        if not self.layered or self.guide_enc is None:
            return super()._guide_log_q(z)
        return guide_log_q(self.vae, self.guide_enc, self._layers(z))

    def _layers(self, z: torch.Tensor) -> list[torch.Tensor]:
        """``[z_1, …, z_L]`` of the joined z, each ``(C, B, d_l)`` and contiguous (a strided
        slice makes each linear layer a slower matmul and its backward another copy)."""
        return [v.contiguous() for v in z.split(self.widths, -1)]

