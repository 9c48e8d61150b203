"""The training objectives against ground truth: the linear-Gaussian (PPCA) model's closed-form
log p(x) and ELBO, hand-written per-point references, and exact equivalences under one seed.

Statistical assertions name their draws and tolerance; the seeds are fixed (conftest), so every
run is the same run. Gradients are of the objective's loss (the negative bound summed over the
batch); a batch of B points replicated R times gives, in one call, the sum of R independent
gradient draws of the B-point loss.
"""

import math

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.infer import Trace_ELBO, TraceMeanField_ELBO

from ground_truth import exact_log_px, make_ppca, ppca_config, sample_ppca, set_exact_posterior
from vaelab.config import ObjectiveConfig
from vaelab.inference.importance import log_weights
from vaelab.inference.objectives import OBJECTIVES, build_objective
from vaelab.inference.objectives._particles import fn_key
from vaelab.inference.objectives.dreg import IWAEDReG
from vaelab.inference.objectives.iwae import IWAE, iwae_bound
from vaelab.inference.objectives.mean_field import CachedJitTraceMeanField_ELBO, MeanFieldELBO
from vaelab.inference.objectives.renyi import RenyiBound, renyi_bound
from vaelab.inference.objectives.stl import STL
from vaelab.registry import ConfigError
from vaelab.resolve import load_config
from vaelab.runs.train import train
from vaelab.vae import build_vae

SIGMA = 0.5
LOG_2PI = math.log(2 * math.pi)


@pytest.fixture
def shifted_ppca():
    """PPCA (D=6, d=2) with a guide shifted by 0.3 and 1.5x too wide; 10 data points."""
    vae, W, b = make_ppca(D=6, d=2, sigma=SIGMA, seed=0)
    x = sample_ppca(10, W, b, SIGMA, seed=1)
    set_exact_posterior(vae, W, b, SIGMA, loc_shift=0.3, scale_factor=1.5)
    return vae, W, b, x


def closed_form_elbo(vae, x: torch.Tensor, beta: float = 1.0) -> torch.Tensor:
    r"""Per-point ELBO of the PPCA VAE in closed form, differentiable in every parameter:
    E_q log N(x; Wz + b, σ²I) − β KL(N(m, s²) ‖ N(0, I))."""
    m, s = vae.inference.posterior.loc_scale(vae.inference.encoder(x))  # (B, d), (B, d)
    dec = vae.generative.decoder.linear_layers[0]
    W, b = dec.weight, dec.bias  # (D, d), (D,)
    D = x.shape[1]
    resid = x - m @ W.T - b  # (B, D)
    sq = resid.pow(2).sum(-1) + s.pow(2) @ W.pow(2).sum(0)  # E‖x − Wz − b‖², (B,)
    exp_loglik = -0.5 * D * (LOG_2PI + 2 * math.log(SIGMA)) - 0.5 * sq / SIGMA**2
    kl = 0.5 * (s.pow(2) + m.pow(2) - 1.0 - 2.0 * s.log()).sum(-1)
    return exp_loglik - beta * kl


def torch_bound(vae, x: torch.Tensor, K: int, M: int, alpha: float = 0.0) -> torch.Tensor:
    r"""Hand-written (no Pyro) Rényi/IWAE bound of the PPCA VAE: the mean over M independent
    draws of Σ_n (1/(1−α)) log (1/K) Σ_k w_kn^{1−α}; its gradient is the plain reparameterized
    estimator."""
    m, s = vae.inference.posterior.loc_scale(vae.inference.encoder(x))  # (B, d)
    dec = vae.generative.decoder.linear_layers[0]
    z = m + s * torch.randn(M, K, *m.shape, dtype=x.dtype)  # (M, K, B, d)
    normal = torch.distributions.Normal
    log_w = (
        normal(dec(z), SIGMA).log_prob(x).sum(-1)
        + normal(0.0, 1.0).log_prob(z).sum(-1)
        - normal(m, s).log_prob(z).sum(-1)
    )  # (M, K, B)
    c = 1.0 - alpha
    bound = (torch.logsumexp(c * log_w, dim=1) - math.log(K)) / c  # (M, B)
    return bound.sum(-1).mean(0)


def flat_grads(vae, groups=("encoder", "decoder")) -> torch.Tensor:
    pg = vae.parameter_groups()
    out = torch.cat([p.grad.reshape(-1) for g in groups for p in pg[g]]).clone()
    for p in vae.parameters():
        p.grad = None
    return out


