r"""Likelihoods p_θ(x | z), selectable by ``model.likelihood``, each declaring the data it scores.

A likelihood turns the decoder's output ``params`` of shape ``(..., param_size)`` into a Pyro
distribution with ``batch_shape == (...)`` and ``event_shape == (D,)`` over a flattened data
point (every one is ``.to_event(1)`` of a per-feature distribution, or a distribution over the
whole row, so ``params`` of shape ``(K, B, param_size)`` under a particle plate give
log-probabilities ``(K, B)``). Each declares

* ``domain``: the data it can score (:data:`DOMAINS`): ``binary`` {0, 1}, ``unit`` [0, 1],
  ``levels`` the grid k/(L − 1) of L levels in [0, 1], ``counts`` non-negative integers, ``real``
  any finite number;
* ``param_size``: the decoder output width it needs (``D`` for one number per feature, ``2D``
  for two, ``L D`` for a categorical over L levels);
* ``discrete``: whether ``log_prob`` is a probability of the observed values (Bernoulli,
  categorical, discretized logistic, the count likelihoods) or a density (normal, Laplace,
  Student-t, beta, continuous Bernoulli) — densities on *dequantized* or *standardized* data
  convert to the units of the data with
  :meth:`vaelab.data.Preprocessor.log_jacobian_per_point` (added by
  :func:`vaelab.runs.run.evaluate`);
* :meth:`Likelihood.check_data`, which refuses data outside its domain with a
  :class:`~vaelab.registry.ConfigError` before a run writes anything, in one line naming the
  key, the offending values and the likelihoods of the registry whose domain holds the data
  (:func:`fitting_likelihoods`, computed from the declared domains).

====================================  ======  ========  ========  ================================
name                                  domain  size      log_prob  per feature
====================================  ======  ========  ========  ================================
``bernoulli``                         binary  D         mass      Bernoulli(σ(ℓ))
``continuous_bernoulli``              unit    D         density   CB(σ(ℓ)) (Loaiza-Ganem 2019 [1])
``beta``                              unit    2D        density   Beta(α, β), x clamped to [ε, 1−ε]
``discretized_logistic``              levels  2D        mass      logistic binned on k/(L−1) [2]
``categorical``                       levels  L D       mass      Categorical over the L levels [3]
``poisson``                           counts  D         mass      Poisson(e^η)
``negative_binomial``                 counts  D         mass      NB(μ = e^η, θ), θ learned [4]
``zero_inflated_negative_binomial``   counts  2D        mass      π δ₀ + (1 − π) NB(μ, θ) [4]
``normal``                            real    D         density   N(μ, σ²), σ fixed or learned
``laplace``                           real    D         density   Laplace(μ, b), b as for normal
``student_t``                         real    D         density   t_ν(μ, s), ν fixed or learned
====================================  ======  ========  ========  ================================

The count likelihoods take ``library_size = true`` to model the row's proportions instead of
its means: μ = softmax(ℓ) · Σ_d x_d, the observed total (single-cell VAEs [4];
:class:`~vaelab.model.distributions.LibraryScaledCounts`).

One topic: the registry of likelihoods, each a short class on the shared :class:`Likelihood`
base, kept in one module so that their domains and parameter shapes are read side by side.

References:
  1. G. Loaiza-Ganem, J. Cunningham. *The continuous Bernoulli: fixing a pervasive error in
     variational autoencoders*. NeurIPS 2019.
  2. T. Salimans, A. Karpathy, X. Chen, D. Kingma. *PixelCNN++: Improving the PixelCNN with
     Discretized Logistic Mixture Likelihood and Other Modifications*. ICLR 2017.
  3. A. van den Oord, N. Kalchbrenner, K. Kavukcuoglu. *Pixel Recurrent Neural Networks*. ICML
     2016.
  4. R. Lopez, J. Regier, M. B. Cole, M. I. Jordan, N. Yosef. *Deep generative modeling for
     single-cell transcriptomics*. Nature Methods 2018 (scVI).
"""

from __future__ import annotations

import math
from fractions import Fraction
from typing import Literal

import pyro.distributions as dist
import torch
from pydantic import Field, model_validator
from torch import nn
from torch.nn.functional import softplus

from vaelab.model.distributions import (
    MAX_LOG_RATE,
    BernoulliImage,
    DiscretizedLogistic,
    LibraryScaledCounts,
    PixelCategorical,
    count_distribution,
)
from vaelab.notes import note
from vaelab.registry import ConfigError, Options, Registry

