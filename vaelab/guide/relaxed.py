r"""Guide families for categorical latents (``model.latent = "categorical"``).

The encoder outputs logits :math:`\ell(x) \in \mathbb{R}^{N \times K}` (``param_size = N K``).

``relaxed`` — Gumbel-softmax / Concrete, sampled **in log space**:

.. math:: y = \mathrm{log\_softmax}\big((\ell(x) + g) / \tau\big), \quad g_{nk} \sim
    \mathrm{Gumbel}(0, 1),

(:class:`~vaelab.model.distributions.ExpRelaxedCategorical`, finite at every temperature; the
simplex-space version underflows at τ ≤ 0.2). Options:

* ``kl = "relaxed"`` (Maddison et al. 2017): prior and guide are both Concrete densities and the
  objective is the ELBO of the *relaxed* model,

  .. math:: \mathcal{L}_{\text{relaxed}}(x) = \mathbb{E}_{q_{φ,τ}(y|x)}\big[\log p_θ(x \mid e^y)
      + \log p_{λ}(y) - \log q_{φ,τ}(y \mid x)\big] \le \log p_{θ,\text{relaxed}}(x),

  a true lower bound on the likelihood of the relaxed model (decoder fed simplex points), not of
  the discrete model evaluated afterwards.
* ``kl = "categorical"`` (Jang et al. 2017): the KL between the *unrelaxed* categoricals; the
  relaxed sample only feeds the decoder,

  .. math:: \mathcal{L}_{\text{Jang}}(x) = \mathbb{E}_{q_{φ,τ}(y|x)}\big[\log p_θ(x \mid e^y)\big]
      - \sum_{n=1}^N \mathrm{KL}\big(\mathrm{Cat}(\ell_n(x)) \,\|\, \mathrm{Cat}(π_n)\big).

  It bounds neither model exactly: it mixes the relaxed reconstruction term with the discrete
  KL, and tends to the discrete ELBO as τ → 0. Implemented as masked ``"z"`` sites in model and
  guide plus the guide-side factor ``pyro.factor("kl_z", KL, has_rsample=True)`` (a guide term
  enters the ELBO with a minus sign). Single-sample objectives only (``trace``, ``graph``): a
  multi-sample bound (IWAE, Rényi) of this objective is meaningless.
* ``hard = true`` (straight-through Gumbel, Bengio et al. 2013; Jang et al. 2017): the decoder sees
  the one-hot ``argmax`` of the sample, gradients flow through the soft sample. Only with
  ``kl = "categorical"`` (a Concrete density cannot score a one-hot point).
* ``estimator`` (with ``kl = "categorical"``): the gradient estimator behind the one-hot decoder
  input, ``"gumbel_softmax"`` (default: the soft sample, or straight-through when ``hard =
  true``), ``"straight_through"`` (the same as ``hard = true``), or one of
  :mod:`vaelab.guide.straight_through`: ``"gapped_st"`` (Fan et al. 2022; option ``gap``),
  ``"gr_mck"`` (Paulus et al. 2021; option ``num_gumbels``, K), ``"reinmax"`` (Liu et al. 2023;
  temperature ≥ 1). Config::

      [guide]
      family = {name = "relaxed", kl = "categorical", estimator = "gr_mck", num_gumbels = 100}

``categorical`` — the unrelaxed posterior :math:`q(z|x) = \prod_n \mathrm{Cat}(z_n;
\mathrm{softmax}(\ell_n(x)))` (:class:`~vaelab.model.distributions.CategoricalProduct`), for the
score-function estimator (``objective.name = "graph"``, with the learned input-dependent
baseline :class:`Baseline` owned by this family) and exact enumeration (``"enum"``).

Both families define :meth:`~vaelab.guide.posteriors.Posterior.hard_dist`, the unrelaxed
posterior :class:`~vaelab.model.distributions.CategoricalProduct` (ℓ(x)) of the discrete model
that evaluation scores (the guide's ``hard=True``).

References:
  1. E. Jang, S. Gu, B. Poole. *Categorical Reparameterization with Gumbel-Softmax*. ICLR 2017.
  2. C. J. Maddison, A. Mnih, Y. W. Teh. *The Concrete Distribution: A Continuous Relaxation of
     Discrete Random Variables*. ICLR 2017.
  3. Y. Bengio, N. Léonard, A. Courville. *Estimating or Propagating Gradients Through Stochastic
     Neurons for Conditional Computation*. arXiv:1308.3432, 2013.
  4. A. Mnih, K. Gregor. *Neural Variational Inference and Learning in Belief Networks*. ICML 2014.
  5. T.-H. Fan, T.-C. Chi, A. I. Rudnicky, P. J. Ramadge. *Training Discrete Deep Generative
     Models via Gapped Straight-Through Estimator*. ICML 2022.
  6. M. B. Paulus, C. J. Maddison, A. Krause. *Rao-Blackwellizing the Straight-Through
     Gumbel-Softmax Gradient Estimator*. ICLR 2021.
  7. L. Liu, C. Dong, X. Liu, B. Yu, J. Gao. *Bridging Discrete and Backpropagation:
     Straight-Through and Beyond*. NeurIPS 2023.
"""