def mean_loss_grad(objective, vae, x, calls: int, reps: int, *args):
    """Mean and standard error (over ``calls`` groups of ``reps`` draws) of the gradient of the
    B-point loss, and of the loss itself."""
    x_rep = x.repeat(reps, 1)  # (reps * B, D)
    grads, losses = [], []
    for _ in range(calls):
        losses.append(objective.loss_and_grads(vae.model, vae.guide, x_rep, *args) / reps)
        grads.append(flat_grads(vae) / reps)
    g = torch.stack(grads)  # (calls, P)
    v = torch.tensor(losses, dtype=torch.float64)
    return g.mean(0), g.std(0) / calls**0.5, float(v.mean()), float(v.std() / calls**0.5)


def reference_grad(loss_fn, vae, calls: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and standard error of the gradient of ``loss_fn()`` over ``calls`` evaluations."""
    grads = []
    for _ in range(calls):
        loss_fn().backward()
        grads.append(flat_grads(vae))
    g = torch.stack(grads)
    se = g.std(0) / calls**0.5 if calls > 1 else torch.zeros_like(g[0])
    return g.mean(0), se


def assert_close_in_se(a, se_a, b, se_b, z: float = 5.0, atol: float = 1e-9):
    """Every coordinate within ``z`` joint standard errors (+ atol)."""
    tol = z * (se_a.pow(2) + se_b.pow(2)).sqrt() + atol
    err = (a - b).abs()
    assert bool((err <= tol).all()), f"max err/tol {float((err / tol).max()):.2f}\n{a}\n{b}"


# --------------------------------------------------------------------------------------------
# registry


def test_every_objective_is_registered():
    assert {"trace", "mean_field", "renyi", "iwae", "iwae_dreg", "stl"} <= set(OBJECTIVES.names())


# --------------------------------------------------------------------------------------------
# bounds against the closed form


def test_elbo_le_iwae_k_le_log_px_and_increasing_in_k(shifted_ppca):
    """ELBO ≤ IWAE_1 ≤ IWAE_2 ≤ IWAE_5 ≤ IWAE_20 ≤ IWAE_100 ≤ log p(x), for each of the 10 points
    and on average. Each IWAE_K is the mean of R = 2000 independent draws per point; tolerance:
    3 standard errors of the draws (paired differences for consecutive K are not needed: each
    step up in K gains ≥ 8 se on the average here)."""
    vae, W, b, x = shifted_ppca
    truth = exact_log_px(x, W, b, SIGMA)  # (10,)
    elbo = closed_form_elbo(vae, x).detach()  # (10,)
    R = 2000
    means, ses = [], []
    with torch.no_grad():
        for K in (1, 2, 5, 20, 100):
            p = IWAE(K).particles(vae.model, vae.guide, x.repeat(R, 1))
            per_point = iwae_bound(p.log_w).reshape(R, -1)  # (R, 10)
            means.append(per_point.mean(0))
            ses.append(per_point.std(0) / R**0.5)
    # IWAE_1 is an unbiased estimate of the ELBO
    assert bool(((means[0] - elbo).abs() <= 4 * ses[0] + 1e-9).all())
    for m, se in zip(means, ses):
        assert bool((m <= truth + 3 * se).all()), (m, truth)
    avg = [float(m.mean()) for m in means]
    avg_se = [float(se.pow(2).mean().sqrt() / 10**0.5) for se in ses]
    for k in range(len(avg) - 1):
        assert avg[k + 1] - avg[k] > 3 * (avg_se[k] ** 2 + avg_se[k + 1] ** 2) ** 0.5, avg
    assert float(elbo.mean()) < avg[1] < avg[-1] < float(truth.mean())
    # the gap to log p(x) closes: KL(q‖p) ≈ 0.3 nats at K=1, < 0.02 at K=100
    assert float((truth - elbo).mean()) > 0.1
    assert float(truth.mean()) - avg[-1] < 0.02


def test_at_the_exact_posterior_every_objective_equals_log_px():
    """q = p(z|x): each weight is p(x), so every bound's value is log p(x) summed over the batch,
    draw by draw (float64, atol 1e-9). (Not mean_field: its analytic KL and sampled likelihood
    term are separately random.)"""
    vae, W, b = make_ppca(D=6, d=2, sigma=SIGMA, seed=0)
    x = sample_ppca(10, W, b, SIGMA, seed=1)
    truth = float(exact_log_px(x, W, b, SIGMA).sum())
    for objective in (Trace_ELBO(), IWAE(7), IWAEDReG(7), STL(3), RenyiBound(0.5, 7),
                      RenyiBound(-1.0, 7)):
        assert -objective.loss(vae.model, vae.guide, x) == pytest.approx(truth, abs=1e-9)
        loss = objective.loss_and_grads(vae.model, vae.guide, x)
        assert -loss == pytest.approx(truth, abs=1e-9)
        flat_grads(vae)


# --------------------------------------------------------------------------------------------
# exact equivalences under one seed


def grads_under_seed(objective, vae, x, seed=5):
    pyro.set_rng_seed(seed)
    loss = objective.loss_and_grads(vae.model, vae.guide, x)
    return loss, flat_grads(vae)


def test_iwae_with_one_particle_is_the_elbo_under_one_seed(shifted_ppca):
    """K = 1, same random numbers (float64, atol 1e-10): IWAE and every Rényi α give
    Trace_ELBO's value and gradient; DReG gives STL's (w̃ = 1: only the path term is left), whose
    value and decoder gradient are Trace_ELBO's and whose encoder gradient is not (the score
    term is gone)."""
    vae, W, b, x = shifted_ppca
    ref_loss, ref_grad = grads_under_seed(Trace_ELBO(), vae, x)
    for objective in (IWAE(1), RenyiBound(0.5, 1), RenyiBound(3.0, 1), STL(1), IWAEDReG(1)):
        loss, grad = grads_under_seed(objective, vae, x)
        assert loss == pytest.approx(ref_loss, abs=1e-10)
        if isinstance(objective, (STL, IWAEDReG)):
            _, stl_grad = grads_under_seed(STL(1), vae, x)
            assert torch.allclose(grad, stl_grad, atol=1e-10, rtol=0)
            n_enc = sum(p.numel() for p in vae.parameter_groups()["encoder"])
            assert torch.allclose(grad[n_enc:], ref_grad[n_enc:], atol=1e-10, rtol=0)
            assert not torch.allclose(grad[:n_enc], ref_grad[:n_enc], atol=1e-3)
        else:
            assert torch.allclose(grad, ref_grad, atol=1e-10, rtol=0), type(objective).__name__


def test_renyi_tends_to_iwae_as_alpha_tends_to_zero(shifted_ppca):
    """Same seed, K = 10: α = 0 is IWAE exactly (atol 1e-12); α = 1e-6 within 1e-4 nats and
    1e-4 (relative) in gradient; α = 1 − 1e-6 is the 10-draw mean of log w, i.e. STL's value."""
    vae, W, b, x = shifted_ppca
    K = 10
    iwae_loss, iwae_grad = grads_under_seed(IWAE(K), vae, x)
    loss0, grad0 = grads_under_seed(RenyiBound(0.0, K), vae, x)
    assert loss0 == pytest.approx(iwae_loss, abs=1e-12)
    assert torch.allclose(grad0, iwae_grad, atol=1e-12, rtol=0)
    loss_eps, grad_eps = grads_under_seed(RenyiBound(1e-6, K), vae, x)
    assert loss_eps == pytest.approx(iwae_loss, abs=1e-4)
    assert float((grad_eps - iwae_grad).norm() / iwae_grad.norm()) < 1e-4
    loss_one, _ = grads_under_seed(RenyiBound(1.0 - 1e-6, K), vae, x)
    stl_loss, _ = grads_under_seed(STL(K), vae, x)
    assert loss_one == pytest.approx(stl_loss, abs=1e-3)


