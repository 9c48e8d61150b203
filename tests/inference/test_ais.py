"""Annealed importance sampling and BDMC against the closed form of probabilistic PCA.

Model: tests/ground_truth.py (PPCA) with D=6, d=2, σ=0.5; 20 data points. Every statistical
assertion states T (steps), C (chains), L (leapfrog steps) and its tolerance; seeds are fixed."""

import json

import pyro
import pyro.distributions as dist
import pytest
import torch

from ground_truth import exact_log_px, exact_posterior, set_exact_posterior
from vaelab.inference.ais import LogJoint, ais, beta_schedule, estimate_marginal_ais, hmc_step
from vaelab.inference.bdmc import bdmc, simulate

SIGMA = 0.5


@pytest.mark.parametrize("kind", ["sigmoid", "linear"])
def test_beta_schedule_runs_from_0_to_1(kind):
    betas = beta_schedule(50, kind)
    assert betas.shape == (51,) and float(betas[0]) == 0.0 and float(betas[-1]) == 1.0
    assert bool((betas[1:] > betas[:-1]).all())
    with pytest.raises(ValueError, match="schedule"):
        beta_schedule(5, "cosine")


def test_pyro_log_joint_equals_the_closed_form_and_its_gradient(ppca):
    """log p(z), log p(x|z) and their z-gradients (−z and Wᵀ(x − Wz − b)/σ²) from the Pyro
    trace equal the formulas to 1e-10, for z (C=3, B=20, d=2)."""
    vae, W, b, x, truth = ppca
    lj = LogJoint(vae.model, vae.guide, (x,), {}, num_chains=3)
    z = torch.randn(3, 20, 2, dtype=torch.float64)
    t = lj(z)
    log_prior = dist.Normal(0.0, 1.0).log_prob(z).sum(-1)
    log_lik = dist.Normal(z @ W.T + b, SIGMA).log_prob(x).sum(-1)
    assert torch.allclose(t.log_f0, log_prior, atol=1e-10)
    assert torch.allclose(t.log_fT, log_prior + log_lik, atol=1e-10)
    grad_lik = ((x - z @ W.T - b) / SIGMA**2) @ W
    assert torch.allclose(t.grad_f0, -z, atol=1e-10)
    assert torch.allclose(t.grad_fT, -z + grad_lik, atol=1e-10)


def test_hmc_leaves_the_exact_posterior_invariant(ppca):
    """At β=1, 400 chains of 4 points started at exact posterior draws stay exact after 20
    transitions (L=5): mean within 5 standard errors (5 σ/√400) and variance within ±25 %."""
    vae, W, b, x, truth = ppca
    x = x[:4]
    A, c, scale = exact_posterior(W, b, SIGMA)
    mean = x @ A.T + c  # (4, 2)
    C = 400
    z = mean + scale * torch.randn(C, 4, 2, dtype=torch.float64)  # (C, 4, 2)
    lj = LogJoint(vae.model, vae.guide, (x,), {}, num_chains=C)
    terms = lj(z)
    eps = torch.full((4,), 0.3, dtype=torch.float64)
    accepted = []
    for _ in range(20):
        z, terms, acc = hmc_step(lj, z, terms, 1.0, eps, 5)
        accepted.append(float(acc.mean()))
    assert 0.3 < sum(accepted) / 20 < 1.0
    assert torch.allclose(z.mean(0), mean, atol=float(5 * scale.max() / C**0.5))
    ratio = z.var(0) / scale**2
    assert bool(((ratio > 0.75) & (ratio < 1.25)).all()), ratio


