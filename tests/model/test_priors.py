"""Priors and likelihoods: every combination trains and evaluates; densities against reference
formulas; Monte Carlo KL against analytic KL; the linear-Gaussian closed form through the config
path; units of continuous and discrete likelihoods on 8-bit data.

Statistical assertions state their sample size and tolerance; every draw is seeded (conftest).
"""

import math

import numpy as np
import pyro
import pyro.distributions as dist
import pyro.poutine as poutine
import pytest
import torch
from pyro.infer import Trace_ELBO, TraceMeanField_ELBO
from scipy import stats
from torch.nn.functional import softplus

from ground_truth import sample_ppca
from vaelab.data import Preprocessor, bits_per_dim, load_dataset
from vaelab.guide.posteriors import FAMILIES
from vaelab.inference.importance import log_weights
from vaelab.inference.marginal import estimate_marginal
from vaelab.inference.objectives import build_objective
from vaelab.model.likelihoods import LEVELS, LIKELIHOODS
from vaelab.model.priors import ANALYTIC_KL, PRIORS, has_analytic_kl
from vaelab.registry import ConfigError
from vaelab.resolve import load_config
from vaelab.runs.run import Run, eval_config, evaluate
from vaelab.vae import build_vae

D = 12  # data dimension of the tiny problems
LATENT = 3

PRIOR_SPECS = {
    "standard_normal": "standard_normal",
    "normal": "normal",
    "laplace": "laplace",
    "student_t": "student_t",
    "mog": '{name = "mog", components = 3}',
    "vamp": '{name = "vamp", components = 3}',
    "flow": '{name = "flow", hidden_sizes = [8]}',
}
LIKELIHOOD_SPECS = {
    "bernoulli": "bernoulli",
    "continuous_bernoulli": "continuous_bernoulli",
    "normal": '{name = "normal", learn = "pixel"}',
    "laplace": '{name = "laplace", learn = "shared"}',
    "beta": "beta",
    "discretized_logistic": "discretized_logistic",
    "categorical": "categorical",
    "student_t": '{name = "student_t", learn = "feature", learn_df = true}',
    "poisson": "poisson",
    "negative_binomial": '{name = "negative_binomial", library_size = true}',
    "zero_inflated_negative_binomial": "zero_inflated_negative_binomial",
}
#: guide families of the Gaussian latent type (the discrete ones are tested in test_categorical)
GAUSSIAN_FAMILIES = ["normal", "student_t", "iaf"]
#: likelihoods that score the 8-bit levels themselves (the other grey-level ones: dequantized)
DISCRETE_8BIT = {"discretized_logistic", "categorical"}
COUNTS = {"poisson", "negative_binomial", "zero_inflated_negative_binomial"}


def test_every_component_is_covered():
    # every prior of the Gaussian latent type (discrete latents have their own, tested elsewhere)
    from vaelab.model.latents import GaussianLatent

    assert set(PRIOR_SPECS) == set(GaussianLatent.priors) <= set(PRIORS.names())
    assert set(GAUSSIAN_FAMILIES) == set(GaussianLatent.families) <= set(FAMILIES.names())
    assert set(LIKELIHOOD_SPECS) == set(LIKELIHOODS.names())


def tiny_cfg(prior="standard_normal", likelihood="bernoulli", *extra):
    return load_config(
        None,
        [
            "data.name=synthetic",
            f"model.latent_dim={LATENT}",
            "model.hidden_sizes=[8]",
            f"model.prior={PRIOR_SPECS.get(prior, prior)}",
            f"model.likelihood={LIKELIHOOD_SPECS.get(likelihood, likelihood)}",
            *extra,
        ],
    )


def grey_levels(n, dim=D, seed=0):
    """8-bit data k/255 with both edge levels present, ``(n, dim)``."""
    g = torch.Generator().manual_seed(seed)
    k = torch.randint(0, LEVELS, (n, dim), generator=g)
    k[0, 0], k[0, 1] = 0, LEVELS - 1
    return k.float() / (LEVELS - 1)


def dequantized(x, seed=1):
    g = torch.Generator().manual_seed(seed)
    return (torch.round(x * (LEVELS - 1)) + torch.rand(x.shape, generator=g)) / LEVELS


def data_for(likelihood, n=10):
    x = grey_levels(n)
    if likelihood == "bernoulli":
        return (x > 0.5).float()
    if likelihood in COUNTS:
        return torch.floor(x * 8)  # counts 0..8
    if likelihood == "student_t":
        return 10 * (x - 0.5)  # real values in [-5, 5]
    return x if likelihood in DISCRETE_8BIT else dequantized(x)


