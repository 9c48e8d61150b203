r"""Likelihoods p_θ(x | z), selectable by ``model.likelihood``.

A likelihood turns the decoder's output ``params`` of shape ``(..., param_size)`` into a Pyro
distribution with ``event_shape == (D,)`` over a flattened data point. Each declares

* ``param_size``: the decoder output width it needs (``D`` for Bernoulli logits, ``2D`` for a
  location and a scale, ``256 D`` for a categorical over 8-bit levels);
* ``discrete``: whether ``log_prob`` is a probability of the observed values (Bernoulli,
  categorical, discretized logistic) or a density (normal, Laplace, beta, continuous Bernoulli)
  — densities on dequantized 8-bit data convert to the same units with the ``− D log 256`` term
  of :mod:`vaelab.data.preprocess`;
* :meth:`Likelihood.check_data`, which refuses data it cannot score (Bernoulli on grey levels).
"""

from __future__ import annotations

import math

import pyro.distributions as dist
import torch
from pydantic import Field
from torch import nn
from torch.nn.functional import softplus

from vaelab.registry import ConfigError, Options, Registry

__all__ = ["LIKELIHOODS", "Likelihood"]


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
        return self.data_dim

    def forward(self, params: torch.Tensor) -> dist.TorchDistribution:
        """``params (..., param_size)`` → distribution with batch ``(...)``, event ``(D,)``."""
        raise NotImplementedError

    def mean(self, params: torch.Tensor) -> torch.Tensor:
        """E[x | z] as an image in data space, ``(..., D)``."""
        return self(params).mean

    def check_data(self, x: torch.Tensor, key: str = "model.likelihood") -> None:
        """Raise :class:`ConfigError` when this likelihood cannot score data like ``x``."""
        name = type(self).__name__
        if self.requires_binary and not bool(((x == 0) | (x == 1)).all()):
            bad = x[(x != 0) & (x != 1)][:3].tolist()
            raise ConfigError(
                f"{key}: {name} needs binary data in {{0, 1}}, but the data has grey levels "
                f"(e.g. {bad}); set data.binarize = \"static\" or \"dynamic\", or choose a "
                "likelihood for grey levels (continuous_bernoulli, normal, beta, "
                "discretized_logistic, categorical)"
            )
        if bool(x.min() < 0) or bool(x.max() > 1):
            raise ConfigError(
                f"{key}: {name} expects data scaled to [0, 1], got values in "
                f"[{float(x.min()):.3g}, {float(x.max()):.3g}]"
            )


LIKELIHOODS: Registry[Likelihood] = Registry("likelihood")


class BernoulliLikelihood(Likelihood):
    """x_d ~ Bernoulli(σ(ℓ_d)), ℓ the decoder's logits."""

    discrete = True
    requires_binary = True

    def forward(self, params):
        # validate_args=False: the support check costs ~0.2 ms per 128×784 batch (PYRO_NOTES)
        return dist.Bernoulli(logits=params, validate_args=False).to_event(1)

    def mean(self, params):
        return torch.sigmoid(params)


class ScaleMixin:
    """A scale that is fixed, learned per pixel, or learned and shared, with a floor."""

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
        if self.learn == "fixed":
            return self.fixed_scale
        return softplus(self.raw_scale) + self.min_scale


class NormalLikelihood(ScaleMixin, Likelihood):
    r"""x_d ~ N(μ_d, σ²): σ fixed (``learn = "fixed"``), learned per pixel or shared.

    A learned variance on quantized data is unbounded (σ → 0 on repeated values): keep
    ``min_scale > 0`` and dequantize 8-bit data.
    """

    def __init__(self, data_dim: int, opts):
        super().__init__(data_dim)
        self._init_scale(data_dim, opts)

    def forward(self, params):
        return dist.Normal(params, self.scale().expand_as(params), validate_args=False).to_event(1)

    def mean(self, params):
        return params


class ScaleOptions(Options):
    scale: float = Field(0.1, gt=0.0, description="the fixed scale, or the initial learned one")
    learn: str = Field("fixed", pattern="^(fixed|pixel|shared)$")
    min_scale: float = Field(1e-3, ge=0.0, description="floor added to a learned scale")


@LIKELIHOODS.register("bernoulli")
def _bernoulli(opts, data_dim):
    """Bernoulli with logits: binary data only."""
    return BernoulliLikelihood(data_dim)


@LIKELIHOODS.register("normal", ScaleOptions)
def _normal(opts, data_dim):
    """Normal with fixed, per-pixel or shared learned scale."""
    return NormalLikelihood(data_dim, opts)
