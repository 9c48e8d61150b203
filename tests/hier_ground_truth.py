"""A linear-Gaussian hierarchy z_2 → z_1 → x as a two-layer vaelab VAE, with its closed-form
log p(x) and exact posterior factors.

Model: z_2 ~ N(0, I_d), z_1 | z_2 ~ N(A z_2 + a, diag s²), x | z_1 ~ N(W z_1 + b, σ² I_D), with
A diagonal and W with orthogonal columns, so that every exact posterior factor the guides need,
p(z_1 | x), p(z_2 | z_1), p(z_2 | x) and p(z_1 | x, z_2), is a diagonal Gaussian whose mean is
affine in its inputs: linear guide networks represent them exactly. Everything is read off the
joint Gaussian of (z_1, z_2, x) by Gaussian conditioning.
"""

from __future__ import annotations

import torch
from torch.nn.functional import softplus

from vaelab.resolve import load_config
from vaelab.vae import build_vae

D, d, SIGMA = 6, 2, 0.5


def hier_config(hierarchy: str = "bottom_up", overrides=()):
    return load_config(None, [
        "data.name=synthetic",
        f"model.latent_dim={d}",
        "model.hidden_sizes=[]",
        f"model.likelihood={{name = \"normal\", scale = {SIGMA}}}",
        "model.prior=standard_normal",
        f"model.layers=[{{latent_dim = {d}, network = {{name = \"mlp\", hidden_sizes = []}}}}]",
        "guide.hidden_sizes=[]",
        "guide.family={name = \"normal\", min_scale = 0.0}",
        f"guide.hierarchy={hierarchy}",
        *overrides,
    ])


def _inv_softplus(s: torch.Tensor) -> torch.Tensor:
    return s + torch.log(-torch.expm1(-s))


class LinearHierarchy:
    """The model's parameters, its joint Gaussian and its conditionals."""

    def __init__(self, seed: int = 0, dtype=torch.float64):
        g = torch.Generator().manual_seed(seed)
        Q, _ = torch.linalg.qr(torch.randn(D, d, generator=g, dtype=dtype))
        self.W = Q * torch.tensor([1.5, 0.8], dtype=dtype)  # (D, d) orthogonal columns
        self.b = 0.3 * torch.randn(D, generator=g, dtype=dtype)
        self.A = torch.diag(torch.tensor([1.2, -0.7], dtype=dtype))  # (d, d)
        self.a = torch.tensor([0.2, -0.1], dtype=dtype)
        self.s = torch.tensor([0.6, 0.9], dtype=dtype)
        self.dtype = dtype
        # joint of y = (z_1, z_2, x): y = M ε + m with ε ~ N(0, I) of (z_2, ε_1, ε_x)
        I_d, I_D = torch.eye(d, dtype=dtype), torch.eye(D, dtype=dtype)
        z1 = torch.cat([self.A, torch.diag(self.s), torch.zeros(d, D, dtype=dtype)], 1)
        z2 = torch.cat([I_d, torch.zeros(d, d + D, dtype=dtype)], 1)
        x = torch.cat([self.W @ z1[:, : 2 * d], SIGMA * I_D], 1)
        M = torch.cat([z1, z2, x], 0)  # (2d + D, 2d + D)
        self.mean = torch.cat([self.a, torch.zeros(d, dtype=dtype), self.W @ self.a + self.b])
        self.cov = M @ M.T
        self.idx = {"z_1": slice(0, d), "z_2": slice(d, 2 * d), "x": slice(2 * d, 2 * d + D)}

    def sample_x(self, n: int, seed: int = 1) -> torch.Tensor:
        g = torch.Generator().manual_seed(seed)
        L = torch.linalg.cholesky(self.cov)
        y = self.mean + torch.randn(n, 2 * d + D, generator=g, dtype=self.dtype) @ L.T
        return y[:, self.idx["x"]]

    def log_px(self, x: torch.Tensor) -> torch.Tensor:
        i = self.idx["x"]
        return torch.distributions.MultivariateNormal(self.mean[i], self.cov[i, i]).log_prob(x)

    def conditional(self, a: str, given: list[str]):
        """(K, c, scale): p(a | given) = N(K u + c, diag scale²), u the given blocks
        concatenated in order; asserts the covariance is diagonal."""
        ia = list(range(2 * d + D))[self.idx[a]]
        ib = [j for name in given for j in list(range(2 * d + D))[self.idx[name]]]
        S_ab = self.cov[ia][:, ib]
        S_bb = self.cov[ib][:, ib]
        K = S_ab @ torch.linalg.inv(S_bb)
        c = self.mean[ia] - K @ self.mean[ib]
        cov = self.cov[ia][:, ia] - K @ S_ab.T
        assert torch.allclose(cov, torch.diag(torch.diagonal(cov)), atol=1e-10), cov
        return K, c, torch.diagonal(cov).sqrt()