__all__ = [
    "DOMAINS",
    "LIKELIHOODS",
    "LEVELS",
    "BernoulliLikelihood",
    "BetaLikelihood",
    "CategoricalLikelihood",
    "ClampedBeta",
    "ContinuousBernoulliLikelihood",
    "CountLikelihood",
    "DiscretizedLogisticLikelihood",
    "LaplaceLikelihood",
    "Likelihood",
    "NegativeBinomialLikelihood",
    "NormalLikelihood",
    "PoissonLikelihood",
    "StudentTLikelihood",
    "ZeroInflatedNegativeBinomialLikelihood",
    "fitting_likelihoods",
    "grid_levels",
    "outside_domain",
]

#: default number of levels of the level likelihoods: 8-bit data given as ``k / (LEVELS - 1)``
LEVELS = 256
#: tolerance (in units of one level) of the grid check, as in ``UnitGrid``
_GRID_ATOL = 1e-3
#: the largest L − 1 :func:`grid_levels` looks for (any grid a float32 value resolves exactly)
_MAX_DENOMINATOR = 1024

#: domain → what it holds, in the words of the error messages
DOMAINS = {
    "binary": "binary data in {0, 1}",
    "unit": "values in [0, 1]",
    "levels": "levels k/(L-1) in [0, 1]",
    "counts": "counts (non-negative integers)",
    "real": "finite real values",
}
Domain = Literal["binary", "unit", "levels", "counts", "real"]


# --------------------------------------------------------------------------------------------
# domains: which values a likelihood can score


def outside_domain(x: torch.Tensor, domain: str, levels: int | None = None) -> torch.Tensor:
    """The values of ``x`` outside ``domain`` (:data:`DOMAINS`), a boolean tensor like ``x``.

    NaN and infinities are outside every domain; ``levels`` (L) is the grid of ``levels``.
    """
    finite = torch.isfinite(x)
    if domain == "real":
        return ~finite
    if domain == "counts":
        return ~finite | (x < 0) | (x != x.round())
    if domain == "binary":
        return (x != 0) & (x != 1)
    off_unit = ~finite | (x < 0) | (x > 1)
    if domain == "unit":
        return off_unit
    if domain == "levels":
        if levels is None:
            raise ValueError("the levels domain needs the number of levels")
        scaled = x * (levels - 1)  # in units of levels
        return off_unit | ((scaled - scaled.round()).abs() > _GRID_ATOL)
    raise ValueError(f"unknown domain {domain!r}; domains: {', '.join(DOMAINS)}")


def grid_levels(x: torch.Tensor) -> int | None:
    """The number of levels L of the coarsest grid k/(L − 1) that holds every value of ``x``
    (L − 1 the least common denominator of the values, at most 1024), or ``None`` when ``x`` is
    off every such grid."""
    if x.numel() == 0 or bool(outside_domain(x, "unit").any()):
        return None
    values = torch.unique(x.detach().flatten().double().cpu())  # sorted
    denominator = 1
    for v in values.tolist():
        q = Fraction(v).limit_denominator(_MAX_DENOMINATOR).denominator
        denominator = math.lcm(denominator, q)
        if denominator > _MAX_DENOMINATOR:
            return None
    levels = max(2, denominator + 1)
    return None if bool(outside_domain(values, "levels", levels).any()) else levels


def fitting_likelihoods(x: torch.Tensor) -> list[str]:
    """The registered likelihoods whose declared domain holds every value of ``x`` (a level
    likelihood with the number of levels that fits, e.g. ``categorical (levels = 17)``)."""
    out = []
    grid = grid_levels(x)
    for name in LIKELIHOODS.names():
        domain = getattr(LIKELIHOODS.entry(name).component, "domain", None)
        if domain is None:
            continue
        if domain == "levels":
            if grid is not None:
                out.append(f"{name} (levels = {grid})")
        elif not bool(outside_domain(x, domain).any()):
            out.append(name)
    return out


def _examples(values: torch.Tensor, n: int = 3) -> str:
    """Up to ``n`` distinct offending values, as ``0.53, -1.2, nan``."""
    seen: list[float] = []
    for v in values.flatten()[:10_000].tolist():
        if not any(v == s or (math.isnan(v) and math.isnan(s)) for s in seen):
            seen.append(v)
        if len(seen) == n:
            break
    return ", ".join(f"{v:.4g}" for v in seen)