def test_ais_from_the_prior_converges_to_the_closed_form(ppca):
    """T=300, C=16, L=5: every point within 4 MC standard errors + 0.1 nats of log p(x), the
    mean over 20 points within 0.08 nats (measured spread over 8 seeds at T=200: ±0.045); step
    sizes adapted to a mean acceptance in (0.5, 0.95)."""
    vae, W, b, x, truth = ppca
    r = ais(vae.model, vae.guide, x, num_steps=300, num_chains=16, num_leapfrog=5)
    err = r.log_px - truth
    assert bool((err.abs() <= 4 * r.mc_stderr + 0.1).all()), (err, r.mc_stderr)
    assert abs(float(err.mean())) < 0.08
    assert 0.5 < float(r.acceptance.mean()) < 0.95
    assert r.log_w.shape == (16, 20) and r.z.shape == (16, 20, 2)


def test_ais_is_a_lower_bound_that_tightens_with_T(ppca):
    """Mean over 20 points of log p̂ − log p: below −0.2 at T=5, within 0.1 at T=200 (C=16,
    L=5; measured spread of the T=200 mean over 8 seeds: ±0.045)."""
    vae, W, b, x, truth = ppca
    short = ais(vae.model, vae.guide, x, num_steps=5, num_chains=16, num_leapfrog=5)
    long = ais(vae.model, vae.guide, x, num_steps=200, num_chains=16, num_leapfrog=5)
    gap_short = float((short.log_px - truth).mean())
    gap_long = float((long.log_px - truth).mean())
    assert gap_short < -0.2 and abs(gap_long) < 0.1, (gap_short, gap_long)


def test_ais_from_the_exact_posterior_is_exact(ppca):
    """With f_0 = q = p(z|x), log f_T − log f_0 = log p(x) at every z: each chain's weight is
    log p(x) to float64 precision, whatever the moves (T=20, C=4)."""
    vae, W, b, x, truth = ppca
    r = ais(vae.model, vae.guide, x, num_steps=20, num_chains=4, num_leapfrog=3, base="guide")
    assert torch.allclose(r.log_w, truth.expand_as(r.log_w), atol=1e-9, rtol=0)


def test_ais_from_a_poor_guide_converges(ppca):
    """Base = a shifted (0.5), too-narrow (0.5x) guide, T=200, C=16, L=5: the mean over 20
    points within 0.1 nats of the truth (measured ≤ 0.062 over 6 seeds), every point within 4
    standard errors + 0.1."""
    vae, W, b, x, truth = ppca
    set_exact_posterior(vae, W, b, SIGMA, loc_shift=0.5, scale_factor=0.5)
    r = ais(vae.model, vae.guide, x, num_steps=200, num_chains=16, num_leapfrog=5, base="guide")
    err = r.log_px - truth
    assert abs(float(err.mean())) < 0.1
    assert bool((err.abs() <= 4 * r.mc_stderr + 0.1).all()), (err, r.mc_stderr)


def test_estimate_marginal_ais_streams_batches(ppca):
    """Batches of 7 points, T=100, C=8, L=3: a MarginalEstimate with method 'ais' and C chains
    as samples, mean log p̂ within 0.4 nats of the truth (a structural test, measured −0.04 to
    −0.24 over 6 seeds; accuracy is tested above); the summary names the mean log weight, not
    an ELBO."""
    vae, W, b, x, truth = ppca
    est = estimate_marginal_ais(vae.model, vae.guide, x, num_steps=100, num_chains=8,
                                batch_size=7, num_leapfrog=3)
    assert est.method == "ais" and est.num_samples == 8 and est.log_px.shape == (20,)
    s = est.summary()
    assert "mean_log_w" in s and "elbo" not in s and s["num_points"] == 20
    assert abs(s["log_likelihood"] - float(truth.mean())) < 0.4
    assert 0.0 < est.extra["acceptance_mean"] <= 1.0


def test_ais_refuses_a_discrete_latent():
    def model(x):
        with pyro.plate("data", 3, dim=-1):
            z = pyro.sample("z", dist.Categorical(logits=torch.zeros(4)))
            pyro.sample("x", dist.Normal(z.double(), 1.0), obs=x)

    with pytest.raises(ValueError, match="continuous latent"):
        ais(model, None, torch.zeros(3, dtype=torch.float64), num_steps=3, num_chains=2)