from __future__ import annotations

from functools import partial
from typing import TYPE_CHECKING, Literal

import pyro
import torch
from pydantic import Field, model_validator
from torch import Tensor, nn

from vaelab.guide.posteriors import FAMILIES, Posterior
from vaelab.guide.straight_through import ESTIMATORS, StraightThroughCategorical, Surrogate
from vaelab.model.distributions import (
    CategoricalProduct,
    ExpRelaxedCategorical,
    kl_categorical,
    logits_of,
)
from vaelab.model.latents import CategoricalLatent, KLConvention
from vaelab.model.networks import MLP
from vaelab.registry import ConfigError, Options

if TYPE_CHECKING:
    from vaelab.model.priors import CategoricalPrior

__all__ = ["Baseline", "CategoricalPosterior", "RelaxedPosterior"]


class _CategoricalFamily(Posterior):
    def __init__(self, latent: CategoricalLatent):
        super().__init__()
        if not isinstance(latent, CategoricalLatent):
            raise ConfigError("guide.family: this family needs model.latent = 'categorical'")
        self.num_variables, self.num_classes = latent.num_variables, latent.num_classes
        self.param_size = latent.flat_dim

    def logits_from(self, h: Tensor) -> Tensor:
        """Encoder output ``h (..., N K)`` → logits ``(..., N, K)``."""
        return h.reshape(*h.shape[:-1], self.num_variables, self.num_classes)

    def hard_dist(self, h: Tensor) -> CategoricalProduct:
        """The unrelaxed posterior ∏_n Cat(z_n; softmax(ℓ_n)), one-hot, batch ``(...)``."""
        return CategoricalProduct(self.logits_from(h))  # batch (...), event (N, K)


class RelaxedPosterior(_CategoricalFamily):
    r"""Log-space Concrete posterior :math:`q_{φ,τ}(y \mid x)`, see the module docstring.

    :param latent: the :class:`~vaelab.model.latents.CategoricalLatent` (configured here).
    :param kl: ``"relaxed"`` (Maddison et al.) or ``"categorical"`` (Jang et al.).
    :param hard: straight-through decoder input (only with ``kl = "categorical"``).
    :param surrogate: the surrogate of a :mod:`vaelab.guide.straight_through` estimator, its
        options bound (only with ``kl = "categorical"``; implies a one-hot decoder input).
    """

    reparameterized = True
    _prior: CategoricalPrior | None

    def __init__(self, latent: CategoricalLatent, kl: KLConvention, hard: bool,
                 surrogate: Surrogate | None = None):
        super().__init__(latent)
        if surrogate is not None and kl != "categorical":
            raise ConfigError("guide.family.estimator: the straight-through estimators need "
                              "kl = 'categorical'")
        self.kl, self.hard, self.surrogate = kl, hard or surrogate is not None, surrogate
        self.default_temperature = latent.opts.temperature
        latent.configure("straight_through" if self.hard else "soft", kl)
        object.__setattr__(self, "_prior", None)  # bound by the prior's builder, not owned

    def bind_prior(self, prior: CategoricalPrior) -> None:
        """Give the categorical-KL term access to the prior logits π (called at build time)."""
        object.__setattr__(self, "_prior", prior)

    def forward(self, h: Tensor, temperature: Tensor | None = None):
        tau = h.new_tensor(self.default_temperature) if temperature is None else temperature
        logits = self.logits_from(h)  # (..., N, K)
        base = (ExpRelaxedCategorical(tau, logits=logits) if self.surrogate is None
                else StraightThroughCategorical(tau, self.surrogate, logits=logits))
        q_z = base.to_event(1)  # event (N, K)
        return q_z.mask(False) if self.kl == "categorical" else q_z

    def guide_terms(self, q_z, z: Tensor) -> None:
        r"""``kl = "categorical"``: add :math:`\sum_n \mathrm{KL}(\mathrm{Cat}(\ell_n) \|
        \mathrm{Cat}(π_n))` as a guide factor (it enters the ELBO as −KL). Called by the guide
        inside the data plate and the β scale."""
        if self.kl != "categorical":
            return
        if self._prior is None:
            raise RuntimeError("RelaxedPosterior: no prior bound; build the VAE with build_vae")
        kl = kl_categorical(logits_of(q_z), self._prior.logits).sum(-1)  # (B,)
        pyro.factor("kl_z", kl, has_rsample=True)