def _ladder_terms(self):
    """The bottom-up steps of the ladder guide at which it is exact, ``[(K, c, scale)]`` per
    step: step 1 the likelihood of z_1 as a Gaussian in z_1,
    p(x | z_1) ∝ N(z_1; μ̂_1 = M (x − b), diag σ²/diag(WᵀW)) with M = (WᵀW)⁻¹Wᵀ (W has
    orthogonal columns); step 2 reads (μ̂_1, raw σ̂_1) and gives p(z_2 | x), which depends on
    x through Wᵀx only: K x + c = K W μ̂_1 + (c + K W M b). The top-down merge of step 1 with
    p(z_1 | z_2) is then p(z_1 | x, z_2) (a product of Gaussians in z_1)."""
    WtW = self.W.T @ self.W  # (d, d), diagonal
    M = torch.linalg.solve(WtW, self.W.T)  # (d, D)
    scale_1 = SIGMA / torch.diagonal(WtW).sqrt()
    K2, c2, s2 = self.conditional("z_2", ["x"])
    K2p = K2 @ self.W  # (d, d)
    assert torch.allclose(K2p @ M, K2, atol=1e-10)  # K2 reads x through Wᵀx only
    step_2 = torch.cat([K2p, torch.zeros(d, d, dtype=self.dtype)], 1)  # (d, 2d)
    return [(M, -M @ self.b, scale_1), (step_2, c2 + K2p @ M @ self.b, s2)]


LinearHierarchy.ladder_terms = _ladder_terms


def set_layer(layer, K, c, scale) -> None:
    """A linear GaussianConditional set to N(K u + c, diag scale²)."""
    lin = layer.network.linear_layers[0]
    k = K.shape[0]
    with torch.no_grad():
        lin.weight.zero_()
        lin.weight[:k].copy_(K)
        lin.bias[:k].copy_(c)
        lin.bias[k:].copy_(_inv_softplus(scale))
    assert torch.allclose(softplus(lin.bias[k:]), scale)


def make_hier(hierarchy: str = "bottom_up", seed: int = 0, loc_shift: float = 0.0,
              scale_factor: float = 1.0):
    """The two-layer linear-Gaussian VAE with its guide at the exact posterior (optionally
    perturbed: every guide mean shifted by ``loc_shift``, every scale times ``scale_factor``).
    Returns ``(vae, truth)``."""
    truth = LinearHierarchy(seed)
    vae = build_vae(hier_config(hierarchy), D).to(truth.dtype)
    gen = vae.generative
    with torch.no_grad():
        dec = gen.decoder.linear_layers[0]
        dec.weight.copy_(truth.W)
        dec.bias.copy_(truth.b)
    set_layer(gen.conditionals[0], truth.A, truth.a, truth.s)
    if hierarchy == "ladder":
        for i, (K, c, scale) in enumerate(truth.ladder_terms()):
            set_layer(vae.inference.layers[i], K, c + loc_shift, scale * scale_factor)
        return vae, truth
    given = ({"z_1": ["x"], "z_2": ["z_1"]} if hierarchy == "bottom_up"
             else {"z_1": ["x", "z_2"], "z_2": ["x"]})
    for i, site in enumerate(("z_1", "z_2")):
        K, c, scale = truth.conditional(site, given[site])
        set_layer(vae.inference.layers[i], K, c + loc_shift, scale * scale_factor)
    return vae, truth