def test_dreg_has_iwae_value_and_loss_equals_loss_and_grads(shifted_ppca):
    """Under one seed DReG's value is IWAE's (atol 1e-12), its decoder gradient is IWAE's (the
    estimators differ only for the encoder), and ``loss`` gives the value of ``loss_and_grads``."""
    vae, W, b, x = shifted_ppca
    K = 10
    pyro.set_rng_seed(3)
    iwae_loss = IWAE(K).loss_and_grads(vae.model, vae.guide, x)
    iwae_dec = flat_grads(vae, ("decoder",))
    pyro.set_rng_seed(3)
    dreg_loss = IWAEDReG(K).loss_and_grads(vae.model, vae.guide, x)
    dreg_dec = flat_grads(vae, ("decoder",))
    assert dreg_loss == pytest.approx(iwae_loss, abs=1e-12)
    assert torch.allclose(dreg_dec, iwae_dec, atol=1e-10, rtol=0)
    for objective in (IWAE(K), IWAEDReG(K), STL(K), RenyiBound(0.5, K), MeanFieldELBO()):
        pyro.set_rng_seed(4)
        a = objective.loss(vae.model, vae.guide, x)
        pyro.set_rng_seed(4)
        c = objective.loss_and_grads(vae.model, vae.guide, x)
        flat_grads(vae)
        assert a == pytest.approx(c, abs=1e-10), type(objective).__name__


