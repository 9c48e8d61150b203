r"""Fused log importance weights and log joint of the L-layer models
(:mod:`vaelab.model.hierarchy`): the traced path's draws and values, without the Pyro trace.

For x ``(B, D)`` and k particles, the guide draws every layer in its own order (``bottom_up``:
z_1 … z_L; ``top_down`` and ``ladder``: z_L … z_1),

.. math::

    z_l = μ^q_l(\cdot) + σ^q_l(\cdot) ⊙ ε_l, \qquad ε_l \sim \mathcal N(0, I) \;(k, B, d_l),

    \log w = \log p(z_L) + \sum_{l=1}^{L-1} \log \mathcal N\big(z_l; μ_l(z_{l+1}),
    σ_l(z_{l+1})^2\big) + \log p_θ(x \mid z_1 [, \dots, z_L])
    - \sum_{l=1}^{L} \log q(z_l \mid \cdot),

with each ε_l of the shape and in the order that Pyro's particle plate draws it, so that the two
paths see the same z for the same RNG state (:mod:`vaelab.inference.fused` for one layer).

**Once per batch** (the layers read from x alone): q(z_1 | x) (``bottom_up``), q(z_L | x)
(``top_down``), the whole deterministic upward pass (μ̂_l, σ̂_l) (``ladder``), the prior of z_L
(a VampPrior's pseudo-input pass), and for ``top_down`` the x-part of the first linear layer of
each q(z_l | x, z_{l+1}),

.. math:: W \,[t(x); z_{l+1}] + b = (W_x\, t(x) + b) + W_z\, z_{l+1},

so that only the ``(k B, d_{l+1})`` product runs per particle, not ``(k B, D + d_{l+1})``. The
``ladder``'s model conditional p(z_l | z_{l+1}) serves both its precision-weighted merge and
log p (the traced path runs it twice). Per particle, an MLP's layers run on reused buffers with
in-place activations and the decoder is the one-layer fused path's (both handed in by
:func:`vaelab.inference.fused.fused_log_weights`, which dispatches here).

The same walk of the guide with the values given instead of drawn is
log q(z_{1:L} | x) of AIS from the guide, and :func:`log_prior` its log p(z_{1:L}), both
differentiable in z (:class:`vaelab.inference.fast_ais.FusedLogJoint`).

.. note:: Applies to Gaussian layers (:class:`~vaelab.model.hierarchy.GaussianConditional`,
   every head the diagonal normal family) with the guides ``bottom_up``, ``top_down`` and
   ``ladder`` (the ladder's merge reading the model's own conditionals), ``skip`` or not, and
   any prior of z_L; :func:`hierarchy_path` returns ``None`` otherwise (the traced path).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, cast

import pyro.distributions as dist
import torch
from torch import Tensor, nn
from torch.distributions import Distribution, Independent, Normal
from torch.nn import functional as F

from vaelab.guide.hierarchical import BottomUpGuide, LadderGuide, TopDownGuide
from vaelab.guide.posteriors import NormalPosterior
from vaelab.model.hierarchy import GaussianConditional
from vaelab.model.networks import MLP

__all__ = ["BatchEncoding", "GuideEncoding", "HierarchyPath", "covered", "encode_guide",
           "guide_log_q", "hierarchy_path", "log_normal", "log_prior", "normal_score",
           "prior_density", "walk"]

#: ``run(modules, u (..., in)) → (..., out)``: a network's modules applied in turn to u
Run = Callable[[Sequence[nn.Module], Tensor], Tensor]
#: a diagonal Gaussian's ``(loc, scale, log scale)``, each ``(..., d)``
Gauss = tuple[Tensor, Tensor, Tensor]
#: ``draw(l, loc, scale, log_scale) → z_l`` of layer l (from 0, bottom first), each
#: ``(..., B, d_l)``
Draw = Callable[[int, Tensor, Tensor, Tensor], Tensor]
#: ``decode(u (k, B, in), x (B, D)) → log p(x | z) (k, B)``, u the decoder's input
Decode = Callable[[Tensor, Tensor], Tensor]

#: the guides with a fused walk
GUIDES = (BottomUpGuide, TopDownGuide, LadderGuide)

_HALF_LOG_2PI = 0.5 * math.log(2 * math.pi)


def plain(modules: Sequence[nn.Module], u: Tensor) -> Tensor:
    """The modules applied in turn, as they are (differentiable)."""
    for m in modules:
        u = m(u)
    return u


def _modules(net: nn.Module) -> list[nn.Module]:
    """A plain sequential network's modules, else ``[net]``."""
    return list(net) if isinstance(net, MLP) or type(net) is nn.Sequential else [net]