# --- BDMC -----------------------------------------------------------------------------------


def test_simulated_latents_are_exact_posterior_draws(ppca):
    """simulate() returns z ~ p(z) and x ~ p(x|z): over N=4000, z has unit variance and the
    residual x − Wz − b has standard deviation σ, each within 5 %."""
    vae, W, b, x, truth = ppca
    xs, zs = simulate(vae.model, torch.zeros(4000, 6, dtype=torch.float64))
    assert xs.shape == (4000, 6) and zs.shape == (4000, 2)
    assert torch.allclose(zs.std(0), torch.ones(2, dtype=torch.float64), rtol=0.05)
    resid = xs - zs @ W.T - b
    assert torch.allclose(resid.std(0), torch.full((6,), SIGMA, dtype=torch.float64), rtol=0.05)


def test_bdmc_bounds_bracket_the_closed_form(ppca):
    """20 simulated points, T=200, C=8, L=5: mean lower bound ≤ mean log p(x) + 0.1 and mean
    upper bound ≥ mean log p(x) − 0.1 (0.1 ≈ 2.5 standard errors of the means); the gap shrinks
    3x from T=10 to T=200 and is below 0.2 nats at T=200."""
    vae, W, b, x, truth = ppca
    like = torch.zeros(20, 6, dtype=torch.float64)
    pyro.set_rng_seed(1)
    r = bdmc(vae.model, vae.guide, like, num_steps=200, num_chains=8, num_leapfrog=5)
    exact = exact_log_px(r.x, W, b, SIGMA)
    lo, up, ex = float(r.lower.mean()), float(r.upper.mean()), float(exact.mean())
    assert lo <= ex + 0.1 and up >= ex - 0.1, (lo, ex, up)
    pyro.set_rng_seed(1)
    short = bdmc(vae.model, vae.guide, like, num_steps=10, num_chains=8, num_leapfrog=5)
    assert float(short.gap.mean()) > 3 * float(r.gap.mean()) and float(r.gap.mean()) < 0.2
    assert float(short.lower.mean()) < ex < float(short.upper.mean())
    s = r.summary()
    assert s["gap"] == pytest.approx(up - lo) and s["num_points"] == 20


# --- the commands ---------------------------------------------------------------------------


def _train_tiny(tmp_path, overrides):
    from vaelab.resolve import load_config
    from vaelab.runs.train import train

    out = tmp_path / "run"
    train(load_config(None, [*overrides, "train.num_threads=1"]), out)
    return out


def test_evaluate_ais_and_bdmc_commands(tmp_path, tiny_cfg_overrides, capsys):
    from vaelab.cli import main

    run = _train_tiny(tmp_path, tiny_cfg_overrides)
    capsys.readouterr()  # training's epoch lines
    assert main(["evaluate", str(run), "--method", "ais", "--steps", "20", "--chains", "3",
                 "--leapfrog", "3", "--limit", "6", "--json"]) == 0
    m = json.loads(capsys.readouterr().out)
    assert m["method"] == "ais" and m["num_steps"] == 20 and m["num_chains"] == 3
    assert m["num_points"] == 6 and m["log_likelihood"] < 0
    assert main(["bdmc", str(run), "-n", "5", "--steps", "20", "--chains", "3",
                 "--leapfrog", "3", "-K", "50", "--json"]) == 0
    b = json.loads(capsys.readouterr().out)
    assert {"lower_bound", "upper_bound", "gap", "is_log_likelihood"} <= set(b)
    assert b["gap"] == pytest.approx(b["upper_bound"] - b["lower_bound"])
    assert main(["evaluate", str(run), "--method", "ais", "--curve", str(tmp_path / "c.png"),
                 "--limit", "2"]) == 2
