r"""Per-data-point log importance weights of any vaelab model/guide pair.

For K particles z_k ~ q(z | x_n) (guide run once, sampling vectorized by an outer plate),

.. math:: \log w_{kn} = \log p_θ(x_n, z_{kn}) - \log q_φ(z_{kn} \mid x_n)

summed over every sample site *inside* the ``"data"`` plate (shape ``(K, B)``). Sites outside the
data plate (global latents, learned global parameters sampled as random variables) belong to the
whole batch, not to a data point: they are returned separately (shape ``(K,)``), so per-point
bounds stay per point whatever the plate structure (the RenyiELBO trap of pyro #3104, #3123).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import pyro
import pyro.poutine as poutine
import torch
from pyro.distributions import TorchDistribution
from pyro.distributions.util import scale_and_mask
from pyro.poutine.util import site_is_subsample

__all__ = ["LogWeights", "log_weights", "in_data_plate", "site_fn", "site_log_prob", "DATA_PLATE",
           "join_latents", "latent_names", "canonical_latent_names", "split_latents"]

#: the name of the data plate in vaelab models
DATA_PLATE = "data"


@dataclass
class LogWeights:
    """``local (K, B)``: per-point log p − log q; ``global_ (K,)``: batch-level sites' terms."""

    local: torch.Tensor
    global_: torch.Tensor
    model_trace: poutine.Trace
    guide_trace: poutine.Trace


def in_data_plate(site: Mapping[str, Any]) -> bool:
    """Whether a trace site lies inside the ``"data"`` plate (a per-point term)."""
    return any(f.name == DATA_PLATE for f in site["cond_indep_stack"])


def site_fn(site: Mapping[str, Any]) -> TorchDistribution:
    """The distribution of a sample site (Pyro types a site's ``fn`` as any callable)."""
    return site["fn"]


def site_log_prob(site: Mapping[str, Any]) -> torch.Tensor:
    """log fn(value) of a sample site, with the site's scale and mask applied."""
    return scale_and_mask(site["fn"].log_prob(site["value"]), site["scale"], site["mask"])


def log_weights(
    model,
    guide,
    num_particles: int,
    *args,
    max_plate_nesting: int = 1,
    **kwargs,
) -> LogWeights:
    """Run ``guide`` then ``model`` replayed on its draws, under a particle plate.

    :param num_particles: K, the number of draws per data point.
    :param max_plate_nesting: plates in the model (the particle plate goes outside them).
    :returns: :class:`LogWeights` with ``local (K, B)`` and ``global_ (K,)``.

    Gradients flow (pathwise through reparameterized sites) unless called under ``no_grad``.
    """
    with pyro.plate("particles", num_particles, dim=-(max_plate_nesting + 1)):
        guide_tr = poutine.trace(guide).get_trace(*args, **kwargs)
        model_tr = poutine.trace(poutine.replay(model, trace=guide_tr)).get_trace(*args, **kwargs)
    local: torch.Tensor | float = 0.0
    global_: torch.Tensor | float = 0.0
    for tr, sign in ((model_tr, 1.0), (guide_tr, -1.0)):
        for site in tr.nodes.values():
            if site["type"] != "sample" or site_is_subsample(site):
                continue
            if sign < 0 and site["is_observed"]:
                continue
            lp = site_log_prob(site)  # batch shape, e.g. (K, B) or (K, 1)
            if in_data_plate(site):
                local = local + sign * lp
            else:
                global_ = global_ + sign * lp.reshape(num_particles, -1).sum(-1)
    if not torch.is_tensor(local):
        raise ValueError(f"no sample site inside pyro.plate({DATA_PLATE!r}): nothing is per point")
    K = num_particles
    local = torch.broadcast_to(local, (K, local.shape[-1]))  # (K, B)
    if not torch.is_tensor(global_):
        global_ = local.new_zeros(K)
    return LogWeights(local, global_, model_tr, guide_tr)


# --------------------------------------------------------------------------------------------
# several latent sites as one vector (AIS and BDMC run HMC on all latents jointly)


def latent_names(trace: poutine.Trace) -> list[str]:
    """The unobserved sample sites of a trace, in the order drawn (subsample sites excluded):
    ``["z"]`` for the one-layer VAE, ``["z_L", …, "z_1"]`` for an L-layer model's trace."""
    return [name for name, site in trace.nodes.items()
            if site["type"] == "sample" and not site["is_observed"]
            and not site_is_subsample(site)]


def canonical_latent_names(trace: poutine.Trace) -> list[str]:
    """:func:`latent_names` in one order whichever of model and guide was traced: by name,
    numbers compared as numbers (``"z_2"`` before ``"z_10"``), so that joined values of a model
    trace and of a guide trace line up."""
    def key(name: str) -> list:
        return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", name)]

    return sorted(latent_names(trace), key=key)


def join_latents(values: Sequence[torch.Tensor]) -> torch.Tensor:
    """One site's value as it is; several (each ``(..., d_l)``) concatenated, ``(..., Σ d_l)``
    (each a vector: the layers of a Gaussian hierarchy)."""
    if len(values) == 1:
        return values[0]
    if any(v.dim() == 0 for v in values):
        raise ValueError("joining latent sites needs vector-valued sites")
    lead = torch.broadcast_shapes(*(v.shape[:-1] for v in values))
    return torch.cat([v.expand(*lead, v.shape[-1]) for v in values], dim=-1)


def split_latents(z: torch.Tensor, names: Sequence[str], widths: Sequence[int]
                  ) -> dict[str, torch.Tensor]:
    """The inverse of :func:`join_latents`: ``{name: z[..., slice]}``."""
    if len(names) == 1:
        return {names[0]: z}
    return dict(zip(names, z.split(list(widths), dim=-1)))
