r"""Priors p(z), selectable by ``model.prior``.

Each prior is an :class:`torch.nn.Module` (so learned priors train with everything else) whose
call returns a Pyro distribution with ``batch_shape == ()`` and ``event_shape == (d,)``; the model
broadcasts it over the data plate (and an outer particle plate) with ``.expand``.

* ``standard_normal``: :math:`\mathcal{N}(0, I)`;
* ``normal``: :math:`\mathcal{N}(\mu, \mathrm{diag}\,\sigma^2)`, μ and σ learned;
* ``laplace``: :math:`\prod_j \mathrm{Laplace}(0, b)`, :math:`b = 1/\sqrt2` (unit variance);
* ``student_t``: :math:`\prod_j \mathrm{StudentT}(\nu, 0, 1)`, heavier tails;
* ``mog``: :math:`\sum_k \pi_k \mathcal{N}(\mu_k, \mathrm{diag}\,\sigma_k^2)`, all learned;
* ``vamp``: :math:`\frac1K \sum_k q_\phi(z \mid u_k)`, K learned pseudo-inputs
  :math:`u_k` through the guide's own encoder (VampPrior [1]).

**Analytic or Monte Carlo KL.** :class:`~pyro.infer.TraceMeanField_ELBO` uses
:math:`\mathrm{KL}(q \,\|\, p)` in closed form wherever
:func:`torch.distributions.kl_divergence` has one registered for the pair of distribution types
(here after the plate's ``.expand``, which keeps ``Independent(Normal)`` an
``Independent(Normal)``), and silently falls back to the Monte Carlo estimate
:math:`\log q(z|x) - \log p(z)` otherwise. For vaelab's guide families and priors
(:data:`ANALYTIC_KL`, checked against torch's registry in the tests):

=================  ===============  ========  ========  =========  ===  ====
guide / prior      standard_normal  normal    laplace   student_t  mog  vamp
=================  ===============  ========  ========  =========  ===  ====
``normal``         analytic         analytic  analytic  MC         MC   MC
``student_t``      MC               MC        MC        MC         MC   MC
=================  ===============  ========  ========  =========  ===  ====

``mog`` and ``vamp`` are ``MixtureSameFamily`` (no closed-form KL exists); torch registers no KL
from or to ``StudentT``; Normal → Laplace is torch's ``_kl_normal_laplace``.
:class:`~pyro.infer.Trace_ELBO` (``objective.name = "trace"``) always uses the Monte Carlo
form. :func:`has_analytic_kl` answers for two built distributions.

References:
  1. J. Tomczak, M. Welling. *VAE with a VampPrior*. AISTATS 2018.
  2. D. Kingma, M. Welling. *Auto-Encoding Variational Bayes*. ICLR 2014.
"""

from __future__ import annotations

import math

import pyro.distributions as dist
import torch
from pydantic import Field
from torch import nn
from torch.distributions import kl_divergence
from torch.nn.functional import softplus

from vaelab.registry import Options, Registry

__all__ = ["ANALYTIC_KL", "PRIORS", "Prior", "has_analytic_kl"]


class Prior(nn.Module):
    """Base class: ``prior() -> Distribution`` over z with event shape ``(latent_dim,)``."""

    def __init__(self, latent_dim: int):
        super().__init__()
        self.latent_dim = latent_dim

    def forward(self, temperature: torch.Tensor | None = None) -> dist.TorchDistribution:
        raise NotImplementedError

    def _zeros(self) -> torch.Tensor:
        # a device/dtype anchor that follows .to(...) even for parameter-free priors
        return self._anchor.new_zeros(self.latent_dim)


def _anchor(module: nn.Module) -> None:
    module.register_buffer("_anchor", torch.zeros(()), persistent=False)


PRIORS: Registry[Prior] = Registry("prior")


class StandardNormalPrior(Prior):
    def __init__(self, latent_dim: int):
        super().__init__(latent_dim)
        _anchor(self)

    def forward(self, temperature=None):
        zero = self._zeros()
        return dist.Normal(zero, torch.ones_like(zero)).to_event(1)


class LearnedNormalPrior(Prior):
    """p(z) = N(μ, diag σ²) with learned μ and σ = softplus(ρ)."""

    def __init__(self, latent_dim: int):
        super().__init__(latent_dim)
        self.loc = nn.Parameter(torch.zeros(latent_dim))
        self.raw_scale = nn.Parameter(torch.full((latent_dim,), math.log(math.e - 1.0)))

    def forward(self, temperature=None):
        return dist.Normal(self.loc, softplus(self.raw_scale)).to_event(1)


class LaplacePrior(Prior):
    """p(z) = ∏ Laplace(0, b) with b chosen for unit variance (b = 1/√2) unless given."""

    def __init__(self, latent_dim: int, scale: float):
        super().__init__(latent_dim)
        _anchor(self)
        self.scale = scale

    def forward(self, temperature=None):
        zero = self._zeros()
        return dist.Laplace(zero, torch.full_like(zero, self.scale)).to_event(1)


class StudentTPrior(Prior):
    """p(z) = ∏ StudentT(ν, 0, 1): heavier tails than the standard normal."""

    def __init__(self, latent_dim: int, df: float):
        super().__init__(latent_dim)
        _anchor(self)
        self.df = df

    def forward(self, temperature=None):
        zero = self._zeros()
        df = torch.full_like(zero, self.df)
        return dist.StudentT(df, zero, torch.ones_like(zero)).to_event(1)


