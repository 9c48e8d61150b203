r"""Pareto k̂ of importance weights, one per data point (the PSIS diagnostic), batched.

The importance weights :math:`w_k = p(x, z_k) / q(z_k \mid x)` of one data point have a right
tail that a generalized Pareto distribution fits; its shape :math:`k` says how many moments of
:math:`w` exist (:math:`E[w^r] < ∞` for :math:`r < 1/k`):

.. math::

    \hat k < 0.5:\ \text{finite variance, IS reliable}; \quad
    0.5 ≤ \hat k ≤ 0.7:\ \text{usable, slow}; \quad
    \hat k > 0.7:\ \text{the estimate of } \log p(x) \text{ is not to be trusted.}

Following Vehtari et al., the tail is the :math:`M = \lceil\min(K/5, 3\sqrt K)\rceil` largest
weights; the exceedances over the :math:`(M+1)`-th largest are fitted by the Zhang & Stephens
(2009) profile-likelihood estimator with the weakly informative prior of Vehtari et al.
(:math:`\hat k ← (M \hat k + 5)/(M + 10)`). This module does exactly what
:func:`pyro.ops.stats.fit_generalized_pareto` and :func:`pyro.infer.importance.psis_diagnostic`
do, for every column of a ``(K, B)`` tensor at once (Pyro's take one weight vector for the whole
batch, i.e. a joint, not per-point, diagnostic).

.. note:: k̂ describes a continuous tail. With a small discrete latent space the weights take at
   most as many distinct values as there are states, and k̂ is not meaningful; the exact
   enumeration (:mod:`vaelab.inference.exact`) is the reference there.

References:
  1. A. Vehtari, D. Simpson, A. Gelman, Y. Yao, J. Gabry. *Pareto Smoothed Importance
     Sampling*. JMLR 2024 (arXiv:1507.02646).
  2. Y. Yao, A. Vehtari, D. Simpson, A. Gelman. *Yes, but Did It Work?: Evaluating
     Variational Inference*. ICML 2018.
  3. J. Zhang, M. A. Stephens. *A New and Efficient Estimation Method for the Generalized
     Pareto Distribution*. Technometrics 2009.
"""

from __future__ import annotations

import math

import torch

__all__ = ["K_THRESHOLD", "tail_size", "fit_generalized_pareto_batched", "pareto_k",
           "pareto_k_of_top", "top_log_weights"]

#: k̂ above which an importance-sampling estimate is flagged as unreliable
K_THRESHOLD = 0.7

_LOG_MIN_WEIGHT = math.log(1e-15)  # weights below 1e-15 of the largest are not tail
_MIN_TAIL = 10  # fewer tail weights than this: k̂ = inf (Pyro's rule)
_BLOCK = 512  # data points per fit


def tail_size(num_samples: int) -> int:
    r""":math:`M = \lceil \min(0.2 K, 3 \sqrt K) \rceil` tail weights for K samples."""
    return int(math.ceil(min(0.2 * num_samples, 3.0 * math.sqrt(num_samples))))


