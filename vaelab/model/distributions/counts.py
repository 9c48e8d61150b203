r"""Count likelihoods: Poisson, negative binomial and zero-inflated negative binomial.

:func:`count_distribution` builds the per-feature Poisson, negative binomial (mean μ, inverse
dispersion θ) and zero-inflated negative binomial of the count likelihoods from a log-mean,
reusing Pyro's own classes (``Poisson``, ``NegativeBinomial``, ``ZeroInflatedNegativeBinomial``);
the negative binomial is scVI's [1],

.. math:: \mathbb{E}x = \mu, \qquad \mathrm{Var}\,x = \mu + \mu^2 / \theta.

:class:`LibraryScaledCounts` is the same family whose means are proportions times the observed
total of the row scored (single-cell VAEs with an observed library size [1]).

References

1. R. Lopez, J. Regier, M. B. Cole, M. I. Jordan, N. Yosef, *Deep generative modeling for
   single-cell transcriptomics*, Nature Methods 15, 2018 (scVI).
"""

from __future__ import annotations

import pyro.distributions as dist
import torch
from pyro.distributions.torch_distribution import TorchDistribution
from torch import Tensor
from torch.distributions import constraints

__all__ = ["COUNT_FAMILIES", "LibraryScaledCounts", "MAX_LOG_RATE", "count_distribution"]


#: the families of :func:`count_distribution`
COUNT_FAMILIES = ("poisson", "negative_binomial", "zero_inflated_negative_binomial")
#: a Poisson log-rate is clamped to [−80, 80] before ``exp``: e^80 ≈ 5.5e34 and e^−80 ≈ 1.8e-35
#: are finite and normal in float32, so a wild draw of z, or a feature that is always 0 in the
#: training data (whose log-rate the optimizer drives down without end), gives a very small,
#: finite log-probability instead of ``inf − inf`` or ``0 · log 0`` (NaN gradients)
MAX_LOG_RATE = 80.0


def count_distribution(
    family: str,
    log_mean: Tensor,
    inverse_dispersion: Tensor | None = None,
    gate_logits: Tensor | None = None,
) -> TorchDistribution:
    r"""A per-feature count distribution with mean :math:`\mu = e^{\eta}`, ``batch_shape`` that
    of ``log_mean`` (η) and ``event_shape == ()``. Pyro's own classes, parameterized by the mean:

    * ``poisson``: :class:`pyro.distributions.Poisson` with rate
      :math:`e^{\mathrm{clamp}(\eta, -80, 80)}` (:data:`MAX_LOG_RATE`);
    * ``negative_binomial``: :class:`pyro.distributions.NegativeBinomial` with
      ``total_count`` θ and ``logits`` :math:`\eta - \log\theta`, i.e. the scVI
      parameterisation [1] by mean μ and inverse dispersion θ:

      .. math::

          P(x) = \frac{\Gamma(x + \theta)}{\Gamma(\theta)\, x!}
              \Big(\frac{\theta}{\theta + \mu}\Big)^{\theta}
              \Big(\frac{\mu}{\theta + \mu}\Big)^{x}, \qquad
          \mathbb{E}x = \mu, \quad \mathrm{Var}\,x = \mu + \mu^2 / \theta.

      (Pyro's ``GammaPoisson(θ, θ/μ)`` is the same law; torch's logits form evaluates it with
      log-sigmoids, without the :math:`\log(1 + \theta/\mu)` rounding at large μ.)
    * ``zero_inflated_negative_binomial``:
      :class:`pyro.distributions.ZeroInflatedNegativeBinomial`, the same NB mixed with a point
      mass at 0 of weight :math:`\pi = \sigma(g)`, ``gate_logits`` g:
      :math:`P(0) = \pi + (1 - \pi) P_{NB}(0)`, :math:`P(x) = (1 - \pi) P_{NB}(x)` for x > 0.

    Argument validation is off (the likelihood checks the data once, before training).

    :param family: one of :data:`COUNT_FAMILIES`.
    :param log_mean: η = log μ, ``(..., D)``.
    :param inverse_dispersion: θ > 0, broadcastable to ``log_mean`` (NB and ZINB).
    :param gate_logits: g, the shape of ``log_mean`` (ZINB).
    """
    if family == "poisson":
        rate = log_mean.clamp(-MAX_LOG_RATE, MAX_LOG_RATE).exp()
        return dist.Poisson(rate, validate_args=False)
    if inverse_dispersion is None:
        raise ValueError(f"count family {family!r} needs inverse_dispersion")
    theta = inverse_dispersion.expand_as(log_mean)
    logits = log_mean - theta.log()
    if family == "negative_binomial":
        return dist.NegativeBinomial(total_count=theta, logits=logits, validate_args=False)
    if family == "zero_inflated_negative_binomial":
        if gate_logits is None:
            raise ValueError("count family 'zero_inflated_negative_binomial' needs gate_logits")
        return dist.ZeroInflatedNegativeBinomial(
            total_count=theta, logits=logits, gate_logits=gate_logits, validate_args=False
        )
    raise ValueError(f"unknown count family {family!r}; families: {', '.join(COUNT_FAMILIES)}")


