r"""Latent types: what z is, and how the decoder reads it.

A latent type fixes the event shape of z and the map from a sample of z to the decoder input.
Facts that resolution reads before anything is built (:attr:`Latent.continuous`,
:attr:`Latent.families`, :attr:`Latent.priors`) are class attributes, and each registry entry
names its class (``component=``).

* ``gaussian``: a real vector of ``model.latent_dim`` entries (:class:`GaussianLatent`);
* ``categorical``: N categorical variables of K classes each (:class:`CategoricalLatent`),

  .. math::

      z = (z_1, \dots, z_N), \qquad z_n \in \{e_1, \dots, e_K\} \subset \{0, 1\}^K, \qquad
      p(z) = \prod_{n=1}^{N} \mathrm{Cat}(z_n; \mathrm{softmax}(\pi_n)),

  with uniform (:math:`\pi = 0`) or learned prior logits :math:`\pi \in \mathbb{R}^{N \times K}`
  (:class:`~vaelab.model.priors.CategoricalPrior`), and a decoder that reads the N one-hot
  vectors flattened to :math:`N K` inputs. The latent has event shape ``(N, K)``. How a sample
  reaches the decoder depends on the guide family (:mod:`vaelab.guide.relaxed`), which sets
  :attr:`CategoricalLatent.mode` when the VAE is built:

  ======================  ==================================  ===================================
  ``mode``                value of the ``"z"`` site            decoder input
  ======================  ==================================  ===================================
  ``"soft"``              log-space Concrete sample y          :math:`\exp(y)` (a simplex point)
  ``"straight_through"``  log-space Concrete sample y          one-hot forward, soft gradient
  ``"one_hot"``           one-hot sample (REINFORCE, enum)     the sample itself
  ======================  ==================================  ===================================

  Whatever the training relaxation, the *discrete* model is what gets evaluated: the model and
  guide functions take ``hard=True`` (:meth:`vaelab.vae.VAE.eval_pair` binds it), which makes
  the ``"z"`` site a one-hot
  :class:`~vaelab.model.distributions.CategoricalProduct` with the prior's logits in the model
  and the guide's logits in the guide, so importance sampling gives the exact-KL ELBO and
  log p(x) of the discrete model. Exact enumeration over the :math:`K^N` states lives in
  :mod:`vaelab.inference.exact`; usage statistics in :mod:`vaelab.inference.diagnostics`.

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
from typing import Literal

import torch
from pydantic import Field, model_validator
from torch import nn

from vaelab.model.distributions import soft, straight_through
from vaelab.registry import Options, Registry

__all__ = [
    "LATENTS",
    "CategoricalLatent",
    "CategoricalOptions",
    "GaussianLatent",
    "Latent",
    "build_categorical",
    "build_gaussian",
]


class Latent(nn.Module):
    """Base class: ``event_shape`` of z, ``flat_dim`` of the decoder input, ``continuous`` flag."""

    event_shape: tuple[int, ...]
    continuous: bool = True
    #: guide families this latent type admits (the first is the default)
    families: tuple[str, ...] = ("normal",)
    #: priors this latent type admits
    priors: tuple[str, ...] = ()

    @property
    def flat_dim(self) -> int:
        n = 1
        for s in self.event_shape:
            n *= s
        return n

    def decoder_input(self, z: torch.Tensor, hard: bool = False) -> torch.Tensor:
        """``(..., *event_shape) → (..., flat_dim)``.

        :param hard: ``z`` is a hard (one-hot) sample of the discrete model, read as it is.
        """
        return z.reshape(*z.shape[: z.dim() - len(self.event_shape)], self.flat_dim)

    def temperature_at(self, step: int) -> torch.Tensor | None:
        """Relaxation temperature at a training step (``None``: not a relaxed latent)."""
        return None

    def hard(self, z: torch.Tensor) -> torch.Tensor:
        """The hard (one-hot) version of a sample; only discrete latents have one."""
        raise NotImplementedError(f"{type(self).__name__} is not a discrete latent")


LATENTS: Registry[Latent] = Registry("latent type")


# --------------------------------------------------------------------------------------------
# gaussian


class GaussianLatent(Latent):
    """z ∈ ℝ^d, read by the decoder as it is."""

    continuous = True
    families = ("normal", "student_t", "iaf")
    priors = ("standard_normal", "normal", "laplace", "student_t", "mog", "vamp", "flow")

    def __init__(self, latent_dim: int):
        super().__init__()
        self.event_shape = (latent_dim,)

    def decoder_input(self, z: torch.Tensor, hard: bool = False) -> torch.Tensor:
        return z  # (..., d)


@LATENTS.register("gaussian", Options, component=GaussianLatent)
def build_gaussian(opts: Options, latent_dim: int) -> Latent:
    """A real latent vector of size ``model.latent_dim`` (Kingma & Welling 2014)."""
    return GaussianLatent(latent_dim)


# --------------------------------------------------------------------------------------------
# categorical


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


#: how a categorical latent's samples reach the decoder (see :attr:`CategoricalLatent.mode`)
LatentMode = Literal["soft", "straight_through", "one_hot"]
#: KL convention of a relaxed guide family: "relaxed" (Maddison) or "categorical" (Jang)
KLConvention = Literal["relaxed", "categorical"]


class CategoricalLatent(Latent):
    r"""N categorical variables of K classes, event shape ``(N, K)``; see the module docstring.

    :param opts: :class:`CategoricalOptions`.
    """

    _anchor: torch.Tensor  #: a device/dtype anchor (a non-persistent buffer)

    continuous = False
    families = ("relaxed", "categorical")
    priors = ("categorical",)

    def __init__(self, opts: CategoricalOptions):
        super().__init__()
        self.num_variables, self.num_classes = opts.num_variables, opts.num_classes
        self.event_shape = (opts.num_variables, opts.num_classes)
        self.opts = opts
        #: set by the guide family: "soft", "straight_through" or "one_hot"
        self.mode: LatentMode = "one_hot"
        #: KL convention of a relaxed guide family: "relaxed" (Maddison) or "categorical" (Jang)
        self.kl: KLConvention = "relaxed"
        self.register_buffer("_anchor", torch.zeros(()), persistent=False)

    @property
    def num_states(self) -> int:
        """:math:`K^N`."""
        return self.num_classes**self.num_variables

    @property
    def relaxed(self) -> bool:
        """Whether the ``"z"`` site holds log-space Concrete samples (else one-hot vectors)."""
        return self.mode != "one_hot"

    def configure(self, mode: LatentMode, kl: KLConvention = "relaxed") -> None:
        """Called by the guide family's builder: how samples reach the decoder, which KL."""
        if mode not in ("soft", "straight_through", "one_hot"):
            raise ValueError(f"unknown mode {mode!r}")
        if kl not in ("relaxed", "categorical"):
            raise ValueError(f"unknown kl {kl!r}")
        self.mode, self.kl = mode, kl

    def decoder_input(self, z: torch.Tensor, hard: bool = False) -> torch.Tensor:
        """``(..., N, K) → (..., N K)``: exp, straight-through or identity (see :attr:`mode`).

        :param hard: ``z`` is a one-hot sample of the discrete model (``hard=True`` model and
            guide): flattened as it is, whatever :attr:`mode`.
        """
        if not hard and self.mode == "soft":
            z = soft(z)  # (..., N, K) simplex points
        elif not hard and self.mode == "straight_through":
            z = straight_through(z)  # (..., N, K) one-hot forward, soft gradient
        return z.reshape(*z.shape[:-2], self.flat_dim)  # (..., N K)

    def hard(self, z: torch.Tensor) -> torch.Tensor:
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

    def temperature_at(self, step: int) -> torch.Tensor | None:
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


@LATENTS.register("categorical", CategoricalOptions, component=CategoricalLatent)
def build_categorical(opts: CategoricalOptions, latent_dim: int) -> Latent:
    """N categorical variables of K classes (Jang et al. 2017; ``model.latent_dim`` is unused)."""
    return CategoricalLatent(opts)
