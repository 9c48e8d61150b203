r"""AIS without tracing: the log joint :math:`\log f_T(z) = \log p(z) + \log p_θ(x \mid z)` of a
vaelab VAE computed from its prior, decoder and likelihood directly, so the values (to float
rounding) and the draws are the traced :class:`~vaelab.inference.ais.LogJoint`'s.

Every leapfrog step of :func:`~vaelab.inference.ais.ais` evaluates the log joint and its
gradient in z; on the C·B rows of one batch (4 chains × 100 points in the ``iwae_static``
recipe's AIS) the Pyro trace of the model costs as much as the decoder itself.
``benchmarks/ais.py`` measures both against a hand-written torch HMC AIS with the same draws.

Example::

    lj = FusedLogJoint(vae, x, num_chains=16)
    r = ais(*vae.eval_pair(), x, num_chains=16, log_joint=lj)
"""

from __future__ import annotations

import torch
from torch.nn.functional import binary_cross_entropy_with_logits

from vaelab.inference.ais import AIS_BASE, LogJoint

__all__ = ["FusedLogJoint"]


class FusedLogJoint(LogJoint):
    """:class:`~vaelab.inference.ais.LogJoint` of ``vae`` on the batch ``x (B, D)`` whose model
    terms skip the trace, for the VAE's one continuous latent site ``"z"`` (any prior, decoder
    and likelihood; the Bernoulli one as ``binary_cross_entropy_with_logits``, equal to float
    rounding); other site sets use the traced terms. The base draw and the guide's
    ``q(z | x)`` (``base = "guide"``) come from the traced guide, once per batch.

    :param vae: a :class:`~vaelab.vae.VAE` with a continuous latent.
    :param x: the data batch, the ``args`` of :func:`~vaelab.inference.ais.ais`.
    """

    def __init__(self, vae, x: torch.Tensor, num_chains: int, base: str = AIS_BASE):
        if not vae.latent.continuous:
            raise ValueError("AIS needs a continuous latent")
        if len(getattr(vae, "sites", ["z"])) > 1:
            raise ValueError("FusedLogJoint scores one latent site 'z'; this VAE has "
                             f"{vae.sites}: use the traced LogJoint")
        model, guide = vae.eval_pair()
        super().__init__(model, guide, (x,), {}, num_chains, base, "z")
        self.vae, self.x = vae, x

    def _model_terms(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``log p(z), log p(x | z)``, each ``(C, B)``, differentiable in z."""
        if self.sites != ["z"]:
            return super()._model_terms(z)
        g = self.vae.generative
        log_prior = g.prior(None).log_prob(z)  # (C, B)
        p_x = g.likelihood(g.decoder(g.latent.decoder_input(z)))  # batch (C, B)
        if type(g.likelihood).__name__ == "BernoulliLikelihood":
            # Σ_d softplus(ℓ_d) − x_d ℓ_d in one kernel with a one-kernel backward, instead
            # of BernoulliImage's batched contraction (to float rounding the same value)
            logits = p_x.logits  # (C, B, D), the likelihood's clamp applied
            return log_prior, -binary_cross_entropy_with_logits(
                logits, self.x.expand_as(logits), reduction="none").sum(-1)
        return log_prior, p_x.log_prob(self.x)  # (C, B) each
