r"""Likelihoods p_θ(x | z), selectable by ``model.likelihood``.

A likelihood turns the decoder's output ``params`` of shape ``(..., param_size)`` into a Pyro
distribution with ``batch_shape == (...)`` and ``event_shape == (D,)`` over a flattened data
point in [0, 1]^D (every one is ``.to_event(1)`` of a per-pixel distribution, so ``params`` of
shape ``(K, B, param_size)`` under a particle plate give log-probabilities ``(K, B)``). Each
declares

* ``param_size``: the decoder output width it needs (``D`` for logits, ``2D`` for two numbers per
  pixel, ``256 D`` for a categorical over 8-bit levels);
* ``discrete``: whether ``log_prob`` is a probability of the observed values (Bernoulli,
  categorical, discretized logistic) or a density (normal, Laplace, beta, continuous Bernoulli)
  — densities on *dequantized* 8-bit data convert to the same units, nats of the 8-bit image,
  with the ``− D log 256`` term of :meth:`vaelab.data.Preprocessor.log_jacobian_per_point`
  (added by :func:`vaelab.run.evaluate`);
* :meth:`Likelihood.check_data`, which refuses data it cannot score with a
  :class:`~vaelab.registry.ConfigError` before a run writes anything: Bernoulli on grey levels,
  the two 8-bit likelihoods on data off the grid ``k/255`` (e.g. dequantized data).

============================  =========  ==========  ===========================================
name                          size       log_prob    per pixel
============================  =========  ==========  ===========================================
``bernoulli``                 D          mass        Bernoulli(σ(ℓ)), x ∈ {0, 1}
``continuous_bernoulli``      D          density     CB(σ(ℓ)) on [0, 1] (Loaiza-Ganem 2019 [1])
``normal``                    D          density     N(μ, σ²), σ fixed / learned (pixel, shared)
``laplace``                   D          density     Laplace(μ, b), b as for ``normal``
``beta``                      2D         density     Beta(α, β), x clamped to [ε, 1 − ε]
``discretized_logistic``      2D         mass        logistic binned on k/255 (PixelCNN++ [2])
``categorical``               256 D      mass        Categorical over the 256 levels k/255 [3]
============================  =========  ==========  ===========================================

References:
  1. G. Loaiza-Ganem, J. Cunningham. *The continuous Bernoulli: fixing a pervasive error in
     variational autoencoders*. NeurIPS 2019.
  2. T. Salimans, A. Karpathy, X. Chen, D. Kingma. *PixelCNN++: Improving the PixelCNN with
     Discretized Logistic Mixture Likelihood and Other Modifications*. ICLR 2017.
  3. A. van den Oord, N. Kalchbrenner, K. Kavukcuoglu. *Pixel Recurrent Neural Networks*. ICML
     2016.
"""

from __future__ import annotations

import math
from typing import Literal

import pyro.distributions as dist
import torch
from pydantic import Field
from torch import nn
from torch.nn.functional import softplus

from vaelab.model.distributions import BernoulliImage, DiscretizedLogistic, PixelCategorical
from vaelab.registry import ConfigError, Options, Registry

__all__ = [
    "LIKELIHOODS",
    "LEVELS",
    "BernoulliLikelihood",
    "BetaLikelihood",
    "CategoricalLikelihood",
    "ClampedBeta",
    "ContinuousBernoulliLikelihood",
    "DiscretizedLogisticLikelihood",
    "LaplaceLikelihood",
    "Likelihood",
    "NormalLikelihood",
]

#: number of grey levels of 8-bit data, given to the likelihoods as ``k / (LEVELS - 1)``
LEVELS = 256
#: tolerance (in units of one level) of the 8-bit grid check, as in ``UnitGrid``
_GRID_ATOL = 1e-3