def test_differentiable_loss_matches_loss_and_grads(shifted_ppca):
    """``differentiable_loss(...).backward()`` gives the gradient of ``loss_and_grads`` (seeded)."""
    vae, W, b, x = shifted_ppca
    for objective in (IWAE(4), IWAEDReG(4), STL(2), RenyiBound(0.5, 4)):
        _, g_ref = grads_under_seed(objective, vae, x)
        pyro.set_rng_seed(5)
        objective.differentiable_loss(vae.model, vae.guide, x).backward()
        assert torch.allclose(flat_grads(vae), g_ref, atol=1e-12, rtol=0)


# --------------------------------------------------------------------------------------------
# gradients in expectation


def test_elbo_estimators_are_unbiased_for_the_closed_form_gradient(shifted_ppca):
    """trace, mean_field and stl: mean gradient over 20 calls × 200 draws = 4000 draws equals the
    autograd gradient of the closed-form ELBO, every coordinate within 5 standard errors (46
    coordinates: encoder 28, decoder 18), and the mean loss the closed-form −ELBO within 4 se."""
    vae, W, b, x = shifted_ppca
    ref_value = -float(closed_form_elbo(vae, x).sum().detach())
    ref_grad, ref_se = reference_grad(lambda: -closed_form_elbo(vae, x).sum(), vae)
    for objective in (Trace_ELBO(), MeanFieldELBO(), STL(1)):
        g, se, v, v_se = mean_loss_grad(objective, vae, x, calls=20, reps=200)
        assert abs(v - ref_value) <= 4 * v_se + 1e-9, (type(objective).__name__, v, ref_value)
        assert_close_in_se(g, se, ref_grad, ref_se)
        # and the test has power: the estimate is within 5% of the gradient's norm
        assert float((g - ref_grad).norm() / ref_grad.norm()) < 0.05


def test_beta_weights_the_kl(shifted_ppca):
    """β = 0.5 passed to model and guide (as the loop does): trace, mean_field and stl estimate
    E_q log p(x|z) − β KL and its gradient (20 calls × 200 draws; value within 4 se, gradient
    coordinates within 5 se of the closed form's autograd gradient)."""
    vae, W, b, x = shifted_ppca
    beta = 0.5
    ref_value = -float(closed_form_elbo(vae, x, beta).sum().detach())
    ref_grad, ref_se = reference_grad(lambda: -closed_form_elbo(vae, x, beta).sum(), vae)
    assert abs(ref_value + float(closed_form_elbo(vae, x).sum().detach())) > 1.0  # β matters
    for objective in (Trace_ELBO(), MeanFieldELBO(), STL(1)):
        g, se, v, v_se = mean_loss_grad(objective, vae, x, 20, 200, beta)
        assert abs(v - ref_value) <= 4 * v_se + 1e-9, (type(objective).__name__, v, ref_value)
        assert_close_in_se(g, se, ref_grad, ref_se)


@pytest.mark.parametrize("alpha", [0.0, 0.5])
def test_iw_estimators_are_unbiased_for_the_bound_gradient(shifted_ppca, alpha):
    """K = 5: the mean gradient of ``iwae``/``iwae_dreg`` (α = 0) or ``renyi`` (α = 0.5) over
    20 calls × 200 draws equals a hand-written torch estimate of the bound's gradient (10 calls
    × 2000 draws), every coordinate within 5 joint standard errors, and within 5% in norm; DReG
    agrees with the same reference though its encoder estimator is a different one."""
    vae, W, b, x = shifted_ppca
    K = 5
    ref, ref_se = reference_grad(lambda: -torch_bound(vae, x, K, 2000, alpha), vae, calls=10)
    objectives = [IWAE(K), IWAEDReG(K)] if alpha == 0.0 else [RenyiBound(alpha, K)]
    for objective in objectives:
        g, se, _, _ = mean_loss_grad(objective, vae, x, calls=20, reps=200)
        assert_close_in_se(g, se, ref, ref_se)
        assert float((g - ref).norm() / ref.norm()) < 0.05


def test_dreg_and_stl_encoder_gradients_vanish_at_the_exact_posterior():
    """At q = p(z|x) the STL (K = 1) and DReG (K = 5) encoder gradients are exactly zero in every
    one of 5 draws (|g| < 1e-9, float64), so their variance is zero; the IWAE and Trace_ELBO
    encoder gradients are not (spread > 1e-3 over the same draws)."""
    vae, W, b = make_ppca(D=6, d=2, sigma=SIGMA, seed=0)
    x = sample_ppca(10, W, b, SIGMA, seed=1)
    for objective, zero in ((STL(1), True), (IWAEDReG(5), True), (IWAE(5), False),
                            (Trace_ELBO(), False)):
        draws = []
        for _ in range(5):
            objective.loss_and_grads(vae.model, vae.guide, x)
            draws.append(flat_grads(vae, ("encoder",)))
        g = torch.stack(draws)  # (5, 28)
        if zero:
            assert float(g.abs().max()) < 1e-9, type(objective).__name__
        else:
            assert float(g.std(0).max()) > 1e-3, type(objective).__name__


