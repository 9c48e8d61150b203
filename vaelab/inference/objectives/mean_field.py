r"""``mean_field``: the ELBO with analytic KL terms, :class:`pyro.infer.TraceMeanField_ELBO`.

.. math::

    \mathcal{L}(x_n) = \mathbb{E}_{q_φ(z \mid x_n)}\big[\log p_θ(x_n \mid z)\big]
        - β\,\mathrm{KL}\big(q_φ(z \mid x_n)\,\|\,p(z)\big)

The KL is computed in closed form wherever ``kl_divergence(q, p)`` is registered (the diagonal
normal guide with the ``standard_normal`` and ``normal`` priors), and by Monte Carlo otherwise
(Laplace, Student-t, MoG and VampPrior priors, a Student-t guide: see
:func:`vaelab.model.priors.has_analytic_kl`); only the expected log-likelihood is then sampled, with
``objective.num_particles`` draws. Same expectation as ``trace``, lower variance where the KL is
analytic. β scales the KL through the latent sites' scales (both the model's and the guide's).

The guide must be fully reparameterized (Pyro's estimator has no score-function term): a
non-reparameterized guide family is refused with a :class:`~vaelab.registry.ConfigError`, and so
is a normalizing flow as guide family or prior (``iaf``, ``flow``): no KL with a flow has a
closed form, and the silent Monte Carlo fallback would make ``mean_field`` a slower ``trace``.

With ``objective.jit = true`` the loss is compiled by :func:`pyro.ops.jit.trace` through
:class:`CachedJitTraceMeanField_ELBO`, which fixes Pyro 1.9.2's
:class:`~pyro.infer.JitTraceMeanField_ELBO`: it tests ``_loss_and_surrogate_loss`` but caches the
compiled function under ``_differentiable_loss``, so it re-traces on every step (4–5× slower than
no JIT). Never combine the JIT with multi-process (DDP) training: the ranks silently drift apart
(see PYRO_NOTES).

References:
  1. D. Kingma, M. Welling. *Auto-Encoding Variational Bayes*. ICLR 2014 (eq. 10, the
     analytic-KL estimator).
"""

from __future__ import annotations

import warnings
import weakref

import pyro.ops.jit
from pyro.infer import JitTraceMeanField_ELBO, TraceMeanField_ELBO
from pyro.infer.util import torch_item
from pyro.poutine.util import site_is_subsample
from pyro.util import warn_if_nan

from vaelab.inference.objectives._jit import TensorArgsMixin
from vaelab.inference.objectives._particles import fn_key, require_reparameterized
from vaelab.inference.objectives.registry import OBJECTIVES, compiles
from vaelab.registry import ConfigError

__all__ = ["MeanFieldELBO", "CachedJitTraceMeanField_ELBO", "build_mean_field",
           "monte_carlo_kl_sites", "refuse_flows"]


class _ReparameterizedCheck:
    """Refuse (ConfigError) a guide with a non-reparameterized site, validation on or off; let a
    reparameterized guide factor count as a term of log q.

    A ``pyro.factor(name, f, has_rsample=True)`` in the guide (the categorical-KL convention of a
    relaxed guide adds +KL this way) is a deterministic term of log q: Pyro's mean-field loop
    accepts guide-only sites only when marked ``is_auxiliary``, and then subtracts their
    log-density, which is exactly −f. It is marked so here; a factor without ``has_rsample`` is
    refused.
    """

    def _get_trace(self, model, guide, args, kwargs):
        with warnings.catch_warnings():
            # the order check of Pyro is replaced by the per-site one of monte_carlo_kl_sites
            warnings.filterwarnings("ignore", message="Failed to verify mean field restriction")
            model_trace, guide_trace = super()._get_trace(model, guide, args, kwargs)
        for name in monte_carlo_kl_sites(model_trace, guide_trace):
            site = model_trace.nodes[name]
            site["fn"] = site["fn"].mask(True)  # no KL registered: Pyro's Monte Carlo term
        require_reparameterized("mean_field", guide_trace=guide_trace)
        for name, site in guide_trace.nodes.items():
            if site["type"] == "sample" and site["is_observed"] and name not in model_trace.nodes:
                if not site["fn"].has_rsample:
                    raise ConfigError(
                        f"objective.name = 'mean_field': guide factor {name!r} is not declared "
                        "reparameterized (pyro.factor(..., has_rsample=True)); use 'trace'"
                    )
                site["infer"]["is_auxiliary"] = True
        return model_trace, guide_trace


def _latent_order(trace) -> list[str]:
    return [name for name, site in trace.nodes.items()
            if site["type"] == "sample" and not site["is_observed"]
            and not site_is_subsample(site)]