def fit_generalized_pareto_batched(
    X: torch.Tensor, n: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    r"""Zhang–Stephens fit of a generalized Pareto distribution to every column of ``X``.

    :param X: exceedances, shape ``(M, B)``, sorted ascending in each column; a column with
        fewer than ``M`` valid values carries them in its *last* ``n_b`` rows (the rest ≤ 0 are
        ignored), as ``torch.sort`` leaves them.
    :param n: ``(B,)`` number of valid values per column (default: all ``M``).
    :returns: ``(k, sigma)``, each ``(B,)`` float64, with the weakly informative prior on ``k``
        applied as in :func:`pyro.ops.stats.fit_generalized_pareto` (equal to it column by
        column).
    """
    X = X.double()
    M_rows, B = X.shape
    if n is None:
        n = torch.full((B,), M_rows, dtype=torch.long, device=X.device)
    N = n.double()  # (B,)
    valid = torch.arange(M_rows, device=X.device).unsqueeze(-1) >= (M_rows - n)  # (M, B)
    X = torch.where(valid, X, torch.zeros_like(X))
    m = 30 + torch.floor(N.sqrt())  # (B,) grid size, Zhang & Stephens
    m_max = int(m.max())
    j = torch.arange(1, m_max + 1, dtype=torch.float64, device=X.device).unsqueeze(-1)  # (m, 1)
    in_grid = j <= m  # (m, B)
    # quartile and maximum of each column's valid values
    q_idx = (M_rows - n) + torch.trunc(N / 4.0 - 0.5).long()  # (B,)
    x_q = X.gather(0, q_idx.clamp(0, M_rows - 1).unsqueeze(0)).squeeze(0)  # (B,)
    x_max = X[-1]  # (B,)
    # grid of b = k / sigma
    bs = 1.0 - (m.sqrt() / (j - 0.5).clamp_min(1e-12).sqrt())  # (m, B)
    bs = bs / (3.0 * x_q) + 1.0 / x_max  # (m, B)
    # profile log-likelihood of each grid point
    terms = torch.log1p(-bs.unsqueeze(1) * X.unsqueeze(0))  # (m, M, B)
    terms = torch.where(valid.unsqueeze(0), terms, torch.zeros_like(terms))
    ks = terms.sum(1) / N  # (m, B)
    Ls = N * (torch.log(-bs / ks) - (ks + 1.0))  # (m, B)
    Ls = torch.where(in_grid, Ls, torch.full_like(Ls, -math.inf))
    # posterior weights of the grid: w_i = 1 / Σ_j exp(L_j − L_i)
    weights = torch.softmax(Ls, 0)  # (m, B)
    weights = torch.where(weights > 1e-30, weights, torch.zeros_like(weights))
    weights = weights / weights.sum(0)
    b = (bs * weights).sum(0)  # (B,)
    k = torch.where(valid, torch.log1p(-b * X), torch.zeros_like(X)).sum(0) / N  # (B,)
    sigma = -k / b
    k = k * N / (N + 10.0) + 5.0 / (N + 10.0)
    return k, sigma


def pareto_k(log_w: torch.Tensor, tail: int | None = None) -> torch.Tensor:
    r"""PSIS k̂ of the weights of each data point.

    :param log_w: log importance weights, shape ``(K, B)``: K draws for each of B points.
    :param tail: tail size M (default :func:`tail_size` ``(K)``).
    :returns: ``(B,)`` float64 k̂. Where fewer than 10 tail weights exceed the cutoff: ``inf``
        if the rest are below 10⁻¹⁵ of the largest (a few weights dominate), ``-inf`` if the
        largest weights tie (bounded weights, e.g. all equal at the exact posterior).

    Example::

        k_hat = pareto_k(log_w)           # log_w (5000, 100)
        flagged = k_hat > K_THRESHOLD
    """
    K = log_w.shape[0]
    M = tail_size(K) if tail is None else int(tail)
    if M + 1 > K:
        raise ValueError(f"pareto_k: K={K} weights are too few for a tail of {M}")
    return pareto_k_of_top(top_log_weights(log_w, M + 1))


def top_log_weights(log_w: torch.Tensor, n: int, top: torch.Tensor | None = None) -> torch.Tensor:
    """The ``n`` largest of ``log_w (k, B)`` per column, and of a running ``top (n, B)``: what
    :func:`pareto_k_of_top` needs, kept while the weights stream in chunks (float64,
    descending)."""
    lw = log_w.double()
    if top is not None:
        lw = torch.cat([top, lw], 0)
    return torch.topk(lw, min(n, lw.shape[0]), dim=0, largest=True, sorted=True).values


def pareto_k_of_top(top: torch.Tensor) -> torch.Tensor:
    """:func:`pareto_k` from the M + 1 largest log weights of each point, ``top (M+1, B)``
    descending (:func:`top_log_weights`): the fit reads nothing else, so the K weights need
    not be kept."""
    top = (top - top[0]).flip(0)  # (M+1, B) ascending, largest 0
    lw_cutoff = top[0].clamp_min(_LOG_MIN_WEIGHT)  # (B,)
    lw_tail = top[1:]  # (M, B) ascending
    n = (lw_tail > lw_cutoff).sum(0)  # (B,) valid tail values (ties with the cutoff dropped)
    exceed = lw_tail.exp() - lw_cutoff.exp()  # (M, B)
    ks = [  # columns in blocks: the fit holds an (m, M, block) tensor
        fit_generalized_pareto_batched(exceed[:, i : i + _BLOCK], n[i : i + _BLOCK].clamp_min(1))[0]
        for i in range(0, exceed.shape[1], _BLOCK)
    ]
    k = torch.cat(ks) if ks else exceed.new_zeros(0)
    # too few tail values: because all but a few weights are < 1e-15 of the largest (k̂ = inf,
    # Pyro's rule), or because the largest weights tie (bounded, e.g. constant, weights: −inf)
    floored = top[0] <= _LOG_MIN_WEIGHT
    degenerate = torch.where(floored, math.inf, -math.inf).to(k)
    return torch.where(n >= _MIN_TAIL, k, degenerate)