def test_mean_field_and_trace_agree_in_expectation(shifted_ppca):
    """Analytic KL (mean_field) vs Monte Carlo KL (trace) on PPCA, 20 calls × 200 draws each:
    values within 4 joint standard errors, gradients coordinatewise within 5 joint standard
    errors (separate tolerances)."""
    vae, W, b, x = shifted_ppca
    g_t, se_t, v_t, vse_t = mean_loss_grad(Trace_ELBO(), vae, x, calls=20, reps=200)
    g_m, se_m, v_m, vse_m = mean_loss_grad(MeanFieldELBO(), vae, x, calls=20, reps=200)
    assert abs(v_t - v_m) <= 4 * (vse_t**2 + vse_m**2) ** 0.5
    assert_close_in_se(g_t, se_t, g_m, se_m)


def test_mean_field_falls_back_to_trace_when_no_kl_is_registered():
    """With a Student-t prior there is no analytic KL(Normal ‖ StudentT): mean_field is then the
    same Monte Carlo estimator as trace, draw for draw (value and gradient, atol 1e-10)."""
    cfg = ppca_config(6, 2, SIGMA, ["model.prior=student_t", "model.hidden_sizes=[8]"])
    vae = build_vae(cfg, 6).double()
    x = torch.randn(10, 6, dtype=torch.float64)
    l_t, g_t = grads_under_seed(Trace_ELBO(), vae, x)
    l_m, g_m = grads_under_seed(MeanFieldELBO(), vae, x)
    assert l_m == pytest.approx(l_t, abs=1e-10)
    assert torch.allclose(g_m, g_t, atol=1e-10, rtol=0)


def test_mean_field_jit_caches_its_compiled_loss(shifted_ppca):
    """The fixed JIT objective compiles once per argument count (β = 1 is dropped, β ≠ 1 becomes
    a tensor) and then gives the non-JIT value and gradient under the same seed (atol 1e-8)."""
    vae, W, b, x = shifted_ppca
    jit = CachedJitTraceMeanField_ELBO(max_plate_nesting=1, ignore_jit_warnings=True)
    plain = MeanFieldELBO(max_plate_nesting=1)
    for beta in (1.0, 0.5):  # compile
        jit.loss_and_grads(vae.model, vae.guide, x, beta, None)
        flat_grads(vae)
    for beta in (1.0, 0.5, 0.25, 1.0):
        pyro.set_rng_seed(7)
        loss_j = jit.loss_and_grads(vae.model, vae.guide, x, beta, None)
        g_j = flat_grads(vae)
        pyro.set_rng_seed(7)
        loss_p = plain.loss_and_grads(vae.model, vae.guide, x, beta, None)
        g_p = flat_grads(vae)
        assert loss_j == pytest.approx(loss_p, abs=1e-8)
        assert torch.allclose(g_j, g_p, atol=1e-8)
    compiled = list(jit._compiled_losses.values())
    assert len(compiled) == 1
    # (x,) for β = 1 and (x, β) for β = 0.5: two argument counts, each traced once
    assert len(compiled[0].compiled) == 2


# --------------------------------------------------------------------------------------------
# per data point with a site outside the data plate

SIG_X = 0.7
V = 1.0 + SIG_X**2  # Var(x_n | μ) once z_n is integrated out


def global_model(x):
    """μ ~ N(0, 1) shared by the batch; z_n ~ N(0, 1); x_n ~ N(μ + z_n, 0.7²)."""
    mu = pyro.sample("mu", dist.Normal(x.new_zeros(()), 1.0))
    with pyro.plate("data", x.shape[0], dim=-1):
        z = pyro.sample("z", dist.Normal(x.new_zeros(()), 1.0))
        pyro.sample("x", dist.Normal(mu + z, SIG_X), obs=x)


