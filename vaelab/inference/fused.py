r"""Fused log importance weights for the common VAE: the same draws and the same numbers as the
Pyro path (:func:`vaelab.inference.importance.log_weights`), without tracing.

For a diagonal normal guide, any prior, any decoder and a Bernoulli, normal or discretized
logistic likelihood, a chunk of k particles for a batch ``x (B, D)`` is

.. math::

    z = μ_φ(x) + σ_φ(x) ⊙ ε, \quad ε \sim \mathcal N(0, I) \;(k, B, d), \qquad
    \log w = \log p(z) + \log p_θ(x \mid z) - \log q_φ(z \mid x)

with ε drawn in the same shape and order as Pyro's vectorized particle plate draws it, so the
two paths see the same z for the same RNG state. For the Bernoulli likelihood behind an affine
output layer ℓ = W h + b (an MLP decoder), the data term is contracted through the hidden layer,

.. math:: \sum_d x_d ℓ_d = h \cdot (W^\top x) + b \cdot x,

an ``(k, B, H)`` product instead of a second pass over the ``(k, B, D)`` logits, and the bias is
added in place rather than copied into the GEMM output; only the softplus reads the logits.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn
from torch.nn.functional import softplus

__all__ = ["FUSED_LIKELIHOODS", "fused_log_weights"]

#: the likelihoods with a fused path (class names of :mod:`vaelab.model.likelihoods`)
FUSED_LIKELIHOODS = ("BernoulliLikelihood", "NormalLikelihood", "DiscretizedLogisticLikelihood")


def fused_log_weights(vae) -> Callable[[Tensor, int], Tensor] | None:
    """``fn(x (B, D), k) → log w (k, B)`` for ``vae``'s own guide as the proposal, or ``None``
    where the fused path does not apply (a discrete latent, a guide family other than the
    diagonal normal, a guide with extra terms, another likelihood)."""
    from vaelab.guide.posteriors import NormalPosterior

    g, q = vae.generative, vae.inference
    if (not g.latent.continuous or type(q.posterior) is not NormalPosterior
            or getattr(q.posterior, "guide_terms", None) is not None
            or type(g.likelihood).__name__ not in FUSED_LIKELIHOODS):
        return None
    bernoulli_mlp = (type(g.likelihood).__name__ == "BernoulliLikelihood"
                     and isinstance(g.decoder, nn.Sequential)
                     and isinstance(g.decoder[-1], nn.Linear) and g.decoder[-1].bias is not None)

    @torch.no_grad()
    def fn(x: Tensor, k: int) -> Tensor:
        loc, scale = q.posterior.loc_scale(q.encode(x))  # (B, d) each
        q_z = torch.distributions.Normal(loc, scale, validate_args=False)
        z = q_z.rsample((k,))  # (k, B, d): Pyro's particle plate draws ε of this shape
        log_w = g.prior(None).log_prob(z) - q_z.log_prob(z).sum(-1)  # (k, B)
        u = g.latent.decoder_input(z)  # (k, B, d)
        if bernoulli_mlp:
            return log_w + _bernoulli_through_last_layer(g.decoder, u, x)
        return log_w + g.likelihood(g.decoder(u)).log_prob(x)  # (k, B)

    return fn


def _bernoulli_through_last_layer(decoder: nn.Sequential, u: Tensor, x: Tensor) -> Tensor:
    r""":math:`\sum_d x_d ℓ_d - \mathrm{softplus}(ℓ_d)` with ℓ = W h + b, ``(k, B)``."""
    *body, last = decoder
    h = u
    for layer in body:
        h = layer(h)  # (k, B, H) after the last hidden layer
    assert isinstance(last, nn.Linear) and last.bias is not None  # fused_log_weights checked
    W, b = last.weight, last.bias  # (D, H), (D,)
    logits = torch.matmul(h, W.t())  # (k, B, D), no bias copy
    logits.add_(b)
    x_dot_logits = (h * (x @ W)).sum(-1) + x @ b  # (k, B): h·(Wᵀx) + b·x
    return x_dot_logits - softplus(logits).sum(-1)
