r"""What the posterior does with the latent space: posterior means, active units, KL per unit,
a PCA embedding and latent traversals — the numbers behind the report's latent-space pictures
(:mod:`vaelab.runs.report`).

A *unit* is one coordinate of a Gaussian latent :math:`z \in \mathbb{R}^d`, or one variable
:math:`z_n` of a categorical latent (N variables of K classes), whose posterior mean is the
probability vector :math:`\mathbb{E}_q[z_n] = q(z_n = \cdot \mid x) \in \Delta^{K-1}`.

**Activity** (Burda et al. 2016, Sec. 5.2): over the points :math:`x_1..x_B`,

.. math::

    A_u = \mathrm{Var}_x\big(\mathbb{E}_{q(z \mid x)}[z_u]\big), \qquad
    \text{unit } u \text{ is active} \iff A_u \ge 0.01,

the sample variance (divisor B − 1) of the posterior mean; for a categorical variable the
variances of its K class probabilities are summed (the trace of their covariance). An inactive
unit's posterior mean is the same for every x: the decoder cannot read anything from it.

**KL per unit**: the mean over x of :math:`\mathrm{KL}(q(z_u \mid x) \,\|\, p(z_u))`, where the
posterior and the prior factorize over units (diagonal normal or Student-t guide with a
``standard_normal``, ``normal``, ``laplace`` or ``student_t`` prior; every categorical latent).
For a normal guide and a standard normal prior it is

.. math::

    \mathrm{KL}\big(\mathcal N(μ_u, σ_u^2) \,\|\, \mathcal N(0, 1)\big)
    = \tfrac12 \big(μ_u^2 + σ_u^2 - 1 - \log σ_u^2\big),

and in general torch's registered closed form (:func:`torch.distributions.kl_divergence`), or
a Monte Carlo average over draws of the posterior where none is registered; for a categorical
variable :math:`\sum_k q_k (\log q_k - \log p_k)`. Priors that do not factorize (``mog``,
``vamp``, ``flow``) and flow guides (``iaf``) have no KL per unit: the KL is then ``None``.

**PCA** of points :math:`X \in \mathbb{R}^{B \times m}`: with :math:`X_c = X - \bar X = U S V^\top`
(thin SVD), the principal axes are the rows of :math:`V^\top`, the variances along them
:math:`S^2 / (B - 1)`, and the 2-D embedding :math:`X_c V_{:, :2}`.

References:
  1. Y. Burda, R. Grosse, R. Salakhutdinov. *Importance Weighted Autoencoders*. ICLR 2016.
  2. I. Higgins et al. *β-VAE: Learning Basic Visual Concepts with a Constrained Variational
     Framework*. ICLR 2017 (latent traversals).

Example::

    run = load_run("runs/g")
    x = run.pre.eval_split(run.split("test", 2000), 0)
    stats = latent_stats(run.vae, x)
    print(stats.num_active, "active of", stats.activity.numel())
    emb = pca(stats.means.flatten(1))        # (B, 2) in emb.coords
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch.distributions import (
    Distribution,
    Independent,
    Normal,
    TransformedDistribution,
    kl_divergence,
)

from vaelab.model.distributions import kl_categorical

__all__ = [
    "ACTIVE_THRESHOLD",
    "MAX_BATCH_ELEMENTS",
    "PCA",
    "LatentStats",
    "activity",
    "decode_mean",
    "is_layered",
    "kl_per_unit",
    "latent_stats",
    "pca",
    "posterior_means",
    "prior_loc_scale",
    "traverse",
]

#: Burda et al.'s threshold on :math:`\mathrm{Var}_x \mathbb{E}_q[z_u]` for an active unit
ACTIVE_THRESHOLD = 0.01


@dataclass
class PCA:
    """Principal components of ``B`` points in ``m`` dimensions (see the module docstring)."""

    #: ``(B, k)`` the centred points projected on the first k axes
    coords: torch.Tensor
    #: ``(k, m)`` unit principal axes, by decreasing variance (sign: largest loading positive)
    components: torch.Tensor
    #: ``(k,)`` variance along each axis, :math:`S_i^2/(B-1)`
    variance: torch.Tensor
    #: ``(k,)`` fraction of the total variance along each axis
    explained: torch.Tensor


def pca(points: torch.Tensor, k: int = 2) -> PCA:
    r"""The first ``k`` principal components of ``points (B, m)`` by a thin SVD in float64.

    With fewer than k dimensions, the missing axes are zero (coordinates and variance 0).

    :param points: ``(B, m)``, B ≥ 2.
    :param k: axes to keep.
    :returns: :class:`PCA`.
    """
    x = points.detach().double().cpu()
    B, m = x.shape
    if B < 2:
        raise ValueError(f"pca needs at least 2 points, got {B}")
    xc = x - x.mean(0)  # (B, m)
    _, s, vt = torch.linalg.svd(xc, full_matrices=False)  # (r,), (r, m) with r = min(B, m)
    r = min(k, vt.shape[0])
    comps = torch.zeros(k, m, dtype=x.dtype)
    comps[:r] = vt[:r]
    flip = comps.gather(1, comps.abs().argmax(1, keepdim=True)).sign()  # (k, 1)
    comps = comps * torch.where(flip == 0, torch.ones_like(flip), flip)
    variance = torch.zeros(k, dtype=x.dtype)
    variance[:r] = s[:r] ** 2 / (B - 1)
    total = float((s**2).sum()) / (B - 1)
    explained = variance / total if total > 0 else torch.zeros_like(variance)
    return PCA(xc @ comps.T, comps, variance, explained)


def activity(means: torch.Tensor) -> torch.Tensor:
    r""":math:`A_u = \mathrm{Var}_x \mathbb{E}_q[z_u]` (divisor B − 1) per unit.

    :param means: posterior means, ``(B, d)`` for a Gaussian latent or ``(B, N, K)`` class
        probabilities for a categorical one (the K variances of a variable are summed).
    :returns: ``(d,)`` or ``(N,)``, float64.
    """
    var = means.detach().double().var(0, correction=1)  # (d,) or (N, K)
    return var.sum(-1) if means.dim() == 3 else var


@torch.no_grad()
def posterior_means(vae, x: torch.Tensor, batch_size: int = 500, num_draws: int = 64,
                    units: torch.Tensor | None = None, check: Callable[[], None] | None = None):
    r""":math:`\mathbb{E}_{q(z \mid x)}[z]` for each row of ``x (B, D)``: ``(B, d)`` for a
    continuous latent, ``(B, N, K)`` class probabilities :math:`\mathrm{softmax}(\ell(x))` for a
    categorical one.

    The family's closed-form mean where it has one (normal; Student-t with ν > 1), else the
    average of ``num_draws`` seeded draws (:func:`_draws`: for a flow guide the same base noise
    for every point, so that Monte Carlo noise does not pass for activity: a posterior that
    ignores x gets the same mean for every x).

    :param units: keep only these units' means: ``(B, len(units))`` or ``(B, len(units), K)``,
        each batch sliced as it is computed (the memory of ``B`` rows of all units is never
        held).
    :param check: called before each batch (a stop request raises there).
    """
    parts = []
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        for start in range(0, x.shape[0], batch_size):
            if check is not None:
                check()
            mean = _batch_means(vae, x[start : start + batch_size], num_draws)
            parts.append(mean if units is None else mean[:, units.to(mean.device)].cpu())
    return torch.cat(parts).cpu()


def _batch_means(vae, xb: torch.Tensor, num_draws: int) -> torch.Tensor:
    """``(b, d)`` posterior means, or ``(b, N, K)`` class probabilities (see
    :func:`posterior_means`)."""
    if not vae.latent.continuous:
        return vae.inference.logits(xb).softmax(-1)  # (b, N, K)
    if is_layered(vae):  # the top layer's (see layer_stats)
        return vae.inference.common_noise_draws(xb, num_draws)[1][-1].mean(0)  # (b, d_L)
    q_z = vae.inference.posterior_dist(xb)
    try:
        mean = q_z.mean  # (b, d)
    except NotImplementedError:
        mean = None
    if mean is None or not bool(torch.isfinite(mean).all()):
        mean = _draws(q_z, num_draws).mean(0)  # (S, b, d) → (b, d)
    return mean


def _draws(q_z: Distribution, num_draws: int) -> torch.Tensor:
    r"""``(S, b, d)`` draws of ``q_z`` (batch ``(b,)``): for a flow over a diagonal normal
    (:class:`~torch.distributions.TransformedDistribution`) :math:`z = f_x(μ(x) + σ(x) ε_s)` with
    the same :math:`ε_s` for every point (common random numbers); otherwise independent draws."""
    base = getattr(q_z, "base_dist", None)
    normal = getattr(base, "base_dist", base)
    if isinstance(q_z, TransformedDistribution) and isinstance(normal, Normal):
        loc, scale = normal.loc, normal.scale  # (b, d)
        eps = torch.randn(num_draws, 1, loc.shape[-1]).to(loc)  # (S, 1, d), shared over b
        z = loc + scale * eps  # (S, b, d)
        for t in q_z.transforms:
            z = t(z)
        return z
    return q_z.sample((num_draws,))


def _factors(d: Distribution) -> Distribution | None:
    """The per-unit base distribution of a distribution that factorizes over its one event
    dimension (``Independent(base, 1)``), else ``None``."""
    if isinstance(d, Independent) and d.reinterpreted_batch_ndims == 1:
        return d.base_dist
    return None


@torch.no_grad()
def kl_per_unit(
    vae, x: torch.Tensor, batch_size: int = 500, num_draws: int = 64,
    check: Callable[[], None] | None = None,
) -> tuple[torch.Tensor | None, str]:
    r"""The mean over the rows of ``x`` of :math:`\mathrm{KL}(q(z_u \mid x) \| p(z_u))` per unit.

    :param check: called before each batch (a stop request raises there).
    :returns: ``(kl (U,) float64 or None, how)``: ``how`` is ``"closed form"``, ``"Monte Carlo,
        S draws per point"``, or why there is no KL per unit.
    """
    g = vae.generative
    if not vae.latent.continuous:
        p_logits = g.prior.hard_dist().logits  # (N, K)
        total = torch.zeros((), dtype=torch.float64)  # a running (N,) total, not one per batch
        for i in range(0, x.shape[0], batch_size):
            if check is not None:
                check()  # logits (b, N, K) against π (N, K) → (b, N)
            total = total + kl_categorical(vae.inference.logits(x[i : i + batch_size]),
                                           p_logits).double().sum(0).cpu()
        return total / x.shape[0], "closed form"
    p_u = _factors(g.prior())
    if p_u is None:
        return None, f"the prior {type(g.prior).__name__} does not factorize over dimensions"
    total, how = torch.zeros((), dtype=torch.float64), "closed form"  # a running (d,) total
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        for start in range(0, x.shape[0], batch_size):
            if check is not None:
                check()
            q_u = _factors(vae.inference.posterior_dist(x[start : start + batch_size]))
            if q_u is None:
                return None, "the guide family does not factorize over dimensions"
            try:
                kl = kl_divergence(q_u, p_u)  # (b, d)
            except NotImplementedError:
                z = q_u.sample((num_draws,))  # (S, b, d)
                kl = (q_u.log_prob(z) - p_u.log_prob(z)).mean(0)  # (b, d)
                how = f"Monte Carlo, {num_draws} draws per point"
            total = total + kl.double().sum(0).cpu()  # (d,)
    return total / x.shape[0], how


@dataclass
class LatentStats:
    """Posterior means, activity and KL per unit of a VAE on a set of points."""

    #: ``(B, d)`` or ``(B, N, K)`` posterior means (:func:`posterior_means`); of the units
    #: :attr:`units` only where it is set
    means: torch.Tensor
    #: ``(U,)`` :math:`\mathrm{Var}_x \mathbb{E}_q[z_u]` (:func:`activity`)
    activity: torch.Tensor
    #: ``(U,)`` mean KL per unit in nats, or ``None`` (:func:`kl_per_unit`)
    kl: torch.Tensor | None
    #: how the KL was computed, or why there is none
    kl_method: str
    threshold: float = ACTIVE_THRESHOLD
    #: ``(m,)`` the units whose means :attr:`means` holds (the m most active, most active
    #: first), or ``None``: all units, in order
    units: torch.Tensor | None = None

    @property
    def active(self) -> torch.Tensor:
        """``(U,)`` bool: :math:`A_u \\ge` :attr:`threshold`."""
        return self.activity >= self.threshold

    @property
    def num_active(self) -> int:
        return int(self.active.sum())

    def ranked(self, limit: int) -> list[int]:
        """The ``limit`` most active units, most active first."""
        return [int(u) for u in self.activity.argsort(descending=True)[:limit]]


#: elements (rows × units) of one batch of per-unit tensors: a batch of a wide latent has fewer
#: rows, so that no ``(rows, U)`` float64 tensor passes 32 MB
MAX_BATCH_ELEMENTS = 2**22


def latent_stats(vae, x: torch.Tensor, batch_size: int = 500, keep: int | None = None,
                 check: Callable[[], None] | None = None) -> LatentStats:
    """:class:`LatentStats` of ``vae`` on the rows of ``x (B, D)`` (already preprocessed).

    :param batch_size: points per encoder pass, fewer for a wide latent
        (:data:`MAX_BATCH_ELEMENTS`).
    :param keep: with more units than this, keep the means of the ``keep`` most active units
        only (:attr:`LatentStats.units`): the activity is then accumulated batch by batch (a
        running mean and sum of squares, Chan et al.'s pairwise update, in float64) and the
        means of the kept units computed in a second pass, so that memory is O(B·keep + U), not
        O(B·U). ``None``: every unit's means.
    :param check: called before each batch (a stop request raises there).
    """
    latent = vae.latent
    num_units = latent.flat_dim if latent.continuous else latent.num_variables
    rows = max(1, min(batch_size, MAX_BATCH_ELEMENTS // max(latent.flat_dim, 1)))
    kl, how = kl_per_unit(vae, x, rows, check=check)
    if keep is None or num_units <= keep:
        means = posterior_means(vae, x, rows, check=check)
        return LatentStats(means, activity(means), kl, how)
    act = _streamed_activity(vae, x, rows, check)
    units = act.argsort(descending=True)[:keep]  # (keep,)
    means = posterior_means(vae, x, rows, units=units, check=check)  # the same draws again
    return LatentStats(means, act, kl, how, units=units)


@torch.no_grad()
def _streamed_activity(vae, x: torch.Tensor, rows: int, check, num_draws: int = 64):
    """:func:`activity` of :func:`posterior_means` (the same draws), a batch at a time."""
    n, mean, m2 = 0, torch.zeros((), dtype=torch.float64), torch.zeros((), dtype=torch.float64)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        for start in range(0, x.shape[0], rows):
            if check is not None:
                check()
            m = _batch_means(vae, x[start : start + rows], num_draws).double().cpu()  # (b, …)
            b, m_b = m.shape[0], m.mean(0)
            delta = m_b - mean
            mean = mean + delta * b / (n + b)
            m2 = m2 + ((m - m_b) ** 2).sum(0) + delta**2 * n * b / (n + b)
            n += b
    var = m2 / max(n - 1, 1)  # (d,) or (N, K)
    return var.sum(-1) if var.dim() == 2 else var


@torch.no_grad()
def prior_loc_scale(prior, num_draws: int = 10_000) -> tuple[torch.Tensor, torch.Tensor, str]:
    r"""Per-dimension centre and scale of a continuous prior, for traversals: its mean and
    standard deviation where finite, else (heavy tails, mixtures without moments, flows) the
    median and :math:`\mathrm{IQR}/1.349` of ``num_draws`` seeded draws (the standard deviation
    for a normal); fewer for a wide latent, at most :data:`MAX_BATCH_ELEMENTS` numbers (and
    at least 100 draws).

    :returns: ``(loc (d,), scale (d,), "std" | "IQR/1.349")``.
    """
    p = prior()
    try:
        loc, scale = p.mean, p.stddev  # (d,), (d,)
        if bool(torch.isfinite(loc).all() & torch.isfinite(scale).all()):
            return loc.detach().cpu(), scale.detach().cpu(), "std"
    except NotImplementedError:
        pass
    num_draws = min(num_draws, max(100, MAX_BATCH_ELEMENTS // max(p.event_shape.numel(), 1)))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        z = p.sample((num_draws,)).cpu()  # (S, d)
    q = torch.quantile(z.double(), torch.tensor([0.25, 0.5, 0.75], dtype=torch.float64), dim=0)
    return q[1].float(), ((q[2] - q[0]) / 1.349).float(), "IQR/1.349"


@torch.no_grad()
def decode_mean(vae, z: torch.Tensor, hard: bool = False) -> torch.Tensor:
    r""":math:`\mathbb{E}[x \mid z]` for codes ``z (..., *event)`` → ``(..., D)``.

    :param hard: ``z`` holds one-hot vectors of a categorical latent.
    """
    g = vae.generative
    if is_layered(vae):  # z is the top layer; the lower ones at their conditional means
        return g.decode_top(z)
    return g.likelihood.mean(g.decoder(g.latent.decoder_input(z, hard=hard)))


@torch.no_grad()
def traverse(vae, z0: torch.Tensor, units: list[int], steps: torch.Tensor | int = 9):
    r"""Decode ``z0`` with one unit at a time moved over its range.

    Gaussian latent, ``z0 (d,)``: unit u is set to :math:`\mathrm{loc}_u + t\,
    \mathrm{scale}_u` for each t in ``steps`` (default 9 values in [−3, 3]) with the prior's
    centre and scale (:func:`prior_loc_scale`), the other units kept at ``z0``. Categorical
    latent, ``z0 (N, K)`` one-hot: variable u is set to each of its K classes.

    :returns: ``(decoded (len(units), T, D), values (T,))``: T steps (K classes), and the
        offsets t in prior scales (the class indices).
    """
    anchor = next(vae.parameters())
    if not vae.latent.continuous:
        K = z0.shape[-1]
        codes = z0.to(anchor).expand(len(units), K, *z0.shape).clone()  # (U, K, N, K)
        for i, u in enumerate(units):
            codes[i, :, u] = torch.eye(K).to(anchor)  # row k: variable u in class k
        return decode_mean(vae, codes, hard=True).cpu(), torch.arange(K)
    values = torch.linspace(-3, 3, steps) if isinstance(steps, int) else steps  # (T,)
    loc, scale, _ = prior_loc_scale(vae.generative.prior)
    codes = z0.to(anchor).expand(len(units), values.numel(), z0.numel()).clone()  # (U, T, d)
    for i, u in enumerate(units):
        codes[i, :, u] = (loc[u] + values * scale[u]).to(anchor)
    return decode_mean(vae, codes).cpu(), values


def is_layered(vae) -> bool:
    """Whether ``vae`` has several stochastic layers (:class:`~vaelab.vae.HierarchicalVAE`;
    their statistics: :mod:`vaelab.inference.layer_stats`)."""
    return hasattr(vae.generative, "conditionals")
