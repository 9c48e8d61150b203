r"""Marginal likelihood log p(x) by importance sampling, per data point, streamed.

.. math::

    \log \hat p(x_n) = \operatorname{logsumexp}_{k=1}^{K} \log w_{kn} - \log K,
    \qquad \log w_{kn} = \log p_θ(x_n, z_{kn}) - \log q_φ(z_{kn} \mid x_n),
    \quad z_{kn} \sim q_φ(z \mid x_n)

an unbiased estimate of p(x_n) whose log is a stochastic lower bound (IWAE_K) converging to
log p(x_n) as K grows (Burda et al. 2016, K = 5000 is the literature's protocol).

The guide's network runs once per chunk of particles on the data batch; only the decoder sees
``(chunk, B)``. Chunks are sized from a memory budget and combined with a streaming logsumexp,
so K = 5000 on 10,000 images runs in bounded memory.

Per point this module also returns the K-sample ELBO estimate (the mean of log w), the effective
sample size ESS = (Σw)² / Σw², the delta-method Monte Carlo standard error of log p̂,
:math:`\mathrm{se} ≈ \sqrt{(K/\mathrm{ESS} - 1)/K}`, and the Pareto k̂ of the weights
(:mod:`vaelab.inference.psis`): points with k̂ > 0.7 are flagged, since there the variance of
the weights is likely infinite and both log p̂ and its standard error are unreliable. The
convergence curve of log p̂ against K is read from prefixes of the same K draws (plotted by
:func:`vaelab.runs.plots.save_convergence_plot`).

.. note:: The standard error is a first-order (delta-method) figure; it is itself estimated from
   the weights and understates the error exactly when k̂ is large.

References:
  1. Y. Burda, R. Grosse, R. Salakhutdinov. *Importance Weighted Autoencoders*. ICLR 2016.
  2. A. Vehtari, D. Simpson, A. Gelman, Y. Yao, J. Gabry. *Pareto Smoothed Importance
     Sampling*. JMLR 2024.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from tqdm.auto import tqdm

from vaelab.devices import to_device
from vaelab.inference.importance import log_weights
from vaelab.inference.psis import K_THRESHOLD, pareto_k_of_top, tail_size, top_log_weights

__all__ = [
    "MarginalEstimate",
    "cache_rows",
    "chunk_size_for",
    "importance_sample_batch",
    "estimate_marginal",
    "default_curve_ks",
    "quantile_summary",
]


def quantile_summary(v: torch.Tensor) -> dict[str, float]:
    """mean, min, 5 %, 50 %, 95 % quantiles and max of a per-point tensor (finite values)."""
    v = v.double().flatten()
    if v.numel() == 0:
        return {}
    q = torch.quantile(v, v.new_tensor([0.05, 0.5, 0.95]))
    return {
        "mean": float(v.mean()),
        "min": float(v.min()),
        "q05": float(q[0]),
        "median": float(q[1]),
        "q95": float(q[2]),
        "max": float(v.max()),
    }


@dataclass
class MarginalEstimate:
    """Per-point marginal-likelihood results over a data set (all in nats per data point).

    For ``method == "is"`` the K weights are importance weights; for ``method == "ais"``
    (:mod:`vaelab.inference.ais`) they are the final AIS weights of K = ``num_samples`` chains,
    and ``elbo`` holds their mean log weight (a stochastic lower bound, not the guide's ELBO).
    """

    log_px: torch.Tensor  #: (N,) log p̂(x_n)
    elbo: torch.Tensor  #: (N,) mean over the K draws of log w: an unbiased ELBO estimate
    ess: torch.Tensor  #: (N,) effective sample size of the K weights
    num_samples: int
    extra: dict = field(default_factory=dict)
    pareto_k: torch.Tensor | None = None  #: (N,) PSIS k̂ of each point's K weights
    curve_ks: list[int] | None = None  #: K values of the convergence curve
    curve_log_px: torch.Tensor | None = None  #: (len(curve_ks), N) log p̂ from the first K draws
    method: str = "is"
    exact_log_px: torch.Tensor | None = None  #: (N,) exact log p(x_n), where a method applies
    #: (len(curve_ks), N) mean log w over the first K draws of the curve: the single-sample ELBO
    #: averaged over those draws (beside ``curve_log_px``, the K-sample bound of the same draws)
    curve_elbo: torch.Tensor | None = None

    @property
    def flagged(self) -> torch.Tensor:
        """(N,) bool: points whose Pareto k̂ exceeds 0.7 (unreliable estimate)."""
        if self.pareto_k is None:
            return torch.zeros(self.log_px.shape, dtype=torch.bool)
        return self.pareto_k > K_THRESHOLD

    def curve(self) -> dict[int, float]:
        """Mean over points of log p̂ from the first K draws, for each K of the curve."""
        if self.curve_ks is None:
            return {}
        assert self.curve_log_px is not None, "curve_ks and curve_log_px are set together"
        means = self.curve_log_px.double().mean(-1)
        return {k: float(m) for k, m in zip(self.curve_ks, means)}

    def first_draws(self, m: int) -> dict:
        r"""The two bounds of the first ``m`` draws of each point (``m`` must be a K of the
        curve), averaged over the points with their standard errors over the points:

        .. math:: \mathcal{L}_m(x_n) = \log \frac1m \sum_{k=1}^m w_{kn}, \qquad
            \bar{\mathcal{L}}_1(x_n) = \frac1m \sum_{k=1}^m \log w_{kn}

        ``iw_bound``, the m-sample importance-weighted bound (IWAE_m, Burda et al. 2016), and
        ``elbo``, the single-sample ELBO averaged over the same m draws; both are lower bounds
        on log p(x_n) in expectation. With m = K the first is ``log_px`` and the second
        ``elbo``.

        :raises ValueError: ``m`` is not a K of the curve, or the curve has no ELBO.
        """
        if self.curve_ks is None or m not in self.curve_ks or self.curve_elbo is None:
            raise ValueError(f"no curve of the first {m} draws: evaluate with curve_ks "
                             f"including {m}")
        assert self.curve_log_px is not None, "curve_ks and curve_log_px are set together"
        i = self.curve_ks.index(m)
        iw, iw_se = self._mean_se(self.curve_log_px[i])
        elbo, elbo_se = self._mean_se(self.curve_elbo[i])
        return {"m": m, "iw_bound": iw, "iw_bound_stderr": iw_se, "elbo": elbo,
                "elbo_stderr": elbo_se, "num_points": self.num_points}

    @property
    def mc_stderr(self) -> torch.Tensor:
        """(N,) delta-method Monte Carlo standard error of each log p̂(x_n)."""
        K = self.num_samples
        return ((K / self.ess - 1.0).clamp_min(0.0) / K).sqrt()

    @property
    def num_points(self) -> int:
        return int(self.log_px.numel())

    @staticmethod
    def _mean_se(v: torch.Tensor) -> tuple[float, float]:
        n = v.numel()
        se = float(v.double().std(unbiased=True) / math.sqrt(n)) if n > 1 else float("nan")
        return float(v.double().mean()), se

    @classmethod
    def concat(cls, parts: list[MarginalEstimate]) -> MarginalEstimate:
        """The estimate over the points of ``parts`` in order (blocks of one evaluation: the same
        K, method and curve; ``extra`` of the first)."""
        first = parts[0]
        if any(p.num_samples != first.num_samples or p.method != first.method
               or p.curve_ks != first.curve_ks for p in parts):
            raise ValueError("MarginalEstimate.concat: parts of different evaluations")

        def cat(name: str, dim: int = 0) -> torch.Tensor | None:
            vs = [getattr(p, name) for p in parts]
            return None if any(v is None for v in vs) else torch.cat(vs, dim)

        def cat_all(name: str) -> torch.Tensor:
            return torch.cat([getattr(p, name) for p in parts])

        return cls(cat_all("log_px"), cat_all("elbo"), cat_all("ess"), first.num_samples,
                   dict(first.extra),
                   cat("pareto_k"), first.curve_ks, cat("curve_log_px", -1), first.method,
                   cat("exact_log_px"), cat("curve_elbo", -1))

    def summary(self) -> dict:
        """Means over points and their standard errors (spread across the data set), and the
        per-point diagnostics summarised over points: ``ess`` and ``pareto_k`` (mean, min,
        quantiles, max; k̂ over its finite values) and ``num_flagged`` (points with k̂ > 0.7,
        ``inf`` included); ``exact_log_likelihood`` where the exact value is known."""
        ll, ll_se = self._mean_se(self.log_px)
        elbo, elbo_se = self._mean_se(self.elbo)
        out = {"method": self.method, "log_likelihood": ll, "log_likelihood_stderr": ll_se}
        if self.method == "is":
            out.update(elbo=elbo, elbo_stderr=elbo_se)
        else:
            out.update(mean_log_w=elbo, mean_log_w_stderr=elbo_se)
        out.update(
            mc_stderr_mean=float(self.mc_stderr.double().mean()),
            ess_mean=float(self.ess.double().mean()),
            ess_min=float(self.ess.min()),
            num_samples=self.num_samples,
            num_points=self.num_points,
            ess=quantile_summary(self.ess),
        )
        if self.pareto_k is not None:
            out["pareto_k"] = quantile_summary(self.pareto_k[self.pareto_k.isfinite()])
            out["num_flagged"] = int(self.flagged.sum())
        if self.exact_log_px is not None:
            ex, ex_se = self._mean_se(self.exact_log_px)
            out.update(
                exact_log_likelihood=ex,
                exact_log_likelihood_stderr=ex_se,
                estimate_minus_exact=float((self.log_px.double() - self.exact_log_px).mean()),
            )
        return out


def chunk_size_for(
    num_samples: int, batch_size: int, bytes_per_particle: int, max_memory_mb: float
) -> int:
    """Largest particle chunk whose ``(chunk, B)`` activations fit in ``max_memory_mb``."""
    budget = max_memory_mb * 2**20
    return int(max(1, min(num_samples, budget // max(1, batch_size * bytes_per_particle))))


def cache_rows(out_features: int, cache_bytes: int | None = None) -> int:
    """(particle, point) rows whose float32 decoder output of ``out_features`` values fits the
    last-level cache (at least 256)."""
    from vaelab.inference.numerics import last_level_cache_bytes

    cache = last_level_cache_bytes() if cache_bytes is None else cache_bytes
    return max(256, cache // (4 * max(1, out_features)))


def importance_sample_batch(
    model: Callable,
    guide: Callable,
    x: torch.Tensor,
    num_samples: int,
    chunk_size: int,
    *args,
    keep_log_w: bool = False,
    keep_top: int = 0,
    fused: Callable[[torch.Tensor, int], torch.Tensor] | None = None,
    **kwargs,
) -> dict[str, torch.Tensor]:
    """Stream ``num_samples`` particles through ``(model, guide)`` on one data batch ``x (B, D)``.

    :param keep_top: keep the running ``keep_top`` largest log weights per point (what the
        Pareto k̂ fit reads, :func:`~vaelab.inference.psis.pareto_k_of_top`): diagnostics in
        the same pass, without the ``(K, B)`` weights.
    :param fused: ``fn(x, k) → log w (k, B)`` replacing the traced model and guide
        (:func:`vaelab.inference.fused.fused_log_weights`: the same draws, no tracing).
    :returns: ``lse_w (B,)`` = logsumexp_k log w, ``lse_2w (B,)`` = logsumexp_k 2 log w,
        ``sum_log_w (B,)``, ``log_w (K, B)`` if ``keep_log_w``, ``top (keep_top, B)``
        (descending) if ``keep_top``.
    """
    top: torch.Tensor | None = None
    lse_w: torch.Tensor | None = None
    lse_2w: torch.Tensor | None = None
    sum_log_w = x.new_zeros(x.shape[0], dtype=torch.float64)
    kept = []
    done = 0
    with torch.no_grad():
        while done < num_samples:
            k = min(chunk_size, num_samples - done)
            if fused is not None:
                log_w = fused(x, k).double()  # (k, B)
            else:
                lw = log_weights(model, guide, k, x, *args, **kwargs)
                log_w = (lw.local + lw.global_.unsqueeze(-1)).double()  # (k, B), float64 sums
                del lw  # its traces hold the chunk's decoder output: free it before the next
            c_w = torch.logsumexp(log_w, 0)  # (B,)
            c_2w = torch.logsumexp(2.0 * log_w, 0)
            lse_w = c_w if lse_w is None else torch.logaddexp(lse_w, c_w)
            lse_2w = c_2w if lse_2w is None else torch.logaddexp(lse_2w, c_2w)
            sum_log_w += log_w.sum(0)
            if keep_log_w:
                kept.append(log_w)
            if keep_top:
                top = top_log_weights(log_w, keep_top, top)
            done += k
    if lse_w is None or lse_2w is None:
        raise ValueError(f"num_samples must be at least 1, got {num_samples}")
    out = {"lse_w": lse_w, "lse_2w": lse_2w, "sum_log_w": sum_log_w}
    if keep_log_w:
        out["log_w"] = torch.cat(kept, 0)
    if top is not None:
        out["top"] = top
    return out


def default_curve_ks(num_samples: int, num: int = 25) -> list[int]:
    """About ``num`` log-spaced K values from 1 to ``num_samples`` (both included)."""
    ks = torch.logspace(0, math.log10(num_samples), num, dtype=torch.float64).round().long()
    return sorted(set(ks.tolist()) | {1, num_samples})


def _prefix_log_px(log_w: torch.Tensor, ks: list[int]) -> torch.Tensor:
    """``(len(ks), B)``: log p̂ from the first k draws, from ``log_w (K, B)``."""
    idx = torch.tensor(ks, device=log_w.device) - 1
    lse = torch.logcumsumexp(log_w.double(), 0).index_select(0, idx)  # (len(ks), B)
    return lse - torch.tensor(ks, dtype=torch.float64, device=log_w.device).log().unsqueeze(-1)


def _prefix_elbo(log_w: torch.Tensor, ks: list[int]) -> torch.Tensor:
    """``(len(ks), B)``: the mean of the first k log weights, from ``log_w (K, B)``."""
    idx = torch.tensor(ks, device=log_w.device) - 1
    total = torch.cumsum(log_w.double(), 0).index_select(0, idx)  # (len(ks), B)
    return total / torch.tensor(ks, dtype=torch.float64, device=log_w.device).unsqueeze(-1)


def data_batches(
    data: torch.Tensor,
    batch_size: int,
    device: torch.device | str | None = None,
    transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
):
    """Consecutive batches of ``data (N, D)``, moved to ``device`` and transformed (in order)."""
    for start in range(0, data.shape[0], batch_size):
        x = data[start : start + batch_size]
        if device is not None:
            x = to_device(x, torch.device(device))
        yield transform(x) if transform is not None else x


def estimate_marginal(
    model: Callable,
    guide: Callable,
    data: torch.Tensor,
    num_samples: int = 5000,
    batch_size: int = 100,
    chunk_size: int | None = None,
    bytes_per_particle: int = 4 * 4 * 1024,
    max_memory_mb: float = 512.0,
    transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
    progress: bool = False,
    device: torch.device | str | None = None,
    diagnostics: bool = True,
    curve_ks: list[int] | None = None,
    chunk_rows: int | None = None,
    fused: Callable[[torch.Tensor, int], torch.Tensor] | None = None,
) -> MarginalEstimate:
    r"""Importance-sampled log p(x) for every row of ``data (N, D)``.

    :param model: a vaelab (or any Pyro) model ``model(x)`` with a ``"data"`` plate.
    :param guide: its guide, with the same sites, or any proposal of
        :mod:`vaelab.inference.proposals`.
    :param num_samples: K particles per data point.
    :param batch_size: data points per pass.
    :param chunk_size: particles per pass; by default the largest that fits ``max_memory_mb``
        given ``bytes_per_particle`` (bytes of activations per particle per data point).
    :param transform: applied to each data batch first (e.g. a fixed binarization).
    :param diagnostics: compute the Pareto k̂ of each point, from the M + 1 largest log
        weights kept while the chunks stream (no second pass, no ``(K, B)`` weights kept).
    :param curve_ks: K values (≤ ``num_samples``) at which to record log p̂ from the first K
        draws and the mean log w of those draws (see :func:`default_curve_ks`,
        :meth:`MarginalEstimate.first_draws`); ``None``: no curve.
    :param chunk_rows: with ``chunk_size`` unset, also cap a chunk at this many (particle,
        point) rows, so that its decoder output stays in cache (:func:`cache_rows`; on a
        784-400-20 VAE a 31 MB output is 1.3× faster per particle than the 512 MiB budget's,
        ``benchmarks/marginal.py``); ``None``: the memory budget alone.
    :param fused: the fused log weights of ``(model, guide)`` (see
        :func:`importance_sample_batch`); ``None``: traced.
    :returns: :class:`MarginalEstimate`.

    Example::

        est = estimate_marginal(vae.model, vae.guide, x_test, num_samples=5000)
        print(est.summary()["log_likelihood"], int(est.flagged.sum()))
    """
    if chunk_size is None:
        chunk_size = chunk_size_for(num_samples, batch_size, bytes_per_particle, max_memory_mb)
        if chunk_rows is not None:
            chunk_size = max(1, min(chunk_size, chunk_rows // max(1, batch_size)))
    if curve_ks is not None:
        curve_ks = sorted({int(k) for k in curve_ks})
        if curve_ks[0] < 1 or curve_ks[-1] > num_samples:
            raise ValueError(f"curve_ks must lie in [1, K={num_samples}], got {curve_ks}")
    diagnostics = diagnostics and num_samples > 10  # fewer draws: no tail to fit
    tail = tail_size(num_samples) + 1 if diagnostics else 0
    log_px, elbo, ess, k_hat, curve, curve_elbo = [], [], [], [], [], []
    log_K = math.log(num_samples)
    bar = tqdm(
        total=data.shape[0], desc=f"IS K={num_samples}", unit="pt", disable=not progress,
        leave=False,
    )
    for x in data_batches(data, batch_size, device, transform):
        r = importance_sample_batch(model, guide, x, num_samples, chunk_size,
                                    keep_log_w=curve_ks is not None, keep_top=tail,
                                    fused=fused)
        log_px.append((r["lse_w"] - log_K).double().cpu())
        elbo.append((r["sum_log_w"] / num_samples).cpu())
        ess.append((2.0 * r["lse_w"].double() - r["lse_2w"].double()).exp().cpu())
        if diagnostics:
            k_hat.append(pareto_k_of_top(r["top"]).cpu())  # (B,), from the streamed tail
        if curve_ks is not None:
            curve.append(_prefix_log_px(r["log_w"], curve_ks).cpu())  # (len(ks), B)
            curve_elbo.append(_prefix_elbo(r["log_w"], curve_ks).cpu())  # (len(ks), B)
        bar.update(x.shape[0])
    bar.close()
    return MarginalEstimate(
        torch.cat(log_px),
        torch.cat(elbo),
        torch.cat(ess),
        num_samples,
        pareto_k=torch.cat(k_hat) if diagnostics else None,
        curve_ks=curve_ks,
        curve_log_px=torch.cat(curve, -1) if curve_ks is not None else None,
        curve_elbo=torch.cat(curve_elbo, -1) if curve_ks is not None else None,
    )