class Likelihood(nn.Module):
    """Base class of the observation models."""

    #: log_prob is a probability mass of the observed values (else a density)
    discrete: bool = False
    #: needs data in {0, 1}
    requires_binary: bool = False
    #: needs data on the 8-bit grid k/255
    requires_levels: bool = False

    def __init__(self, data_dim: int):
        super().__init__()
        self.data_dim = data_dim

    @property
    def param_size(self) -> int:
        """Decoder output width: ``D`` unless a subclass needs more numbers per pixel."""
        return self.data_dim

    def forward(self, params: torch.Tensor) -> dist.TorchDistribution:
        """``params (..., param_size)`` → distribution with batch ``(...)``, event ``(D,)``."""
        raise NotImplementedError

    def mean(self, params: torch.Tensor) -> torch.Tensor:
        """E[x | z] as an image in data space, ``(..., D)``."""
        return self(params).mean

    def check_data(self, x: torch.Tensor, key: str = "model.likelihood") -> None:
        """Raise :class:`ConfigError` when this likelihood cannot score data like ``x``.

        :param x: a sample of the data *as the model will see it* (after preprocessing),
            ``(N, D)``.
        :param key: the config key named in the message.
        """
        name = type(self).__name__
        if self.requires_binary and not bool(((x == 0) | (x == 1)).all()):
            bad = x[(x != 0) & (x != 1)][:3].tolist()
            raise ConfigError(
                f"{key}: {name} needs binary data in {{0, 1}}, but the data has grey levels "
                f"(e.g. {bad}); set data.binarize = \"static\" or \"dynamic\", or choose a "
                "likelihood for grey levels (continuous_bernoulli, normal, laplace, beta, "
                "discretized_logistic, categorical)"
            )
        if x.numel() and (bool(x.min() < 0) or bool(x.max() > 1)):
            raise ConfigError(
                f"{key}: {name} expects data scaled to [0, 1], got values in "
                f"[{float(x.min()):.3g}, {float(x.max()):.3g}]"
            )
        if self.requires_levels:
            scaled = x * (LEVELS - 1)  # in units of levels
            off = (scaled - scaled.round()).abs() > _GRID_ATOL
            if bool(off.any()):
                bad = [round(v, 5) for v in x[off][:3].tolist()]
                raise ConfigError(
                    f"{key}: {name} scores 8-bit data given as k/255, k = 0..255, but the data "
                    f"has values off that grid (e.g. {bad}); with data.dequantize = true the "
                    "data are continuous: set data.dequantize = false for this likelihood, or "
                    "choose a density (normal, laplace, beta, continuous_bernoulli) for "
                    "dequantized data"
                )


LIKELIHOODS: Registry[Likelihood] = Registry("likelihood")


# --------------------------------------------------------------------------------------------
# binary and [0, 1] data, one logit per pixel


class BernoulliLikelihood(Likelihood):
    r""":math:`x_d \sim \mathrm{Bernoulli}(\sigma(\ell_d))`, ℓ the decoder's logits (binary
    data)."""

    discrete = True
    requires_binary = True

    def forward(self, params):
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

    def forward(self, params):
        return dist.ContinuousBernoulli(logits=params, validate_args=False).to_event(1)


# --------------------------------------------------------------------------------------------
# location-scale densities: normal and Laplace


class ScaleMixin(nn.Module):
    r"""A scale that is fixed, learned per pixel, or learned and shared, with a floor:
    :math:`s = \mathrm{softplus}(\rho) + s_{\min}` when learned."""

    fixed_scale: torch.Tensor  #: a buffer, ``learn = "fixed"``
    raw_scale: nn.Parameter  #: ρ, ``learn = "pixel"`` or ``"shared"``

    def _init_scale(self, data_dim: int, opts) -> None:
        self.learn = opts.learn
        self.min_scale = opts.min_scale
        if opts.learn == "fixed":
            self.register_buffer("fixed_scale", torch.tensor(float(opts.scale)))
        else:
            shape = (data_dim,) if opts.learn == "pixel" else ()
            # softplus(raw) + floor = scale at initialisation
            raw = math.log(math.expm1(max(opts.scale - opts.min_scale, 1e-6)))
            self.raw_scale = nn.Parameter(torch.full(shape, raw))

    def scale(self) -> torch.Tensor:
        """The scale, ``()`` (fixed or shared) or ``(D,)`` (per pixel)."""
        if self.learn == "fixed":
            return self.fixed_scale
        return softplus(self.raw_scale) + self.min_scale


class NormalLikelihood(ScaleMixin, Likelihood):
    r""":math:`x_d \sim \mathcal{N}(\mu_d, s^2)`, μ the decoder's output; s fixed
    (``learn = "fixed"``), learned per pixel (``"pixel"``) or one learned scale (``"shared"``).

    .. note:: A learned variance on quantized data is unbounded (s → 0 on repeated values): keep
        ``min_scale > 0`` and dequantize 8-bit data.
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
    :math:`\log p = -\log 2b - |x - \mu| / b`; b fixed, learned per pixel or shared (as for
    ``normal``). The L1 counterpart of the normal likelihood: the mode is the median image."""

    family = dist.Laplace


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
# 8-bit likelihoods: probability masses on the grid k/255


