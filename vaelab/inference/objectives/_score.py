r"""Shared machinery of the score-function objectives for discrete latents (``reinforce_loo``,
``vimco``, ``arm``, ``disarm``, ``relax``).

Each of them estimates the gradient of a bound of the discrete model

.. math:: p_θ(x, z) = p(z)\, p_θ(x \mid z), \qquad
    q_φ(z \mid x) = \prod_{n=1}^{N} \mathrm{Cat}(z_n; \mathrm{softmax}(\ell_n(x))),

with the unrelaxed categorical guide (``guide.family = "categorical"``,
:class:`~vaelab.model.distributions.CategoricalProduct`). They need to draw z themselves (from
their own noise: antithetic uniforms, Gumbels) and to score the model at chosen values of z, so
the guide runs once, unsampled, for its logits (:func:`guide_logits`) and the model is traced
with ``"z"`` conditioned on a stack of M values under a particle plate (:func:`log_joint`):

.. math:: f(z) = \log p_θ(x, z) - \log q_φ(z \mid x) \quad (M, B),

with β (KL weight, warm-up) scaling :math:`\log p(z)` and :math:`\log q(z|x)` as the model and
guide sites say. :class:`ScoreELBO` is the base class: subclasses define
:meth:`ScoreELBO.surrogate_and_bound`; ``loss``, ``loss_and_grads``, ``loss_and_grads_deferred``
and ``differentiable_loss`` follow :class:`~vaelab.inference.objectives._particles.ParticleELBO`.

The single-sample estimators (all but ``vimco``) leave out the term
:math:`\mathbb{E}_q[\nabla_φ f(z)] = -β\,\mathbb{E}_q[\nabla_φ \log q_φ(z \mid x)] = 0`: it has
expectation zero and only adds variance.
"""

from __future__ import annotations

import contextlib

import pyro
import pyro.poutine as poutine
import torch
import torch.nn.functional as F
from pyro.distributions.util import scale_and_mask
from pyro.infer import ELBO
from pyro.poutine.messenger import Messenger
from pyro.poutine.util import site_is_subsample
from torch import Tensor

from vaelab.inference.importance import in_data_plate, site_log_prob
from vaelab.inference.objectives._particles import latent_sites
from vaelab.model.distributions import CategoricalProduct
from vaelab.model.latents import CategoricalLatent
from vaelab.registry import ConfigError

__all__ = ["GuideLogits", "ScoreELBO", "check_discrete", "guide_logits", "log_joint",
           "log_q", "sample_one_hot"]


def check_discrete(cfg, vae, name: str) -> None:
    """Refuse, in one line, what a score-function objective for discrete latents cannot train:
    a latent other than ``categorical``, a relaxed guide family, ``objective.jit = true``."""
    latent = vae.latent
    family = type(vae.inference.posterior).__name__
    if not isinstance(latent, CategoricalLatent) or latent.relaxed:
        raise ConfigError(
            f"objective.name = {name!r} is a score-function estimator for discrete latents: it "
            "needs model.latent = 'categorical' with guide.family = 'categorical' (got latent "
            f"{type(latent).__name__}, guide family {family}); use 'trace', 'mean_field' or "
            "'iwae' for a reparameterized guide")
    if cfg.jit is True:
        raise ConfigError(f"objective.jit = true: objective {name!r} has no compiled variant; "
                          "set objective.jit = 'auto' or false")


class GuideLogits:
    """The guide's ``"z"`` site, unsampled: normalized logits and the site's β scale and mask."""

    def __init__(self, logits: Tensor, scale, mask):
        self.logits = logits  # (B, N, K) log-probabilities, with the encoder's graph
        self.scale, self.mask = scale, mask


class _Unsampled(Messenger):
    """Give a :class:`CategoricalProduct` site the mode of its distribution instead of a draw:
    the guide runs for its logits only, and leaves the random stream alone."""

    def _pyro_sample(self, msg: dict) -> None:
        fn = msg["fn"]
        if not msg["is_observed"] and msg["value"] is None and isinstance(fn, CategoricalProduct):
            mode = fn.logits.detach().argmax(-1)  # (B, N)
            msg["value"] = F.one_hot(mode, fn.event_shape[-1]).to(fn.logits.dtype)