class LibraryScaledCounts(TorchDistribution):
    r"""Counts :math:`x \in \mathbb{N}^D` whose means are proportions times the row's observed
    total (the library size of single-cell data, scVI with ``use_observed_lib_size`` [1]):

    .. math::

        \ell = \sum_{d=1}^{D} x_d, \qquad \mu_d = \rho_d\, \ell, \qquad
        x_d \mid \mu_d \sim F(\mu_d, \ldots) \text{ independently},

    with ρ on the simplex (``log_proportions``, e.g. a decoder's log-softmax) and F one of the
    families of :func:`count_distribution` (sharing θ and the gate logits). The event is the
    whole row, ``event_shape == (D,)``: ℓ is read from the value being scored.

    .. note:: ℓ is treated as an observed covariate, so :meth:`log_prob` is
        :math:`\log p(x \mid z, \ell = \sum_d x_d)`: it is not normalized over
        :math:`\mathbb{N}^D` (the total is not modelled), which is what single-cell VAEs report.
        Compare it only with models conditioned the same way. A row of zeros gets
        :math:`\ell = 10^{-8}` (every mean ≈ 0, so its probability ≈ 1).

    :meth:`sample` and :attr:`mean` need the total of the rows to draw: pass ``library``.

    :param log_proportions: :math:`\log\rho`, ``batch_shape + (D,)``, normalized over D.
    :param str family: one of :data:`COUNT_FAMILIES`.
    :param inverse_dispersion: θ, broadcastable to ``log_proportions`` (NB, ZINB).
    :param gate_logits: zero-inflation logits, ``batch_shape + (D,)`` (ZINB).
    :param library: ℓ for :meth:`sample` and :attr:`mean`, broadcastable to ``batch_shape``.
    """

    support = constraints.independent(constraints.nonnegative_integer, 1)
    has_rsample = False
    #: ℓ of an all-zero row, so that log ℓ stays finite
    MIN_LIBRARY = 1e-8

    def __init__(self, log_proportions: Tensor, family: str, inverse_dispersion=None,
                 gate_logits=None, library=None, validate_args=None):
        if family not in COUNT_FAMILIES:
            raise ValueError(f"unknown count family {family!r}; families: "
                             f"{', '.join(COUNT_FAMILIES)}")
        if log_proportions.dim() < 1:
            raise ValueError("log_proportions must have shape batch_shape + (D,)")
        self.family = family
        self.log_proportions = log_proportions
        self.inverse_dispersion = inverse_dispersion
        self.gate_logits = gate_logits
        self.library = None if library is None else torch.as_tensor(
            library, dtype=log_proportions.dtype, device=log_proportions.device)
        shape = log_proportions.shape
        super().__init__(shape[:-1], shape[-1:], validate_args=validate_args)

    @property
    def arg_constraints(self) -> dict[str, constraints.Constraint]:
        """The constraints of the parameters given (θ, the gate and ℓ are optional)."""
        given: dict[str, constraints.Constraint] = {"log_proportions": constraints.real_vector}
        if self.inverse_dispersion is not None:
            given["inverse_dispersion"] = constraints.positive
        if self.gate_logits is not None:
            given["gate_logits"] = constraints.real
        if self.library is not None:
            given["library"] = constraints.nonnegative
        return given

    def expand(self, batch_shape, _instance=None):
        new = self._get_checked_instance(LibraryScaledCounts, _instance)
        batch_shape = torch.Size(batch_shape)
        full = batch_shape + self.event_shape
        new.family = self.family
        new.log_proportions = self.log_proportions.expand(full)
        new.inverse_dispersion = self.inverse_dispersion
        new.gate_logits = None if self.gate_logits is None else self.gate_logits.expand(full)
        new.library = None if self.library is None else self.library.expand(batch_shape)
        super(LibraryScaledCounts, new).__init__(batch_shape, self.event_shape,
                                                 validate_args=False)
        new._validate_args = self._validate_args
        return new

    def _per_feature(self, log_library: Tensor) -> TorchDistribution:
        """F with log-mean ``log ρ + log ℓ``; ``log_library`` broadcastable to ``(..., 1)``."""
        log_mean = self.log_proportions + log_library  # (..., D)
        gate = None if self.gate_logits is None else self.gate_logits.expand_as(log_mean)
        return count_distribution(self.family, log_mean, self.inverse_dispersion, gate)

    def _library(self) -> Tensor:
        if self.library is None:
            raise ValueError("LibraryScaledCounts: sampling or the mean needs the row totals; "
                             "pass library= (the total count of each row)")
        return self.library.expand(self.batch_shape).unsqueeze(-1)  # (..., 1)

    def log_prob(self, value: Tensor) -> Tensor:
        if self._validate_args:
            self._validate_sample(value)
        total = value.sum(-1, keepdim=True).clamp(min=self.MIN_LIBRARY)  # (..., 1)
        return self._per_feature(total.log()).log_prob(value).sum(-1)  # (...,)

    def sample(self, sample_shape=torch.Size()) -> Tensor:
        with torch.no_grad():
            base = self._per_feature(self._library().clamp(min=self.MIN_LIBRARY).log())
            return base.sample(sample_shape)

    @property
    def mean(self) -> Tensor:
        return self._per_feature(self._library().clamp(min=self.MIN_LIBRARY).log()).mean

    @property
    def variance(self) -> Tensor:
        return self._per_feature(self._library().clamp(min=self.MIN_LIBRARY).log()).variance
