"""Importance-sampled log p(x) against the closed form of probabilistic PCA."""

import math

import pyro
import pyro.distributions as dist
import pytest
import torch

from ground_truth import TableNormal, set_exact_posterior
from vaelab.inference.importance import log_weights
from vaelab.inference.marginal import estimate_marginal, importance_sample_batch

SIGMA = 0.5


def test_exact_posterior_gives_constant_weights(ppca):
    """At q = p(z|x) every weight equals p(x): ELBO = IS = log p(x) to float64 precision."""
    vae, W, b, x, truth = ppca
    lw = log_weights(vae.model, vae.guide, 64, x).local  # (64, 20)
    assert torch.allclose(lw, truth.expand_as(lw), atol=1e-9, rtol=0)
    est = estimate_marginal(vae.model, vae.guide, x, num_samples=64, batch_size=7)
    assert torch.allclose(est.log_px, truth, atol=1e-9, rtol=0)
    assert torch.allclose(est.elbo, truth, atol=1e-9, rtol=0)
    assert torch.allclose(est.ess, torch.full_like(est.ess, 64.0), rtol=1e-9)


def test_is_converges_to_closed_form_with_imperfect_guide(ppca):
    """K=5000 draws from a shifted, 1.5x-wide guide: every point within 4 MC standard errors
    (+1e-3) of the truth; the mean over 20 points within 0.02 nats; ELBO strictly below."""
    vae, W, b, x, truth = ppca
    set_exact_posterior(vae, W, b, SIGMA, loc_shift=0.3, scale_factor=1.5)
    est = estimate_marginal(vae.model, vae.guide, x, num_samples=5000, chunk_size=512)
    err = (est.log_px - truth).abs()
    assert bool((err <= 4 * est.mc_stderr + 1e-3).all()), (err, est.mc_stderr)
    assert abs(float((est.log_px - truth).mean())) < 0.02
    gap = truth - est.elbo  # KL(q || p(z|x)) per point, clearly positive for this guide
    assert bool((gap > 0.05).all()), gap


def test_is_improves_on_the_elbo_and_error_shrinks_with_K(ppca):
    """|log p̂ − log p| averaged over 20 points falls from K=10 to K=5000 (seeded)."""
    vae, W, b, x, truth = ppca
    set_exact_posterior(vae, W, b, SIGMA, loc_shift=0.5, scale_factor=1.5)
    errs = []
    for K in (10, 5000):
        pyro.set_rng_seed(3)
        est = estimate_marginal(vae.model, vae.guide, x, num_samples=K)
        errs.append(float((truth - est.log_px).abs().mean()))
        assert float(est.elbo.mean()) < float(truth.mean())
    assert errs[1] < errs[0] / 5, errs


def test_chunked_equals_unchunked_with_the_same_draws(ppca):
    vae, W, b, x, truth = ppca
    set_exact_posterior(vae, W, b, SIGMA, loc_shift=0.4, scale_factor=2.0)
    K = 300
    TableNormal.table = torch.randn(K, x.shape[0], 2, dtype=torch.float64)

    def guide(x, *args):
        pyro.module("encoder", vae.inference.encoder)
        loc, scale = vae.inference.posterior.loc_scale(vae.inference.encoder(x))
        with pyro.plate("data", x.shape[0], dim=-1):
            pyro.sample("z", TableNormal(loc, scale).to_event(1))

    results = []
    for chunk in (K, 7, 64):
        TableNormal.pos = 0
        results.append(importance_sample_batch(vae.model, guide, x, K, chunk, keep_log_w=True))
    ref = results[0]
    ref_lse = torch.logsumexp(ref["log_w"], 0)
    assert torch.allclose(ref["lse_w"], ref_lse, atol=1e-12)
    for r in results[1:]:
        assert torch.allclose(r["log_w"], ref["log_w"], atol=1e-12, rtol=0)
        for key in ("lse_w", "lse_2w", "sum_log_w"):
            assert torch.allclose(r[key], ref[key], atol=1e-10, rtol=0), key


def test_batch_split_does_not_change_per_point_results(ppca):
    """At the exact posterior, results are deterministic: batch size 20 vs 3 agree exactly."""
    vae, W, b, x, truth = ppca
    a = estimate_marginal(vae.model, vae.guide, x, num_samples=16, batch_size=20)
    c = estimate_marginal(vae.model, vae.guide, x, num_samples=16, batch_size=3, chunk_size=5)
    assert torch.allclose(a.log_px, c.log_px, atol=1e-10)


def test_summary_fields(ppca):
    vae, W, b, x, truth = ppca
    s = estimate_marginal(vae.model, vae.guide, x, num_samples=8).summary()
    assert s["num_points"] == 20 and s["num_samples"] == 8
    assert s["log_likelihood"] == pytest.approx(float(truth.mean()), abs=1e-9)
    assert s["log_likelihood_stderr"] == pytest.approx(float(truth.std() / 20**0.5), rel=1e-6)


