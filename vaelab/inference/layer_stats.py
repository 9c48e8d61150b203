r"""The latent-space statistics of :mod:`vaelab.inference.latent_space`, one set per layer of a
VAE with several stochastic layers (``model.layers``): posterior means, Burda et al.'s active
units and the KL per unit given the parent layer (:func:`layer_stats`), behind the per-layer
part of a run's report.

References:
  1. Y. Burda, R. Grosse, R. Salakhutdinov. *Importance Weighted Autoencoders*. ICLR 2016
     (Sec. 5.2, active units, counted per stochastic layer).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch.distributions import Normal, kl_divergence

from vaelab.inference.latent_space import LatentStats, _factors, activity

__all__ = ["layer_stats"]


def _layer_kl(vae, order: list[int], locs, scales, zs, num_draws: int):
    r"""Per layer l, ``(b, d_l)``: the mean over the S draws of
    :math:`\mathrm{KL}(q(z_{l,u} \mid \cdot) \,\|\, p(z_{l,u} \mid z_{l+1}))` in closed form
    where the guide draws z_{l+1} before z_l (or l = L, the prior's factors), else of
    :math:`\log q(z_{l,u} \mid \cdot) - \log p(z_{l,u} \mid z_{l+1})` at the draws (its
    expectation is that layer's share of KL(q(z_{1:L} | x) ‖ p(z_{1:L}))); ``None`` for a top
    prior that does not factorize. Returns ``(kls, hows)``."""
    g, L = vae.generative, len(zs)
    kls: list[torch.Tensor | None] = []
    hows: list[str] = []
    for k in range(L):
        q_u = Normal(locs[k], scales[k], validate_args=False)  # batch (S, b, d_k)
        if k == L - 1:
            p_u = _factors(g.prior())
        else:
            loc_p, scale_p = g.conditionals[k].loc_scale(zs[k + 1])  # (S, b, d_k) each
            p_u = Normal(loc_p, scale_p, validate_args=False)
        if p_u is None:
            kls.append(None)
            hows.append(f"the prior {type(g.prior).__name__} does not factorize over dimensions")
            continue
        kl = None
        if k == L - 1 or order.index(k + 1) < order.index(k):  # z_{k+1} drawn before z_k
            try:
                kl = kl_divergence(q_u, p_u)  # (S, b, d_k)
                how = f"closed form given the parents, mean of {num_draws} draws per point"
            except NotImplementedError:
                pass
        if kl is None:
            kl = q_u.log_prob(zs[k]) - p_u.log_prob(zs[k])  # (S, b, d_k)
            how = f"Monte Carlo, E_q[log q − log p], {num_draws} draws per point"
        kls.append(kl.mean(0))
        hows.append(how)
    return kls, hows


@torch.no_grad()
def layer_stats(vae, x: torch.Tensor, batch_size: int = 500, num_draws: int = 64,
                check: Callable[[], None] | None = None) -> list[LatentStats]:
    r""":class:`LatentStats` of each layer of a layered VAE on the rows of ``x (B, D)``, bottom
    first.

    The posterior mean of layer l is Rao-Blackwellized, :math:`\mathbb E_q[z_l \mid x] \approx
    \frac1S \sum_s μ_l(\text{parents}_s)` over the guide's ``common_noise_draws`` (exact for a
    layer read from x alone), so that an inactive unit, whose μ_l ignores its inputs, has
    exactly zero activity; the activity and Burda et al.'s criterion :math:`\mathrm{Cov}_x
    \mathbb E_q[z_{l,u}] \ge 0.01` are then per layer. KL per unit: :func:`_layer_kl`,
    averaged over the points; summed over units and layers it is the mean
    KL(q(z_{1:L} | x) ‖ p(z_{1:L})).
    """
    L = vae.inference.num_layers
    means: list[list[torch.Tensor]] = [[] for _ in range(L)]
    totals: list[torch.Tensor | None] = [torch.zeros((), dtype=torch.float64)] * L
    hows = [""] * L
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        for start in range(0, x.shape[0], batch_size):
            if check is not None:
                check()
            order, locs, scales, zs = vae.inference.common_noise_draws(
                x[start : start + batch_size], num_draws)  # each (S, b, d_l)
            kls, hows = _layer_kl(vae, order, locs, scales, zs, num_draws)
            for k in range(L):
                means[k].append(locs[k].mean(0).cpu())  # (b, d_k)
                kl, total = kls[k], totals[k]
                totals[k] = None if kl is None or total is None else (
                    total + kl.double().sum(0).cpu())  # (d_k,)
    out = []
    for k in range(L):
        m, total = torch.cat(means[k]), totals[k]
        out.append(LatentStats(m, activity(m), None if total is None else total / x.shape[0],
                               hows[k]))
    return out