class Baseline(nn.Module):
    r"""Input-dependent baseline for the score-function estimator (NVIL, Mnih & Gregor 2014):

    .. math:: b(x) = c + C_ψ(\ell(x)),

    an MLP :math:`C_ψ` of the (detached) posterior logits ℓ(x) plus a running mean *c* of the
    learning signal (``center``, updated by the ``graph`` objective after each step), so the
    network only learns the input-dependent part. Trained by Pyro's baseline loss
    :math:`(\text{cost} - b(x))^2`; the encoder gets no gradient through it.

    :param in_features: N K.
    :param hidden_sizes: hidden widths of :math:`C_ψ`.
    :param momentum: decay of the running mean *c*.
    """

    center: Tensor  #: c, a buffer
    num_updates: Tensor  #: a buffer

    def __init__(self, in_features: int, hidden_sizes: list[int], momentum: float = 0.9):
        super().__init__()
        self.net = MLP(in_features, hidden_sizes, 1)
        self.momentum = momentum
        self.register_buffer("center", torch.zeros(()))
        self.register_buffer("num_updates", torch.zeros((), dtype=torch.long))

    def forward(self, logits: Tensor) -> Tensor:
        """``logits (..., N, K)`` → baseline ``(...)``."""
        return self.center + self.net(logits.flatten(-2)).squeeze(-1)

    @torch.no_grad()
    def update_center(self, mean_signal: float) -> None:
        """c ← m c + (1 − m) · mean learning signal (the first call sets c)."""
        m = self.momentum if int(self.num_updates) > 0 else 0.0
        self.center.mul_(m).add_((1.0 - m) * float(mean_signal))
        self.num_updates += 1


class CategoricalPosterior(_CategoricalFamily):
    r"""Unrelaxed :math:`q(z|x) = \prod_n \mathrm{Cat}(z_n; \mathrm{softmax}(\ell_n(x)))`, with
    the :class:`Baseline` used by ``objective.name = "graph"``.

    :param latent: the :class:`~vaelab.model.latents.CategoricalLatent` (configured here).
    :param baseline_hidden_sizes: hidden widths of the baseline network.
    """

    reparameterized = False

    def __init__(self, latent: CategoricalLatent, baseline_hidden_sizes: list[int]):
        super().__init__(latent)
        latent.configure("one_hot")
        self.baseline = Baseline(latent.flat_dim, baseline_hidden_sizes)

    def forward(self, h: Tensor, temperature: Tensor | None = None):
        return self.hard_dist(h)  # batch (...), event (N, K): already the one-hot posterior


#: ``guide.family.estimator`` of the relaxed family
EstimatorName = Literal["gumbel_softmax", "straight_through", "gapped_st", "gr_mck", "reinmax"]
#: the estimator that reads each estimator option
_OWNER = {"num_gumbels": "gr_mck", "gap": "gapped_st"}