COMBOS = [(p, lik) for p in PRIOR_SPECS for lik in LIKELIHOOD_SPECS]


@pytest.mark.parametrize("prior,likelihood", COMBOS, ids=[f"{p}-{lik}" for p, lik in COMBOS])
def test_combination_trains_one_step_and_evaluates(prior, likelihood):
    """Config → VAE → one Trace_ELBO step (finite loss and gradients, every role of parameter
    reached) → one IS evaluation with K=16 (finite), whose ELBO (the mean of its 16 log-weights
    per point, vaelab's own site sums) agrees with an independent value: Pyro's Trace_ELBO on
    M = 2000 fresh draws per point, within 5 standard errors of the difference of the two batch
    means (the spread of log w measured on M further draws; measured max 2.4 se over the 42
    combinations) + 1e-4."""
    cfg = tiny_cfg(prior, likelihood)
    vae = build_vae(cfg, D)
    lik = vae.generative.likelihood
    assert vae.generative.decoder.out_features == lik.param_size
    x = data_for(likelihood)
    lik.check_data(x)
    objective = build_objective(cfg.objective, vae)
    optimizer = torch.optim.Adam(vae.parameters(), lr=1e-3)
    loss = objective.loss_and_grads(vae.model, vae.guide, x, 1.0, None)
    assert math.isfinite(loss)
    for role, params in vae.parameter_groups().items():
        grads = [p.grad for p in params if p.grad is not None]
        assert len(grads) == len(params), f"{role}: parameters without gradient"
        assert all(bool(torch.isfinite(g).all()) for g in grads), role
        if params:
            assert any(bool((g != 0).any()) for g in grads), f"{role}: all gradients zero"
    optimizer.step()
    model, guide = vae.eval_pair()
    est = estimate_marginal(model, guide, x, num_samples=16, batch_size=4)
    assert est.log_px.shape == (x.shape[0],)
    assert bool(torch.isfinite(est.log_px).all()) and bool(torch.isfinite(est.elbo).all())
    M, B = 2000, x.shape[0]
    with torch.no_grad():
        pyro_elbo = -Trace_ELBO(num_particles=M, vectorize_particles=True,
                                max_plate_nesting=1).loss(model, guide, x) / B  # mean over points
        sd = log_weights(model, guide, M, x).local.std(0)  # (B,) spread of log w, for the se
    se = float((sd.pow(2) / 16 + sd.pow(2) / M).sum().sqrt() / B)
    diff = float(est.elbo.double().mean()) - pyro_elbo
    assert abs(diff) <= 5 * se + 1e-4, (diff, se)
    if lik.discrete:
        assert bool((est.log_px <= 1e-4).all())  # a probability mass is at most 1


# --------------------------------------------------------------------------------------------
# priors


@pytest.fixture(params=list(PRIOR_SPECS))
def prior_vae(request):
    return request.param, build_vae(tiny_cfg(request.param), D)


def test_prior_samples_and_scores_under_data_and_particle_plates(prior_vae):
    name, vae = prior_vae
    p = vae.generative.prior()
    assert p.batch_shape == () and p.event_shape == (LATENT,)
    assert p.sample((5,)).shape == (5, LATENT)

    def model():
        with pyro.plate("particles", 7, dim=-2), pyro.plate("data", 4, dim=-1):
            return pyro.sample("z", vae.generative.prior())

    tr = poutine.trace(model).get_trace()
    tr.compute_log_prob()
    z = tr.nodes["z"]
    assert z["value"].shape == (7, 4, LATENT)
    assert z["log_prob"].shape == (7, 4) and bool(torch.isfinite(z["log_prob"]).all())
    assert torch.allclose(z["log_prob"], p.log_prob(z["value"]))


