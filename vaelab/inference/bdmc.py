r"""Bidirectional Monte Carlo (BDMC): log p(x) bracketed from both sides on simulated data.

For data simulated from the model itself, :math:`z_n \sim p(z)`, :math:`x_n \sim p(x \mid z_n)`,
the latent :math:`z_n` that generated :math:`x_n` is an *exact* sample of the posterior
:math:`p(z \mid x_n)`. Then

* forward AIS (prior → posterior, :func:`~vaelab.inference.ais.ais`) gives
  :math:`\hat Z` with :math:`E[\hat Z] = p(x)`, hence :math:`E[\log \hat Z] \le \log p(x)`:
  a stochastic **lower** bound;
* reverse AIS (posterior → prior, started at :math:`z_n`) gives :math:`\hat R` with
  :math:`E[\hat R] = 1/p(x)`, hence :math:`E[-\log \hat R] \ge \log p(x)`: a stochastic
  **upper** bound.

The gap between the two bounds bounds the error of either (and of any estimator lying between
them, e.g. IS with the guide) on data like the model's own samples; it shrinks to 0 as the
number of AIS steps T grows.

References:
  1. R. B. Grosse, Z. Ghahramani, R. P. Adams. *Sandwiching the marginal likelihood using
     bidirectional Monte Carlo*. arXiv:1511.02543, 2015.
  2. Y. Wu, Y. Burda, R. Salakhutdinov, R. Grosse. *On the Quantitative Analysis of
     Decoder-Based Generative Models*. ICLR 2017.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import pyro.poutine as poutine
import torch
from tqdm.auto import tqdm

from vaelab.inference.ais import (
    AIS_BASE,
    AIS_CHAINS,
    AIS_STEPS,
    LogJoint,
    advance_by,
    ais,
    beta_schedule,
)
from vaelab.inference.importance import canonical_latent_names, join_latents

__all__ = ["BDMCResult", "simulate", "bdmc"]


def simulate(
    model: Callable, x_like: torch.Tensor, *args, site: str | None = None, obs_site: str = "x",
    **kwargs,
) -> tuple[torch.Tensor, torch.Tensor]:
    r"""Draw :math:`z \sim p(z)`, :math:`x \sim p(x \mid z)` from a Pyro model.

    :param model: Pyro model ``model(x, *args, **kwargs)`` observing ``obs_site``.
    :param x_like: ``(N, D)``: only its shape, dtype and device are used.
    :param site: the latent site; ``None``: every latent site, joined in the order AIS joins
        them (:func:`~vaelab.inference.importance.canonical_latent_names`).
    :returns: ``x (N, D)`` and the latent ``z (N, d)`` that generated it (an exact posterior
        sample given x).
    """
    with torch.no_grad():
        tr = poutine.trace(poutine.uncondition(model)).get_trace(x_like, *args, **kwargs)
    names = [site] if site is not None else [
        n for n in canonical_latent_names(tr) if n != obs_site]
    x = tr.nodes[obs_site]["value"]
    z = join_latents([torch.as_tensor(tr.nodes[n]["value"]) for n in names])
    assert x is not None and z is not None, "traced sample sites have values"
    return x.detach(), z.detach()


@dataclass
class BDMCResult:
    """Per-point stochastic bounds on simulated data, in nats."""

    lower: torch.Tensor  #: (N,) forward AIS log p̂(x): E ≤ log p(x)
    upper: torch.Tensor  #: (N,) reverse AIS −log R̂: E ≥ log p(x)
    lower_stderr: torch.Tensor  #: (N,) MC standard error over chains
    upper_stderr: torch.Tensor  #: (N,)
    x: torch.Tensor  #: (N, D) the simulated data
    z: torch.Tensor  #: (N, d) the latents that generated it
    extra: dict = field(default_factory=dict)

    @property
    def gap(self) -> torch.Tensor:
        """(N,) upper − lower."""
        return self.upper - self.lower

    def summary(self) -> dict:
        """Means over points (with standard errors over points) of both bounds and the gap."""
        n = self.lower.numel()

        def mean_se(v):
            v = v.double()
            return float(v.mean()), float(v.std() / math.sqrt(n)) if n > 1 else float("nan")

        lo, lo_se = mean_se(self.lower)
        up, up_se = mean_se(self.upper)
        gap, gap_se = mean_se(self.gap)
        return {
            "lower_bound": lo,
            "lower_bound_stderr": lo_se,
            "upper_bound": up,
            "upper_bound_stderr": up_se,
            "gap": gap,
            "gap_stderr": gap_se,
            "gap_max": float(self.gap.max()),
            "num_points": n,
            **self.extra,
        }


def bdmc(
    model: Callable,
    guide: Callable | None,
    x_like: torch.Tensor,
    *args,
    num_steps: int = AIS_STEPS,
    num_chains: int = AIS_CHAINS,
    batch_size: int = 100,
    schedule: str = "sigmoid",
    base: str = AIS_BASE,
    progress: bool = False,
    log_joint_for: Callable[[torch.Tensor], LogJoint] | None = None,
    **ais_kwargs,
) -> BDMCResult:
    r"""Simulate ``N = len(x_like)`` points from ``model`` and bracket their log p(x).

    :param model: vaelab model ``model(x, *args)`` with one continuous latent site ``"z"``.
    :param guide: its guide (needed for ``base="guide"``).
    :param x_like: ``(N, D)`` template of the data to simulate (shape, dtype, device).
    :param num_steps: T, the same in both directions.
    :param num_chains: C chains per point in each direction; the reverse chains all start at the
        one exact posterior sample.
    :param base: the normalized end of the path, ``"prior"`` (Grosse et al.) or ``"guide"``.
    :param log_joint_for: ``x → LogJoint`` of a batch of simulated points, built afresh for
        each direction (e.g. ``lambda x: FusedLogJoint(vae, x, num_chains, base)``,
        :mod:`vaelab.inference.fast_ais`: the same values and draws without tracing);
        ``None``: the traced one.
    :param ais_kwargs: further options of :func:`~vaelab.inference.ais.ais`.
    :returns: :class:`BDMCResult`.

    Example::

        r = bdmc(vae.model, vae.guide, torch.zeros(100, 784), num_steps=1000)
        r.summary()["gap"]
    """
    x_all, z_all = simulate(model, x_like, *args)
    betas = beta_schedule(num_steps, schedule)
    lower, upper, lower_se, upper_se, acc_f, acc_r = [], [], [], [], [], []
    bar = tqdm(
        total=2 * x_all.shape[0] * num_steps, desc=f"BDMC T={num_steps} C={num_chains}",
        unit="pt·step", unit_scale=True, disable=not progress, leave=False,
    )
    opts = dict(num_chains=num_chains, base=base, **ais_kwargs)
    for start in range(0, x_all.shape[0], batch_size):
        x = x_all[start : start + batch_size]  # (B, D)
        z = z_all[start : start + batch_size]  # (B, d)
        B = x.shape[0]
        fwd = ais(
            model, guide, x, *args, schedule=betas, callback=advance_by(bar, B),
            log_joint=log_joint_for(x) if log_joint_for is not None else None, **opts,
        )
        z_init = z.unsqueeze(0).expand(num_chains, *z.shape)  # (C, B, d)
        rev = ais(  # its base draw is discarded for z_init; the log joint scores the same x
            model, guide, x, *args, schedule=betas.flip(0), z_init=z_init,
            callback=advance_by(bar, B),
            log_joint=log_joint_for(x) if log_joint_for is not None else None, **opts,
        )
        lower.append(fwd.log_px.cpu())
        upper.append(-rev.log_px.cpu())  # rev estimates log(1/p(x))
        lower_se.append(fwd.mc_stderr.cpu())
        upper_se.append(rev.mc_stderr.cpu())
        acc_f.append(fwd.acceptance.cpu())
        acc_r.append(rev.acceptance.cpu())
    bar.close()
    extra = {
        "num_steps": num_steps,
        "num_chains": num_chains,
        "base": base,
        "acceptance_forward": float(torch.cat(acc_f).mean()),
        "acceptance_reverse": float(torch.cat(acc_r).mean()),
    }
    return BDMCResult(
        torch.cat(lower), torch.cat(upper), torch.cat(lower_se), torch.cat(upper_se),
        x_all.cpu(), z_all.cpu(), extra,
    )