def make_global_guide(x):
    """q(μ) = the exact posterior of μ; q(z_n | x_n) = p(z_n | x_n, μ = E[μ | x])."""
    B = x.shape[0]
    post_var = 1.0 / (1.0 + B / V)
    post_mean = post_var * x.sum() / V

    def guide(x):
        pyro.sample("mu", dist.Normal(post_mean, math.sqrt(post_var)))
        with pyro.plate("data", x.shape[0], dim=-1):
            pyro.sample("z", dist.Normal((x - post_mean) / V, math.sqrt(SIG_X**2 / V)))

    return guide, post_mean, post_var


@pytest.fixture
def global_data():
    g = torch.Generator().manual_seed(0)
    B = 20
    x = 1.0 + V**0.5 * torch.randn(B, generator=g, dtype=torch.float64)
    cov = torch.ones(B, B, dtype=torch.float64) + V * torch.eye(B, dtype=torch.float64)
    exact = torch.distributions.MultivariateNormal(torch.zeros(B, dtype=x.dtype), cov)
    return x, float(exact.log_prob(x))


def test_iwae_stays_per_point_with_a_global_site(global_data):
    """The bound equals a hand computation from the drawn values: one μ shared by all particles
    and points, per-point logsumexp over the K = 8 draws of z_n, plus log p(μ) − log q(μ) once."""
    x, _ = global_data
    guide, m, v = make_global_guide(x)
    objective = IWAE(8)
    objective.loss(global_model, guide, x)  # first call: finds the global site
    p = objective.particles(global_model, guide, x)
    mu = p.guide_trace.nodes["mu"]["value"]  # (8, 1): one draw, broadcast over the particles
    z = p.guide_trace.nodes["z"]["value"]  # (8, 20)
    assert mu.shape == (8, 1) and bool((mu == mu[0]).all())
    assert z.shape == (8, 20) and float(z.std(0).min()) > 0
    mu = mu[0, 0]
    normal = torch.distributions.Normal
    log_w = (
        normal(mu + z, SIG_X).log_prob(x)
        + normal(0.0, 1.0).log_prob(z)
        - normal((x - m) / V, math.sqrt(SIG_X**2 / V)).log_prob(z)
    )  # (8, 20), by hand
    g = normal(0.0, 1.0).log_prob(mu) - normal(m, math.sqrt(v)).log_prob(mu)
    by_hand = float((torch.logsumexp(log_w, 0) - math.log(8)).sum() + g)
    _, bound = objective.surrogate_and_bound(p)
    assert float(bound) == pytest.approx(by_hand, abs=1e-10)
    # the first call (which found the global) and later calls are the same estimator: the answer
    # cached for this guide is "has a global site"; a guide without one is cached as False
    assert objective._has_globals == {fn_key(guide): True}

    def local_model(x):  # the model at μ = 0: every site in the data plate
        with pyro.plate("data", x.shape[0], dim=-1):
            z = pyro.sample("z", dist.Normal(x.new_zeros(()), 1.0))
            pyro.sample("x", dist.Normal(z, SIG_X), obs=x)

    def local_guide(x):
        with pyro.plate("data", x.shape[0], dim=-1):
            pyro.sample("z", dist.Normal(x / V, math.sqrt(SIG_X**2 / V)))

    objective.loss(local_model, local_guide, x)
    assert objective._has_globals == {fn_key(guide): True, fn_key(local_guide): False}


def test_iwae_with_a_global_site_is_a_bound_of_the_exact_marginal(global_data):
    """K = 100, 200 draws: the mean bound is within [log p(X) − 0.05, log p(X) + 3 se] (exact
    log p(X) in closed form: X ~ N(0, 11ᵀ + V I)). Giving each particle its own μ instead (one
    logsumexp per point over (μ_k, z_kn)) overshoots log p(X) by > 0.2 nats: not a bound."""
    x, exact = global_data
    guide, _, _ = make_global_guide(x)
    K, R = 100, 200
    objective = IWAE(K)
    ours, particlewise = [], []
    with torch.no_grad():
        for _ in range(R):
            ours.append(-objective.loss(global_model, guide, x))
            lw = log_weights(global_model, guide, K, x)
            lse = torch.logsumexp(lw.local, 0) - math.log(K)
            particlewise.append(float(lse.sum() + lw.global_.mean()))
    ours_t, pw = torch.tensor(ours), torch.tensor(particlewise)
    se = float(ours_t.std() / R**0.5)
    assert exact - 0.05 < float(ours_t.mean()) <= exact + 3 * se
    assert float(pw.mean()) > exact + 0.2