def test_priors_match_reference_densities():
    """Each prior's log-density against a direct formula at 6 random points (float64)."""
    z = torch.randn(6, LATENT, dtype=torch.float64)
    for name in PRIOR_SPECS:
        vae = build_vae(tiny_cfg(name), D).double()
        prior = vae.generative.prior
        lp = prior().log_prob(z)
        if name == "standard_normal":
            ref = (-0.5 * z**2 - 0.5 * math.log(2 * math.pi)).sum(-1)
        elif name == "normal":
            with torch.no_grad():
                prior.loc.normal_()
                prior.raw_scale.normal_()
            lp = prior().log_prob(z)
            s = softplus(prior.raw_scale)
            ref = (-0.5 * ((z - prior.loc) / s) ** 2 - s.log()
                   - 0.5 * math.log(2 * math.pi)).sum(-1)
        elif name == "laplace":
            b = 1 / math.sqrt(2)  # unit variance: 2 b² = 1
            ref = (-z.abs() / b - math.log(2 * b)).sum(-1)
        elif name == "student_t":
            ref = torch.from_numpy(stats.t.logpdf(z.numpy(), df=3.0).sum(-1))
        elif name == "mog":
            s = softplus(prior.raw_scales)  # (K, d)
            comp = (-0.5 * ((z[:, None] - prior.locs) / s) ** 2 - s.log()
                    - 0.5 * math.log(2 * math.pi)).sum(-1)  # (6, K)
            ref = (comp + prior.logits.log_softmax(-1)).logsumexp(-1)
        elif name == "flow":  # MAF steps start at the identity: N(0, I) (tests/model/test_flows.py
            # checks a perturbed flow against the change of variables)
            ref = (-0.5 * z**2 - 0.5 * math.log(2 * math.pi)).sum(-1)
        else:  # vamp: uniform mixture of the guide's posteriors at the hard-tanh'd pseudo-inputs
            u = prior.pseudo_inputs.clamp(0, 1)
            q = vae.inference.posterior_dist(u)  # batch (K,)
            comp = q.log_prob(z[:, None])  # (6, K)
            ref = comp.logsumexp(-1) - math.log(u.shape[0])
        assert torch.allclose(lp, ref, atol=1e-10), name


def test_laplace_prior_has_unit_variance():
    """200k draws: sample variance within 0.02 of 1 (se ≈ sqrt(5/200000) ≈ 0.005 per dim)."""
    p = build_vae(tiny_cfg("laplace"), D).generative.prior()
    z = p.sample((200_000,))
    assert torch.allclose(z.var(0), torch.ones(LATENT), atol=0.02)


def test_vamp_prior_shares_the_encoder():
    vae = build_vae(tiny_cfg("vamp"), D)
    prior, encoder = vae.generative.prior, vae.inference.encoder
    assert prior._encoder is encoder and prior._posterior is vae.inference.posterior
    params = list(vae.parameters())
    assert len({id(p) for p in params}) == len(params)  # the encoder is registered once
    assert set(prior.state_dict()) == {"pseudo_inputs"}
    # log p(z) depends on the encoder: gradient reaches it through the prior alone
    z = torch.randn(5, LATENT)
    prior().log_prob(z).sum().backward()
    assert all(p.grad is not None and bool((p.grad != 0).any()) for p in encoder.parameters())
    assert prior.pseudo_inputs.grad is not None
    # a state dict loaded into a fresh VAE moves the prior with the encoder
    other = build_vae(tiny_cfg("vamp"), D)
    other.load_state_dict(vae.state_dict())
    assert torch.allclose(other.generative.prior().log_prob(z), prior().log_prob(z))


def test_diagonal_normal_mixture_matches_mixture_same_family():
    """The matrix-product mixture (used by ``mog`` and ``vamp``) against torch's
    MixtureSameFamily: log_prob and gradients to 1e-9 in float64 with scales down to 1e-3, to
    1e-5 relative in float32; shapes under plates; 200k-draw sample mean and variance within 5
    standard errors of the closed form."""
    from vaelab.model.priors import DiagonalNormalMixture

    g = torch.Generator().manual_seed(0)
    K, d = 7, 3
    logits = torch.randn(K, generator=g, dtype=torch.float64, requires_grad=True)
    locs = (2 * torch.randn(K, d, generator=g, dtype=torch.float64)).requires_grad_()
    scales = (torch.rand(K, d, generator=g, dtype=torch.float64) + 1e-3).requires_grad_()
    z = 2 * torch.randn(5, 4, d, generator=g, dtype=torch.float64)
    z[0, 0] = locs[0].detach()  # at a narrow component's mode

    def reference():
        comp = dist.Normal(locs, scales).to_event(1)
        return dist.MixtureSameFamily(dist.Categorical(logits=logits), comp)

    fast = DiagonalNormalMixture(logits, locs, scales)
    assert fast.batch_shape == () and fast.event_shape == (d,)
    a, b = fast.log_prob(z), reference().log_prob(z)
    assert a.shape == (5, 4) and torch.allclose(a, b, atol=1e-9, rtol=0)
    ga = torch.autograd.grad(a.sum(), (logits, locs, scales))
    gb = torch.autograd.grad(b.sum(), (logits, locs, scales))
    assert all(torch.allclose(x, y, atol=1e-9, rtol=1e-9) for x, y in zip(ga, gb))
    f32 = DiagonalNormalMixture(logits.float(), locs.float(), scales.float())
    assert torch.allclose(f32.log_prob(z.float()).double(), b, rtol=1e-5, atol=1e-4)
    assert fast.expand((5, 4)).log_prob(z[0, 0]).shape == (5, 4)
    with pyro.plate("particles", 6, dim=-2), pyro.plate("data", 4, dim=-1):
        sample = pyro.sample("z", fast)
    assert sample.shape == (6, 4, d)
    draws = fast.sample((200_000,))  # (N, d)
    se_mean = (fast.variance / 200_000).sqrt()
    assert bool(((draws.mean(0) - fast.mean).abs() <= 5 * se_mean).all())
    assert torch.allclose(draws.var(0), fast.variance, rtol=0.05)