class Likelihood(nn.Module):
    """Base class of the observation models.

    A subclass declares its ``domain`` (default ``real``: any finite value) and, for the
    ``levels`` domain, sets ``self.levels``; :meth:`check_data` needs nothing else.
    """

    #: log_prob is a probability mass of the observed values (else a density)
    discrete: bool = False
    #: the values it scores, a key of :data:`DOMAINS`
    domain: Domain = "real"
    #: L, the number of levels of the ``levels`` domain
    levels: int | None = None

    def __init__(self, data_dim: int):
        super().__init__()
        self.data_dim = data_dim

    @property
    def param_size(self) -> int:
        """Decoder output width: ``D`` unless a subclass needs more numbers per feature."""
        return self.data_dim

    def forward(self, params: torch.Tensor) -> dist.TorchDistribution:
        """``params (..., param_size)`` → distribution with batch ``(...)``, event ``(D,)``."""
        raise NotImplementedError

    def mean(self, params: torch.Tensor) -> torch.Tensor:
        """E[x | z] in data space, ``(..., D)``."""
        return self(params).mean

    def note_fit(self, x: torch.Tensor, key: str) -> None:
        """Say (one note) what in data the likelihood can score would still make it fit
        badly; nothing by default (see :meth:`ScaleMixin.note_fit`)."""

    def describe_domain(self) -> str:
        """The domain in words, e.g. ``levels k/(L-1) in [0, 1], L = 256``."""
        text = DOMAINS[self.domain]
        return f"{text}, L = {self.levels}" if self.domain == "levels" else text

    def check_data(self, x: torch.Tensor, key: str = "model.likelihood") -> None:
        """Raise :class:`ConfigError` when ``x`` has values outside this likelihood's domain.

        One line: the key, what is wrong with which values (a count and examples), the
        likelihoods that would fit the data (:func:`fitting_likelihoods`) and, where one applies,
        the data setting that would make them fit.

        :param x: a sample of the data *as the model will see it* (after preprocessing),
            ``(N, D)``.
        :param key: the config key named in the message.
        """
        bad = outside_domain(x, self.domain, self.levels)
        if not bool(bad.any()):
            self.note_fit(x, key.split(" ")[0])
            return
        name = type(self).__name__
        finite = torch.isfinite(x)
        in_unit = bool(finite.all()) and not bool(outside_domain(x, "unit").any())
        span = ""
        if not bool(finite.all()):
            what, bad = "NaN or infinite", ~finite
        elif self.domain == "counts" and bool((x < 0).any()):
            what, bad = "negative", x < 0
        elif self.domain == "counts":
            what = "not integers"
        elif self.domain == "binary" and in_unit:
            what = "grey levels, not 0 or 1"
        elif self.domain == "levels" and in_unit:
            what = "off that grid"
        else:
            what = "outside [0, 1]"
            span = f"; the data span [{float(x.min()):.4g}, {float(x.max()):.4g}]"
            bad = bad & finite & ((x < 0) | (x > 1))
        hint = ""
        if self.domain == "binary" and in_unit:
            hint = "; or set data.binarize = \"static\" or \"dynamic\""
        elif self.domain == "levels" and in_unit:
            grid = grid_levels(x)
            hint = (f"; or set {key.split(' ')[0]}.levels = {grid}" if grid is not None else
                    "; if data.dequantize = true the data are continuous: set "
                    "data.dequantize = false for this likelihood")
        fits = ", ".join(fitting_likelihoods(x)) or "none"
        raise ConfigError(
            f"{key}: {name} needs {self.describe_domain()}, but {int(bad.sum())} of "
            f"{bad.numel()} values are {what} (e.g. {_examples(x[bad])}{span}); likelihoods "
            f"that fit these data: {fits}{hint}"
        )


LIKELIHOODS: Registry[Likelihood] = Registry("likelihood")


# --------------------------------------------------------------------------------------------
# binary and [0, 1] data, one logit per feature


class BernoulliLikelihood(Likelihood):
    r""":math:`x_d \sim \mathrm{Bernoulli}(\sigma(\ell_d))`, ℓ the decoder's logits (binary
    data).

    ``clamp = c > 0`` scores :math:`\mathrm{Bernoulli}(\min(\max(\sigma(\ell_d), c), 1 - c))`,
    as the VampPrior code's ``log_Bernoulli`` does (``utils/distributions.py``: c = 1e-5),
    computed as the same clamp on the logits, :math:`\ell \mapsto \min(\max(\ell,
    \operatorname{logit} c), \operatorname{logit}(1 - c))` (σ is increasing): no pixel then
    costs more than :math:`-\log c` nats, and a clamped logit gets no gradient."""

    discrete = True
    domain = "binary"

    def __init__(self, data_dim: int, clamp: float = 0.0):
        super().__init__(data_dim)
        self.clamp = clamp
        self._bound = math.log(1.0 - clamp) - math.log(clamp) if clamp > 0 else math.inf

    def forward(self, params):
        if self.clamp > 0:
            params = params.clamp(-self._bound, self._bound)
        # one fused contraction over the pixels (see BernoulliImage); validate_args=False: the
        # support check costs ~0.2 ms per 128×784 batch (PYRO_NOTES), check_data did it once
        return BernoulliImage(params, validate_args=False)

    def mean(self, params):
        return torch.sigmoid(params)