def _loc_scale(layer: nn.Module, h: Tensor) -> Gauss:
    """A :class:`GaussianConditional`'s head on its network's output ``h (..., 2 d)``: the
    traced path's (loc, scale) and log scale
    (:meth:`~vaelab.guide.posteriors.NormalPosterior.loc_scale_log`)."""
    return cast(Any, layer).head.loc_scale_log(h)


def _conditional(layer: nn.Module, u: Tensor, run: Run) -> Gauss:
    """(loc, scale, log scale) of a :class:`GaussianConditional` at its input ``u (..., in)``."""
    return _loc_scale(layer, run(_modules(cast(Any, layer).network), u))


def log_normal(u: Tensor, log_scale: Tensor) -> Tensor:
    r""":math:`\log \mathcal N(z; μ, \operatorname{diag} σ^2)` summed over the event, ``(...)``,
    from the standardized :math:`u = (z - μ) / σ` ``(..., d)`` and :math:`\sum \log σ`
    (``log_scale``, broadcast against ``(...)``): :math:`-\tfrac12 u \cdot u - \sum \log σ -
    \tfrac d2 \log 2π`. At a drawn :math:`z = μ + σ ε`, u is ε itself. Two reductions where
    ``Normal(μ, σ).log_prob(z).sum(-1)`` runs eight elementwise passes (a log among them); the
    same value up to float rounding."""
    return -0.5 * torch.linalg.vecdot(u, u) - log_scale - u.shape[-1] * _HALF_LOG_2PI


def covered(vae) -> bool:
    """Whether ``vae`` (several layers) has a fused path: a :data:`GUIDES` guide, every layer a
    :class:`GaussianConditional` whose head is the diagonal normal family, a ladder merging with
    the model's own conditionals."""
    g, q = vae.generative, vae.inference
    if type(q) not in GUIDES:
        return False
    layers = [*q.layers, *g.conditionals]
    if not all(type(m) is GaussianConditional and type(m.head) is NormalPosterior
               for m in layers):
        return False
    if type(q) is LadderGuide:  # the merge's p(z_l | z_{l+1}) must be the model's
        return all(m._prior is c for m, c in zip(q.merges, g.conditionals))
    return True


@dataclass
class GuideEncoding:
    """What the guide reads of one batch, computed once."""

    tx: Tensor  #: t(x), ``(B, D)``
    #: layer → (loc, scale, log scale) ``(B, d_l)`` of the layers drawn from x alone (the
    #: ladder: μ̂, σ̂)
    fixed: dict[int, Gauss] = field(default_factory=dict)
    #: ``top_down``, layer → W_x t(x) + b ``(B, H)`` of its network's first linear layer
    x_part: dict[int, Tensor] = field(default_factory=dict)


def encode_guide(q, tx: Tensor) -> GuideEncoding:
    """The guide's terms of x alone, for ``tx = t(x) (B, D)`` (not differentiated)."""
    enc, L, D = GuideEncoding(tx), q.num_layers, tx.shape[-1]
    with torch.no_grad():
        if type(q) is BottomUpGuide:
            enc.fixed[0] = _conditional(q.layers[0], tx, plain)
        elif type(q) is TopDownGuide:
            enc.fixed[L - 1] = _conditional(q.layers[L - 1], tx, plain)
            for k in range(L - 1):
                first = _modules(cast(Any, q.layers[k]).network)[0]
                if isinstance(first, nn.Linear):  # [t(x); z_{k+1}]: the first D columns
                    enc.x_part[k] = F.linear(tx, first.weight[:, :D], first.bias)  # (B, H)
        else:  # ladder: the upward pass (LadderGuide.upward of every layer at once)
            h = tx  # (B, D), then (B, 2 d_l)
            for k, layer in enumerate(q.layers):
                h = cast(Any, layer).network(h)
                enc.fixed[k] = _loc_scale(layer, h)  # (μ̂_k, σ̂_k), (B, d_k) each
    return enc