# --------------------------------------------------------------------------------------------
# KL: which pairs are analytic, and Monte Carlo = analytic where both exist


@pytest.mark.parametrize("family", GAUSSIAN_FAMILIES)
@pytest.mark.parametrize("prior", list(PRIOR_SPECS))
def test_analytic_kl_table_matches_torch_registry(family, prior):
    """``ANALYTIC_KL`` (the docstring's table) = the pairs torch has a closed form for, with the
    prior expanded over the data plate as Pyro does (the VampPrior refuses a flow guide)."""
    if (family, prior) == ("iaf", "vamp"):
        with pytest.raises(ConfigError, match="normalizing flow"):
            build_vae(tiny_cfg(prior, "bernoulli", f"guide.family={family}"), D)
        return
    vae = build_vae(tiny_cfg(prior, "bernoulli", f"guide.family={family}"), D)
    q = vae.inference.posterior_dist(torch.rand(4, D))  # batch (4,)
    p = vae.generative.prior().expand((4,))
    assert has_analytic_kl(q, p) == ((family, prior) in ANALYTIC_KL)


def _kl_only(vae, x):
    """(model, guide) pair with only the latent site: the ELBO is −KL(q(z|x) ‖ p(z))."""

    def model(x):
        with pyro.plate("data", x.shape[0], dim=-1):
            pyro.sample("z", vae.generative.prior())

    def guide(x):
        with pyro.plate("data", x.shape[0], dim=-1):
            pyro.sample("z", vae.inference.posterior_dist(x))

    return model, guide


@pytest.mark.parametrize("prior", ["standard_normal", "normal", "laplace", "mog"])
def test_trace_mean_field_uses_the_analytic_kl_automatically(prior):
    """TraceMeanField_ELBO's loss is deterministic (closed form) for analytic pairs and equals
    Σ KL; for a Monte Carlo pair (mog) two seeds give different losses."""
    vae = build_vae(tiny_cfg(prior), D).double()
    x = torch.rand(5, D, dtype=torch.float64)
    model, guide = _kl_only(vae, x)
    elbo = TraceMeanField_ELBO()
    pyro.set_rng_seed(1)
    a = elbo.loss(model, guide, x)
    pyro.set_rng_seed(2)
    b = elbo.loss(model, guide, x)
    q = vae.inference.posterior_dist(x)
    p = vae.generative.prior().expand((5,))
    if ("normal", prior) in ANALYTIC_KL:
        assert a == b
        kl = float(torch.distributions.kl_divergence(q, p).sum().detach())
        assert a == pytest.approx(kl, rel=1e-12)
    else:
        assert a != b