def guide_logits(guide, args: tuple, kwargs: dict, name: str) -> GuideLogits:
    """Run ``guide`` once, without drawing, and return its one latent site's logits.

    :raises ConfigError: the guide has another latent site than one
        :class:`~vaelab.model.distributions.CategoricalProduct` in the data plate, or a factor.
    """
    trace = poutine.trace(_Unsampled()(guide)).get_trace(*args, **kwargs)
    sites = latent_sites(trace)
    factors = [n for n, s in trace.nodes.items()
               if s["type"] == "sample" and s["is_observed"] and not site_is_subsample(s)]
    if (len(sites) != 1 or factors or not isinstance(sites[0][1]["fn"], CategoricalProduct)
            or not in_data_plate(sites[0][1])):
        got = ", ".join(f"{n}: {type(s['fn']).__name__}" for n, s in sites) or "none"
        raise ConfigError(
            f"objective.name = {name!r} needs a guide with one CategoricalProduct site in the "
            f"data plate and no factor (guide.family = 'categorical'); got latent sites {got}"
            + (f" and factors {factors}" if factors else ""))
    site = sites[0][1]
    return GuideLogits(site["fn"].logits, site["scale"], site["mask"])


def log_q(z: Tensor, logits: Tensor, q: GuideLogits | None = None) -> Tensor:
    r""":math:`\log q(z) = \sum_{n,k} z_{nk} \ell_{nk}` for ``z (..., B, N, K)`` (one-hot or a
    simplex point), ``(..., B)``; with ``q`` the guide site's β scale and mask applied."""
    out = (z * logits).sum((-2, -1))  # (..., B)
    return out if q is None else scale_and_mask(out, q.scale, q.mask)


def sample_one_hot(logits: Tensor, num: int) -> Tensor:
    """``num`` independent one-hot draws of ``logits (B, N, K)``: ``(num, B, N, K)``."""
    return CategoricalProduct(logits.detach()).sample((num,))


def log_joint(model, z: Tensor, args: tuple, kwargs: dict, soft: bool = False) -> Tensor:
    r""":math:`\log p_θ(x, z)` of the model with ``"z"`` conditioned on each of the M values
    ``z (M, B, N, K)``, every site scaled as the model says (β on the latent site): ``(M, B)``.

    :param soft: ``z`` holds simplex points (a relaxation): Pyro's support checks are off for
        this trace; the prior's log-density is then its linear extension :math:`\sum z \log π`.
    """
    M = z.shape[0]
    check = pyro.validation_enabled(False) if soft else contextlib.nullcontext()
    with check, pyro.plate("particles", M, dim=-2):
        trace = poutine.trace(poutine.condition(model, data={"z": z})).get_trace(*args, **kwargs)
    total = torch.zeros(z.shape[:2], dtype=z.dtype, device=z.device)  # (M, B)
    for site in trace.nodes.values():
        if site["type"] == "sample" and not site_is_subsample(site):
            total = total + site_log_prob(site)  # (M, B)
    return total


class ScoreELBO(ELBO):
    r"""Base class of the score-function objectives: subclasses implement
    :meth:`surrogate_and_bound`; the Pyro interface follows (loss = −bound summed over the
    batch; the gradient is the estimator's, −∇ surrogate)."""

    #: the ``objective.name`` (for error messages)
    name = "score"

    def __init__(self, num_particles: int = 1):
        super().__init__(num_particles=num_particles, max_plate_nesting=1)

    def _get_trace(self, model, guide, args, kwargs):
        """(model_trace, guide_trace) of one draw (Pyro's interface; not used by the loss)."""
        guide_trace = poutine.trace(guide).get_trace(*args, **kwargs)
        model_trace = poutine.trace(poutine.replay(model, trace=guide_trace)).get_trace(
            *args, **kwargs)
        return model_trace, guide_trace

    def surrogate_and_bound(self, model, guide, args: tuple, kwargs: dict
                            ) -> tuple[Tensor, Tensor]:
        """``(surrogate, bound)``, both summed over the batch: the gradient of ``surrogate`` is
        the estimator; ``bound`` is the value reported."""
        raise NotImplementedError

    def differentiable_loss(self, model, guide, *args, **kwargs) -> Tensor:
        surrogate, bound = self.surrogate_and_bound(model, guide, args, kwargs)
        # value −bound, gradient −∇surrogate
        return -(bound.detach() + (surrogate - surrogate.detach()))

    def loss(self, model, guide, *args, **kwargs) -> float:
        with torch.no_grad():
            _, bound = self.surrogate_and_bound(model, guide, args, kwargs)
        return -float(bound)

    def loss_and_grads(self, model, guide, *args, **kwargs) -> float:
        return float(self.loss_and_grads_deferred(model, guide, *args, **kwargs))

    def loss_and_grads_deferred(self, model, guide, *args, **kwargs) -> Tensor:
        """:meth:`loss_and_grads` with the loss left on the device (a detached scalar)."""
        loss = self.differentiable_loss(model, guide, *args, **kwargs)
        if loss.requires_grad:
            loss.backward()
        return loss.detach()