class MixtureOfGaussiansPrior(Prior):
    r"""p(z) = Σ_k π_k N(z; μ_k, diag σ_k²), all of π, μ, σ learned."""

    def __init__(self, latent_dim: int, components: int, init_spread: float):
        super().__init__(latent_dim)
        self.logits = nn.Parameter(torch.zeros(components))
        self.locs = nn.Parameter(init_spread * torch.randn(components, latent_dim))
        self.raw_scales = nn.Parameter(torch.full((components, latent_dim), math.log(math.e - 1.0)))

    def forward(self, temperature=None):
        # batch (K,), event (d,)
        comp = dist.Normal(self.locs, softplus(self.raw_scales)).to_event(1)
        return dist.MixtureSameFamily(dist.Categorical(logits=self.logits), comp)


class VampPrior(Prior):
    r"""VampPrior: :math:`p(z) = \frac1K \sum_{k=1}^K q_φ(z \mid u_k)` with K learned
    pseudo-inputs :math:`u_k`.

    The mixture components are the guide's own posterior at the pseudo-inputs, so the prior shares
    the encoder's parameters φ: the encoder is held by reference (its parameters are registered
    and saved once, by the guide) and receives gradients from both log q(z|x) and log p(z).
    Pseudo-inputs live in data space and are kept in [0, 1] by a hard-tanh; they are initialised
    as :math:`\mathcal{N}(\text{init\_mean}, \text{init\_std}^2)`, as in the paper's code
    (0.05 and 0.01 for MNIST). Each call runs the encoder on the K pseudo-inputs: a K-row
    encoder pass per step.

    :param latent_dim: d.
    :param data_dim: D, the size of a pseudo-input.
    :param components: K.
    :param encoder: the guide's encoder network (shared, not owned).
    :param posterior: the guide's posterior family (shared, not owned).
    :param init_mean: mean of the initial pseudo-inputs.
    :param init_std: standard deviation of the initial pseudo-inputs.

    References:
      1. J. Tomczak, M. Welling. *VAE with a VampPrior*. AISTATS 2018.
    """

    def __init__(
        self,
        latent_dim: int,
        data_dim: int,
        components: int,
        encoder,
        posterior,
        init_mean: float = 0.05,
        init_std: float = 0.01,
    ):
        super().__init__(latent_dim)
        u = init_mean + init_std * torch.randn(components, data_dim)  # (K, D)
        self.pseudo_inputs = nn.Parameter(u)
        # held by reference: the encoder's parameters are owned (and registered) by the guide
        object.__setattr__(self, "_encoder", encoder)
        object.__setattr__(self, "_posterior", posterior)

    def forward(self, temperature=None):
        u = torch.nn.functional.hardtanh(self.pseudo_inputs, 0.0, 1.0)  # (K, D)
        q = self._posterior(self._encoder(u))  # batch (K,), event (d,)
        logits = u.new_zeros(u.shape[0])  # uniform weights 1/K
        return dist.MixtureSameFamily(dist.Categorical(logits=logits), q)


class ComponentsOptions(Options):
    components: int = Field(10, gt=0, description="number of mixture components K")


class VampOptions(ComponentsOptions):
    init_mean: float = Field(0.05, ge=0.0, le=1.0, description="mean of the initial pseudo-inputs")
    init_std: float = Field(0.01, ge=0.0, description="std of the initial pseudo-inputs")


class MoGOptions(ComponentsOptions):
    init_spread: float = Field(1.0, ge=0.0, description="std of the initial component means")


class LaplaceOptions(Options):
    scale: float = Field(1.0 / math.sqrt(2.0), gt=0.0)


class StudentTOptions(Options):
    df: float = Field(3.0, gt=0.0)


@PRIORS.register("standard_normal")
def _standard_normal(opts, latent_dim, ctx):
    """N(0, I)."""
    return StandardNormalPrior(latent_dim)


@PRIORS.register("normal")
def _normal(opts, latent_dim, ctx):
    """N(μ, diag σ²), learned."""
    return LearnedNormalPrior(latent_dim)


@PRIORS.register("laplace", LaplaceOptions)
def _laplace(opts, latent_dim, ctx):
    """∏ Laplace(0, scale)."""
    return LaplacePrior(latent_dim, opts.scale)


@PRIORS.register("student_t", StudentTOptions)
def _student_t(opts, latent_dim, ctx):
    """∏ StudentT(df, 0, 1)."""
    return StudentTPrior(latent_dim, opts.df)


@PRIORS.register("mog", MoGOptions)
def _mog(opts, latent_dim, ctx):
    """Learned mixture of K diagonal Gaussians."""
    return MixtureOfGaussiansPrior(latent_dim, opts.components, opts.init_spread)


@PRIORS.register("vamp", VampOptions)
def _vamp(opts, latent_dim, ctx):
    """VampPrior with K learned pseudo-inputs (Tomczak & Welling 2018)."""
    return VampPrior(
        latent_dim, ctx.data_dim, opts.components, ctx.encoder, ctx.posterior,
        opts.init_mean, opts.init_std,
    )


#: (guide family, prior) pairs whose KL torch computes in closed form (see the module docstring)
ANALYTIC_KL: frozenset[tuple[str, str]] = frozenset(
    {("normal", "standard_normal"), ("normal", "normal"), ("normal", "laplace")}
)


def has_analytic_kl(q: dist.Distribution, p: dist.Distribution) -> bool:
    """True when ``kl_divergence(q, p)`` has a registered closed form (what TraceMeanField uses)."""
    try:
        kl_divergence(q, p)
    except NotImplementedError:
        return False
    return True