@pytest.mark.parametrize("prior", ["standard_normal", "normal", "laplace"])
def test_monte_carlo_kl_matches_analytic_kl(prior):
    """Normal guide vs each prior with a closed form, float64, N = 200,000 draws per point
    (20 groups of 10,000): value within 5 standard errors + 1e-6; gradient w.r.t. the guide's
    loc and log-scale within 5 group standard errors + 1e-6 (separate tolerances, as in pyro's
    MC-vs-analytic tests)."""
    torch.manual_seed(0)
    vae = build_vae(tiny_cfg(prior), D).double()
    if prior == "normal":  # a non-trivial learned prior
        with torch.no_grad():
            vae.generative.prior.loc.copy_(torch.tensor([0.5, -1.0, 0.2]))
            vae.generative.prior.raw_scale.copy_(torch.tensor([0.3, -0.5, 1.0]))
    p = vae.generative.prior()
    loc = torch.tensor([[0.3, -0.7, 1.1], [-1.5, 0.0, 0.4]], dtype=torch.float64,
                       requires_grad=True)
    log_scale = torch.tensor([[-0.2, 0.4, -1.0], [0.1, -0.6, 0.3]], dtype=torch.float64,
                             requires_grad=True)

    def q():
        return dist.Normal(loc, log_scale.exp()).to_event(1)  # batch (2,)

    analytic = torch.distributions.kl_divergence(q(), p.expand((2,)))  # (2,)
    g_an = torch.autograd.grad(analytic.sum(), (loc, log_scale))
    groups, per = 20, 10_000
    values, grads = [], []
    for _ in range(groups):
        qd = q()
        z = qd.rsample((per,))  # (per, 2, d)
        kl = (qd.log_prob(z) - p.log_prob(z)).mean(0)  # (2,)
        values.append(kl.detach())
        g = torch.autograd.grad(kl.sum(), (loc, log_scale))
        grads.append(torch.cat([gi.flatten() for gi in g]))
    values, grads = torch.stack(values), torch.stack(grads)  # (20, 2), (20, 12)
    se = values.std(0) / math.sqrt(groups)
    assert bool(((values.mean(0) - analytic.detach()).abs() <= 5 * se + 1e-6).all())
    g_an = torch.cat([g.flatten() for g in g_an])
    g_se = grads.std(0) / math.sqrt(groups)
    assert bool(((grads.mean(0) - g_an).abs() <= 5 * g_se + 1e-6).all())


# --------------------------------------------------------------------------------------------
# the closed form of a linear-Gaussian model, through the config path


def test_linear_decoder_learned_normal_prior_matches_closed_form():
    r"""z ~ N(m, diag s²) (``model.prior = "normal"``), x | z ~ N(W z + b, σ² I) with a learned
    shared σ, linear decoder and encoder, all from a config. Then
    p(x) = N(W m + b, W S Wᵀ + σ² I) and, W having orthogonal columns, the exact posterior is a
    diagonal normal, linear in x: with it as the guide every weight equals p(x) (K=64, float64,
    atol 1e-9); with a shifted, widened guide IS at K=5000 is within 4 MC standard errors
    (+1e-3) of the truth at each of 20 points."""
    Dx, d, sigma = 6, 2, 0.5
    cfg = load_config(None, [
        "data.name=synthetic", f"model.latent_dim={d}", "model.hidden_sizes=[]",
        "guide.hidden_sizes=[]", "model.prior=normal",
        '''model.likelihood={name = "normal", learn = "shared", scale = 1.0, min_scale = 0.1}''',
        '''guide.family={name = "normal", min_scale = 0.0}''',
    ])
    vae = build_vae(cfg, Dx).double()
    g = torch.Generator().manual_seed(0)
    Q, _ = torch.linalg.qr(torch.randn(Dx, d, generator=g, dtype=torch.float64))
    W = Q * torch.tensor([2.0, 1.0], dtype=torch.float64)  # (Dx, d), orthogonal columns
    b = 0.3 * torch.randn(Dx, generator=g, dtype=torch.float64)
    m = torch.tensor([0.5, -0.3], dtype=torch.float64)
    s = torch.tensor([1.5, 0.7], dtype=torch.float64)
    gen = vae.generative
    with torch.no_grad():
        gen.decoder.linear_layers[0].weight.copy_(W)
        gen.decoder.linear_layers[0].bias.copy_(b)
        gen.prior.loc.copy_(m)
        gen.prior.raw_scale.copy_(s + torch.log(-torch.expm1(-s)))  # softplus⁻¹
        lik = gen.likelihood
        lik.raw_scale.fill_(math.log(math.expm1(sigma - lik.min_scale)))
    assert float(lik.scale().detach()) == pytest.approx(sigma)

    cov = W @ torch.diag(s**2) @ W.T + sigma**2 * torch.eye(Dx, dtype=torch.float64)
    p_x = torch.distributions.MultivariateNormal(W @ m + b, covariance_matrix=cov)
    x = sample_ppca(20, W, b, sigma, seed=1) + W @ m  # any points will do; these are typical
    truth = p_x.log_prob(x)

    def set_guide(loc_shift=0.0, scale_factor=1.0):
        prec = 1 / s**2 + torch.diagonal(W.T @ W) / sigma**2  # (d,), diagonal precision
        A = (W.T / sigma**2) / prec[:, None]  # (d, Dx)
        c = (m / s**2 - W.T @ b / sigma**2) / prec  # (d,)
        scale = prec.rsqrt() * scale_factor
        enc = vae.inference.encoder.linear_layers[0]
        with torch.no_grad():
            enc.weight.zero_()
            enc.weight[:d].copy_(A)
            enc.bias[:d].copy_(c + loc_shift)
            enc.bias[d:].copy_(scale + torch.log(-torch.expm1(-scale)))

    set_guide()
    est = estimate_marginal(*vae.eval_pair(), x, num_samples=64, batch_size=7)
    assert torch.allclose(est.log_px, truth, atol=1e-9, rtol=0)
    assert torch.allclose(est.elbo, truth, atol=1e-9, rtol=0)

    set_guide(loc_shift=0.3, scale_factor=1.5)
    est = estimate_marginal(*vae.eval_pair(), x, num_samples=5000, batch_size=20)
    err = (est.log_px - truth).abs()
    assert bool((err <= 4 * est.mc_stderr + 1e-3).all()), (err, est.mc_stderr)
    assert bool((est.elbo < truth).all())