class RelaxedOptions(Options):
    kl: Literal["relaxed", "categorical"] = Field(
        "relaxed", description="'relaxed' (Maddison et al.) or 'categorical' (Jang et al.)"
    )
    hard: bool = Field(False, description="straight-through one-hot decoder input")
    estimator: EstimatorName = Field(
        "gumbel_softmax",
        description="gradient estimator: gumbel_softmax, straight_through (= hard), gapped_st, "
                    "gr_mck, reinmax (the last three with kl = 'categorical')")
    num_gumbels: int = Field(10, ge=1, description="K, conditional Gumbel draws (gr_mck)")
    gap: float | Literal["p"] = Field(
        1.0, description="δ > 0 of gapped_st, or 'p' for the adaptive -log(1 - π)/π")

    @property
    def resolved_estimator(self) -> str:
        """The estimator in force: ``hard = true`` is ``"straight_through"``."""
        return "straight_through" if self.hard else self.estimator

    @model_validator(mode="after")
    def _hard_needs_categorical_kl(self):
        if self.hard and self.estimator not in ("gumbel_softmax", "straight_through"):
            raise ValueError(f"hard = true is estimator = 'straight_through', not "
                             f"{self.estimator!r}: drop hard or the estimator")
        if self.hard and self.kl == "relaxed":
            raise ValueError(
                "hard = true (straight-through) needs kl = 'categorical': the relaxed KL scores "
                "the decoder's input with a Concrete density, which a one-hot point does not have; "
                "set guide.family.kl = 'categorical' or hard = false"
            )
        if self.resolved_estimator != "gumbel_softmax" and self.kl == "relaxed":
            raise ValueError(f"estimator = {self.estimator!r} needs kl = 'categorical': the "
                             "decoder sees the one-hot sample, which a Concrete density cannot "
                             "score; set guide.family.kl = 'categorical'")
        return self._check_estimator_options()

    def _check_estimator_options(self):
        if not isinstance(self.gap, str) and self.gap <= 0:
            raise ValueError(f"gap = {self.gap}: must be > 0 (or 'p')")
        wanted = ESTIMATORS[self.estimator].options if self.estimator in ESTIMATORS else ()
        for key in ("num_gumbels", "gap"):
            # a resolved config echoes every default: only a value other than it is refused
            if (key in self.model_fields_set and key not in wanted
                    and getattr(self, key) != type(self).model_fields[key].default):
                raise ValueError(f"{key} is an option of estimator = "
                                 f"{_OWNER[key]!r}, not of {self.estimator!r}")
        return self


class CategoricalFamilyOptions(Options):
    baseline_hidden_sizes: list[int] = Field(
        default_factory=lambda: [100], description="hidden widths of the REINFORCE baseline"
    )


@FAMILIES.register("relaxed", RelaxedOptions)
def _relaxed(opts: RelaxedOptions, latent) -> Posterior:
    """Gumbel-softmax / Concrete in log space (Jang et al. 2017; Maddison et al. 2017)."""
    entry = ESTIMATORS.get(opts.resolved_estimator)
    if entry is None:  # gumbel_softmax, straight_through
        return RelaxedPosterior(latent, opts.kl, opts.hard or opts.estimator == "straight_through")
    lo = latent.opts
    tau_min = min(lo.temperature, lo.temperature_min) if lo.anneal_rate > 0 else lo.temperature
    if tau_min < entry.min_temperature:
        raise ConfigError(f"guide.family.estimator = {opts.estimator!r} needs temperature >= "
                          f"{entry.min_temperature:g} (model.latent.temperature, and "
                          f"temperature_min when annealed); got {tau_min:g}")
    options = {key: getattr(opts, key) for key in entry.options}
    return RelaxedPosterior(latent, opts.kl, False, partial(entry.surrogate, **options))


@FAMILIES.register("categorical", CategoricalFamilyOptions)
def _categorical(opts: CategoricalFamilyOptions, latent) -> Posterior:
    """Unrelaxed product of categoricals (REINFORCE with a baseline, or exact enumeration)."""
    return CategoricalPosterior(latent, opts.baseline_hidden_sizes)