class ContinuousBernoulliLikelihood(Likelihood):
    r""":math:`x_d \sim \mathcal{CB}(\lambda_d)`, :math:`\lambda = \sigma(\ell)`, a proper density
    on [0, 1] [1]:

    .. math::

        p(x \mid \lambda) = C(\lambda)\, \lambda^x (1 - \lambda)^{1 - x}, \qquad
        C(\lambda) = \frac{2 \tanh^{-1}(1 - 2\lambda)}{1 - 2\lambda}, \quad C(\tfrac12) = 2.

    The Bernoulli "likelihood" of grey-level data is this density without :math:`\log C`.
    :meth:`mean` is the CB mean :math:`\frac{\lambda}{2\lambda - 1} +
    \frac{1}{2\tanh^{-1}(1 - 2\lambda)}`, not λ (torch's ``ContinuousBernoulli``, through
    :mod:`pyro.distributions`).
    """

    domain = "unit"

    def forward(self, params):
        return dist.ContinuousBernoulli(logits=params, validate_args=False).to_event(1)


# --------------------------------------------------------------------------------------------
# location-scale densities: normal and Laplace


class ScaleMixin(nn.Module):
    r"""A scale that is fixed, learned per feature (``learn = "pixel"`` or its synonym
    ``"feature"``), or learned and shared, with a floor:
    :math:`s = \mathrm{softplus}(\rho) + s_{\min}` when learned."""

    fixed_scale: torch.Tensor  #: a buffer, ``learn = "fixed"``
    raw_scale: nn.Parameter  #: ρ, ``learn = "pixel"`` / ``"feature"`` or ``"shared"``
    #: a fixed scale this many times smaller or larger than the data's spread is noted
    FAR = 30.0
    _fit_noted = False

    def note_fit(self, x: torch.Tensor, key: str) -> None:
        r"""One note when the scale is fixed and the data's spread
        :math:`\bar s = (\frac1D \sum_d \mathrm{Var}(x_d))^{1/2}` (``x (N, D)`` as the model
        sees it) is over :attr:`FAR` times larger or smaller than it: a residual of
        :math:`\bar s` then costs :math:`\bar s^2 / 2s^2` nats per feature, and training
        cannot repair it (e.g. s = 0.1 on data of spread 30: 45,000 nats per feature)."""
        if self.learn != "fixed" or self._fit_noted or x.shape[0] < 2:
            return
        spread = float(x.double().var(0).mean().sqrt())
        scale = float(self.fixed_scale)
        if scale / self.FAR <= spread <= scale * self.FAR or not math.isfinite(spread):
            return
        self._fit_noted = True
        note(f"{key}: {type(self).__name__}'s fixed scale {scale:g} is far from the data's "
             f"spread (a standard deviation of {spread:.3g} per feature, {spread / scale:.3g} "
             "times the scale), so log p(x) will be dominated by it; set data.standardize = "
             f"true, or learn the scale ({key}.learn = \"feature\")")

    def _init_scale(self, data_dim: int, opts) -> None:
        self.learn = opts.learn
        self.min_scale = opts.min_scale
        if opts.learn == "fixed":
            self.register_buffer("fixed_scale", torch.tensor(float(opts.scale)))
        else:
            shape = (data_dim,) if opts.learn in ("pixel", "feature") else ()
            self.raw_scale = nn.Parameter(torch.full(shape, _softplus_inverse(
                opts.scale - opts.min_scale)))  # softplus(raw) + floor = scale at init

    def scale(self) -> torch.Tensor:
        """The scale, ``()`` (fixed or shared) or ``(D,)`` (per feature)."""
        if self.learn == "fixed":
            return self.fixed_scale
        return softplus(self.raw_scale) + self.min_scale


class NormalLikelihood(ScaleMixin, Likelihood):
    r""":math:`x_d \sim \mathcal{N}(\mu_d, s^2)`, μ the decoder's output; s fixed
    (``learn = "fixed"``), learned per feature (``"pixel"`` or ``"feature"``) or one learned
    scale (``"shared"``). Any real-valued data; with ``model.hidden_sizes = []`` the model is
    probabilistic PCA (factor analysis with a per-feature scale), whose log p(x) has a closed
    form (:func:`vaelab.inference.exact.linear_gaussian_log_likelihood`).

    .. note:: A learned variance on quantized data is unbounded (s → 0 on repeated values): keep
        ``min_scale > 0`` and dequantize 8-bit data. Set the initial ``scale`` near the data's
        spread (or ``data.standardize = true``): the default 0.1 suits [0, 1] images.
    """

    family = dist.Normal

    def __init__(self, data_dim: int, opts):
        super().__init__(data_dim)
        self._init_scale(data_dim, opts)

    def forward(self, params):
        loc = params  # (..., D)
        scale = self.scale().expand_as(loc)  # (..., D)
        return self.family(loc, scale, validate_args=False).to_event(1)

    def mean(self, params):
        return params


