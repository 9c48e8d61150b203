"""Probabilistic PCA as a vaelab VAE, with its closed-form log p(x) and exact posterior.

Model: z ~ N(0, I_d), x | z ~ N(W z + b, σ² I_D), so p(x) = N(x; b, W Wᵀ + σ² I) and
q*(z | x) = N(M⁻¹ Wᵀ (x − b), σ² M⁻¹) with M = Wᵀ W + σ² I (Tipping & Bishop 1999).
With orthogonal columns of W, M is diagonal, so the exact posterior is a diagonal normal whose
mean is linear in x: a linear encoder represents it exactly.
"""

from __future__ import annotations

import math

import pyro.distributions as dist
import torch
from torch.nn.functional import softplus

from vaelab.resolve import load_config
from vaelab.vae import build_vae


def ppca_config(D: int, d: int, sigma: float, overrides=()):
    return load_config(
        None,
        [
            "data.name=synthetic",
            f"model.latent_dim={d}",
            "model.hidden_sizes=[]",
            f"model.likelihood={{name = \"normal\", scale = {sigma}}}",
            "model.prior=standard_normal",
            "guide.hidden_sizes=[]",
            "guide.family={name = \"normal\", min_scale = 0.0}",
            *overrides,
        ],
    )


def make_ppca(D=6, d=2, sigma=0.5, seed=0, dtype=torch.float64):
    """A PPCA VAE with random orthogonal-column W; the guide set to the exact posterior."""
    g = torch.Generator().manual_seed(seed)
    vae = build_vae(ppca_config(D, d, sigma), D).to(dtype)
    Q, _ = torch.linalg.qr(torch.randn(D, d, generator=g, dtype=dtype))
    s = torch.linspace(2.0, 1.0, d, dtype=dtype)
    W = Q * s  # (D, d), orthogonal columns
    b = 0.3 * torch.randn(D, generator=g, dtype=dtype)
    dec = vae.generative.decoder.linear_layers[0]
    with torch.no_grad():
        dec.weight.copy_(W)
        dec.bias.copy_(b)
    set_exact_posterior(vae, W, b, sigma)
    return vae, W, b


def exact_posterior(W, b, sigma):
    """(A, c, scale): q*(z|x) = N(A x + c, diag scale²)."""
    d = W.shape[1]
    M = W.T @ W + sigma**2 * torch.eye(d, dtype=W.dtype)
    Minv = torch.linalg.inv(M)
    A = Minv @ W.T  # (d, D)
    return A, -A @ b, (sigma**2 * torch.diagonal(Minv)).sqrt()


def set_exact_posterior(vae, W, b, sigma, loc_shift=0.0, scale_factor=1.0):
    A, c, scale = exact_posterior(W, b, sigma)
    d = W.shape[1]
    enc = vae.inference.encoder.linear_layers[0]
    scale = scale * scale_factor
    with torch.no_grad():
        enc.weight.zero_()
        enc.weight[:d].copy_(A)
        enc.bias[:d].copy_(c + loc_shift)
        enc.bias[d:].copy_(scale + torch.log(-torch.expm1(-scale)))  # softplus⁻¹(scale)
    assert torch.allclose(softplus(enc.bias[d:]), scale)


def exact_log_px(x, W, b, sigma):
    D = W.shape[0]
    cov = W @ W.T + sigma**2 * torch.eye(D, dtype=W.dtype)
    return torch.distributions.MultivariateNormal(b, covariance_matrix=cov).log_prob(x)


def sample_ppca(n, W, b, sigma, seed=1):
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(n, W.shape[1], generator=g, dtype=W.dtype)
    return z @ W.T + b + sigma * torch.randn(n, W.shape[0], generator=g, dtype=W.dtype)


LOG_2PI = math.log(2 * math.pi)
#: noise scale of the shared ``ppca`` fixture (tests/conftest.py)
SIGMA = 0.5


class TableNormal(dist.Normal):
    """A normal whose rsample reads standard-normal noise from a shared table, in order, so that
    chunked and unchunked runs see the same draws. Set ``TableNormal.table`` ``(K, B, d)`` and
    reset ``TableNormal.pos = 0`` before each run."""

    table: torch.Tensor = None
    pos = 0

    def rsample(self, sample_shape=torch.Size()):
        shape = self._extended_shape(sample_shape)
        k = shape[0]
        eps = TableNormal.table[TableNormal.pos : TableNormal.pos + k]
        TableNormal.pos += k
        return self.loc + self.scale * eps.expand(shape)
