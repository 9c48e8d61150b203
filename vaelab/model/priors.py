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
  :math:`u_k` through the guide's own encoder (VampPrior [1]);
* ``flow``: a learned normalizing flow on :math:`\mathcal{N}(0, I)`
  (:class:`FlowPrior`: masked affine autoregressive steps in the MAF direction, or spline
  couplings; Pyro's transforms);
* ``categorical``: :math:`\prod_n \mathrm{Cat}(z_n; \mathrm{softmax}(\pi_n))` for
  ``model.latent = "categorical"`` (:class:`CategoricalPrior`), event ``(N, K)``.

:meth:`Prior.hard_dist` is the prior of the *discrete* model (one-hot latents), which the model
function samples with ``hard=True``; only discrete priors have one.

**Analytic or Monte Carlo KL.** :class:`~pyro.infer.TraceMeanField_ELBO` uses
:math:`\mathrm{KL}(q \,\|\, p)` in closed form wherever
:func:`torch.distributions.kl_divergence` has one registered for the pair of distribution types
(here after the plate's ``.expand``, which keeps ``Independent(Normal)`` an
``Independent(Normal)``), and silently falls back to the Monte Carlo estimate
:math:`\log q(z|x) - \log p(z)` otherwise. For vaelab's guide families and priors
(:data:`ANALYTIC_KL`, checked against torch's registry in the tests):

=================  ===============  ========  ========  =========  =======  =======  =======
guide / prior      standard_normal  normal    laplace   student_t  mog      vamp     flow
=================  ===============  ========  ========  =========  =======  =======  =======
``normal``         analytic         analytic  analytic  MC         MC       MC       refused
``student_t``      MC               MC        MC        MC         MC       MC       refused
``iaf``            refused          refused   refused   refused    refused  —        refused
=================  ===============  ========  ========  =========  =======  =======  =======

``mog`` and ``vamp`` are mixtures (:class:`DiagonalNormalMixture`, or ``MixtureSameFamily``
for a Student-t guide's VampPrior): no closed-form KL exists; torch registers no KL
from or to ``StudentT``; Normal → Laplace is torch's ``_kl_normal_laplace``.
:class:`~pyro.infer.Trace_ELBO` (``objective.name = "trace"``) always uses the Monte Carlo
form. :func:`has_analytic_kl` answers for two built distributions. A normalizing flow (the
``iaf`` guide family, the ``flow`` prior; ``normalizing_flow = True`` on its class) has no
closed-form KL with anything, so ``mean_field`` refuses it ("refused") instead of falling back
silently; the VampPrior mixes the guide's own posteriors, which for an IAF guide vaelab does not
score (—: refused when the VAE is built, whatever the objective).

One topic: the registry of priors, each a short class on the shared :class:`Prior` base, kept
in one module with the table of pairs whose KL is analytic (:data:`ANALYTIC_KL`).

References:
  1. J. Tomczak, M. Welling. *VAE with a VampPrior*. AISTATS 2018.
  2. D. Kingma, M. Welling. *Auto-Encoding Variational Bayes*. ICLR 2014.
  3. G. Papamakarios, T. Pavlakou, I. Murray. *Masked Autoregressive Flow for Density
     Estimation*. NeurIPS 2017.
  4. C. Durkan, A. Bekasov, I. Murray, G. Papamakarios. *Neural Spline Flows*. NeurIPS 2019.
"""

from __future__ import annotations

import math
from typing import Literal

import pyro.distributions as dist
import torch
from pydantic import Field
from pyro.distributions.torch_distribution import TorchDistribution
from pyro.distributions.transforms import AffineAutoregressive, Permute, spline_coupling
from pyro.nn import AutoRegressiveNN
from torch import nn
from torch.distributions import constraints, kl_divergence
from torch.nn.functional import softplus

from vaelab.model.distributions import CategoricalProduct, ExpRelaxedCategorical
from vaelab.model.flows import (
    FlowWidths,
    alternating_order,
    check_made_widths,
    quiet_made,
    zero_last_layer,
)
from vaelab.model.latents import CategoricalLatent
from vaelab.registry import ConfigError, Options, Registry

__all__ = [
    "ANALYTIC_KL",
    "PRIORS",
    "CategoricalPrior",
    "DiagonalNormalMixture",
    "FlowPrior",
    "Prior",
    "has_analytic_kl",
]


class Prior(nn.Module):
    """Base class: ``prior() -> Distribution`` over z with event shape ``(latent_dim,)``."""

    _anchor: torch.Tensor  #: the buffer :func:`_anchor` registers, where a prior has one
    #: a normalizing flow: no closed-form KL with any guide (analytic-KL objectives refuse it)
    normalizing_flow: bool = False

    def __init__(self, latent_dim: int):
        super().__init__()
        self.latent_dim = latent_dim

    def forward(self, temperature: torch.Tensor | None = None) -> dist.TorchDistribution:
        raise NotImplementedError

    def hard_dist(self) -> dist.TorchDistribution:
        """The prior over hard (one-hot) latents of the discrete model, batch ``()``; only
        discrete priors have one."""
        raise NotImplementedError(f"{type(self).__name__} is not a prior of a discrete latent")

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


class DiagonalNormalMixture(TorchDistribution):
    r"""A mixture of K diagonal normals over :math:`\mathbb{R}^d`, scored by matrix products.

    .. math::

        \log p(z) = \operatorname{logsumexp}_k \Big[\log \pi_k
            - \tfrac12 \sum_j \frac{(z_j - \mu_{kj})^2}{\sigma_{kj}^2}
            - \sum_j \log \sigma_{kj} - \tfrac d2 \log 2\pi\Big]

    The same density as ``MixtureSameFamily(Categorical(π), Normal(μ, σ).to_event(1))``, but the
    quadratic form is expanded as :math:`z^2 \cdot a_k - 2 z \cdot (\mu_k a_k) +
    \mu_k^2 \cdot a_k`, :math:`a = \sigma^{-2}`: two ``(N, d) @ (d, K)`` products instead of a
    broadcast ``(N, K, d)`` tensor (measured on one CPU thread, 1200 points, K = 500, d = 40:
    0.37 s for ``MixtureSameFamily``, 0.03 s here). The expansion is evaluated in float64, so its
    cancellation error (about :math:`10^{-16} (z / \sigma)^2`) stays negligible for every scale
    a guide produces.

    The parameters are shared by every batch element: ``expand`` (Pyro's plates) only records a
    batch shape. No closed-form KL is registered for it (Monte Carlo KL, as for any mixture).

    :param logits: unnormalized mixture weights, ``(K,)``.
    :param locs: component means μ, ``(K, d)``.
    :param scales: component standard deviations σ > 0, ``(K, d)``.
    """

    arg_constraints = {
        "logits": constraints.real_vector,
        "locs": constraints.independent(constraints.real, 2),
        "scales": constraints.independent(constraints.positive, 2),
    }
    support = constraints.real_vector
    has_rsample = False

    def __init__(self, logits, locs, scales, batch_shape=torch.Size(), validate_args=None):
        if locs.dim() != 2 or scales.shape != locs.shape or logits.shape != locs.shape[:1]:
            raise ValueError(
                f"expected logits (K,), locs and scales (K, d); got {tuple(logits.shape)}, "
                f"{tuple(locs.shape)}, {tuple(scales.shape)}"
            )
        self.logits, self.locs, self.scales = logits, locs, scales
        super().__init__(torch.Size(batch_shape), locs.shape[-1:], validate_args=validate_args)

    def expand(self, batch_shape, _instance=None):
        new = self._get_checked_instance(DiagonalNormalMixture, _instance)
        new.logits, new.locs, new.scales = self.logits, self.locs, self.scales
        super(DiagonalNormalMixture, new).__init__(
            torch.Size(batch_shape), self.event_shape, validate_args=False
        )
        new._validate_args = self._validate_args
        return new

    def component_log_prob(self, value: torch.Tensor) -> torch.Tensor:
        """log N(z; μ_k, diag σ_k²) for every component, ``(..., d) → (..., K)``."""
        z = value.double()  # (..., d)
        a = self.scales.double().pow(-2)  # (K, d)
        m = self.locs.double()  # (K, d)
        quad = z.pow(2) @ a.T - 2.0 * (z @ (m * a).T) + (m.pow(2) * a).sum(-1)  # (..., K)
        norm = self.scales.double().log().sum(-1) + 0.5 * m.shape[-1] * math.log(2 * math.pi)
        return (-0.5 * quad.clamp_min(0.0) - norm).to(value.dtype)  # (..., K)

    def log_prob(self, value):
        if self._validate_args:
            self._validate_sample(value)
        log_w = self.logits.log_softmax(-1)  # (K,)
        lp = (self.component_log_prob(value) + log_w).logsumexp(-1)  # value.shape[:-1]
        return lp.expand(torch.broadcast_shapes(lp.shape, self.batch_shape))

    def sample(self, sample_shape=torch.Size()):
        shape = self._extended_shape(sample_shape)  # sample + batch + (d,)
        with torch.no_grad():
            k = torch.distributions.Categorical(logits=self.logits).sample(shape[:-1])
            eps = torch.randn(shape, dtype=self.locs.dtype, device=self.locs.device)
            return self.locs[k] + self.scales[k] * eps

    @property
    def mean(self):
        w = self.logits.softmax(-1)  # (K,)
        return (w @ self.locs).expand(self.batch_shape + self.event_shape)

    @property
    def variance(self):
        w = self.logits.softmax(-1)
        second = w @ (self.scales.pow(2) + self.locs.pow(2))  # (d,)
        return (second - (w @ self.locs).pow(2)).expand(self.batch_shape + self.event_shape)


def normal_mixture(logits: torch.Tensor, components: dist.Distribution) -> dist.Distribution:
    """A mixture of ``components`` (batch ``(K,)``, event ``(d,)``): the fast
    :class:`DiagonalNormalMixture` for diagonal normals, else ``MixtureSameFamily``."""
    base = getattr(components, "base_dist", None)
    if (isinstance(components, dist.Independent) and type(base) is dist.Normal
            and components.reinterpreted_batch_ndims == 1 and base.loc.dim() == 2):
        return DiagonalNormalMixture(logits, base.loc, base.scale)
    return dist.MixtureSameFamily(dist.Categorical(logits=logits), components)


class MixtureOfGaussiansPrior(Prior):
    r"""p(z) = Σ_k π_k N(z; μ_k, diag σ_k²), all of π, μ, σ learned."""

    def __init__(self, latent_dim: int, components: int, init_spread: float):
        super().__init__(latent_dim)
        self.logits = nn.Parameter(torch.zeros(components))
        self.locs = nn.Parameter(init_spread * torch.randn(components, latent_dim))
        self.raw_scales = nn.Parameter(torch.full((components, latent_dim), math.log(math.e - 1.0)))

    def forward(self, temperature=None):
        return DiagonalNormalMixture(self.logits, self.locs, softplus(self.raw_scales))


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
        return normal_mixture(logits, q)  # fast path for the normal guide family


class CategoricalPrior(Prior):
    r"""p(z) = ∏_n Cat(z_n; softmax(π_n)), π = 0 (uniform) or learned, as the model's ``"z"`` site.

    The distribution matches the guide's representation
    (:attr:`~vaelab.model.latents.CategoricalLatent.mode`,
    :attr:`~vaelab.model.latents.CategoricalLatent.kl`):

    * one-hot latents: :class:`~vaelab.model.distributions.CategoricalProduct` (π);
    * relaxed latents, ``kl = "relaxed"``: the log-space Concrete prior
      ``ExpRelaxedCategorical(λ_prior, π)`` with its own fixed temperature λ_prior
      (``model.latent.prior_temperature``), so log p(z) − log q(z|x) is the relaxed density
      ratio of Maddison et al. (2017);
    * relaxed latents, ``kl = "categorical"``: the same distribution *masked out*
      (``.mask(False)``): the KL between the unrelaxed categoricals is added by the guide
      (:meth:`vaelab.guide.relaxed.RelaxedPosterior.guide_terms`): the Jang et al. (2017)
      convention.

    :meth:`hard_dist` is the one-hot :class:`~vaelab.model.distributions.CategoricalProduct` (π)
    whatever the representation: the prior of the discrete model that evaluation scores.

    :param latent: the :class:`~vaelab.model.latents.CategoricalLatent`.
    """

    _latent: CategoricalLatent
    logits: torch.Tensor  #: π ``(N, K)``: a parameter (learned) or a buffer (uniform)

    def __init__(self, latent: CategoricalLatent):
        super().__init__(latent.flat_dim)
        object.__setattr__(self, "_latent", latent)  # owned by the Generative, not by the prior
        logits = torch.zeros(latent.num_variables, latent.num_classes)  # (N, K)
        if latent.opts.prior == "learned":
            self.logits = nn.Parameter(logits)
        else:
            self.register_buffer("logits", logits)
        self.prior_temperature = latent.opts.prior_temperature

    def forward(self, temperature: torch.Tensor | None = None):
        latent = self._latent
        if not latent.relaxed:
            return CategoricalProduct(self.logits)  # batch (), event (N, K)
        tau = self.logits.new_tensor(self.prior_temperature)
        p_z = ExpRelaxedCategorical(tau, logits=self.logits).to_event(1)  # batch (), event (N, K)
        return p_z.mask(False) if latent.kl == "categorical" else p_z

    def hard_dist(self) -> CategoricalProduct:
        return CategoricalProduct(self.logits)  # batch (), event (N, K) one-hot


class FlowPrior(Prior):
    r"""A learned flow prior :math:`p(z) = p_0(T^{-1}(z))\,|\det J_{T^{-1}}(z)|`,
    :math:`p_0 = \mathcal N(0, I)`, T a composition of Pyro transforms:

    * ``kind = "affine_autoregressive"`` (MAF, Papamakarios et al. 2017): each step of
      :math:`T^{-1}` is :math:`u_i = (z_i - m_i(z_{<i})) / s_i(z_{<i})`, a
      :class:`~pyro.distributions.transforms.AffineAutoregressive` used in its *inverse*
      direction (``.inv``), so the density of a guide's z is one MADE pass per step and only
      sampling (prior samples, AIS from the prior) is sequential (d passes). The order is
      reversed every other step and each step's output layer starts at zero: the prior starts
      as :math:`\mathcal N(0, I)`.
    * ``kind = "spline_coupling"`` (Durkan et al. 2019): monotonic rational-quadratic splines of
      the second half of z given the first
      (:class:`~pyro.distributions.transforms.SplineCoupling`, identity outside
      ``[-bound, bound]``), the halves swapped between steps (``Permute``): both directions in
      one pass. Needs d ≥ 2.

    :param latent_dim: d.
    :param kind: ``"affine_autoregressive"`` or ``"spline_coupling"``.
    :param num_flows: number of steps.
    :param hidden_sizes: hidden widths of each step's network.
    :param count_bins: spline bins (``spline_coupling``).
    :param bound: spline interval half-width (``spline_coupling``).
    """

    normalizing_flow = True
    reverse: torch.Tensor  #: the order-reversing permutation between coupling steps, a buffer

    def __init__(self, latent_dim: int, kind: str, num_flows: int, hidden_sizes: list[int],
                 count_bins: int = 8, bound: float = 3.0):
        super().__init__(latent_dim)
        _anchor(self)
        self.kind = kind
        steps: list[nn.Module] = []
        for t in range(num_flows):
            if kind == "affine_autoregressive":
                made = quiet_made(lambda t=t: AutoRegressiveNN(
                    latent_dim, list(hidden_sizes), permutation=alternating_order(latent_dim, t)))
                zero_last_layer(made)  # identity at initialisation
                steps.append(AffineAutoregressive(made))
            else:
                steps.append(spline_coupling(latent_dim, hidden_dims=list(hidden_sizes),
                                             count_bins=count_bins, bound=bound))
        self.flows = nn.ModuleList(steps)
        self.register_buffer("reverse", torch.arange(latent_dim).flip(0), persistent=False)

    @property
    def activations_per_sample(self) -> int:
        """Floats one particle's log-density produces (for memory estimates)."""
        d = self.latent_dim
        width = sum(m.out_features for m in self.flows.modules() if isinstance(m, nn.Linear))
        return width + 4 * d * len(self.flows)

    def transforms(self) -> list:
        """The transforms from the base to z, in order."""
        if self.kind == "affine_autoregressive":
            return [step.inv for step in self.flows]
        out: list = []
        for t, step in enumerate(self.flows):
            if t:
                out.append(Permute(self.reverse))
            out.append(step)
        return out

    def forward(self, temperature=None):
        zero = self._zeros()
        base = dist.Normal(zero, torch.ones_like(zero)).to_event(1)  # batch (), event (d,)
        return dist.TransformedDistribution(base, self.transforms())


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


class FlowOptions(Options):
    kind: Literal["affine_autoregressive", "spline_coupling"] = Field(
        "affine_autoregressive", description="MAF steps or spline couplings")
    num_flows: int = Field(2, gt=0, description="number of steps")
    hidden_sizes: FlowWidths = Field(default_factory=lambda: [200],
                                     description="hidden widths of each step's network")
    count_bins: int = Field(8, ge=2, description="spline bins (spline_coupling)")
    bound: float = Field(3.0, gt=0.0, description="spline interval [-bound, bound]")


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


@PRIORS.register("flow", FlowOptions, component=FlowPrior)
def _flow(opts, latent_dim, ctx):
    """Learned flow on N(0, I): MAF steps or spline couplings (Pyro transforms)."""
    if opts.kind == "affine_autoregressive":
        check_made_widths("model.prior", opts.hidden_sizes, latent_dim)
    elif latent_dim < 2:
        raise ConfigError("model.prior: kind = 'spline_coupling' splits z in two halves and "
                          "needs model.latent_dim ≥ 2; use kind = 'affine_autoregressive'")
    return FlowPrior(latent_dim, opts.kind, opts.num_flows, opts.hidden_sizes, opts.count_bins,
                     opts.bound)


@PRIORS.register("categorical", component=CategoricalPrior)
def _categorical(opts, latent_dim, ctx):
    """Product of categoricals for ``model.latent = "categorical"`` (uniform or learned logits)."""
    if not isinstance(ctx.latent, CategoricalLatent):
        raise ConfigError("model.prior: 'categorical' needs model.latent = 'categorical'")
    prior = CategoricalPrior(ctx.latent)
    bind = getattr(ctx.posterior, "bind_prior", None)
    if bind is not None:  # the guide's categorical-KL term reads the prior logits
        bind(prior)
    return prior


#: (guide family, prior) pairs whose KL torch computes in closed form (see the module docstring)
ANALYTIC_KL: frozenset[tuple[str, str]] = frozenset(
    {("normal", "standard_normal"), ("normal", "normal"), ("normal", "laplace")}
)


def has_analytic_kl(
    q: torch.distributions.Distribution, p: torch.distributions.Distribution
) -> bool:
    """True when ``kl_divergence(q, p)`` has a registered closed form (what TraceMeanField uses)."""
    try:
        kl_divergence(q, p)
    except NotImplementedError:
        return False
    return True