# --------------------------------------------------------------------------------------------
# likelihood densities against direct formulas


def build_likelihood(spec, dim=D):
    return LIKELIHOODS.build(LIKELIHOODS.parse(spec, "model.likelihood"), dim)


def test_normal_and_laplace_log_prob_reference():
    x = torch.rand(5, D, dtype=torch.float64)
    mu = torch.randn(5, D, dtype=torch.float64)
    for name, ref_fn in [
        ("normal",
         lambda x, mu, s: -0.5 * ((x - mu) / s) ** 2 - s.log() - 0.5 * math.log(2 * math.pi)),
        ("laplace", lambda x, mu, s: -(x - mu).abs() / s - (2 * s).log()),
    ]:
        for learn in ("fixed", "pixel", "shared"):
            lik = build_likelihood({"name": name, "learn": learn, "scale": 0.3}).double()
            if learn != "fixed":
                with torch.no_grad():
                    lik.raw_scale.normal_()
            s = lik.scale().expand(D)
            assert bool((s >= lik.min_scale).all()) or learn == "fixed"
            ref = ref_fn(x, mu, s).sum(-1)
            assert torch.allclose(lik(mu).log_prob(x), ref, atol=1e-10), (name, learn)
            assert torch.equal(lik.mean(mu), mu)


def test_beta_log_prob_reference_and_edges():
    """Against scipy's beta.logpdf; exactly 0 and 1 give the density at ε and 1 − ε (finite)."""
    lik = build_likelihood("beta").double()
    params = torch.randn(4, 2 * D, dtype=torch.float64)
    alpha, beta = lik.concentrations(params)
    x = torch.rand(4, D, dtype=torch.float64)
    x[0, 0], x[1, 1] = 0.0, 1.0
    xc = x.clamp(lik.eps, 1 - lik.eps)
    ref = stats.beta.logpdf(xc.numpy(), alpha.detach().numpy(), beta.detach().numpy()).sum(-1)
    lp = lik(params).log_prob(x)
    assert bool(torch.isfinite(lp).all())
    assert np.allclose(lp.detach().numpy(), ref, atol=1e-8)
    assert torch.allclose(lik.mean(params), alpha / (alpha + beta))
    expanded = lik(params).expand((3, 4))  # the ε survives Pyro's plate expansion
    assert torch.allclose(expanded.log_prob(x), lp.expand(3, 4))


def test_continuous_bernoulli_normaliser_and_mean():
    r"""log p = x log λ + (1 − x) log(1 − λ) + log C(λ),
    C(λ) = 2 atanh(1 − 2λ) / (1 − 2λ),
    C(1/2) = 2; the density integrates to 1 and its mean is the CB mean (trapezoid on 20,001
    points, tolerance 1e-6)."""
    lik = build_likelihood("continuous_bernoulli", dim=4).double()
    logits = torch.tensor([[-3.0, -0.5, 0.0, 2.0]], dtype=torch.float64)
    lam = torch.sigmoid(logits)
    x = torch.tensor([[0.1, 0.0, 0.7, 1.0]], dtype=torch.float64)
    log_c = torch.where(
        lam == 0.5, torch.tensor(math.log(2.0), dtype=torch.float64),
        torch.log(2 * torch.atanh(1 - 2 * lam) / (1 - 2 * lam)),
    )
    ref = (x * lam.log() + (1 - x) * (1 - lam).log() + log_c).sum(-1)
    assert torch.allclose(lik(logits).log_prob(x), ref, atol=1e-10)
    grid = torch.linspace(0, 1, 20_001, dtype=torch.float64)[:, None]  # (G, 1)
    pdf = (grid * lam.log() + (1 - grid) * (1 - lam).log() + log_c).exp()  # (G, 4)
    total = torch.trapezoid(pdf, grid[:, 0], dim=0)
    assert torch.allclose(total, torch.ones(4, dtype=torch.float64), atol=1e-6)
    mean = torch.trapezoid(pdf * grid, grid[:, 0], dim=0)
    assert torch.allclose(lik.mean(logits)[0], mean, atol=1e-6)
    assert not torch.allclose(lik.mean(logits), lam)  # its mean is not its parameter


