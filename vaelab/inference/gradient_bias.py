r"""Bias of a gradient estimator: its mean gradient against a reference gradient.

For each parameter group (encoder, decoder, prior) with mean estimated gradient
:math:`\hat μ` (the mean of M draws, :mod:`vaelab.inference.diagnostics`) and reference
:math:`g^\star`:

.. math:: \text{bias} = \lVert \hat μ - g^\star \rVert_2, \qquad
    \text{relative bias} = \frac{\lVert \hat μ - g^\star \rVert_2}{\lVert g^\star \rVert_2},
    \qquad \cos = \frac{\hat μ^\top g^\star}{\lVert \hat μ \rVert_2 \lVert g^\star \rVert_2}.

The reference (:func:`reference_gradient`) is

* ``exact``: the gradient of the batch-mean negative ELBO of the **discrete** model by
  enumeration of the :math:`K^N` joint states (:func:`~vaelab.inference.exact.enumerated_elbo`
  + autograd), for a categorical latent with :math:`K^N \le` :data:`MAX_ENUMERATED_STATES`;
  refused with a :class:`~vaelab.registry.ConfigError` otherwise;
* ``monte carlo``: the mean of many draws of an unbiased estimator of the ELBO's gradient (the
  ``trace`` objective, with the guide as built: pathwise for a reparameterized guide), the batch
  replicated so that one call gives many draws. Unbiased for the ELBO of the model as trained
  (for a relaxed latent: the relaxed objective, not the discrete ELBO), with Monte Carlo error
  of its own: read a bias below the reference's standard error (reported) as zero.

The bias of an objective whose bound differs from the ELBO (IWAE, Rényi) includes the difference
of the bounds' gradients: that is the point of comparing against one reference.

Example::

    ref = reference_gradient(vae, x, exact=True)
    compare(mean_grads, ref)   # {"encoder": GradientBias(...), ...}
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import pyro
import torch

from vaelab.registry import ConfigError

__all__ = [
    "MAX_ENUMERATED_STATES",
    "GradientBias",
    "ReferenceGradient",
    "compare",
    "enumerable",
    "gradient_bias",
    "reference_gradient",
]

#: the largest K^N for which the exact reference is computed (K^N decoder passes, with grad)
MAX_ENUMERATED_STATES = 4096


@dataclass
class GradientBias:
    """Bias and cosine similarity of one group's mean gradient (module docstring)."""

    bias: float
    relative_bias: float
    cosine: float


@dataclass
class ReferenceGradient:
    """The reference per parameter group, how it was obtained, and its standard error norm
    (0 for the exact one)."""

    grads: dict[str, torch.Tensor]
    kind: str
    description: str
    standard_error: dict[str, float]


def gradient_bias(mean: torch.Tensor, reference: torch.Tensor) -> GradientBias:
    """:class:`GradientBias` of ``mean (P,)`` against ``reference (P,)`` (float64)."""
    mean, reference = mean.double(), reference.double()
    diff = float((mean - reference).norm())
    ref_norm, mean_norm = float(reference.norm()), float(mean.norm())
    rel = diff / ref_norm if ref_norm > 0 else (0.0 if diff == 0 else math.inf)
    denom = ref_norm * mean_norm
    cosine = float(mean @ reference) / denom if denom > 0 else math.nan
    return GradientBias(diff, rel, cosine)


def compare(mean_grads: dict[str, torch.Tensor], ref: ReferenceGradient) -> dict[str, GradientBias]:
    """:func:`gradient_bias` per group present in both, except a group that neither gradient
    moves (both zero: parameters the bound does not depend on, e.g. a score-function
    baseline's under the reference ELBO), where bias and cosine mean nothing."""
    return {g: gradient_bias(mean_grads[g], ref.grads[g]) for g in mean_grads
            if g in ref.grads and (bool(mean_grads[g].any()) or bool(ref.grads[g].any()))}


def enumerable(vae) -> bool:
    """Whether the latent is categorical with at most :data:`MAX_ENUMERATED_STATES` states."""
    from vaelab.model.latents import CategoricalLatent

    latent = getattr(vae, "latent", None)
    return isinstance(latent, CategoricalLatent) and latent.num_states <= MAX_ENUMERATED_STATES


def _group_grads(vae) -> dict[str, torch.Tensor]:
    out = {}
    for name, ps in vae.parameter_groups().items():
        parts = [(p.grad if p.grad is not None else torch.zeros_like(p)).detach().reshape(-1)
                 .cpu() for p in ps]
        if parts:
            out[name] = torch.cat(parts)
    return out


def _exact(vae, x: torch.Tensor) -> ReferenceGradient:
    from vaelab.inference.exact import enumerated_elbo

    if not enumerable(vae):
        latent: Any = getattr(vae, "latent", None)
        what = (f"{latent.num_states} states > {MAX_ENUMERATED_STATES}"
                if hasattr(latent, "num_states") else f"a {type(latent).__name__} latent")
        raise ConfigError(f"--exact: the latent space is not enumerable ({what}); drop --exact "
                          "for a Monte Carlo reference")
    vae.zero_grad()
    (-enumerated_elbo(vae, x).mean()).backward()
    grads = _group_grads(vae)
    vae.zero_grad()
    latent = vae.latent
    return ReferenceGradient(grads, "exact", f"exact gradient of the discrete ELBO by "
                             f"enumeration of {latent.num_states} states",
                             {g: 0.0 for g in grads})


def _monte_carlo(vae, x, args, draws: int, per_call: int, seed: int) -> ReferenceGradient:
    from vaelab.config import ObjectiveConfig
    from vaelab.inference.objectives import build_objective

    objective: Any = build_objective(ObjectiveConfig.model_validate({"name": "trace"}), vae)
    x_rep = x.repeat(per_call, *([1] * (x.dim() - 1)))  # (per_call B, ...)
    pyro.set_rng_seed(seed)
    rows: dict[str, list[torch.Tensor]] = {}
    calls = max(2, math.ceil(draws / per_call))
    for _ in range(calls):
        vae.zero_grad()
        objective.loss_and_grads(vae.model, vae.guide, x_rep, *args)
        for g, v in _group_grads(vae).items():
            rows.setdefault(g, []).append(v.double() / x_rep.shape[0])
    vae.zero_grad()
    stacked = {g: torch.stack(v) for g, v in rows.items()}  # (calls, P)
    se = {g: float((v.var(0) / v.shape[0]).sum().sqrt()) for g, v in stacked.items()}
    return ReferenceGradient({g: v.mean(0) for g, v in stacked.items()}, "monte carlo",
                             f"mean of {calls * per_call} draws of the ELBO gradient (trace "
                             "objective, unbiased)", se)


def reference_gradient(vae, x: torch.Tensor, args: tuple = (), exact: bool = False,
                       draws: int = 10_000, per_call: int = 100, seed: int = 0
                       ) -> ReferenceGradient:
    """The reference gradient of the batch-mean negative ELBO at ``x (B, D)``, per group.

    :param exact: enumerate (refused with a ConfigError when the latent is not enumerable).
    :param args: model/guide arguments after ``x`` (β, temperature) of the Monte Carlo one.
    :param draws: one-draw gradients averaged by the Monte Carlo reference.
    :param per_call: draws per call (the batch replicated this many times).
    """
    if exact:
        return _exact(vae, x)
    return _monte_carlo(vae, x, args, draws, per_call, seed)