def test_dreg_and_stl_with_a_global_site_share_it(global_data):
    """With a learnable shift of q(μ): DReG's value is IWAE's and Rényi α = 0.5's is its own
    per-point bound under the same seed (atol 1e-10), STL's is the particle mean of the same
    shared-μ weights, and each gives a finite gradient to the global site's parameter."""
    x, exact = global_data
    _, m, v = make_global_guide(x)
    shift = torch.zeros((), dtype=torch.float64, requires_grad=True)

    def guide(x):
        pyro.param("shift", shift)
        pyro.sample("mu", dist.Normal(m + shift, math.sqrt(v)))
        with pyro.plate("data", x.shape[0], dim=-1):
            pyro.sample("z", dist.Normal((x - m) / V, math.sqrt(SIG_X**2 / V)))

    iwae = IWAE(4)
    iwae.loss(global_model, guide, x)  # first calls find the global site
    for objective in (IWAEDReG(4), STL(2), RenyiBound(0.5, 4)):
        objective.loss(global_model, guide, x)
        pyro.set_rng_seed(11)
        loss = objective.loss_and_grads(global_model, guide, x)
        assert math.isfinite(float(shift.grad)) and float(shift.grad) != 0.0
        shift.grad = None
        pyro.set_rng_seed(11)
        p = objective.particles(global_model, guide, x)
        if isinstance(objective, IWAEDReG):
            pyro.set_rng_seed(11)
            assert loss == pytest.approx(iwae.loss(global_model, guide, x), abs=1e-10)
        elif isinstance(objective, STL):
            by_hand = float((p.log_w.mean(0).sum() + p.global_).detach())
            assert loss == pytest.approx(-by_hand, abs=1e-10)
        else:
            by_hand = float((renyi_bound(p.log_w, 0.5).sum() + p.global_).detach())
            assert loss == pytest.approx(-by_hand, abs=1e-10)
        assert abs(-loss - exact) < 5.0


# --------------------------------------------------------------------------------------------
# refusals and the config path


def categorical_model(x):
    with pyro.plate("data", x.shape[0], dim=-1):
        z = pyro.sample("z", dist.Categorical(logits=x.new_zeros(3)))
        pyro.sample("x", dist.Normal(z.to(x.dtype), 1.0), obs=x)


def categorical_guide(x):
    logits = pyro.param("logits", torch.zeros(x.shape[0], 3))
    with pyro.plate("data", x.shape[0], dim=-1):
        pyro.sample("z", dist.Categorical(logits=logits))


@pytest.mark.parametrize(
    "objective", [MeanFieldELBO(), IWAE(3), IWAEDReG(3), STL(1), RenyiBound(0.5, 3)],
    ids=["mean_field", "iwae", "iwae_dreg", "stl", "renyi"],
)
def test_non_reparameterized_guide_is_refused(objective):
    """A Categorical guide site has no rsample: a ConfigError naming the site and the way out."""
    x = torch.randn(4)
    with pytest.raises(ConfigError, match="reparameterized guide.*'z'.*'trace'"):
        objective.loss(categorical_model, categorical_guide, x)
    with pytest.raises(ConfigError, match="reparameterized"):
        objective.loss_and_grads(categorical_model, categorical_guide, x)


def test_pyro_trace_mean_field_would_not_refuse_it_without_validation():
    """Why the check is ours: Pyro's own estimator only checks with validation on."""
    pyro.enable_validation(False)
    x = torch.randn(4)
    assert math.isfinite(TraceMeanField_ELBO().loss(categorical_model, categorical_guide, x))


@pytest.mark.parametrize(
    "overrides, match",
    [
        (["objective.name=renyi", "objective.alpha=1.0"], "α ≠ 1"),
        (["objective.name=iwae", "objective.beta=0.5"], "objective.beta = 0.5"),
        (["objective.name=iwae_dreg", "objective.beta=2.0"], "objective.beta"),
        (["objective.name=iwae_dreg", "objective.jit=true"], "no JIT"),
        (["objective.name=stl", "objective.jit=true"], "no JIT"),
    ],
)
def test_config_refusals(overrides, match):
    cfg = load_config(None, ["data.name=synthetic", *overrides])
    vae = build_vae(cfg, 8)
    with pytest.raises(ConfigError, match=match):
        build_objective(cfg.objective, vae)


def test_builder_refuses_a_non_reparameterized_family():
    cfg = load_config(None, ["data.name=synthetic", "model.latent_dim=2", "model.hidden_sizes=[4]"])
    vae = build_vae(cfg, 8)
    vae.inference.posterior.reparameterized = False
    for name in ("mean_field", "iwae", "iwae_dreg", "renyi", "stl"):
        with pytest.raises(ConfigError, match="reparameterized"):
            build_objective(ObjectiveConfig(name=name, num_particles=2, alpha=0.5), vae)