class LaplaceLikelihood(NormalLikelihood):
    r""":math:`x_d \sim \mathrm{Laplace}(\mu_d, b)`,
    :math:`\log p = -\log 2b - |x - \mu| / b`; b fixed, learned per feature or shared (as for
    ``normal``). The L1 counterpart of the normal likelihood: the mode is the median image."""

    family = dist.Laplace


class StudentTLikelihood(ScaleMixin, Likelihood):
    r""":math:`x_d \sim t_{\nu}(\mu_d, s)`, the heavy-tailed location-scale density

    .. math::

        \log p(x) = \log\Gamma\big(\tfrac{\nu + 1}{2}\big) - \log\Gamma\big(\tfrac{\nu}{2}\big)
            - \tfrac12 \log(\nu\pi s^2)
            - \tfrac{\nu + 1}{2} \log\Big(1 + \frac{(x - \mu)^2}{\nu s^2}\Big),

    μ the decoder's output, s as for ``normal`` (fixed, per feature or shared), ν fixed
    (``df``) or learned per feature from ``df`` (``learn_df = true``,
    :math:`\nu = \mathrm{softplus}(\cdot) + \nu_{\min}`). ν → ∞ is the normal likelihood;
    outlying values cost logarithmically instead of quadratically. torch's ``StudentT``.
    """

    fixed_df: torch.Tensor  #: a buffer, ``learn_df = false``
    raw_df: nn.Parameter  #: learned per feature, ``learn_df = true``

    def __init__(self, data_dim: int, opts):
        super().__init__(data_dim)
        self._init_scale(data_dim, opts)
        self.learn_df, self.min_df = opts.learn_df, opts.min_df
        if opts.learn_df:
            self.raw_df = nn.Parameter(
                torch.full((data_dim,), _softplus_inverse(opts.df - opts.min_df)))
        else:
            self.register_buffer("fixed_df", torch.tensor(float(opts.df)))

    def df(self) -> torch.Tensor:
        """ν, ``()`` (fixed) or ``(D,)`` (learned)."""
        return softplus(self.raw_df) + self.min_df if self.learn_df else self.fixed_df

    def forward(self, params):
        loc = params  # (..., D)
        scale = self.scale().expand_as(loc)  # (..., D)
        df = self.df().expand_as(loc)  # (..., D)
        return dist.StudentT(df, loc, scale, validate_args=False).to_event(1)

    def mean(self, params):
        return params  # the location: the mean where ν > 1, the median always


# --------------------------------------------------------------------------------------------
# Beta


class ClampedBeta(dist.Beta):
    r"""A :class:`~pyro.distributions.Beta` that scores ``clamp(x, ε, 1 − ε)``.

    The Beta log-density is ``-inf`` or ``+inf`` at exactly 0 and 1 (whenever α ≠ 1 or β ≠ 1);
    clamping the *observation* keeps the log-likelihood finite. With dequantized 8-bit data the
    clamp is only met by the measure-zero draws at the edges; on raw 8-bit data it changes the
    density of every black or white pixel, so dequantize (``data.dequantize = true``).

    :param concentration1: α > 0, ``batch_shape``.
    :param concentration0: β > 0, ``batch_shape``.
    :param float eps: ε of the clamp, in (0, 1/2).
    """

    def __init__(self, concentration1, concentration0, eps: float, validate_args=None):
        self.eps = float(eps)
        super().__init__(concentration1, concentration0, validate_args=validate_args)

    def expand(self, batch_shape, _instance=None):
        new = self._get_checked_instance(ClampedBeta, _instance)
        new.eps = self.eps
        return super().expand(batch_shape, _instance=new)

    def log_prob(self, value):
        return super().log_prob(value.clamp(self.eps, 1.0 - self.eps))


