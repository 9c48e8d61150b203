"""Shared helpers of the straight-through estimator tests: a tiny enumerable VAE, its exact
gradient (enumeration + autograd), and Monte Carlo / exact expectations of an estimator."""

import math

import pyro
import torch

from vaelab.guide.straight_through import ESTIMATORS
from vaelab.inference.exact import enumerated_elbo
from vaelab.inference.objectives import build_objective
from vaelab.model.distributions import joint_states, kl_categorical
from vaelab.resolve import load_config
from vaelab.vae import build_vae

N, K, D = 2, 3, 6
FAMILIES = {
    "straight_through": '{name = "relaxed", kl = "categorical", hard = true}',
    "gapped_st": '{name = "relaxed", kl = "categorical", estimator = "gapped_st"}',
    "reinmax": '{name = "relaxed", kl = "categorical", estimator = "reinmax"}',
}


def gr_family(k: int) -> str:
    return f'{{name = "relaxed", kl = "categorical", estimator = "gr_mck", num_gumbels = {k}}}'


def tiny_vae(family: str, tau: float = 1.0, linear_gaussian: bool = False, seed: int = 0):
    """N = 2 variables of K = 3 classes, D = 6, float64, learned prior logits set away from
    uniform and an encoder scaled so that the posteriors are far from uniform."""
    decoder = (["model.hidden_sizes=[]", 'model.likelihood={name = "normal", scale = 0.7}']
               if linear_gaussian else ["model.hidden_sizes=[8]"])
    cfg = load_config(None, [
        "data.name=synthetic", "model.prior=categorical", "guide.hidden_sizes=[]",
        f'model.latent={{name = "categorical", num_variables = {N}, num_classes = {K}, '
        f'prior = "learned", temperature = {tau}}}', f"guide.family={family}", *decoder,
    ])
    torch.manual_seed(seed)
    vae = build_vae(cfg, D).to(torch.float64)
    with torch.no_grad():
        vae.generative.prior.logits.copy_(torch.tensor([[0.5, -0.3, 0.0], [-1.0, 0.2, 0.4]]))
        for p in vae.inference.encoder.parameters():
            p.mul_(2.0)
    return vae, cfg


def data(linear_gaussian: bool = False) -> torch.Tensor:
    g = torch.Generator().manual_seed(1)
    if linear_gaussian:
        return torch.randn(4, D, dtype=torch.float64, generator=g)
    return torch.bernoulli(torch.full((4, D), 0.4, dtype=torch.float64), generator=g)  # (4, D)


def flat_grad(vae, encoder_only: bool = True) -> torch.Tensor:
    """The gradient, flat: of the encoder only (default; the estimators differ only there, the
    decoder's gradient given D is the same for all), or of every parameter."""
    params = vae.inference.encoder.parameters() if encoder_only else vae.parameters()
    return torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1)
                      for p in params])


def exact_gradient(vae, x) -> torch.Tensor:
    """∇ of the batch-summed negative enumerated ELBO (the loss), flat over all parameters."""
    vae.zero_grad()
    (-enumerated_elbo(vae, x).sum()).backward()
    return flat_grad(vae).clone()


def mc_draws(vae, cfg, x, repeats: int, per_repeat: int, seed: int = 100) -> torch.Tensor:
    """``(repeats, P)``: each row the mean of ``per_repeat`` independent one-draw gradients of
    the batch loss (the batch replicated ``per_repeat`` times in one call), through the public
    ``trace`` objective."""
    objective = build_objective(cfg.objective, vae)
    tau = vae.latent.temperature_at(0)
    x_rep = x.repeat(per_repeat, 1)  # (M B, D)
    rows = []
    for r in range(repeats):
        pyro.set_rng_seed(seed + r)
        vae.zero_grad()
        objective.loss_and_grads(vae.model, vae.guide, x_rep, 1.0, tau)
        rows.append(flat_grad(vae) / per_repeat)
    return torch.stack(rows)


def expected_estimate(vae, x, estimator: str, tau: float, **options) -> torch.Tensor:
    """The *exact* expectation over D of a deterministic-given-D estimator (gapped_st,
    reinmax): Σ_D q(D|x) ĝ(D), by enumeration of the K^N joint states, flat over parameters."""
    g, surrogate = vae.generative, ESTIMATORS[estimator].surrogate
    logits = vae.inference.logits(x).log_softmax(-1)  # (B, N, K)
    states = joint_states(N, K, dtype=x.dtype)  # (S, N, K)
    weight = torch.einsum("snk,bnk->sb", states, logits).exp().detach()  # q(s | x_b), (S, B)
    surrogate_loss = kl_categorical(logits, g.prior.logits).sum()
    t = torch.tensor(tau, dtype=x.dtype)
    for s in range(states.shape[0]):
        one_hot = states[s].expand_as(logits)  # (B, N, K)
        sur = surrogate(logits, one_hot, t, **options)
        z = one_hot + (sur - sur.detach())  # the straight-through decoder input
        params = g.decoder(z.reshape(x.shape[0], N * K))
        surrogate_loss = surrogate_loss - (weight[s] * g.likelihood(params).log_prob(x)).sum()
    vae.zero_grad()
    surrogate_loss.backward()
    return flat_grad(vae).clone()


def relative_bias(mean: torch.Tensor, truth: torch.Tensor) -> float:
    return float((mean - truth).norm() / truth.norm())


def total_variance(draws: torch.Tensor) -> float:
    """Σ_p Var(g_p) of one row, from ``draws (R, P)``."""
    return float(draws.var(0).sum())


SQRT = math.sqrt
