"""Exact log p(x), for the models that have one.

Each entry of :data:`EXACT_METHODS` is a function ``(vae, x) -> Tensor (B,) | None`` that returns
the exact per-point log-likelihood when it applies to ``vae`` (and ``None`` otherwise); modules
that know a closed form or an enumeration register one here. :func:`exact_log_likelihood` returns
the first answer, used as ground truth in tests and reported by ``vaelab evaluate`` when available.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

__all__ = [
    "EXACT_METHODS",
    "register_exact",
    "exact_log_likelihood",
    "linear_gaussian_log_likelihood",
]

ExactMethod = Callable[[torch.nn.Module, torch.Tensor], "torch.Tensor | None"]
EXACT_METHODS: list[ExactMethod] = []


def register_exact(fn: ExactMethod) -> ExactMethod:
    EXACT_METHODS.append(fn)
    return fn


@torch.no_grad()
def exact_log_likelihood(vae, x: torch.Tensor) -> torch.Tensor | None:
    """Exact ``log p(x_n)`` per row of ``x (B, D)``, or ``None`` when no method applies."""
    for method in EXACT_METHODS:
        out = method(vae, x)
        if out is not None:
            return out
    return None


def _linear_gaussian_parts(vae):
    """(W, b, prior loc, prior scale, noise scale) when ``vae`` is linear-Gaussian, else None."""
    from vaelab.model.latents import GaussianLatent
    from vaelab.model.likelihoods import NormalLikelihood
    from vaelab.model.priors import LearnedNormalPrior, StandardNormalPrior

    g = getattr(vae, "generative", None)
    if g is None or type(g.latent) is not GaussianLatent:
        return None
    layers = list(g.decoder.children())
    if len(layers) != 1 or type(layers[0]) is not torch.nn.Linear:
        return None
    if type(g.likelihood) is not NormalLikelihood:
        return None
    linear = layers[0]
    W = linear.weight  # (D, d)
    b = linear.bias if linear.bias is not None else W.new_zeros(W.shape[0])  # (D,)
    if type(g.prior) not in (StandardNormalPrior, LearnedNormalPrior):
        return None
    base = g.prior().base_dist  # Normal, batch (d,)
    sigma = g.likelihood.scale()  # () or (D,)
    return W, b, base.loc, base.scale, sigma


@register_exact
def linear_gaussian_log_likelihood(vae, x: torch.Tensor) -> torch.Tensor | None:
    r"""Closed-form log p(x) of a linear-Gaussian VAE (probabilistic PCA / factor analysis).

    Applies when the decoder is a single ``nn.Linear`` (``model.hidden_sizes = []``), the latent
    is ``gaussian``, the likelihood ``normal`` (fixed or learned scale, shared or per pixel), and
    the prior ``standard_normal`` or ``normal``:

    .. math::

        z \sim \mathcal N(μ, \operatorname{diag} s^2), \quad x \mid z \sim \mathcal N(Wz + b,
        \operatorname{diag} σ^2) \;\Rightarrow\;
        \log p(x) = \log \mathcal N\big(x;\ Wμ + b,\ (W S)(W S)^\top + \operatorname{diag} σ^2\big)

    evaluated in float64 through the low-rank-plus-diagonal covariance (Woodbury, O(D d²)).

    :param vae: a :class:`~vaelab.vae.VAE`.
    :param x: data, ``(B, D)``.
    :returns: ``(B,)`` float64 exact log p(x), or ``None`` when the model is not linear-Gaussian.

    References:
      1. M. E. Tipping, C. M. Bishop. *Probabilistic Principal Component Analysis*. JRSS B 1999.
    """
    parts = _linear_gaussian_parts(vae)
    if parts is None:
        return None
    W, b, mu, s, sigma = (t.detach().double() for t in parts)
    D = W.shape[0]
    loc = W @ mu + b  # (D,)
    cov_factor = W * s  # (D, d)
    cov_diag = (sigma**2).expand(D).contiguous()  # (D,)
    p_x = torch.distributions.LowRankMultivariateNormal(loc, cov_factor, cov_diag)
    return p_x.log_prob(x.double())  # (B,)