def _top_down_layer(layer: nn.Module, enc: GuideEncoding, k: int, parent: Tensor,
                    run: Run) -> Gauss:
    """q(z_k | x, z_{k+1}) at ``parent = z_{k+1} (..., B, d)``: the first linear layer split
    into its cached x-part and the parent's product where it is one, else the network on
    [t(x); z_{k+1}]."""
    modules = _modules(cast(Any, layer).network)
    if k not in enc.x_part:
        tx = enc.tx.expand(*parent.shape[:-1], enc.tx.shape[-1])  # (..., B, D)
        return _loc_scale(layer, run(modules, torch.cat([tx, parent], -1)))
    w = cast(nn.Linear, modules[0]).weight
    h = F.linear(parent, w[:, enc.tx.shape[-1]:]).add_(enc.x_part[k])  # (..., B, H)
    return _loc_scale(layer, run(modules[1:], h))


def _merge(hat: Gauss, p: Gauss) -> Gauss:
    """The ladder's precision-weighted product (:class:`~vaelab.guide.hierarchical.LadderMerge`,
    the same operations in the same order) of μ̂, σ̂ and the model's p(z_l | z_{l+1})."""
    (loc_hat, scale_hat, _), (loc_p, scale_p, _) = hat, p
    prec_hat, prec_p = scale_hat.pow(-2), scale_p.pow(-2)
    var = 1.0 / (prec_hat + prec_p)  # σ_q²
    return (loc_hat * prec_hat + loc_p * prec_p) * var, var.sqrt(), 0.5 * var.log()


def walk(vae, enc: GuideEncoding, draw: Draw, run: Run
         ) -> tuple[list[Tensor], dict[int, Gauss]]:
    """Visit the guide's layers in its order, ``z_l = draw(l, loc, scale, log_scale)``.

    :returns: ``[z_1, …, z_L]`` and, for the ladder, the model conditionals' (loc, scale, log
        scale) of p(z_l | z_{l+1}) that its merges computed (layer → triple).
    """
    g, q = vae.generative, vae.inference
    L = q.num_layers
    zs: list[Tensor] = [enc.tx] * L
    model: dict[int, Gauss] = {}
    if type(q) is BottomUpGuide:
        zs[0] = draw(0, *enc.fixed[0])
        for k in range(1, L):
            zs[k] = draw(k, *_conditional(q.layers[k], zs[k - 1], run))
        return zs, model
    zs[L - 1] = draw(L - 1, *enc.fixed[L - 1])
    for k in range(L - 2, -1, -1):
        if type(q) is TopDownGuide:
            gauss = _top_down_layer(q.layers[k], enc, k, zs[k + 1], run)
        else:
            model[k] = _conditional(g.conditionals[k], zs[k + 1], run)
            gauss = _merge(enc.fixed[k], model[k])
        zs[k] = draw(k, *gauss)
    return zs, model


def _normal_log_prob(loc: Tensor, scale: Tensor, log_scale: Tensor, z: Tensor) -> Tensor:
    """log N(z; loc, diag scale²) summed over the event, ``(..., B)`` (:func:`log_normal`)."""
    return log_normal((z - loc) / scale, log_scale.sum(-1))


def diagonal_normal(p_top: Distribution) -> tuple[Tensor, Tensor] | None:
    """``(loc, scale)`` of a diagonal normal prior (one event dimension), else ``None``."""
    if not (isinstance(p_top, Independent) and type(p_top.base_dist) in (Normal, dist.Normal)
            and p_top.reinterpreted_batch_ndims == 1):
        return None
    base = cast(Normal, p_top.base_dist)
    return base.loc, base.scale


def _standardizer(loc: Tensor, scale: Tensor
                  ) -> tuple[Callable[[Tensor], Tensor], Tensor | None, Tensor]:
    """``(z ↦ u = (z − μ)/σ, σ, Σ log σ)`` of a diagonal normal, decided once: for N(0, I)
    the identity, ``None`` and 0 (no standardizing pass)."""
    if bool((loc == 0).all()) and bool((scale == 1).all()):
        return (lambda z: z), None, loc.new_zeros(())
    return (lambda z: (z - loc) / scale), scale, scale.log().sum(-1)


def prior_density(p_top: Distribution) -> Callable[[Tensor], Tensor]:
    """``z (..., d) → log p(z) (...)`` of the prior ``p_top``, decided once (per batch, not per
    chunk or leapfrog step): :func:`log_normal` for a diagonal normal prior (a standard one
    without the standardizing pass), else the prior's own ``log_prob``."""
    normal = diagonal_normal(p_top)
    if normal is None:
        return p_top.log_prob
    standardize, _, log_scale = _standardizer(*normal)
    return lambda z: log_normal(standardize(z), log_scale)