def test_sites_outside_the_data_plate_stay_out_of_the_per_point_sum():
    """A global site's log-ratio is returned separately, not added to each point."""
    x = torch.randn(5, 3)

    def model(x):
        s = pyro.sample("s", dist.LogNormal(0.0, 1.0))
        with pyro.plate("data", 5, dim=-1):
            z = pyro.sample("z", dist.Normal(0.0, 1.0))
            pyro.sample("x", dist.Normal(z[..., None], s[..., None]).to_event(1), obs=x)

    def guide(x):
        pyro.sample("s", dist.LogNormal(0.1, 0.5))
        with pyro.plate("data", 5, dim=-1):
            pyro.sample("z", dist.Normal(torch.zeros(5), 1.0))

    lw = log_weights(model, guide, 4, x)
    assert lw.local.shape == (4, 5) and lw.global_.shape == (4,)
    tr_g = lw.guide_trace
    s = tr_g.nodes["s"]["value"].reshape(4)
    expect_global = dist.LogNormal(0.0, 1.0).log_prob(s) - dist.LogNormal(0.1, 0.5).log_prob(s)
    assert torch.allclose(lw.global_, expect_global, atol=1e-6)


# ---- the bounds of the first m draws (issue 24 item 1) -----------------------------------------


def _small_categorical():
    """A categorical VAE of 2 variables × 3 classes (9 joint states, enumerable), relaxed guide,
    scored as the discrete model with one-hot samples (``eval_pair``), on 4 binary points."""
    from vaelab.resolve import resolve
    from vaelab.vae import build_vae

    torch.manual_seed(0)
    cfg = resolve({"model": {"latent": {"name": "categorical", "num_variables": 2,
                                        "num_classes": 3},
                             "prior": "categorical", "hidden_sizes": [8]},
                   "guide": {"family": {"name": "relaxed", "kl": "categorical"}}})
    vae = build_vae(cfg, 6)
    x = torch.rand(4, 6, generator=torch.Generator().manual_seed(1)).round()  # (4, 6)
    return vae, x


def test_the_first_m_draws_give_the_iw_bound_and_the_mean_elbo_of_those_draws():
    """By hand on the same draws (one seed): the m-sample IW bound is logsumexp of the first m
    log weights − log m, and the mean ELBO their mean; with m = K they are log p̂ and the ELBO
    of the whole pass (float64, to 1e-9)."""
    vae, x = _small_categorical()
    model, guide = vae.eval_pair()
    K, m = 50, 20
    pyro.set_rng_seed(7)
    log_w = importance_sample_batch(model, guide, x, K, 9, keep_log_w=True)["log_w"]  # (K, 4)
    pyro.set_rng_seed(7)
    est = estimate_marginal(model, guide, x, num_samples=K, chunk_size=9, curve_ks=[m, K])
    iw = torch.logsumexp(log_w[:m], 0) - math.log(m)  # (4,)
    got = est.first_draws(m)
    assert got["iw_bound"] == pytest.approx(float(iw.mean()), abs=1e-9)
    assert got["elbo"] == pytest.approx(float(log_w[:m].mean(0).mean()), abs=1e-9)
    assert got["iw_bound_stderr"] == pytest.approx(float(iw.std() / 2.0), abs=1e-9)  # √4
    whole = est.first_draws(K)
    assert whole["iw_bound"] == pytest.approx(float(est.log_px.mean()), abs=1e-9)
    assert whole["elbo"] == pytest.approx(float(est.elbo.mean()), abs=1e-9)
    # block by block, the same: concat keeps the first-m curve
    parts = [estimate_marginal(model, guide, x[i : i + 2], num_samples=K, curve_ks=[m, K])
             for i in (0, 2)]
    joined = type(est).concat(parts)
    assert joined.curve_elbo is not None and joined.curve_elbo.shape == (2, 4)
    with pytest.raises(ValueError, match="first 30 draws"):
        est.first_draws(30)


def test_the_first_m_bounds_against_enumeration():
    """Ground truth on the enumerable model (9 states): the mean ELBO over m = 4000 one-hot
    draws is within 4 standard errors (of the mean over the draws, per point, from the draws'
    own spread) of the enumerated ELBO, and the m-sample IW bound within 4 delta-method
    standard errors (+1e-6) of the exact log p(x)."""
    from vaelab.inference.exact import enumerated_elbo, exact_log_likelihood

    vae, x = _small_categorical()
    model, guide = vae.eval_pair()
    m = 4000
    pyro.set_rng_seed(3)
    log_w = importance_sample_batch(model, guide, x, m, 1000, keep_log_w=True)["log_w"]
    pyro.set_rng_seed(3)
    est = estimate_marginal(model, guide, x, num_samples=m, curve_ks=[m])
    with torch.no_grad():
        elbo, exact = enumerated_elbo(vae, x).double(), exact_log_likelihood(vae, x).double()
    se = log_w.std(0) / math.sqrt(m)  # (4,)
    assert torch.all((est.curve_elbo[0] - elbo).abs() < 4 * se + 1e-9), (est.curve_elbo, elbo)
    iw = est.curve_log_px[0]
    assert torch.all((iw - exact).abs() < 4 * est.mc_stderr + 1e-6), (iw, exact, est.mc_stderr)