class DiscretizedLogisticLikelihood(Likelihood):
    r""":math:`x_d \sim \mathrm{DiscretizedLogistic}(\mu_d, s_d)` on the 256 levels
    :math:`k/255` (:class:`~vaelab.model.distributions.DiscretizedLogistic`, PixelCNN++ edge
    bins [2]): the mass of level k is the logistic CDF difference across the bin
    :math:`[x_k - \Delta/2, x_k + \Delta/2]`, :math:`\Delta = 1/255`, edge bins taking the tails.
    The decoder outputs μ and :math:`s = \mathrm{softplus}(\cdot) + s_{\min}` per pixel
    (``2D``). Data: raw 8-bit levels (``data.dequantize = false``).
    """

    discrete = True
    requires_levels = True

    def __init__(self, data_dim: int, opts):
        super().__init__(data_dim)
        self.min_scale = opts.min_scale

    @property
    def param_size(self) -> int:
        return 2 * self.data_dim

    def forward(self, params):
        loc, raw = params.split(self.data_dim, dim=-1)  # (..., D), (..., D)
        scale = softplus(raw) + self.min_scale
        return DiscretizedLogistic(loc, scale, LEVELS, validate_args=False).to_event(1)


class CategoricalLikelihood(Likelihood):
    r""":math:`x_d \sim \mathrm{Categorical}(\mathrm{softmax}(\ell_d))` over the 256 levels
    :math:`k/255` (:class:`~vaelab.model.distributions.PixelCategorical`, as in PixelRNN [3]):
    no ordering between levels is assumed. The decoder outputs 256 logits per pixel
    (``256 D``, viewed as ``(..., D, 256)``).

    .. note:: 256 times the decoder output (and memory) of a Bernoulli decoder; importance
        sampling sizes its particle chunks from ``param_size`` accordingly.
    """

    discrete = True
    requires_levels = True

    @property
    def param_size(self) -> int:
        return LEVELS * self.data_dim

    def forward(self, params):
        logits = params.unflatten(-1, (self.data_dim, LEVELS))  # (..., D, 256)
        return PixelCategorical(logits, LEVELS, validate_args=False).to_event(1)


# --------------------------------------------------------------------------------------------
# options and registration


class ScaleOptions(Options):
    """Options of ``normal`` and ``laplace``."""

    scale: float = Field(0.1, gt=0.0, description="the fixed scale, or the initial learned one")
    learn: Literal["fixed", "pixel", "shared"] = Field(
        "fixed", description="fixed, learned per pixel, or one learned scale"
    )
    min_scale: float = Field(1e-3, ge=0.0, description="floor added to a learned scale")


class BetaOptions(Options):
    eps: float = Field(1e-5, gt=0.0, lt=0.5, description="observations clamped to [eps, 1-eps]")
    min_concentration: float = Field(1e-3, ge=0.0, description="floor added to α and β")


class DiscretizedLogisticOptions(Options):
    min_scale: float = Field(1e-3, gt=0.0, description="floor added to the logistic scale")


@LIKELIHOODS.register("bernoulli")
def _bernoulli(opts, data_dim):
    """Bernoulli with logits: binary data only."""
    return BernoulliLikelihood(data_dim)


@LIKELIHOODS.register("continuous_bernoulli")
def _continuous_bernoulli(opts, data_dim):
    """Continuous Bernoulli with logits: a normalized density on [0, 1]."""
    return ContinuousBernoulliLikelihood(data_dim)


@LIKELIHOODS.register("normal", ScaleOptions)
def _normal(opts, data_dim):
    """Normal with fixed, per-pixel or shared learned scale."""
    return NormalLikelihood(data_dim, opts)


@LIKELIHOODS.register("laplace", ScaleOptions)
def _laplace(opts, data_dim):
    """Laplace with fixed, per-pixel or shared learned scale."""
    return LaplaceLikelihood(data_dim, opts)


@LIKELIHOODS.register("beta", BetaOptions)
def _beta(opts, data_dim):
    """Beta with two decoded concentrations; observations clamped to [eps, 1 - eps]."""
    return BetaLikelihood(data_dim, opts)


@LIKELIHOODS.register("discretized_logistic", DiscretizedLogisticOptions)
def _discretized_logistic(opts, data_dim):
    """Discretized logistic on the 8-bit grid (PixelCNN++ edge bins)."""
    return DiscretizedLogisticLikelihood(data_dim, opts)


@LIKELIHOODS.register("categorical")
def _categorical(opts, data_dim):
    """256-way categorical per pixel."""
    return CategoricalLikelihood(data_dim)