def normal_score(loc: Tensor, scale: Tensor) -> Callable[[Tensor], tuple[Tensor, Tensor]]:
    r"""``z (..., d) → (log N(z; loc, diag scale²) (...), its gradient in z (..., d))``: with
    :math:`u = (z - μ)/σ`, :math:`\log p = -\tfrac12 u \cdot u - \sum \log σ - \tfrac d2
    \log 2π` and :math:`∇_z \log p = -u / σ` (for N(0, I): :math:`-z`), without a backward
    pass."""
    standardize, sigma, log_scale = _standardizer(loc, scale)

    def score(z: Tensor) -> tuple[Tensor, Tensor]:
        u = standardize(z)
        return log_normal(u, log_scale), -u if sigma is None else -u / sigma

    return score


def log_prior(vae, zs: Sequence[Tensor], log_p_top: Callable[[Tensor], Tensor],
              run: Run = plain, model: dict[int, Gauss] | None = None) -> Tensor:
    r""":math:`\log p(z_L) + \sum_l \log p(z_l \mid z_{l+1})` at ``zs = [z_1, …, z_L]``,
    ``(..., B)``; ``log_p_top``: the top prior's :func:`prior_density`; ``model``:
    conditionals' (loc, scale, log scale) already computed (the ladder's)."""
    g, model = vae.generative, model or {}
    log_p = log_p_top(zs[-1])  # (..., B)
    for k in range(len(zs) - 2, -1, -1):
        gauss = model[k] if k in model else _conditional(g.conditionals[k], zs[k + 1], run)
        log_p = log_p + _normal_log_prob(*gauss, zs[k])
    return log_p


def guide_log_q(vae, enc: GuideEncoding, zs: Sequence[Tensor]) -> Tensor:
    r""":math:`\log q(z_{1:L} \mid x)` at given ``zs = [z_1, …, z_L]`` ``(C, B, d_l)``,
    ``(C, B)``, differentiable in them (the guide's walk with the values given)."""
    terms: list[Tensor] = []

    def given(k: int, loc: Tensor, scale: Tensor, log_scale: Tensor) -> Tensor:
        terms.append(_normal_log_prob(loc, scale, log_scale, zs[k]))
        return zs[k]

    walk(vae, enc, given, plain)
    return torch.stack(torch.broadcast_tensors(*terms)).sum(0)


@dataclass
class BatchEncoding:
    """What one batch's chunks share."""

    guide: GuideEncoding
    log_p_top: Callable[[Tensor], Tensor]  #: log p(z_L) (:func:`prior_density`)


class HierarchyPath:
    """The fused log weights of an L-layer VAE: :meth:`encode` once per batch, then
    :meth:`log_weights` per chunk of particles (see the module docstring).

    :param vae: a :class:`~vaelab.vae.HierarchicalVAE` that :func:`covered` accepts.
    :param decode: the decoder's log-likelihood of x at its input.
    :param run: how per-particle networks run (buffers, in-place activations).
    """

    def __init__(self, vae, decode: Decode, run: Run):
        self.vae, self.decode, self.run = vae, decode, run

    def encode(self, x: Tensor) -> BatchEncoding:
        q, g = self.vae.inference, self.vae.generative
        with torch.no_grad():
            return BatchEncoding(encode_guide(q, q.tx(x)), prior_density(g.prior(None)))

    def log_weights(self, batch: BatchEncoding, x: Tensor, k: int) -> Tensor:
        """``log w (k, B)`` of k particles for ``x (B, D)``: the guide's draws in its order."""
        log_q: list[Tensor] = []

        def draw(layer: int, loc: Tensor, scale: Tensor, log_scale: Tensor) -> Tensor:
            eps = torch.randn(k, *loc.shape[-2:], dtype=loc.dtype, device=loc.device)
            z = loc + eps * scale  # (k, B, d_l): Pyro's rsample of the expanded normal
            log_q.append(log_normal(eps, log_scale.sum(-1)))  # (k, B): u = ε at z = μ + σ ε
            return z

        zs, model = walk(self.vae, batch.guide, draw, self.run)
        log_w = log_prior(self.vae, zs, batch.log_p_top, self.run, model)  # (k, B)
        for term in log_q:
            log_w = log_w - term
        g = self.vae.generative
        return log_w + self.decode(g.decoder_input(zs), x)  # (k, B)


def hierarchy_path(vae, decode: Decode, run: Run) -> HierarchyPath | None:
    """The fused path of an L-layer VAE, or ``None`` where :func:`covered` refuses it (the
    likelihood is :func:`~vaelab.inference.fused.fused_log_weights`' to check)."""
    return HierarchyPath(vae, decode, run) if covered(vae) else None