def monte_carlo_kl_sites(model_trace, guide_trace) -> list[str]:
    r"""Latent sites whose KL term must be sampled, not taken in closed form.

    Replacing :math:`\mathbb E_q[\log p(s \mid \mathrm{pa}_p) - \log q(s \mid \mathrm{pa}_q)]`
    by :math:`-\mathrm{KL}(q(s \mid \mathrm{pa}_q) \,\|\, p(s \mid \mathrm{pa}_p))` (conditional on
    the sampled parents) is exact only when the model's parents of s are drawn *before* s in the
    guide, so that integrating s out leaves every other term unchanged. The model's parents are
    among the latent sites it draws before s; a site with one of those drawn after it by the
    guide keeps its Monte Carlo term. A bottom-up guide q(z_1 | x) q(z_2 | z_1) under the model
    p(z_2) p(z_1 | z_2): KL of z_2 in closed form, z_1 sampled; a top-down guide (the model's
    order) and the one-layer VAE: every KL in closed form.
    """
    guide_order = _latent_order(guide_trace)
    position = {name: i for i, name in enumerate(guide_order)}
    out: list[str] = []
    before: list[str] = []
    for name in _latent_order(model_trace):
        if name in position and any(position.get(p, -1) > position[name] for p in before):
            out.append(name)
        before.append(name)
    return out


class MeanFieldELBO(_ReparameterizedCheck, TraceMeanField_ELBO):
    """:class:`~pyro.infer.TraceMeanField_ELBO` that refuses a non-reparameterized guide."""


class _CachingJitTraceMeanField_ELBO(_ReparameterizedCheck, JitTraceMeanField_ELBO):
    """:class:`~pyro.infer.JitTraceMeanField_ELBO` that compiles once per (model, guide).

    Pyro 1.9.2 checks one attribute and caches under another, so it builds a fresh
    :func:`pyro.ops.jit.trace` closure (and re-traces) on every call. This class keeps one
    compiled closure per (model, guide) pair; :func:`pyro.ops.jit.trace` itself recompiles per
    number of arguments and per keyword arguments.
    """

    def differentiable_loss(self, model, guide, *args, **kwargs):
        cache = self.__dict__.setdefault("_compiled_losses", {})
        key = (fn_key(model), fn_key(guide))
        if key not in cache:
            weakself = weakref.ref(self)

            @pyro.ops.jit.trace(
                ignore_warnings=self.ignore_jit_warnings, jit_options=self.jit_options
            )
            def differentiable_loss(*args, **kwargs):
                self = weakself()
                loss = 0.0
                for model_trace, guide_trace in self._get_traces(model, guide, args, kwargs):
                    _, loss_particle = self._differentiable_loss_particle(model_trace, guide_trace)
                    loss = loss + loss_particle / self.num_particles
                return loss

            cache[key] = differentiable_loss
        return cache[key](*args, **kwargs)

    def loss_and_grads(self, model, guide, *args, **kwargs):
        loss = self.differentiable_loss(model, guide, *args, **kwargs)
        loss.backward()
        loss = torch_item(loss)
        warn_if_nan(loss, "loss")
        return loss


class CachedJitTraceMeanField_ELBO(TensorArgsMixin, _CachingJitTraceMeanField_ELBO):
    """The fixed JIT mean-field ELBO, called with the loop's ``(x, β, τ)`` arguments."""


def refuse_flows(vae) -> None:
    """Raise :class:`ConfigError` for a normalizing-flow guide family or prior: no KL with a
    flow has a closed form, and TraceMeanField_ELBO would fall back to Monte Carlo silently."""
    for key, part in (("guide.family", vae.inference.posterior),
                      ("model.prior", vae.generative.prior)):
        if getattr(part, "normalizing_flow", False):
            raise ConfigError(
                f"objective.name = 'mean_field' computes KL(q || p) in closed form, but {key} is "
                f"a normalizing flow ({type(part).__name__}), which has none; use "
                "objective.name = 'trace' (the same ELBO with a Monte Carlo KL), 'iwae', "
                "'renyi', 'stl' or 'iwae_dreg'"
            )


@OBJECTIVES.register("mean_field")
@compiles
def build_mean_field(cfg, vae) -> TraceMeanField_ELBO:
    """TraceMeanField_ELBO: analytic KL where registered (the fixed JIT with ``objective.jit``)."""
    require_reparameterized(
        "mean_field", vae=vae, why=" (TraceMeanField_ELBO has no score-function term)"
    )
    refuse_flows(vae)
    cls = CachedJitTraceMeanField_ELBO if cfg.jit else MeanFieldELBO
    return cls(
        num_particles=cfg.num_particles,
        vectorize_particles=cfg.num_particles > 1,
        max_plate_nesting=1,
        ignore_jit_warnings=True,
    )
