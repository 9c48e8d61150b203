r"""Exact log p(x), for the models that have one: closed forms and enumeration.

Each entry of :data:`EXACT_METHODS` is a function ``(vae, x) -> Tensor (B,) | None`` that returns
the exact per-point log-likelihood when it applies to ``vae`` (and ``None`` otherwise); both
methods of this module are registered here. :func:`exact_log_likelihood` returns the first
answer, used as ground truth in tests and reported by ``vaelab evaluate`` when available.

* :func:`linear_gaussian_log_likelihood`: probabilistic PCA / factor analysis in closed form;
* :func:`categorical_log_likelihood`: a categorical latent (``model.latent = "categorical"``) by
  summing over all :math:`K^N` joint states, registered when :math:`K^N \le`
  :data:`MAX_EXACT_STATES`; :func:`enumerated_elbo` is the exact (differentiable) ELBO of the
  same discrete model.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from vaelab.model.distributions import joint_states
from vaelab.model.latents import CategoricalLatent, GaussianLatent
from vaelab.model.likelihoods import NormalLikelihood
from vaelab.model.priors import LearnedNormalPrior, StandardNormalPrior

__all__ = [
    "EXACT_METHODS",
    "MAX_EXACT_STATES",
    "categorical_log_likelihood",
    "enumerated_elbo",
    "exact_log_likelihood",
    "linear_gaussian_log_likelihood",
    "log_joint_states",
    "register_exact",
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


# --------------------------------------------------------------------------------------------
# categorical latents: exact enumeration over the K^N states

#: largest K^N for which :func:`categorical_log_likelihood` is registered as the exact log p(x)
MAX_EXACT_STATES = 100_000


def log_joint_states(vae, x: Tensor, states: Tensor) -> Tensor:
    r""":math:`\log p(s) + \log p_θ(x_b \mid s)` for every state ``states (S, N, K)`` and point
    ``x (B, D)``: shape ``(S, B)``. Differentiable."""
    g = vae.generative
    log_prior = (states * g.prior.logits.log_softmax(-1)).sum((-2, -1))  # (S,)
    params = g.decoder(states.reshape(states.shape[0], -1)).unsqueeze(1)  # (S, 1, param_size)
    return log_prior.unsqueeze(-1) + g.likelihood(params).log_prob(x)  # (S, B)


def _state_chunk(vae, batch: int, max_memory_mb: float) -> int:
    width = vae.generative.likelihood.param_size + vae.generative.decoder.activations_per_row
    return max(1, int(max_memory_mb * 2**20 // (4 * 4 * max(1, batch) * width)))


@torch.no_grad()
def categorical_log_likelihood(
    vae, x: Tensor, batch_size: int = 100, max_memory_mb: float = 256.0
) -> Tensor:
    r"""Exact :math:`\log p_θ(x_b) = \mathrm{logsumexp}_{s} [\log p(s) + \log p_θ(x_b \mid s)]`
    over all :math:`K^N` states of a categorical latent, per row of ``x (B, D)``, streamed over
    chunks of states.

    Cost: :math:`K^N` decoder passes per chunk of points. Meant for :math:`K^N` up to
    :data:`MAX_EXACT_STATES`.

    :param vae: a :class:`~vaelab.vae.VAE` with a
        :class:`~vaelab.model.latents.CategoricalLatent`.
    :param x: data, ``(B, D)``.
    :param batch_size: data points per chunk.
    :param max_memory_mb: memory budget of one chunk of states (sets the states per chunk).
    :returns: ``(B,)`` exact log p(x).
    """
    latent = vae.latent
    out = []
    for start in range(0, x.shape[0], batch_size):
        xb = x[start : start + batch_size]  # (b, D)
        chunk = _state_chunk(vae, xb.shape[0], max_memory_mb)
        lse: Tensor | None = None
        for s0 in range(0, latent.num_states, chunk):
            states = joint_states(
                latent.num_variables, latent.num_classes, s0, min(s0 + chunk, latent.num_states),
                dtype=xb.dtype, device=xb.device,
            )  # (S', N, K)
            c = torch.logsumexp(log_joint_states(vae, xb, states), 0)  # (b,)
            lse = c if lse is None else torch.logaddexp(lse, c)
        assert lse is not None, "num_states >= 1"
        out.append(lse)
    return torch.cat(out)


def enumerated_elbo(vae, x: Tensor) -> Tensor:
    r"""Exact ELBO of the discrete model by summing over all states (differentiable), ``(B,)``:

    .. math:: \mathcal{L}(x) = \sum_{s} q_φ(s \mid x)
        \big[\log p(s) + \log p_θ(x \mid s) - \log q_φ(s \mid x)\big].

    For small latent spaces only (tests, ``K^N`` of a few thousand).
    """
    latent = vae.latent
    states = joint_states(latent.num_variables, latent.num_classes, dtype=x.dtype, device=x.device)
    log_q_n = vae.inference.logits(x).log_softmax(-1)  # (B, N, K)
    log_q = torch.einsum("snk,bnk->sb", states, log_q_n)  # (S, B)
    log_p = log_joint_states(vae, x, states)  # (S, B)
    return (log_q.exp() * (log_p - log_q)).sum(0)  # (B,)


@register_exact
def _exact_categorical(vae, x: Tensor) -> Tensor | None:
    """Exact log p(x) of a categorical-latent VAE with at most MAX_EXACT_STATES states."""
    latent = getattr(vae, "latent", None)
    if not isinstance(latent, CategoricalLatent) or latent.num_states > MAX_EXACT_STATES:
        return None
    return categorical_log_likelihood(vae, x)
