r"""The test metric of Jang et al. (2017) for a categorical VAE trained with a relaxed guide.

.. math:: \mathcal{L}_{\text{Jang}}(x) = \mathbb{E}_{q_{φ,τ}(y \mid x)}\big[\log p_θ(x \mid
    \mathrm{dec}(y))\big] - \sum_{n=1}^N \mathrm{KL}\big(\mathrm{Cat}(\ell_n(x)) \,\|\,
    \mathrm{Cat}(π_n)\big)

(the training objective of ``guide.family = {name = "relaxed", kl = "categorical"}``, see
:mod:`vaelab.guide.relaxed`), estimated with S draws y of the Concrete guide at temperature τ
(the paper averages 1000 draws per test image). The decoder reads each draw as in training:
the soft point :math:`e^y`, or its one-hot argmax for straight-through (``hard = true``), where
the bound is exactly the ELBO of the discrete model. It bounds neither model otherwise: compare
it with the discrete model's ELBO and log p(x) that :func:`vaelab.runs.run.evaluate` reports.
"""

from __future__ import annotations

import torch
from torch import Tensor

from vaelab.model.distributions import kl_categorical

__all__ = ["jang_bound"]


@torch.no_grad()
def jang_bound(vae, x: Tensor, temperature: Tensor, num_draws: int = 1000,
               chunk: int = 100) -> Tensor:
    """:math:`\\mathcal{L}_{\\text{Jang}}(x)` per row of ``x (B, D)``, ``(B,)``, from
    ``num_draws`` guide draws in chunks of ``chunk``.

    :param vae: a VAE with a categorical latent and a relaxed guide family.
    :param temperature: τ, a scalar tensor (e.g. ``vae.latent.temperature_at(last_step)``).
    """
    g, q = vae.generative, vae.inference
    if g.latent.continuous or not g.latent.relaxed:
        raise ValueError("jang_bound needs a categorical latent with a relaxed guide family")
    h = q.encode(x)  # (B, N K)
    q_y = q.posterior(h, temperature)  # batch (B,), event (N, K), log-space Concrete
    kl = kl_categorical(q.posterior.logits_from(h), g.prior.logits).sum(-1)  # (B,)
    total = torch.zeros(x.shape[0], dtype=torch.float64, device=x.device)
    done = 0
    while done < num_draws:
        s = min(chunk, num_draws - done)
        y = q_y.rsample((s,))  # (s, B, N, K)
        params = g.decoder(g.latent.decoder_input(y))  # (s, B, param_size)
        total += g.likelihood(params).log_prob(x).double().sum(0)
        done += s
    return total / num_draws - kl.double()