TRAINABLE = [
    ["objective.name=trace"],
    ["objective.name=mean_field"],
    ["objective.name=mean_field", "objective.jit=true"],
    ["objective.name=mean_field", "objective.beta=0.5", "train.warmup_epochs=1"],
    ["objective.name=iwae", "objective.num_particles=3"],
    ["objective.name=iwae", "objective.num_particles=3", "train.warmup_epochs=1"],
    ["objective.name=iwae_dreg", "objective.num_particles=3"],
    ["objective.name=iwae_dreg", "objective.num_particles=3", "guide.family=student_t"],
    ["objective.name=renyi", "objective.num_particles=3", "objective.alpha=0.5"],
    ["objective.name=stl"],
    ["objective.name=stl", "objective.num_particles=2", "model.prior=vamp"],
]


def _ids(overrides: list[str]) -> str:
    return ",".join(s.split("=")[1] for s in overrides)


@pytest.mark.parametrize("overrides", TRAINABLE, ids=_ids)
def test_every_objective_trains_through_the_config_path(overrides, tiny_cfg_overrides, tmp_path):
    """Two short epochs on synthetic data through ``train`` (validation on): finite losses."""
    cfg = load_config(None, [*tiny_cfg_overrides, "train.max_steps_per_epoch=3", *overrides])
    result = train(cfg, tmp_path / "run")
    assert len(result.history) == 2
    assert all(math.isfinite(r["train_loss"]) and math.isfinite(r["valid_elbo"])
               for r in result.history)


DISCRETE_FAMILIES = {
    "relaxed": '{name = "relaxed", kl = "relaxed"}',
    "relaxed_catkl": '{name = "relaxed", kl = "categorical"}',
    "straight_through": '{name = "relaxed", kl = "categorical", hard = true}',
    "categorical": '"categorical"',
}
# objective → the discrete families it must train with (all others: a ConfigError)
DISCRETE_OK = {
    "trace": {"relaxed", "relaxed_catkl", "straight_through", "categorical"},
    "mean_field": {"relaxed", "relaxed_catkl", "straight_through"},
    "iwae": {"relaxed"},
    "iwae_dreg": {"relaxed"},
    "renyi": {"relaxed"},
    "stl": {"relaxed"},
}


@pytest.mark.parametrize("family", list(DISCRETE_FAMILIES))
def test_discrete_latents_train_or_are_refused(family, tiny_cfg_overrides, tmp_path):
    """Categorical latents (N=2, K=3): an objective trains (finite losses) where it applies and
    is refused with a ConfigError where it does not: the importance-weighted and STL objectives
    need a relaxed guide without a guide factor (the categorical-KL convention adds one);
    mean_field needs a reparameterized guide (not the unrelaxed categorical)."""
    base = [
        *tiny_cfg_overrides,
        'model.latent={name = "categorical", num_variables = 2, num_classes = 3}',
        "model.prior=categorical",
        f"guide.family={DISCRETE_FAMILIES[family]}",
        "train.epochs=1",
        "train.max_steps_per_epoch=2",
    ]
    for name, ok in DISCRETE_OK.items():
        cfg = load_config(None, [*base, f"objective.name={name}", "objective.num_particles=2",
                                 "objective.alpha=0.5"])
        out = tmp_path / name
        if family in ok:
            result = train(cfg, out)
            assert math.isfinite(result.history[-1]["train_loss"]), (family, name)
        else:
            with pytest.raises(ConfigError, match=name):
                train(cfg, out)


def test_mean_field_counts_a_guide_factor_like_trace():
    """The categorical-KL convention puts +KL in a guide factor: mean_field subtracts it exactly
    as trace does (same seed, β = 1 and 0.5: equal values and encoder gradients, atol 1e-5,
    float32)."""
    cfg = load_config(None, [
        "data.name=synthetic", "model.hidden_sizes=[8]", "model.prior=categorical",
        'model.latent={name = "categorical", num_variables = 2, num_classes = 3}',
        'guide.family={name = "relaxed", kl = "categorical"}',
    ])
    vae = build_vae(cfg, 10)
    x = torch.rand(6, 10).round()
    tau = vae.latent.temperature_at(0)
    for beta in (1.0, 0.5):
        out = []
        for name in ("trace", "mean_field"):
            objective = build_objective(ObjectiveConfig(name=name), vae)
            pyro.set_rng_seed(1)
            loss = objective.loss_and_grads(vae.model, vae.guide, x, beta, tau)
            out.append((loss, flat_grads(vae, ("encoder",))))
        assert out[0][0] == pytest.approx(out[1][0], abs=1e-5)
        assert torch.allclose(out[0][1], out[1][1], atol=1e-5)