class BetaLikelihood(Likelihood):
    r""":math:`x_d \sim \mathrm{Beta}(\alpha_d, \beta_d)` with the observation clamped to
    :math:`[\varepsilon, 1 - \varepsilon]` (:class:`ClampedBeta`); the decoder outputs
    :math:`2D` numbers, :math:`\alpha = \mathrm{softplus}(a) + c_{\min}`,
    :math:`\beta = \mathrm{softplus}(b) + c_{\min}`.

    .. math::

        \log p(x) = (\alpha - 1) \log x + (\beta - 1) \log(1 - x) - \log B(\alpha, \beta)

    Meant for dequantized 8-bit data, :math:`x' = (k + u) / 256 \in (0, 1)`.
    """

    domain = "unit"

    def __init__(self, data_dim: int, opts):
        super().__init__(data_dim)
        self.eps = opts.eps
        self.min_concentration = opts.min_concentration

    @property
    def param_size(self) -> int:
        return 2 * self.data_dim

    def concentrations(self, params: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``params (..., 2D)`` → α ``(..., D)``, β ``(..., D)``."""
        a, b = params.split(self.data_dim, dim=-1)  # (..., D), (..., D)
        return softplus(a) + self.min_concentration, softplus(b) + self.min_concentration

    def forward(self, params):
        alpha, beta = self.concentrations(params)
        return ClampedBeta(alpha, beta, self.eps, validate_args=False).to_event(1)

    def mean(self, params):
        alpha, beta = self.concentrations(params)
        return alpha / (alpha + beta)


# --------------------------------------------------------------------------------------------
# level likelihoods: probability masses on the grid k/(L - 1), L = 256 for 8-bit data


class DiscretizedLogisticLikelihood(Likelihood):
    r""":math:`x_d \sim \mathrm{DiscretizedLogistic}(\mu_d, s_d)` on the L levels
    :math:`k/(L-1)` (``levels``, 256 by default: 8-bit data as k/255;
    :class:`~vaelab.model.distributions.DiscretizedLogistic`, PixelCNN++ edge bins [2]): the mass
    of level k is the logistic CDF difference across the bin
    :math:`[x_k - \Delta/2, x_k + \Delta/2]`, :math:`\Delta = 1/(L-1)`, edge bins taking the
    tails. The decoder outputs μ and :math:`s = \mathrm{softplus}(\cdot) + s_{\min}` per
    feature (``2D``). Data: raw levels (``data.dequantize = false``; counts 0..L−1 read with
    ``data.values = "levels"``).
    """

    discrete = True
    domain = "levels"

    def __init__(self, data_dim: int, opts):
        super().__init__(data_dim)
        self.min_scale = opts.min_scale
        self.levels = opts.levels

    @property
    def param_size(self) -> int:
        return 2 * self.data_dim

    def forward(self, params):
        loc, raw = params.split(self.data_dim, dim=-1)  # (..., D), (..., D)
        scale = softplus(raw) + self.min_scale
        return DiscretizedLogistic(loc, scale, self.levels, validate_args=False).to_event(1)


class CategoricalLikelihood(Likelihood):
    r""":math:`x_d \sim \mathrm{Categorical}(\mathrm{softmax}(\ell_d))` over the L levels
    :math:`k/(L-1)` (``levels``, 256 by default;
    :class:`~vaelab.model.distributions.PixelCategorical`, as in PixelRNN [3]): no ordering
    between levels is assumed. The decoder outputs L logits per feature (``L D``, viewed as
    ``(..., D, L)``).

    .. note:: L times the decoder output (and memory) of a Bernoulli decoder; importance
        sampling sizes its particle chunks from ``param_size`` accordingly.
    """

    discrete = True
    #: the decoder's P·D outputs are read pixel by pixel, (D, L) (see vaelab.model.networks)
    param_layout = "pixels"
    domain = "levels"
    levels: int

    def __init__(self, data_dim: int, opts):
        super().__init__(data_dim)
        self.levels = opts.levels

    @property
    def param_size(self) -> int:
        return self.levels * self.data_dim

    def forward(self, params):
        logits = params.unflatten(-1, (self.data_dim, self.levels))  # (..., D, L)
        return PixelCategorical(logits, self.levels, validate_args=False).to_event(1)


# --------------------------------------------------------------------------------------------
# counts: non-negative integers, unbounded


class CountLikelihood(Likelihood):
    r"""Base of the count likelihoods: independent counts with mean
    :math:`\mu_d = e^{\eta_d}`, η the decoder's output (a log link), from
    :func:`~vaelab.model.distributions.count_distribution`.

    With ``library_size = true`` the decoder's D outputs are instead the logits of the
    proportions, :math:`\mu_d = \mathrm{softmax}(\eta)_d \cdot \ell` with ℓ the row's observed
    total :math:`\sum_d x_d` (scVI's observed library size [4],
    :class:`~vaelab.model.distributions.LibraryScaledCounts`): the model explains the
    composition of a row, and log p(x) is conditional on its total. :meth:`mean` is then the
    mean per unit of total, :math:`\mathbb{E}[x \mid z, \ell] / \ell`.

    The negative-binomial likelihoods learn one inverse dispersion per feature,
    :math:`\theta_d = \mathrm{softplus}(\cdot) + \theta_{\min}` (scVI's ``dispersion =
    "gene"``), initialised at ``inverse_dispersion``.
    """

    discrete = True
    domain = "counts"
    #: a key of :data:`~vaelab.model.distributions.COUNT_FAMILIES`
    family: str = "poisson"
    #: whether the family has an inverse dispersion θ
    dispersed: bool = False
    #: whether the decoder also outputs a zero-inflation logit per feature
    inflated: bool = False

    raw_inverse_dispersion: nn.Parameter  #: ρ of θ = softplus(ρ) + θ_min, ``(D,)``

    def __init__(self, data_dim: int, opts):
        super().__init__(data_dim)
        self.library_size = opts.library_size
        if self.dispersed:
            self.min_inverse_dispersion = opts.min_inverse_dispersion
            self.raw_inverse_dispersion = nn.Parameter(torch.full((data_dim,), _softplus_inverse(
                opts.inverse_dispersion - opts.min_inverse_dispersion)))

    @property
    def param_size(self) -> int:
        return (2 if self.inflated else 1) * self.data_dim

    def inverse_dispersion(self) -> torch.Tensor | None:
        """θ, ``(D,)`` (``None`` for the Poisson likelihood)."""
        if not self.dispersed:
            return None
        return softplus(self.raw_inverse_dispersion) + self.min_inverse_dispersion

    def _split(self, params: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``params (..., param_size)`` → η ``(..., D)`` and the gate logits ``(..., D)``."""
        if not self.inflated:
            return params, None
        eta, gate = params.split(self.data_dim, dim=-1)  # (..., D), (..., D)
        return eta, gate

    def forward(self, params):
        eta, gate = self._split(params)
        theta = self.inverse_dispersion()
        if self.library_size:
            return LibraryScaledCounts(eta.log_softmax(-1), self.family, theta, gate,
                                       validate_args=False)
        return count_distribution(self.family, eta, theta, gate).to_event(1)

    def mean(self, params):
        eta, gate = self._split(params)
        mu = eta.softmax(-1) if self.library_size else eta.clamp(-MAX_LOG_RATE, MAX_LOG_RATE).exp()
        return mu if gate is None else torch.sigmoid(-gate) * mu  # (1 − π) μ


class PoissonLikelihood(CountLikelihood):
    r""":math:`x_d \sim \mathrm{Poisson}(\mu_d)`,
    :math:`\log P(x) = x \log\mu - \mu - \log x!`, :math:`\mu = e^{\eta}` (Pyro's
    ``Poisson``; the log-rate is clamped to [−80, 80]). Variance = mean."""

    family = "poisson"


class NegativeBinomialLikelihood(CountLikelihood):
    r""":math:`x_d \sim \mathrm{NB}(\mu_d, \theta_d)`, mean μ and inverse dispersion θ (the scVI
    parameterisation [4]): variance :math:`\mu + \mu^2/\theta`, Poisson as θ → ∞. Pyro's
    ``NegativeBinomial(total_count=θ, logits=log μ − log θ)``."""

    family = "negative_binomial"
    dispersed = True


class ZeroInflatedNegativeBinomialLikelihood(CountLikelihood):
    r""":math:`x_d \sim \pi_d\, \delta_0 + (1 - \pi_d)\, \mathrm{NB}(\mu_d, \theta_d)`,
    :math:`\pi = \sigma(g)` with the gate logits g decoded beside η (``2D`` outputs): extra
    zeros (dropouts) beyond the NB's own. Pyro's ``ZeroInflatedNegativeBinomial``."""

    family = "zero_inflated_negative_binomial"
    dispersed = True
    inflated = True


def _softplus_inverse(y: float) -> float:
    """ρ with softplus(ρ) = y (y floored at 1e-6)."""
    y = max(y, 1e-6)
    return math.log(math.expm1(y)) if y < 20.0 else y + math.log(-math.expm1(-y))


# --------------------------------------------------------------------------------------------
# options and registration


class BernoulliOptions(Options):
    """Options of ``bernoulli``."""

    clamp: float = Field(0.0, ge=0.0, lt=0.5, description="score probabilities clamped to "
                         "[clamp, 1 - clamp] (0: none; the VampPrior code: 1e-5)")


class ScaleOptions(Options):
    """Options of ``normal`` and ``laplace``."""

    scale: float = Field(0.1, gt=0.0, description="the fixed scale, or the initial learned one")
    learn: Literal["fixed", "pixel", "feature", "shared"] = Field(
        "fixed", description="fixed, learned per feature ('pixel' or 'feature'), or one "
        "learned scale"
    )
    min_scale: float = Field(1e-3, ge=0.0, description="floor added to a learned scale")


class StudentTOptions(ScaleOptions):
    """Options of ``student_t``: the scale as for ``normal``, and the degrees of freedom."""

    df: float = Field(5.0, gt=0.0, description="degrees of freedom ν, fixed or initial")
    learn_df: bool = Field(False, description="learn ν per feature (from df)")
    min_df: float = Field(0.1, gt=0.0, description="floor added to a learned ν")

    @model_validator(mode="after")
    def _df_above_floor(self):
        if self.learn_df and self.df <= self.min_df:
            raise ValueError(f"df = {self.df} must exceed min_df = {self.min_df} when learned")
        return self


class CountOptions(Options):
    """Options of ``poisson``."""

    library_size: bool = Field(
        False, description="decode proportions, scaled by each row's observed total count")


class DispersionOptions(CountOptions):
    """Options of ``negative_binomial`` and ``zero_inflated_negative_binomial``."""

    inverse_dispersion: float = Field(1.0, gt=0.0, description="initial θ of every feature")
    min_inverse_dispersion: float = Field(1e-4, ge=0.0, description="floor added to θ")


class LevelsOptions(Options):
    """Options of ``categorical``."""

    levels: int = Field(LEVELS, ge=2, description="L, levels k/(L-1) (256: 8-bit data)")


class BetaOptions(Options):
    eps: float = Field(1e-5, gt=0.0, lt=0.5, description="observations clamped to [eps, 1-eps]")
    min_concentration: float = Field(1e-3, ge=0.0, description="floor added to α and β")


class DiscretizedLogisticOptions(LevelsOptions):
    min_scale: float = Field(1e-3, gt=0.0, description="floor added to the logistic scale")


@LIKELIHOODS.register("bernoulli", BernoulliOptions, component=BernoulliLikelihood)
def _bernoulli(opts, data_dim):
    """Bernoulli with logits: binary data only."""
    return BernoulliLikelihood(data_dim, opts.clamp)


@LIKELIHOODS.register("continuous_bernoulli", component=ContinuousBernoulliLikelihood)
def _continuous_bernoulli(opts, data_dim):
    """Continuous Bernoulli with logits: a normalized density on [0, 1]."""
    return ContinuousBernoulliLikelihood(data_dim)


@LIKELIHOODS.register("normal", ScaleOptions, component=NormalLikelihood)
def _normal(opts, data_dim):
    """Normal with fixed, per-feature or shared learned scale: real-valued data."""
    return NormalLikelihood(data_dim, opts)


@LIKELIHOODS.register("laplace", ScaleOptions, component=LaplaceLikelihood)
def _laplace(opts, data_dim):
    """Laplace with fixed, per-feature or shared learned scale: real-valued data."""
    return LaplaceLikelihood(data_dim, opts)


@LIKELIHOODS.register("student_t", StudentTOptions, component=StudentTLikelihood)
def _student_t(opts, data_dim):
    """Student-t with fixed or learned degrees of freedom: real-valued data, heavy tails."""
    return StudentTLikelihood(data_dim, opts)


@LIKELIHOODS.register("beta", BetaOptions, component=BetaLikelihood)
def _beta(opts, data_dim):
    """Beta with two decoded concentrations; observations clamped to [eps, 1 - eps]."""
    return BetaLikelihood(data_dim, opts)


@LIKELIHOODS.register("discretized_logistic", DiscretizedLogisticOptions,
                      component=DiscretizedLogisticLikelihood)
def _discretized_logistic(opts, data_dim):
    """Discretized logistic on the grid of L levels (PixelCNN++ edge bins)."""
    return DiscretizedLogisticLikelihood(data_dim, opts)


@LIKELIHOODS.register("categorical", LevelsOptions, component=CategoricalLikelihood)
def _categorical(opts, data_dim):
    """L-way categorical per feature (256 by default)."""
    return CategoricalLikelihood(data_dim, opts)


@LIKELIHOODS.register("poisson", CountOptions, component=PoissonLikelihood)
def _poisson(opts, data_dim):
    """Poisson counts with a log link (or library-size scaled proportions)."""
    return PoissonLikelihood(data_dim, opts)


@LIKELIHOODS.register("negative_binomial", DispersionOptions,
                      component=NegativeBinomialLikelihood)
def _negative_binomial(opts, data_dim):
    """Negative binomial counts: mean and a learned inverse dispersion per feature."""
    return NegativeBinomialLikelihood(data_dim, opts)


@LIKELIHOODS.register("zero_inflated_negative_binomial", DispersionOptions,
                      component=ZeroInflatedNegativeBinomialLikelihood)
def _zero_inflated_negative_binomial(opts, data_dim):
    """Zero-inflated negative binomial counts: NB plus a decoded dropout probability."""
    return ZeroInflatedNegativeBinomialLikelihood(data_dim, opts)
