r"""Discrete latents: N categorical variables of K classes each (``model.latent = "categorical"``).

.. math::

    z = (z_1, \dots, z_N), \qquad z_n \in \{e_1, \dots, e_K\} \subset \{0, 1\}^K, \qquad
    p(z) = \prod_{n=1}^{N} \mathrm{Cat}(z_n; \mathrm{softmax}(\pi_n)),

with uniform (:math:`\pi = 0`) or learned prior logits :math:`\pi \in \mathbb{R}^{N \times K}`, and
a decoder that reads the N one-hot vectors flattened to :math:`N K` inputs. The latent has event
shape ``(N, K)``. How a sample reaches the decoder depends on the guide family
(:mod:`vaelab.guide.relaxed`), which sets :attr:`CategoricalLatent.mode` when the VAE is built:

=====================  ===================================  ====================================
``mode``               value of the ``"z"`` site             decoder input
=====================  ===================================  ====================================
``"soft"``             log-space Concrete sample y           :math:`\exp(y)` (a simplex point)
``"straight_through"`` log-space Concrete sample y           one-hot forward, soft gradient
``"one_hot"``          one-hot sample (REINFORCE, enum)      the sample itself
=====================  ===================================  ====================================

Whatever the training relaxation, the *discrete* model is what gets evaluated: :meth:`eval_pair`
returns a model/guide pair with hard one-hot latents (:class:`CategoricalProduct` prior and
posterior, the guide's logits), so importance sampling gives the exact-KL ELBO and log p(x) of the
discrete model; :func:`exact_log_likelihood` sums over all :math:`K^N` states when there are at
most :data:`MAX_EXACT_STATES` (registered with :func:`vaelab.inference.exact.register_exact`);
:func:`category_usage` reports how many classes the posterior uses.

Config (the prior of a categorical latent is ``model.prior = "categorical"``; uniform or learned
logits and the temperature schedule are options of the latent)::

    [model]
    latent = {name = "categorical", num_variables = 20, num_classes = 10, prior = "uniform",
              temperature = 1.0, temperature_min = 0.5, anneal_rate = 1e-4, anneal_every = 500}
    prior = "categorical"

References:
  1. E. Jang, S. Gu, B. Poole. *Categorical Reparameterization with Gumbel-Softmax*. ICLR 2017.
  2. C. J. Maddison, A. Mnih, Y. W. Teh. *The Concrete Distribution: A Continuous Relaxation of
     Discrete Random Variables*. ICLR 2017.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import pyro
import torch
from pydantic import Field, model_validator
from pyro.distributions.torch_distribution import TorchDistribution
from torch import Tensor, nn
from torch.distributions import constraints
from torch.distributions.utils import lazy_property

from vaelab.inference.exact import register_exact
from vaelab.model.distributions import ExpRelaxedCategorical
from vaelab.model.generative import scaled
from vaelab.model.latents import LATENTS, Latent
from vaelab.model.networks import register_module
from vaelab.model.priors import PRIORS, Prior
from vaelab.registry import Options

__all__ = [
    "MAX_EXACT_STATES",
    "CategoricalLatent",
    "CategoricalOptions",
    "CategoricalPrior",
    "CategoricalProduct",
    "CategoryUsage",
    "category_usage",
    "enumerated_elbo",
    "exact_log_likelihood",
    "hard_pair",
    "joint_states",
    "log_joint_states",
]

#: largest K^N for which :func:`exact_log_likelihood` is registered as the exact log p(x)
MAX_EXACT_STATES = 100_000


# --------------------------------------------------------------------------------------------
# N independent one-hot categoricals as one event


class CategoricalProduct(TorchDistribution):
    r"""N independent one-hot categoricals of K classes as one event of shape ``(N, K)``.

    .. math:: \log q(z) = \sum_{n=1}^{N} \sum_{k=1}^{K} z_{nk} \log \mathrm{softmax}(\ell_n)_k

    Unlike ``OneHotCategorical(logits).to_event(1)``, it enumerates its *joint* support: the
    :math:`S = K^N` one-hot configurations, in the order of ``itertools.product(range(K),
    repeat=N)`` (variable 1 most significant), so :class:`~pyro.infer.TraceEnum_ELBO` can sum
    over all states of one ``"z"`` site. Not reparameterizable (score-function gradients).

    :param logits: unnormalized log-probabilities :math:`\ell`, shape ``batch_shape + (N, K)``.
    """

    arg_constraints = {"logits": constraints.independent(constraints.real, 2)}
    support = constraints.independent(constraints.one_hot, 1)
    has_enumerate_support = True
    has_rsample = False

    def __init__(self, logits: Tensor, validate_args=None):
        if logits.dim() < 2:
            raise ValueError(f"logits must have shape (..., N, K), got {tuple(logits.shape)}")
        self.logits = logits - logits.logsumexp(-1, keepdim=True)  # (..., N, K), normalized
        super().__init__(logits.shape[:-2], logits.shape[-2:], validate_args=validate_args)

    @property
    def num_states(self) -> int:
        """:math:`K^N`, the number of joint states."""
        N, K = self.event_shape
        return K**N

    @lazy_property
    def probs(self) -> Tensor:
        return self.logits.exp()  # (..., N, K)

    @property
    def mean(self) -> Tensor:
        return self.probs

    def expand(self, batch_shape, _instance=None):
        new = self._get_checked_instance(CategoricalProduct, _instance)
        batch_shape = torch.Size(batch_shape)
        new.logits = self.logits.expand(batch_shape + self.event_shape)
        super(CategoricalProduct, new).__init__(batch_shape, self.event_shape, validate_args=False)
        new._validate_args = self._validate_args
        return new

    def sample(self, sample_shape=torch.Size()) -> Tensor:
        with torch.no_grad():
            index = torch.distributions.Categorical(logits=self.logits).sample(sample_shape)
            return nn.functional.one_hot(index, self.event_shape[-1]).to(self.logits.dtype)

    def log_prob(self, value: Tensor) -> Tensor:
        if self._validate_args:
            self._validate_sample(value)
        return (value * self.logits).sum((-2, -1))  # (..., *batch)

    def entropy(self) -> Tensor:
        return -(self.probs * self.logits).sum((-2, -1))

    def enumerate_support(self, expand: bool = True) -> Tensor:
        N, K = self.event_shape
        states = joint_states(N, K, dtype=self.logits.dtype, device=self.logits.device)  # (S, N, K)
        states = states.reshape((-1,) + (1,) * len(self.batch_shape) + (N, K))
        if expand:
            states = states.expand((-1,) + self.batch_shape + (N, K))
        return states


def joint_states(
    num_variables: int,
    num_classes: int,
    start: int = 0,
    stop: int | None = None,
    *,
    dtype: torch.dtype | None = None,
    device: torch.device | str | None = None,
) -> Tensor:
    r"""One-hot joint states ``start .. stop-1`` of N variables with K classes, ``(S, N, K)``.

    State :math:`s` has class :math:`\lfloor s / K^{N-n} \rfloor \bmod K` for variable
    :math:`n = 1..N` (the ``itertools.product`` order).
    """
    N, K = num_variables, num_classes
    stop = K**N if stop is None else stop
    s = torch.arange(start, stop, device=device)  # (S,)
    powers = K ** torch.arange(N - 1, -1, -1, device=device)  # (N,)
    index = (s.unsqueeze(-1) // powers) % K  # (S, N)
    return nn.functional.one_hot(index, K).to(dtype or torch.get_default_dtype())  # (S, N, K)


# --------------------------------------------------------------------------------------------
# the latent type


class CategoricalOptions(Options):
    r"""Options of ``model.latent = {name = "categorical", ...}``.

    Temperature: :math:`\tau_t = \max(\tau_{min}, \tau_0 e^{-r\,M \lfloor t/M \rfloor})`, updated
    every M steps (Jang et al. 2017, Sec. 4.2); ``anneal_rate = 0`` keeps :math:`\tau = \tau_0`.
    """

    num_variables: int = Field(20, gt=0, description="N categorical variables")
    num_classes: int = Field(10, ge=2, description="K classes per variable")
    prior: Literal["uniform", "learned"] = "uniform"
    prior_temperature: float = Field(
        0.5, gt=0.0, description="temperature of the relaxed prior (guide.family.kl = 'relaxed')"
    )
    temperature: float = Field(1.0, gt=0.0, description="τ0, the guide's initial temperature")
    temperature_min: float = Field(0.5, gt=0.0, description="τ_min, the floor of the annealing")
    anneal_rate: float = Field(0.0, ge=0.0, description="r; 0 keeps τ = temperature")
    anneal_every: int = Field(500, gt=0, description="M, steps between temperature updates")

    @model_validator(mode="after")
    def _check_schedule(self):
        if self.anneal_rate > 0 and self.temperature_min > self.temperature:
            raise ValueError(
                f"temperature_min = {self.temperature_min} is above temperature = "
                f"{self.temperature}: the annealing would never move; lower temperature_min"
            )
        return self


class CategoricalLatent(Latent):
    r"""N categorical variables of K classes, event shape ``(N, K)``; see the module docstring.

    :param opts: :class:`CategoricalOptions`.
    """

    continuous = False
    families = ("relaxed", "categorical")
    priors = ("categorical",)

    def __init__(self, opts: CategoricalOptions):
        super().__init__()
        self.num_variables, self.num_classes = opts.num_variables, opts.num_classes
        self.event_shape = (opts.num_variables, opts.num_classes)
        self.opts = opts
        #: set by the guide family: "soft", "straight_through" or "one_hot"
        self.mode: Literal["soft", "straight_through", "one_hot"] = "one_hot"
        #: KL convention of a relaxed guide family: "relaxed" (Maddison) or "categorical" (Jang)
        self.kl: Literal["relaxed", "categorical"] = "relaxed"
        self.register_buffer("_anchor", torch.zeros(()), persistent=False)

    @property
    def num_states(self) -> int:
        """:math:`K^N`."""
        return self.num_classes**self.num_variables

    @property
    def relaxed(self) -> bool:
        """Whether the ``"z"`` site holds log-space Concrete samples (else one-hot vectors)."""
        return self.mode != "one_hot"

    def configure(self, mode: str, kl: str = "relaxed") -> None:
        """Called by the guide family's builder: how samples reach the decoder, which KL."""
        if mode not in ("soft", "straight_through", "one_hot"):
            raise ValueError(f"unknown mode {mode!r}")
        if kl not in ("relaxed", "categorical"):
            raise ValueError(f"unknown kl {kl!r}")
        self.mode, self.kl = mode, kl

    def decoder_input(self, z: Tensor) -> Tensor:
        """``(..., N, K) → (..., N K)``: exp, straight-through or identity (see :attr:`mode`)."""
        from vaelab.model.distributions import soft, straight_through

        if self.mode == "soft":
            z = soft(z)  # (..., N, K) simplex points
        elif self.mode == "straight_through":
            z = straight_through(z)  # (..., N, K) one-hot forward, soft gradient
        return z.reshape(*z.shape[:-2], self.flat_dim)  # (..., N K)

    def hard(self, z: Tensor) -> Tensor:
        r"""The hard one-hot version of a sample, in the site's representation.

        One-hot ``(..., N, K)`` for ``mode = "one_hot"``; for relaxed modes the log-space limit
        :math:`\tau \to 0` of the sample, 0 at the argmax and :math:`-\infty` elsewhere (so that
        :meth:`decoder_input` maps it to the exact one-hot vector). The argmax of a Concrete
        sample is an exact categorical draw (Gumbel-max) at every temperature.
        """
        one_hot = nn.functional.one_hot(z.argmax(-1), self.num_classes).to(z.dtype)  # (..., N, K)
        if not self.relaxed:
            return one_hot
        return torch.where(one_hot > 0, torch.zeros_like(z), torch.full_like(z, -math.inf))

    def temperature_at(self, step: int) -> Tensor | None:
        r""":math:`\tau_t = \max(\tau_{min}, \tau_0 e^{-r M \lfloor t / M \rfloor})`, a scalar
        tensor (``None`` for one-hot latents, which have no temperature)."""
        if not self.relaxed:
            return None
        o = self.opts
        tau = o.temperature
        if o.anneal_rate > 0:
            t = (step // o.anneal_every) * o.anneal_every
            tau = max(o.temperature_min, o.temperature * math.exp(-o.anneal_rate * t))
        return self._anchor.new_tensor(tau)

    def eval_pair(self, vae) -> tuple:
        """The discrete model and guide with hard one-hot latents, see :func:`hard_pair`."""
        return hard_pair(vae)


@LATENTS.register("categorical", CategoricalOptions)
def build_categorical(opts: CategoricalOptions, latent_dim: int) -> Latent:
    """N categorical variables of K classes (Jang et al. 2017; ``model.latent_dim`` is unused)."""
    return CategoricalLatent(opts)


# --------------------------------------------------------------------------------------------
# the prior


class CategoricalPrior(Prior):
    r"""p(z) = ∏_n Cat(z_n; softmax(π_n)), π = 0 (uniform) or learned, as the model's ``"z"`` site.

    The distribution matches the guide's representation (:attr:`CategoricalLatent.mode`,
    :attr:`CategoricalLatent.kl`):

    * one-hot latents: :class:`CategoricalProduct` (π);
    * relaxed latents, ``kl = "relaxed"``: the log-space Concrete prior
      ``ExpRelaxedCategorical(λ_prior, π)`` with its own fixed temperature λ_prior
      (``model.latent.prior_temperature``), so log p(z) − log q(z|x) is the relaxed density
      ratio of Maddison et al. (2017);
    * relaxed latents, ``kl = "categorical"``: the same distribution *masked out*
      (``.mask(False)``): the KL between the unrelaxed categoricals is added by the guide
      (:meth:`vaelab.guide.relaxed.RelaxedPosterior.guide_terms`): the Jang et al. (2017)
      convention.

    :param latent: the :class:`CategoricalLatent`.
    """

    def __init__(self, latent: CategoricalLatent):
        super().__init__(latent.flat_dim)
        object.__setattr__(self, "_latent", latent)  # owned by the Generative, not by the prior
        logits = torch.zeros(latent.num_variables, latent.num_classes)  # (N, K)
        if latent.opts.prior == "learned":
            self.logits = nn.Parameter(logits)
        else:
            self.register_buffer("logits", logits)
        self.prior_temperature = latent.opts.prior_temperature

    def forward(self, temperature: Tensor | None = None):
        latent = self._latent
        if not latent.relaxed:
            return CategoricalProduct(self.logits)  # batch (), event (N, K)
        tau = self.logits.new_tensor(self.prior_temperature)
        p_z = ExpRelaxedCategorical(tau, logits=self.logits).to_event(1)  # batch (), event (N, K)
        return p_z.mask(False) if latent.kl == "categorical" else p_z


@PRIORS.register("categorical")
def _categorical_prior(opts, latent_dim, ctx):
    """Product of categoricals for ``model.latent = "categorical"`` (uniform or learned logits)."""
    if not isinstance(ctx.latent, CategoricalLatent):
        from vaelab.registry import ConfigError

        raise ConfigError("model.prior: 'categorical' needs model.latent = 'categorical'")
    prior = CategoricalPrior(ctx.latent)
    bind = getattr(ctx.posterior, "bind_prior", None)
    if bind is not None:  # the guide's categorical-KL term reads the prior logits
        bind(prior)
    return prior


# --------------------------------------------------------------------------------------------
# the discrete model and guide (evaluation)


def _posterior_logits(vae, x: Tensor) -> Tensor:
    q = vae.inference
    return q.posterior.logits_from(q.encoder(x))  # (B, N, K)


def hard_pair(vae) -> tuple:
    r"""(model, guide) of the *discrete* model, with one-hot latents and the sites of
    :class:`~vaelab.model.generative.Generative` (``"z"``, ``"x"`` in ``pyro.plate("data")``):

    .. math:: p(z) = \prod_n \mathrm{Cat}(z_n; π_n), \quad
        q(z \mid x) = \prod_n \mathrm{Cat}(z_n; \mathrm{softmax}(\ell_n(x))),

    with ℓ(x) the guide's logits, whatever relaxation trained them. With
    :func:`~vaelab.inference.marginal.estimate_marginal` it gives the ELBO of the discrete model
    (log p(z) − log q(z|x) is exact) and the IS estimate of log p(x) with q as the proposal.
    """
    g = vae.generative

    def model(x, beta=1.0, temperature=None):
        register_module("decoder", g.decoder)
        register_module("prior", g.prior)
        register_module("likelihood", g.likelihood)
        p_z = CategoricalProduct(g.prior.logits)  # batch (), event (N, K)
        with pyro.plate("data", x.shape[0], dim=-1):
            with scaled(beta):
                z = pyro.sample("z", p_z)  # (..., B, N, K) one-hot
            params = g.decoder(z.reshape(*z.shape[:-2], -1))  # (..., B, param_size)
            pyro.sample("x", g.likelihood(params), obs=x)
        return z

    def guide(x, beta=1.0, temperature=None):
        register_module("encoder", vae.inference.encoder)
        register_module("posterior", vae.inference.posterior)
        q_z = CategoricalProduct(_posterior_logits(vae, x))  # batch (B,), event (N, K)
        with pyro.plate("data", x.shape[0], dim=-1):
            with scaled(beta):
                return pyro.sample("z", q_z)  # (..., B, N, K)

    return model, guide


# --------------------------------------------------------------------------------------------
# exact enumeration over the K^N states


def log_joint_states(vae, x: Tensor, states: Tensor) -> Tensor:
    r""":math:`\log p(s) + \log p_θ(x_b \mid s)` for every state ``states (S, N, K)`` and point
    ``x (B, D)``: shape ``(S, B)``. Differentiable."""
    g = vae.generative
    log_prior = (states * g.prior.logits.log_softmax(-1)).sum((-2, -1))  # (S,)
    params = g.decoder(states.reshape(states.shape[0], -1)).unsqueeze(1)  # (S, 1, param_size)
    return log_prior.unsqueeze(-1) + g.likelihood(params).log_prob(x)  # (S, B)


def _state_chunk(vae, batch: int, max_memory_mb: float) -> int:
    width = vae.generative.likelihood.param_size + sum(
        m.out_features for m in vae.generative.decoder.linear_layers
    )
    return max(1, int(max_memory_mb * 2**20 // (4 * 4 * max(1, batch) * width)))


@torch.no_grad()
def exact_log_likelihood(
    vae, x: Tensor, batch_size: int = 100, max_memory_mb: float = 256.0
) -> Tensor:
    r"""Exact :math:`\log p_θ(x_b) = \mathrm{logsumexp}_{s} [\log p(s) + \log p_θ(x_b \mid s)]`
    over all :math:`K^N` states, per row of ``x (B, D)``, streamed over chunks of states.

    Cost: :math:`K^N` decoder passes per chunk of points. Meant for :math:`K^N` up to
    :data:`MAX_EXACT_STATES`.
    """
    latent = vae.latent
    out = []
    for start in range(0, x.shape[0], batch_size):
        xb = x[start : start + batch_size]  # (b, D)
        chunk = _state_chunk(vae, xb.shape[0], max_memory_mb)
        lse = None
        for s0 in range(0, latent.num_states, chunk):
            states = joint_states(
                latent.num_variables, latent.num_classes, s0, min(s0 + chunk, latent.num_states),
                dtype=xb.dtype, device=xb.device,
            )  # (S', N, K)
            c = torch.logsumexp(log_joint_states(vae, xb, states), 0)  # (b,)
            lse = c if lse is None else torch.logaddexp(lse, c)
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
    log_q_n = _posterior_logits(vae, x).log_softmax(-1)  # (B, N, K)
    log_q = torch.einsum("snk,bnk->sb", states, log_q_n)  # (S, B)
    log_p = log_joint_states(vae, x, states)  # (S, B)
    return (log_q.exp() * (log_p - log_q)).sum(0)  # (B,)


@register_exact
def _exact_categorical(vae, x: Tensor) -> Tensor | None:
    """Exact log p(x) of a categorical-latent VAE with at most MAX_EXACT_STATES states."""
    latent = getattr(vae, "latent", None)
    if not isinstance(latent, CategoricalLatent) or latent.num_states > MAX_EXACT_STATES:
        return None
    return exact_log_likelihood(vae, x)


# --------------------------------------------------------------------------------------------
# diagnostics


@dataclass
class CategoryUsage:
    r"""How the posterior uses the K classes of each of the N variables, over a data set.

    * ``aggregate_perplexity (N,)``: :math:`\exp H(\bar q_n)`, :math:`\bar q_n = \frac{1}{B}
      \sum_b q(z_n \mid x_b)`: effective number of classes used across the data (1..K);
    * ``posterior_perplexity (N,)``: mean over points of :math:`\exp H(q(z_n \mid x_b))`: how
      uncertain the posterior is for one point (1 = deterministic code);
    * ``classes_used (N,)``: classes that are the argmax of :math:`q(z_n \mid x_b)` for at
      least one point.
    """

    aggregate_perplexity: Tensor
    posterior_perplexity: Tensor
    classes_used: Tensor
    num_classes: int

    def summary(self) -> dict:
        N = self.classes_used.numel()
        return {
            "aggregate_perplexity_mean": float(self.aggregate_perplexity.mean()),
            "posterior_perplexity_mean": float(self.posterior_perplexity.mean()),
            "classes_used_mean": float(self.classes_used.double().mean()),
            "classes_used_min": int(self.classes_used.min()),
            "classes_used_total": int(self.classes_used.sum()),
            "num_variables": N,
            "num_classes": self.num_classes,
        }


@torch.no_grad()
def category_usage(vae, x: Tensor, batch_size: int = 1000) -> CategoryUsage:
    """:class:`CategoryUsage` of the guide's categorical posterior on the rows of ``x (B, D)``."""
    latent = vae.latent
    N, K = latent.num_variables, latent.num_classes
    q_sum = x.new_zeros(N, K, dtype=torch.float64)
    perplexity_sum = x.new_zeros(N, dtype=torch.float64)
    used = torch.zeros(N, K, dtype=torch.bool, device=x.device)
    for start in range(0, x.shape[0], batch_size):
        log_q = _posterior_logits(vae, x[start : start + batch_size]).log_softmax(-1)  # (b, N, K)
        q = log_q.exp()
        q_sum += q.double().sum(0)
        entropy = -(q * log_q).sum(-1)  # (b, N)
        perplexity_sum += entropy.double().exp().sum(0)
        used |= nn.functional.one_hot(log_q.argmax(-1), K).bool().any(0)  # (N, K)
    q_bar = q_sum / x.shape[0]  # (N, K)
    h_bar = -(q_bar * q_bar.clamp_min(1e-300).log()).sum(-1)  # (N,)
    return CategoryUsage(h_bar.exp(), perplexity_sum / x.shape[0], used.sum(-1), K)


# the guide families for this latent type register themselves on import
import vaelab.guide.relaxed  # noqa: E402,F401
