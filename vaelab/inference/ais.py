r"""Annealed importance sampling (AIS) of log p(x) with HMC transitions, per data point.

From a normalized base :math:`f_0(z)` (the prior p(z), or the guide q(z|x)) to the unnormalized
posterior :math:`f_T(z) = p(z)\,p(x \mid z)` through the geometric path

.. math::

    γ_t(z) = f_0(z)^{1-β_t} f_T(z)^{β_t}, \qquad 0 = β_0 < β_1 < \dots < β_T = 1,

one chain draws :math:`z_0 \sim f_0`, then for :math:`t = 1..T` adds
:math:`(β_t - β_{t-1})\,[\log f_T(z_{t-1}) - \log f_0(z_{t-1})]` to its log weight and moves
:math:`z_t \sim \mathcal T_t(\cdot \mid z_{t-1})`, an HMC kernel that leaves :math:`γ_t`
invariant. Then :math:`E[w] = Z_T / Z_0 = p(x)`, so
:math:`\log \hat p(x) = \operatorname{logmeanexp}_c \log w_c` over C chains is a stochastic
lower bound of log p(x) that tightens as T grows (Neal 2001; Wu et al. 2017).

Run with the schedule reversed (β from 1 to 0) from an exact posterior sample, the same
recursion estimates :math:`Z_0/Z_T = 1/p(x)`: a stochastic *upper* bound (BDMC,
:mod:`vaelab.inference.bdmc`).

Everything is batched: the state is ``z (C, B, d)`` for C chains of each of B data points. The
log joint comes from the Pyro model itself (a trace conditioned on z under a ``"chains"`` plate
at ``dim=-2``, the position of :func:`~vaelab.inference.importance.log_weights`' particle plate),
so any vaelab model with one continuous latent site works. The HMC step size is adapted per data
point toward an acceptance rate of 0.65 (multiplicative update on a moving average of the
acceptance probability over the chains, as in Wu et al.'s code).

.. note:: Step sizes adapted on the chains' own history make each transition depend on the past
   of all chains of that point, which strictly breaks the invariance argument; this is the
   standard practice of Wu et al. (2017) and its effect on the bound was negligible in our tests
   (PPCA ground truth, :mod:`tests.test_ais`).

References:
  1. R. M. Neal. *Annealed Importance Sampling*. Statistics and Computing 2001.
  2. Y. Wu, Y. Burda, R. Salakhutdinov, R. Grosse. *On the Quantitative Analysis of
     Decoder-Based Generative Models*. ICLR 2017.
  3. R. M. Neal. *MCMC using Hamiltonian dynamics*. Handbook of MCMC, 2011.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import pyro
import pyro.poutine as poutine
import torch
from pyro.distributions import TorchDistribution
from pyro.poutine.util import site_is_subsample
from torch.distributions import constraints
from tqdm.auto import tqdm

from vaelab.config import EvalConfig
from vaelab.inference.importance import (
    DATA_PLATE,
    canonical_latent_names,
    in_data_plate,
    join_latents,
    site_fn,
    site_log_prob,
    split_latents,
)
from vaelab.inference.marginal import MarginalEstimate, data_batches

#: the AIS defaults, defined once in the ``[eval]`` schema
_EVAL = EvalConfig.model_fields
AIS_STEPS: int = _EVAL["ais_steps"].default
AIS_CHAINS: int = _EVAL["ais_chains"].default
AIS_LEAPFROG: int = _EVAL["ais_leapfrog"].default
AIS_BASE: str = _EVAL["ais_base"].default

__all__ = [
    "AISResult",
    "LogJoint",
    "beta_schedule",
    "hmc_step",
    "ais",
    "estimate_marginal_ais",
]

CHAIN_PLATE = "chains"


def beta_schedule(num_steps: int, kind: str = "sigmoid", delta: float = 4.0) -> torch.Tensor:
    r"""Inverse temperatures :math:`β_0 = 0 < \dots < β_T = 1`, shape ``(T + 1,)`` float64.

    ``"sigmoid"`` (Grosse et al. 2015, Wu et al. 2017): :math:`\tilde β_t = σ(δ(2t/T - 1))`
    rescaled to [0, 1], denser at both ends; ``"linear"``: :math:`β_t = t/T`.
    """
    if num_steps < 1:
        raise ValueError(f"AIS needs at least one step, got num_steps={num_steps}")
    t = torch.linspace(0.0, 1.0, num_steps + 1, dtype=torch.float64)
    if kind == "linear":
        return t
    if kind == "sigmoid":
        s = torch.sigmoid(delta * (2.0 * t - 1.0))
        return (s - s[0]) / (s[-1] - s[0])
    raise ValueError(f"unknown AIS schedule {kind!r}; choices: sigmoid, linear")


@dataclass
class _Terms:
    """log f_0, log f_T at z ``(C, B)`` and their gradients ``(C, B, d)``."""

    log_f0: torch.Tensor
    log_fT: torch.Tensor
    grad_f0: torch.Tensor
    grad_fT: torch.Tensor

    def log_gamma(self, beta: float) -> torch.Tensor:
        return (1.0 - beta) * self.log_f0 + beta * self.log_fT  # (C, B)

    def grad_log_gamma(self, beta: float) -> torch.Tensor:
        return (1.0 - beta) * self.grad_f0 + beta * self.grad_fT  # (C, B, d)

    def where(self, mask: torch.Tensor, other: _Terms) -> _Terms:
        """``self`` where ``mask (C, B)``, else ``other``."""
        m = mask.unsqueeze(-1)
        return _Terms(
            torch.where(mask, self.log_f0, other.log_f0),
            torch.where(mask, self.log_fT, other.log_fT),
            torch.where(m, self.grad_f0, other.grad_f0),
            torch.where(m, self.grad_fT, other.grad_fT),
        )


class LogJoint:
    r"""The two ends of the annealing path of one data batch, from the Pyro model (and guide).

    :math:`\log f_T(z) = \log p(z) + \log p(x \mid z)` per chain and point, read from a trace of
    ``model`` conditioned on ``{site: z}`` under a ``"chains"`` plate (``dim=-2``);
    :math:`\log f_0` is the prior term of the same trace (``base="prior"``) or the guide's
    log-density at z (``base="guide"``; the guide runs once, its site distribution is kept).

    :param model: Pyro model, called ``model(*args, **kwargs)``, with one latent site ``site``
        inside the ``"data"`` plate and observed sites inside it.
    :param guide: Pyro guide with the same latent site (needed for ``base="guide"``).
    :param num_chains: C.
    :param site: the name of the latent site (``"z"`` in vaelab), or several, annealed jointly
        as one vector (their values concatenated); ``None``: every latent site of the model
        (``"z_L" … "z_1"`` of an L-layer model, HMC over all latents jointly).
    """

    def __init__(
        self,
        model: Callable,
        guide: Callable | None,
        args: tuple,
        kwargs: dict,
        num_chains: int,
        base: str = AIS_BASE,
        site: str | Sequence[str] | None = None,
    ):
        if base not in ("prior", "guide"):
            raise ValueError(f"AIS base must be 'prior' or 'guide', got {base!r}")
        if base == "guide" and guide is None:
            raise ValueError("AIS from the guide needs a guide")
        self.model, self.guide = model, guide
        self.args, self.kwargs = args, kwargs
        self.num_chains, self.base = num_chains, base
        self.sites: list[str] | None = [site] if isinstance(site, str) else (
            None if site is None else list(site))
        self.widths: list[int] = []
        self.q_z: TorchDistribution | None = None  # the guide's site distribution, batch (C, B)

    def _chains(self):
        return pyro.plate(CHAIN_PLATE, self.num_chains, dim=-2)

    def _check_site(self, site: Mapping[str, Any]) -> None:
        fn, name = site["fn"], site["name"]
        if fn.support.is_discrete:
            raise ValueError(
                f"AIS needs a continuous latent: site {name!r} is discrete "
                f"({type(fn).__name__}); use importance sampling (--method is) or the exact "
                "enumeration instead"
            )
        support = fn.support
        while isinstance(support, constraints.independent):
            support = support.base_constraint
        if support is not constraints.real:
            raise ValueError(
                f"AIS runs HMC on z in R^d: site {name!r} has support {fn.support}"
            )

    def sample_base(self) -> torch.Tensor:
        """C draws of z per data point from f_0: ``(C, B, d)`` (several sites: their values
        concatenated in the model's order, ``(C, B, Σ d_l)``)."""
        with torch.no_grad(), self._chains():
            if self.base == "guide":
                tr = poutine.trace(self.guide).get_trace(*self.args, **self.kwargs)
            else:
                hidden = poutine.block(self.model, hide_fn=lambda m: bool(m.get("is_observed")))
                tr = poutine.trace(hidden).get_trace(*self.args, **self.kwargs)
        if self.sites is None:
            self.sites = canonical_latent_names(tr)
        missing = [name for name in self.sites if name not in tr.nodes]
        if missing:
            raise ValueError(f"AIS: no latent site {missing[0]!r} in the model/guide")
        for name in self.sites:
            self._check_site(tr.nodes[name])
        if self.base == "guide" and len(self.sites) == 1:
            self.q_z = site_fn(tr.nodes[self.sites[0]])
        values = [torch.as_tensor(tr.nodes[name]["value"]).detach() for name in self.sites]
        self.widths = [v.shape[-1] for v in values]
        return join_latents(values)

    def _guide_log_q(self, z: torch.Tensor) -> torch.Tensor:
        """log q(z_1, …, z_L | x) of the guide at the joined ``z``, ``(C, B)``, differentiable
        in z (the guide re-run with every site conditioned on its part of z)."""
        assert self.guide is not None and self.sites is not None
        conditioned = poutine.condition(self.guide, data=split_latents(z, self.sites,
                                                                        self.widths))
        with self._chains():
            tr = poutine.trace(conditioned).get_trace(*self.args, **self.kwargs)
        log_q = z.new_zeros(())
        for name in self.sites:
            log_q = log_q + site_log_prob(tr.nodes[name])  # (C, B)
        return log_q

    def _name_sites(self) -> None:
        """The latent sites and their widths from one trace of the prior, where
        :meth:`sample_base` has not named them (a caller that brings its own z)."""
        hidden = poutine.block(self.model, hide_fn=lambda m: bool(m.get("is_observed")))
        # the caller's random stream is left as it was: these draws only name the sites
        with torch.random.fork_rng(devices=[]), torch.no_grad(), self._chains():
            tr = poutine.trace(hidden).get_trace(*self.args, **self.kwargs)
        if self.sites is None:
            self.sites = canonical_latent_names(tr)
        self.widths = [torch.as_tensor(tr.nodes[n]["value"]).shape[-1] for n in self.sites]

    def _model_terms(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``log p(z), log p(x | z)``, each ``(C, B)``, differentiable in z."""
        if self.sites is None or not self.widths:
            self._name_sites()
        assert self.sites is not None
        conditioned = poutine.condition(self.model,
                                        data=split_latents(z, self.sites, self.widths))
        with self._chains():
            tr = poutine.trace(conditioned).get_trace(*self.args, **self.kwargs)
        log_prior = log_lik = z.new_zeros(())  # each term broadcasts to (C, B)
        for name, s in tr.nodes.items():
            if s["type"] != "sample" or site_is_subsample(s):
                continue
            if not in_data_plate(s):
                raise ValueError(f"AIS: site {name!r} is outside pyro.plate({DATA_PLATE!r})")
            lp = site_log_prob(s)  # (C, B)
            if name in self.sites:
                log_prior = log_prior + lp
            elif s["is_observed"]:
                log_lik = log_lik + lp
            else:
                raise ValueError(
                    f"AIS anneals the latent sites {self.sites}; the model also samples "
                    f"{name!r}"
                )
        return log_prior, log_lik

    def __call__(self, z: torch.Tensor) -> _Terms:
        """Both ends and their gradients at ``z (C, B, d)``."""
        with torch.enable_grad():
            z = z.detach().requires_grad_(True)
            log_prior, log_lik = self._model_terms(z)
            grad_prior, = torch.autograd.grad(log_prior.sum(), z, retain_graph=True)
            grad_lik, = torch.autograd.grad(log_lik.sum(), z)
            log_fT, grad_fT = log_prior + log_lik, grad_prior + grad_lik
            if self.base == "guide":
                log_q = (self.q_z.log_prob(z) if self.q_z is not None
                         else self._guide_log_q(z))  # (C, B)
                grad_q, = torch.autograd.grad(log_q.sum(), z)
                log_f0, grad_f0 = log_q, grad_q
            else:
                log_f0, grad_f0 = log_prior, grad_prior
        return _Terms(log_f0.detach(), log_fT.detach(), grad_f0, grad_fT)


def advance_by(bar: Any, n: int) -> Callable[[int], None]:
    """An AIS ``callback`` that moves the progress bar ``bar`` by ``n`` at every step."""
    return lambda t: bar.update(n)


def hmc_step(
    log_joint: LogJoint,
    z: torch.Tensor,
    terms: _Terms,
    beta: float,
    step_size: torch.Tensor,
    num_leapfrog: int,
) -> tuple[torch.Tensor, _Terms, torch.Tensor]:
    r"""One HMC transition leaving :math:`γ_β` invariant, for every chain and point.

    :param z: ``(C, B, d)``; ``terms``: its cached :class:`_Terms`.
    :param step_size: ``(B,)`` leapfrog step ε per data point.
    :returns: new ``z``, its terms, and the acceptance probability ``(C, B)``.
    """
    eps = step_size.view(1, -1, *([1] * (z.dim() - 2)))  # (1, B, 1)
    p = torch.randn_like(z)  # momentum, (C, B, d)
    H0 = -terms.log_gamma(beta) + 0.5 * p.pow(2).sum(-1)  # (C, B)
    z_new, t_new = z, terms
    p = p + 0.5 * eps * t_new.grad_log_gamma(beta)
    for step in range(num_leapfrog):
        z_new = z_new + eps * p
        t_new = log_joint(z_new)
        if step < num_leapfrog - 1:
            p = p + eps * t_new.grad_log_gamma(beta)
    p = p + 0.5 * eps * t_new.grad_log_gamma(beta)
    H1 = -t_new.log_gamma(beta) + 0.5 * p.pow(2).sum(-1)  # (C, B)
    log_accept = (H0 - H1).nan_to_num(nan=-math.inf).clamp_max(0.0)  # (C, B)
    accept = torch.rand_like(log_accept).log() < log_accept
    z = torch.where(accept.unsqueeze(-1), z_new, z)
    return z, t_new.where(accept, terms), log_accept.exp()


@dataclass
class AISResult:
    """AIS on one data batch: final log weights ``(C, B)`` and sampler statistics."""

    log_w: torch.Tensor  #: (C, B) log AIS weight of each chain
    acceptance: torch.Tensor  #: (B,) mean HMC acceptance probability over chains and steps
    step_size: torch.Tensor  #: (B,) final leapfrog step size
    z: torch.Tensor  #: (C, B, d) final states

    @property
    def log_px(self) -> torch.Tensor:
        r"""(B,) :math:`\operatorname{logmeanexp}_c \log w_c` (log of an unbiased estimate)."""
        C = self.log_w.shape[0]
        return torch.logsumexp(self.log_w.double(), 0) - math.log(C)

    @property
    def ess(self) -> torch.Tensor:
        """(B,) effective number of chains (Σw)² / Σw²."""
        lw = self.log_w.double()
        return (2.0 * torch.logsumexp(lw, 0) - torch.logsumexp(2.0 * lw, 0)).exp()

    @property
    def mc_stderr(self) -> torch.Tensor:
        """(B,) delta-method standard error of ``log_px`` over the chains."""
        C = self.log_w.shape[0]
        return ((C / self.ess - 1.0).clamp_min(0.0) / C).sqrt()


def ais(
    model: Callable,
    guide: Callable | None,
    *args,
    num_steps: int = AIS_STEPS,
    num_chains: int = AIS_CHAINS,
    num_leapfrog: int = AIS_LEAPFROG,
    base: str = AIS_BASE,
    schedule: str | torch.Tensor = "sigmoid",
    init_step_size: float = 0.05,
    target_accept: float = 0.65,
    adapt_rate: float = 0.05,
    step_size_range: tuple[float, float] = (1e-4, 1.0),
    z_init: torch.Tensor | None = None,
    site: str | Sequence[str] | None = None,
    callback: Callable[[int], None] | None = None,
    log_joint: LogJoint | None = None,
    **kwargs,
) -> AISResult:
    r"""AIS from ``base`` to the posterior on one data batch (``args`` = the model's arguments).

    :param model: Pyro model with one continuous latent site ``site`` (shape ``(B, d)``).
    :param guide: its guide (used when ``base="guide"``).
    :param num_steps: T intermediate distributions.
    :param num_chains: C chains per data point.
    :param num_leapfrog: L leapfrog steps per HMC transition (one model evaluation each).
    :param base: ``"prior"`` or ``"guide"``: the normalized start :math:`f_0`.
    :param schedule: ``"sigmoid"``, ``"linear"`` or an explicit ``(T + 1,)`` tensor of β; a
        decreasing schedule (1 → 0) runs reverse AIS and then needs ``z_init``.
    :param init_step_size: initial ε for every point; adapted per point at every step by
        ×(1 + adapt_rate) when the moving-average acceptance exceeds ``target_accept``, else
        ×(1 − adapt_rate), kept within ``step_size_range``.
    :param z_init: ``(C, B, d)`` start states (e.g. exact posterior samples for reverse AIS);
        default: draws from :math:`f_0`.
    :param log_joint: the path's two ends for these ``args``, built beforehand (e.g.
        :class:`vaelab.inference.fast_ais.FusedLogJoint`: the same values without tracing);
        ``None``: a traced :class:`LogJoint` of ``model`` and ``guide``.
    :returns: :class:`AISResult`; ``result.log_px`` estimates log p(x) (forward) or −log p(x)
        (reverse).

    Example::

        r = ais(vae.model, vae.guide, x, num_steps=500, num_chains=16)
        r.log_px  # (B,)
    """
    schedule_t = beta_schedule(num_steps, schedule) if isinstance(schedule, str) else schedule
    betas = [float(b) for b in schedule_t]
    if log_joint is None:  # else a prebuilt one, e.g. vaelab.inference.fast_ais (no tracing)
        log_joint = LogJoint(model, guide, args, kwargs, num_chains, base, site)
    z0 = log_joint.sample_base()  # also checks the site, sets the guide's q
    z = z0 if z_init is None else z_init.detach().to(z0)
    if z.shape != z0.shape:
        raise ValueError(f"z_init must have shape {tuple(z0.shape)}, got {tuple(z.shape)}")
    B = z.shape[1]
    step_size = z.new_full((B,), init_step_size)
    avg_accept = z.new_full((B,), target_accept)
    accept_sum = z.new_zeros(B)
    lo, hi = step_size_range
    terms = log_joint(z)
    log_w = z.new_zeros(z.shape[:2])  # (C, B)
    num_moves = 0
    for t in range(1, len(betas)):
        log_w = log_w + (betas[t] - betas[t - 1]) * (terms.log_fT - terms.log_f0)
        if t < len(betas) - 1:  # the last transition would not change any weight
            z, terms, acc = hmc_step(log_joint, z, terms, betas[t], step_size, num_leapfrog)
            acc_b = acc.mean(0)  # (B,)
            accept_sum += acc_b
            num_moves += 1
            avg_accept = 0.9 * avg_accept + 0.1 * acc_b
            up = avg_accept > target_accept
            step_size = torch.where(up, step_size * (1 + adapt_rate), step_size * (1 - adapt_rate))
            step_size = step_size.clamp(lo, hi)
        if callback is not None:
            callback(t)
    acceptance = accept_sum / max(num_moves, 1)
    return AISResult(log_w.detach(), acceptance, step_size, z.detach())


def estimate_marginal_ais(
    model: Callable,
    guide: Callable | None,
    data: torch.Tensor,
    num_steps: int = AIS_STEPS,
    num_chains: int = AIS_CHAINS,
    batch_size: int = 100,
    transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
    progress: bool = False,
    device: torch.device | str | None = None,
    log_joint_for: Callable[[torch.Tensor], LogJoint] | None = None,
    **ais_kwargs,
) -> MarginalEstimate:
    r"""AIS log p(x) for every row of ``data (N, D)``, in batches of data points.

    :param model: a vaelab model ``model(x)`` with one continuous latent site ``"z"``.
    :param guide: its guide (for ``base="guide"``; may be ``None`` with the prior as base).
    :param log_joint_for: ``x → LogJoint`` of each batch (e.g. ``lambda x:
        FusedLogJoint(vae, x, num_chains, base)``, :mod:`vaelab.inference.fast_ais`: the same
        values without tracing); ``None``: the traced one.
    :param ais_kwargs: passed to :func:`ais` (``num_leapfrog``, ``base``, ``schedule``, ...).
    :returns: :class:`~vaelab.inference.marginal.MarginalEstimate` with ``method="ais"``,
        ``num_samples = C`` chains, ``elbo`` = mean log weight over chains, and in ``extra``
        the mean acceptance and final step sizes.
    """
    log_px, mean_lw, ess, acc, eps = [], [], [], [], []
    steps = num_steps
    bar = tqdm(
        total=data.shape[0] * steps, desc=f"AIS T={steps} C={num_chains}", unit="pt·step",
        disable=not progress, leave=False, unit_scale=True,
    )
    for x in data_batches(data, batch_size, device, transform):
        B = x.shape[0]
        r = ais(
            model, guide, x, num_steps=num_steps, num_chains=num_chains,
            callback=advance_by(bar, B),
            log_joint=log_joint_for(x) if log_joint_for is not None else None, **ais_kwargs,
        )
        log_px.append(r.log_px.cpu())
        mean_lw.append(r.log_w.double().mean(0).cpu())
        ess.append(r.ess.cpu())
        acc.append(r.acceptance.cpu())
        eps.append(r.step_size.cpu())
    bar.close()
    acc_all, eps_all = torch.cat(acc), torch.cat(eps)
    extra = {
        "num_steps": num_steps,
        "num_chains": num_chains,
        "num_leapfrog": ais_kwargs.get("num_leapfrog", 10),
        "base": ais_kwargs.get("base", "prior"),
        "acceptance_mean": float(acc_all.mean()),
        "acceptance_min": float(acc_all.min()),
        "step_size_median": float(eps_all.double().median()),
    }
    return MarginalEstimate(
        torch.cat(log_px), torch.cat(mean_lw), torch.cat(ess), num_chains, extra=extra,
        method="ais",
    )