def test_discretized_logistic_likelihood_reference():
    """Interior bins: logistic CDF difference across [x − Δ/2, x + Δ/2]; edge bins take the
    tails; the 256 masses of each pixel sum to 1 (float64, atol 1e-10)."""
    lik = build_likelihood("discretized_logistic", dim=4).double()
    params = torch.tensor([[0.2, 0.5, 0.9, -0.1, -2.0, -4.0, -1.0, 0.0]], dtype=torch.float64)
    loc, scale = params[:, :4], softplus(params[:, 4:]) + lik.min_scale
    k = torch.tensor([[0, 128, 200, 255]], dtype=torch.float64)
    x = k / 255
    half = 0.5 / 255
    upper = torch.sigmoid((x + half - loc) / scale)
    lower = torch.sigmoid((x - half - loc) / scale)
    mass = torch.where(k == 0, upper, torch.where(k == 255, 1 - lower, upper - lower))
    assert torch.allclose(lik(params).log_prob(x), mass.log().sum(-1), atol=1e-10)
    levels = torch.arange(256, dtype=torch.float64)[:, None, None] / 255  # (256, 1, 1)
    per_pixel = lik(params).base_dist.log_prob(levels).exp().sum(0)  # (1, 4)
    assert torch.allclose(per_pixel, torch.ones_like(per_pixel), atol=1e-10)
    mean = (lik(params).base_dist.log_prob(levels).exp() * levels).sum(0)
    assert torch.allclose(lik.mean(params), mean, atol=1e-10)


def test_categorical_likelihood_reference():
    lik = build_likelihood("categorical", dim=3).double()
    assert lik.param_size == 3 * 256
    params = torch.randn(2, 3 * 256, dtype=torch.float64)
    k = torch.tensor([[0, 17, 255], [3, 128, 254]])
    logp = params.view(2, 3, 256).log_softmax(-1)
    ref = logp.gather(-1, k[..., None]).squeeze(-1).sum(-1)
    assert torch.allclose(lik(params).log_prob(k / 255.0), ref, atol=1e-10)
    levels = torch.arange(256, dtype=torch.float64) / 255
    assert torch.allclose(lik.mean(params), (logp.exp() * levels).sum(-1), atol=1e-10)


@pytest.mark.parametrize("likelihood", list(LIKELIHOOD_SPECS))
def test_likelihood_shapes_under_a_particle_plate(likelihood):
    """params (K, B, P) → batch (K, B), event (D,), log_prob (K, B); mean (K, B, D)."""
    learned = likelihood in ("normal", "laplace", "student_t")
    spec = {"name": likelihood, "learn": "pixel"} if learned else likelihood
    lik = build_likelihood(spec)
    params = torch.randn(5, 4, lik.param_size)
    d = lik(params)
    assert d.batch_shape == (5, 4) and d.event_shape == (D,)
    x = data_for(likelihood, n=4)
    assert d.log_prob(x).shape == (5, 4)
    assert lik.mean(params).shape == (5, 4, D)


def test_check_data_refuses_what_a_likelihood_cannot_score():
    grey = grey_levels(20)
    with pytest.raises(ConfigError, match=r"model\.likelihood: .*binary.*data\.binarize"):
        build_likelihood("bernoulli").check_data(grey)
    for name in DISCRETE_8BIT:
        lik = build_likelihood(name)
        lik.check_data(grey)  # k/255: fine
        lik.check_data((grey > 0.5).float())  # 0 and 1 are on the grid
        with pytest.raises(ConfigError, match=r"off that grid.*data\.dequantize = false"):
            lik.check_data(dequantized(grey))
    for name in ("continuous_bernoulli", "normal", "laplace", "beta", "student_t"):
        build_likelihood(name).check_data(dequantized(grey))
    for name in ("normal", "laplace", "student_t"):  # real values of any range
        build_likelihood(name).check_data(grey * 30 - 12)
    for name in ("continuous_bernoulli", "beta", "bernoulli", *DISCRETE_8BIT):
        with pytest.raises(ConfigError, match=r"outside \[0, 1\].*normal, student_t$"):
            build_likelihood(name).check_data(grey * 2)
    for name in COUNTS:
        build_likelihood(name).check_data(torch.floor(grey * 1000))
        with pytest.raises(ConfigError, match=r"not integers.*laplace, normal, student_t$"):
            build_likelihood(name).check_data(grey)


