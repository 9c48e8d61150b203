r"""Per-particle machinery shared by the importance-weighted objectives (``iwae``, ``iwae_dreg``,
``renyi``, ``stl``).

For K particles per data point, :func:`draw_particles` runs the guide once under a vectorized
particle plate (:func:`vaelab.inference.importance.log_weights`) and returns

.. math::

    \log w_{kn} = \log p_θ(x_n, z_{kn}) - \log q_φ(z_{kn} \mid x_n) \quad (K, B),
    \qquad g = \log p(s) - \log q(s) \quad \text{(sites outside the data plate)}

Sites outside the ``"data"`` plate (global latents s) are drawn **once per step and shared by
all K particles and all data points** (the guide runs once more with its global sites set to
that draw), so every per-point bound is conditional on the same s and

.. math:: \mathcal{L} = g(s) + \sum_n \mathcal{L}_n(x_n \mid s) \le \log p(x_{1:B})

stays a lower bound of the batch's log-likelihood (the global term is a plain one-sample ELBO
term, not inside the per-point logsumexp). Pyro's ``RenyiELBO`` instead puts everything inside
one logsumexp over particles as soon as one site is outside the data plate (a joint bound over
the batch; pyro issues #3104, #3123).

With ``stop_guide_params=True`` the guide's log-density is evaluated with its *parameters*
detached but not its sample, :math:`\log q_{\bar φ}(z_φ(ε))`: the "path" part of the gradient
only, used by STL (Roeder et al. 2017) and DReG (Tucker et al. 2019).

:class:`ParticleELBO` is the base class: a :class:`pyro.infer.ELBO` whose subclasses define
:meth:`ParticleELBO.surrogate_and_bound`; ``loss``, ``loss_and_grads`` and
``differentiable_loss`` follow Pyro's conventions (negative bound, summed over the batch).
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import pyro.poutine as poutine
import torch
from pyro.distributions.util import scale_and_mask
from pyro.infer import ELBO
from pyro.poutine.messenger import Messenger
from pyro.poutine.util import site_is_subsample

from vaelab.inference.importance import in_data_plate, log_weights
from vaelab.registry import ConfigError

__all__ = [
    "Particles",
    "ParticleELBO",
    "draw_particles",
    "fn_key",
    "latent_sites",
    "refuse_guide_factors",
    "require_reparameterized",
    "stop_gradient_params",
]


# --------------------------------------------------------------------------------------------
# sites and distributions


def fn_key(fn) -> tuple:
    """Identity of a model/guide function, the key of per-function caches (bound methods compare
    by owner and function, so ``vae.guide`` accessed twice is one key)."""
    return (id(getattr(fn, "__self__", None)), getattr(fn, "__func__", fn))


def latent_sites(trace: poutine.Trace) -> list[tuple[str, Mapping[str, Any]]]:
    """The unobserved sample sites of a guide trace, in order (subsample sites excluded)."""
    return [
        (name, site)
        for name, site in trace.nodes.items()
        if site["type"] == "sample" and not site["is_observed"] and not site_is_subsample(site)
    ]


def require_reparameterized(
    objective: str,
    *,
    vae=None,
    guide_trace: poutine.Trace | None = None,
    why: str = "",
) -> None:
    """Raise :class:`ConfigError` when the guide cannot be differentiated pathwise: the one
    refusal of every objective without a score-function term (``mean_field``, ``iwae``,
    ``iwae_dreg``, ``renyi``, ``stl``).

    :param objective: the ``objective.name`` (named in the message).
    :param vae: checked at build time: its guide family's ``reparameterized`` flag.
    :param guide_trace: checked at run time: every latent site must have ``rsample``, whatever
        the family declares (validation on or off).
    :param why: a parenthetical reason appended to "needs a reparameterized guide".
    """

    def refuse(what: str):
        raise ConfigError(
            f"objective.name = {objective!r} needs a reparameterized guide{why}, but {what}; use "
            "objective.name = 'trace' (score-function gradient), 'graph' or 'enum'"
        )

    if vae is not None:
        posterior = vae.inference.posterior
        if not getattr(posterior, "reparameterized", True):
            refuse(f"guide family {type(posterior).__name__} is not")
    if guide_trace is not None:
        for name, site in latent_sites(guide_trace):
            if not site["fn"].has_rsample:
                fn = type(site["fn"]).__name__
                refuse(f"site {name!r} draws from {fn}, which has no rsample")


def refuse_guide_factors(guide_trace: poutine.Trace, objective: str) -> None:
    """Raise :class:`ConfigError` when the guide has an observed site (a ``pyro.factor``): an
    extra term of the guide has no place in an importance weight p(x, z) / q(z | x)."""
    for name, site in guide_trace.nodes.items():
        if site["type"] == "sample" and site["is_observed"] and not site_is_subsample(site):
            raise ConfigError(
                f"objective.name = {objective!r} builds importance weights p(x, z) / q(z | x), "
                f"but the guide has a factor site {name!r} (e.g. the categorical-KL convention "
                "of a relaxed guide, guide.family.kl = 'categorical'), which is not part of any "
                "weight; use guide.family.kl = 'relaxed', or objective.name = 'trace' or "
                "'mean_field'"
            )


def _detach_tree(obj, memo: dict):
    """``obj`` with every tensor it holds detached: distributions and transforms are shallow-copied
    and their attributes (base distributions, parameters, cached properties) detached in turn;
    anything else (numbers, shapes, modules) is returned as it is."""
    if torch.is_tensor(obj):
        return obj.detach()
    if isinstance(obj, (list, tuple)):
        return type(obj)(_detach_tree(v, memo) for v in obj)
    if not isinstance(obj, (torch.distributions.Distribution, torch.distributions.Transform)):
        return obj  # a module's parameters are caught by the check in stop_gradient_params
    if id(obj) not in memo:
        out = memo[id(obj)] = copy.copy(obj)
        for k, v in vars(obj).items():
            setattr(out, k, _detach_tree(v, memo))
    return memo[id(obj)]


_VERIFIED: set[tuple] = set()


def _structure(fn) -> tuple:
    """Type tree of a (possibly wrapped) distribution, the cache key of the detach check."""
    base = getattr(fn, "base_dist", None)
    return (type(fn), _structure(base) if base is not None else None)


def stop_gradient_params(fn, value: torch.Tensor):
    r"""``fn`` rebuilt with its parameters detached: :math:`q_{\bar φ}`.

    Works for any torch/Pyro distribution whose parameters are tensors held by the distribution,
    its base distributions (``Independent``, Pyro's expand and mask wrappers) or its transforms.
    A distribution that reaches parameters any other way (a module called inside ``log_prob``)
    is detected on first use and refused.

    :param fn: the guide site's distribution.
    :param value: the site's sample (used to check the detached ``log_prob`` has no parameter
        gradient left).
    :raises NotImplementedError: when the parameters cannot be detached.

    A distribution that knows how to detach itself (a ``stop_gradient()`` method, e.g. the IAF
    guide's :class:`~vaelab.guide.iaf.IAFDistribution`, whose parameters live in networks) is
    asked to.
    """
    own = getattr(fn, "stop_gradient", None)
    if callable(own):
        return own()
    detached = _detach_tree(fn, {})
    key = _structure(fn)
    if key not in _VERIFIED and torch.is_grad_enabled():
        if detached.log_prob(value.detach()).requires_grad:
            raise NotImplementedError(
                f"cannot stop the gradient of the parameters of {type(fn).__name__}: its "
                "log_prob still depends on parameters after detaching the tensors it holds; "
                "STL and DReG need a guide family whose parameters are plain tensors "
                "(Normal, StudentT, Laplace, ... optionally wrapped by .to_event/.expand/.mask)"
            )
        _VERIFIED.add(key)
    return detached


# --------------------------------------------------------------------------------------------
# particles


@dataclass
class Particles:
    """One draw of K particles for a batch of B points."""

    #: (K, B) per-point log weights (sites in the data plate)
    log_w: torch.Tensor
    #: () log p(s) − log q(s) of the sites outside the data plate (0 without such sites)
    global_: torch.Tensor
    #: the guide's latent values inside the data plate, each (K, B, *event), with gradient
    local_values: list[torch.Tensor]
    model_trace: poutine.Trace
    guide_trace: poutine.Trace


class _SetValues(Messenger):
    """Give sample sites fixed values without marking them done (unlike ``poutine.replay``), so
    enclosing plates still broadcast their distributions."""

    def __init__(self, values: dict[str, torch.Tensor]):
        super().__init__()
        self.values = values

    def _pyro_sample(self, msg: dict) -> None:
        if msg["name"] in self.values and not msg["is_observed"]:
            msg["value"] = self.values[msg["name"]]


def _shared_globals(guide, args, kwargs, K: int, plates: int) -> dict[str, torch.Tensor]:
    """One draw of the guide's latent sites outside the data plate (empty when it has none),
    each broadcast to ``(K, 1.., *batch, *event)`` as if drawn under the particle plate."""
    trace = poutine.trace(guide).get_trace(*args, **kwargs)
    values = {}
    for name, site in latent_sites(trace):
        if in_data_plate(site):
            continue
        v = site["value"]  # (*batch, *event)
        pad = plates - len(site["fn"].batch_shape)
        v = v.reshape((1,) * (pad + 1) + tuple(v.shape))  # (1, 1.., *batch, *event)
        values[name] = v.expand((K,) + tuple(v.shape[1:]))  # (K, 1.., *batch, *event)
    return values


def draw_particles(
    model,
    guide,
    num_particles: int,
    args: tuple,
    kwargs: dict,
    *,
    stop_guide_params: bool = False,
    has_globals: bool = False,
    max_plate_nesting: int = 1,
) -> Particles:
    r"""K particles per data point, global sites shared (see the module docstring).

    :param num_particles: K.
    :param stop_guide_params: evaluate :math:`\log q` with detached parameters (STL, DReG).
    :param has_globals: whether the guide has latent sites outside the data plate; if so they
        are drawn once and replayed into every particle (one extra guide pass).
    :returns: :class:`Particles`.
    """
    shared = {}
    if has_globals:
        shared = _shared_globals(guide, args, kwargs, num_particles, max_plate_nesting)
    run_guide = _SetValues(shared)(guide) if shared else guide
    lw = log_weights(
        model, run_guide, num_particles, *args, max_plate_nesting=max_plate_nesting, **kwargs
    )
    K = num_particles
    log_w, global_ = lw.local, lw.global_  # (K, B), (K,)
    local_values = []
    for _, site in latent_sites(lw.guide_trace):
        in_data = in_data_plate(site)
        if in_data:
            local_values.append(site["value"])  # (K, B, *event)
        if not stop_guide_params:
            continue
        # replace − log q_φ(z) by − log q_φ̄(z): same value, path gradient only
        fn, z = site["fn"], site["value"]
        delta = fn.log_prob(z) - stop_gradient_params(fn, z).log_prob(z)  # (K, B) or (K,)...
        delta = scale_and_mask(delta, site["scale"], site["mask"])
        if in_data:
            log_w = log_w + torch.broadcast_to(delta, log_w.shape)
        else:
            global_ = global_ + delta.reshape(K, -1).sum(-1)
    # with shared global draws every particle carries the same g: its mean is that g
    return Particles(log_w, global_.mean(0), local_values, lw.model_trace, lw.guide_trace)


# --------------------------------------------------------------------------------------------
# the base objective


class ParticleELBO(ELBO):
    r"""Base class: a per-data-point bound estimated from K vectorized particles.

    Subclasses implement :meth:`surrogate_and_bound`; the Pyro interface follows:

    * :meth:`loss`: ``−bound`` summed over the batch, a float, no gradient;
    * :meth:`differentiable_loss`: a tensor whose value is ``−bound`` and whose gradient is the
      objective's gradient estimator (for DReG and STL not the gradient of the value's graph);
    * :meth:`loss_and_grads`: the same, with ``.backward()`` called (and
      :meth:`loss_and_grads_deferred`, which leaves the loss on the device).

    :param num_particles: K, particles per data point.
    :param max_plate_nesting: plates in the model (the particle plate goes outside them).
    """

    #: the ``objective.name`` this class is registered under (for error messages)
    name = "particles"
    #: evaluate log q with detached guide parameters
    stop_guide_params = False

    def __init__(self, num_particles: int = 1, max_plate_nesting: int = 1):
        super().__init__(
            num_particles=num_particles,
            max_plate_nesting=max_plate_nesting,
            vectorize_particles=True,
        )
        self.model_plate_nesting = max_plate_nesting  # Pyro adds one for the particle plate
        self._has_globals: dict[tuple, bool] = {}

    def particles(self, model, guide, *args, **kwargs) -> Particles:
        """K particles for this batch (global sites shared), checked for reparameterization."""
        key = fn_key(guide)
        known = key in self._has_globals

        def draw(has_globals: bool) -> Particles:
            return draw_particles(
                model, guide, self.num_particles, args, kwargs,
                stop_guide_params=self.stop_guide_params and torch.is_grad_enabled(),
                has_globals=has_globals,
                max_plate_nesting=self.model_plate_nesting,
            )

        p = draw(self._has_globals.get(key, False))
        if not known:  # first call with this guide: check it, and redraw if it has globals
            require_reparameterized(self.name, guide_trace=p.guide_trace)
            refuse_guide_factors(p.guide_trace, self.name)
            has_globals = any(not in_data_plate(s) for _, s in latent_sites(p.guide_trace))
            self._has_globals[key] = has_globals
            if has_globals:
                p = draw(True)
        return p

    def _get_trace(self, model, guide, args, kwargs):
        """(model_trace, guide_trace) of one vectorized draw of K particles."""
        p = self.particles(model, guide, *args, **kwargs)
        return p.model_trace, p.guide_trace

    def surrogate_and_bound(self, p: Particles) -> tuple[torch.Tensor, torch.Tensor]:
        """``(surrogate, bound)``, both summed over the batch: the gradient of ``surrogate`` is the
        estimator; ``bound`` is the value reported."""
        raise NotImplementedError

    def differentiable_loss(self, model, guide, *args, **kwargs) -> torch.Tensor:
        surrogate, bound = self.surrogate_and_bound(self.particles(model, guide, *args, **kwargs))
        # value −bound, gradient −∇surrogate
        return -(bound.detach() + (surrogate - surrogate.detach()))

    def loss(self, model, guide, *args, **kwargs) -> float:
        with torch.no_grad():
            _, bound = self.surrogate_and_bound(self.particles(model, guide, *args, **kwargs))
        return -float(bound)

    def loss_and_grads(self, model, guide, *args, **kwargs) -> float:
        return float(self.loss_and_grads_deferred(model, guide, *args, **kwargs))

    def loss_and_grads_deferred(self, model, guide, *args, **kwargs) -> torch.Tensor:
        """:meth:`loss_and_grads` without reading the loss back to the host: the gradients,
        and the loss as a detached scalar tensor on the model's device."""
        loss = self.differentiable_loss(model, guide, *args, **kwargs)
        if loss.requires_grad:
            loss.backward(retain_graph=self.retain_graph)
        return loss.detach()