# --------------------------------------------------------------------------------------------
# units: continuous densities on dequantized data vs masses on the 8-bit levels


@pytest.fixture
def grey_array(tmp_path):
    path = tmp_path / "grey.npy"
    np.save(path, (grey_levels(50) * 255).round().to(torch.uint8).numpy())
    return path


def _uniform_run(cfg, set_uniform):
    """A Run whose likelihood is uniform and whose guide equals the prior (weights constant)."""
    splits = load_dataset(cfg.data)
    vae = build_vae(cfg, splits.dim)
    post = vae.inference.posterior
    enc = vae.inference.encoder.linear_layers[-1]
    with torch.no_grad():
        enc.weight.zero_()
        enc.bias[:LATENT].zero_()  # q(z|x) = N(0, 1) = p(z)
        enc.bias[LATENT:].fill_(math.log(math.expm1(1.0 - post.min_scale)))
        set_uniform(vae.generative)
    return Run(None, cfg, vae, splits, Preprocessor(cfg.data, splits), 0)


def test_units_uniform_density_and_uniform_mass_agree(grey_array):
    """A Beta(1, 1) density on dequantized data and a uniform 256-way categorical on the raw
    levels both assign every 8-bit image −D log 256 nats, i.e. exactly 8 bits/dim, once
    :func:`vaelab.runs.run.evaluate` adds the −D log 256 dequantization term to the continuous
    one."""
    base = ["data.name=array", f"data.path={grey_array}", f"model.latent_dim={LATENT}",
            "model.hidden_sizes=[8]", "eval.num_samples=8"]

    def beta_uniform(gen):
        dec = gen.decoder.linear_layers[-1]
        dec.weight.zero_()  # α = β = softplus(bias) + floor = 1
        dec.bias.fill_(math.log(math.expm1(1.0 - gen.likelihood.min_concentration)))

    def categorical_uniform(gen):
        gen.decoder.linear_layers[-1].weight.zero_()
        gen.decoder.linear_layers[-1].bias.zero_()

    beta_cfg = load_config(None, [*base, "model.likelihood=beta", "data.dequantize=true"])
    beta_run = _uniform_run(beta_cfg, beta_uniform)
    cat_run = _uniform_run(load_config(None, [*base, "model.likelihood=categorical"]),
                           categorical_uniform)
    expected = -D * math.log(256)
    for run in (beta_run, cat_run):
        est = evaluate(run)
        assert torch.allclose(est.log_px, torch.full_like(est.log_px, expected), atol=1e-3)
        assert torch.allclose(est.elbo, torch.full_like(est.elbo, expected), atol=1e-3)
        assert bits_per_dim(-float(est.log_px.mean()), D) == pytest.approx(8.0, abs=1e-5)
    assert evaluate(beta_run).extra["log_jacobian"] == pytest.approx(expected)
    assert evaluate(cat_run).extra["log_jacobian"] == 0.0


def test_evaluate_adds_the_dequantization_term_once(grey_array):
    """``evaluate`` on dequantized data = IS on the same noisy split + (−D log 256), exactly."""
    cfg = load_config(None, ["data.name=array", f"data.path={grey_array}", "data.dequantize=true",
                             f"model.latent_dim={LATENT}", "model.hidden_sizes=[8]",
                             '''model.likelihood={name = "normal", learn = "pixel"}''',
                             "eval.num_samples=32"])
    splits = load_dataset(cfg.data)
    vae = build_vae(cfg, splits.dim)
    run = Run(None, cfg, vae, splits, Preprocessor(cfg.data, splits), 0)
    est = evaluate(run, eval_config(run.cfg, ["eval.seed=3"]))
    pyro.set_rng_seed(3)
    x = run.pre.eval_split(splits.test, 3)
    ref = estimate_marginal(*vae.eval_pair(), x, num_samples=32, batch_size=cfg.eval.batch_size)
    assert torch.allclose(est.log_px, ref.log_px - D * math.log(256), atol=1e-4)
    assert torch.allclose(est.elbo, ref.elbo - D * math.log(256), atol=1e-4)
