"""Normalizing flows from Pyro's transforms (issue 11, item 4): the ``iaf`` guide family and the
``flow`` prior, against ground truth.

* log-densities equal the change of variables computed independently (Jacobians by
  ``torch.autograd.functional.jacobian``), a 2-d flow prior integrates to 1 on a grid, and its
  samples map back to standard normal draws;
* an IAF at initialisation *is* the Gaussian guide (same draws, same log q);
* on probabilistic PCA (tests/ground_truth.py, D=6, d=2, σ=0.5, 20 points): IS with a perturbed IAF
  guide converges to the closed form; with a perturbed flow prior, IS and AIS converge to
  log p(x) by 2-d quadrature; STL and DReG have zero encoder gradient at the exact posterior;
* ``mean_field`` (analytic KL) and the VampPrior refuse flows in one line.

Every statistical assertion states its sample size and tolerance; seeds are fixed.
"""

from __future__ import annotations

import math

import pyro
import pytest
import torch
from torch.autograd.functional import jacobian
from torch.nn.functional import softplus

from ground_truth import SIGMA, exact_log_px, exact_posterior, make_ppca, ppca_config, sample_ppca
from vaelab.cli import main
from vaelab.config import ObjectiveConfig
from vaelab.guide.iaf import IAFPosterior
from vaelab.guide.posteriors import NormalPosterior
from vaelab.inference.ais import ais
from vaelab.inference.marginal import estimate_marginal
from vaelab.inference.objectives import build_objective
from vaelab.model.priors import FlowPrior
from vaelab.registry import ConfigError
from vaelab.resolve import load_config
from vaelab.vae import build_vae

F64 = torch.float64


@pytest.fixture
def float64():
    """Pyro's autoregressive inversion allocates in the default dtype: float64 tests set it
    (the conftest fixture restores it)."""
    torch.set_default_dtype(F64)


def perturb(module: torch.nn.Module, scale: float, seed: int = 0) -> None:
    """Random output layers for every MADE / DenseNN under ``module``: a non-identity flow."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in module.modules():
            layers = getattr(m, "layers", None)
            if isinstance(layers, torch.nn.ModuleList):
                last = layers[-1]
                last.weight.copy_(scale * torch.randn(last.weight.shape, generator=g))
                last.bias.copy_(scale * torch.randn(last.bias.shape, generator=g))


def logdet(fn, points: torch.Tensor) -> torch.Tensor:
    """log |det ∂fn/∂u| at each row of ``points (N, d)``, fn mapping one row ``(d,)``."""
    return torch.stack([torch.linalg.slogdet(jacobian(fn, p))[1] for p in points])


# --------------------------------------------------------------------------------------------
# change of variables


def test_iaf_log_density_is_the_change_of_variables(float64):
    """z = F(u₀), u₀ ~ N(μ, σ²): log q(z) = log N(u₀; μ, σ²) − log|det ∂F/∂u₀| with the
    Jacobian by autograd, to 1e-10, both for the site's own draw (Pyro's cache) and for a copy
    of it (Pyro inverts the flow coordinate by coordinate). 2 flows, d = 3, 5 points."""
    torch.manual_seed(0)
    d, c = 3, 4
    post = IAFPosterior(d, 0.0, num_flows=2, hidden_sizes=[16], context_size=c)
    perturb(post, 0.3)
    h = torch.randn(5, 2 * d + c)
    q = post(h)
    loc, scale, _ = post.split(h)
    u0 = loc + scale * torch.randn(5, d)
    z = u0
    for t in q.transforms:
        z = t(z)
    want = torch.distributions.Normal(loc, scale).log_prob(u0).sum(-1)
    jac = []
    for n in range(5):
        steps = post(h[n : n + 1]).transforms

        def forward(u, steps=steps):
            for t in steps:
                u = t(u.unsqueeze(0)).squeeze(0)
            return u

        jac.append(logdet(forward, u0[n : n + 1]))
    want = want - torch.cat(jac)
    torch.testing.assert_close(q.log_prob(z), want, atol=1e-10, rtol=0)  # cached u₀
    torch.testing.assert_close(q.log_prob(z.clone()), want, atol=1e-9, rtol=0)  # inverted
    assert float((z - u0).detach().abs().max()) > 0.1  # the flow is not the identity


@pytest.mark.parametrize("kind", ["affine_autoregressive", "spline_coupling"])
def test_flow_prior_log_density_is_the_change_of_variables(kind, float64):
    """log p(z) = log N(T⁻¹(z); 0, I) + log|det ∂T⁻¹/∂z| with T⁻¹ composed from the
    transforms' inverses and its Jacobian by autograd, at 30 points of d = 3, to 1e-9."""
    torch.manual_seed(0)
    prior = FlowPrior(3, kind, num_flows=3, hidden_sizes=[16])
    if kind == "affine_autoregressive":
        perturb(prior, 0.3)
    p = prior()
    z = 1.5 * torch.randn(30, 3)

    def inverse(v):
        for t in reversed(p.transforms):
            v = t.inv(v)
        return v

    u = inverse(z)
    want = torch.distributions.Normal(0.0, 1.0).log_prob(u).sum(-1) + logdet(inverse, z)
    torch.testing.assert_close(p.log_prob(z), want, atol=1e-9, rtol=0)
    assert float((u - z).detach().abs().max()) > 0.05  # not the identity


@pytest.mark.parametrize("kind", ["affine_autoregressive", "spline_coupling"])
def test_flow_prior_integrates_to_one_and_its_samples_map_back_to_normal_draws(kind, float64):
    """d = 2, parameters scaled to a moderately curved flow: the density summed on a
    0.02-spaced grid over [−10, 10]² is 1 within 1e-4 (measured errors 4e-5 for the splines,
    whose bin edges are kinks; a random full-scale spline needs a finer grid than 0.01 for
    its narrow spikes); 4000 samples map back through T⁻¹ to draws whose mean is within
    4/√4000 of 0 and whose covariance is within 0.1 of I."""
    torch.manual_seed(1)
    prior = FlowPrior(2, kind, num_flows=3, hidden_sizes=[16])
    if kind == "affine_autoregressive":
        perturb(prior, 0.3, seed=1)
    else:
        with torch.no_grad():
            for p in prior.parameters():
                p.mul_(0.3)
    p = prior()
    step = 0.02
    axis = torch.arange(-10.0, 10.0 + step / 2, step)
    grid = torch.cartesian_prod(axis, axis)  # (1001², 2)
    with torch.no_grad():
        mass = float(p.log_prob(grid).exp().sum()) * step**2
    assert abs(mass - 1.0) < 1e-4, mass
    with torch.no_grad():
        z = p.sample((4000,))
        u = z
        for t in reversed(p.transforms):
            u = t.inv(u)
    assert float(u.mean(0).abs().max()) < 4 / math.sqrt(4000)
    assert float((torch.cov(u.T) - torch.eye(2)).abs().max()) < 0.1
    assert float((u - z).abs().max()) > 0.05


# --------------------------------------------------------------------------------------------
# identity at initialisation


def test_iaf_at_initialisation_is_the_gaussian_guide(float64):
    """Same encoder output, same seed: the IAF draws the normal guide's z and scores any z as
    the normal guide does (its own draw and 20 others), to 1e-12."""
    d, c = 3, 4
    iaf = IAFPosterior(d, 1e-5, num_flows=2, hidden_sizes=[16], context_size=c)
    normal = NormalPosterior(d, 1e-5)
    h = torch.randn(5, 2 * d + c)
    q_iaf, q_normal = iaf(h), normal(h[:, : 2 * d])
    pyro.set_rng_seed(3)
    z_iaf = q_iaf.rsample()
    pyro.set_rng_seed(3)
    z_normal = q_normal.rsample()
    torch.testing.assert_close(z_iaf, z_normal, atol=1e-12, rtol=0)
    torch.testing.assert_close(q_iaf.log_prob(z_iaf), q_normal.log_prob(z_normal),
                               atol=1e-12, rtol=0)
    others = torch.randn(20, 5, d)
    torch.testing.assert_close(q_iaf.log_prob(others), q_normal.log_prob(others),
                               atol=1e-12, rtol=0)


# --------------------------------------------------------------------------------------------
# PPCA ground truth

IAF_FAMILY = ('guide.family={name = "iaf", min_scale = 0.0, num_flows = 2, hidden_sizes = [8], '
              'context_size = 2}')


def iaf_ppca(flow_scale: float, prior: str | None = None):
    """PPCA (D=6, d=2) with the IAF family: decoder W, b; base Gaussian at the exact posterior
    of the standard-normal model; context weights random; flows perturbed by ``flow_scale``
    (0: the identity). Returns ``(vae, W, b, x)``."""
    torch.manual_seed(0)  # the MADEs' hidden layers
    _, W, b = make_ppca(D=6, d=2, sigma=SIGMA, seed=0)
    x = sample_ppca(20, W, b, SIGMA, seed=1)
    overrides = [IAF_FAMILY] + ([f"model.prior={prior}"] if prior else [])
    vae = build_vae(ppca_config(6, 2, SIGMA, overrides), 6).to(F64)
    dec = vae.generative.decoder.linear_layers[0]
    enc = vae.inference.encoder.linear_layers[0]
    A, c, scale = exact_posterior(W, b, SIGMA)
    g = torch.Generator().manual_seed(2)
    with torch.no_grad():
        dec.weight.copy_(W)
        dec.bias.copy_(b)
        enc.weight.zero_()
        enc.weight[:2].copy_(A)
        enc.bias[:2].copy_(c)
        enc.bias[2:4].copy_(scale + torch.log(-torch.expm1(-scale)))  # softplus⁻¹(scale)
        enc.weight[4:].copy_(torch.randn(2, 6, generator=g, dtype=F64))
        enc.bias[4:].copy_(torch.randn(2, generator=g, dtype=F64))
    assert torch.allclose(softplus(enc.bias[2:4]), scale)
    if flow_scale:
        perturb(vae.inference.posterior, flow_scale, seed=3)
    return vae, W, b, x


def test_is_with_an_iaf_guide_on_ppca_converges_to_the_closed_form():
    """A perturbed IAF guide (not the posterior: its ELBO is below log p(x) by more than 0.05
    nats on average; 0.11 measured) with K = 5000: every point's log p̂ within 4 MC standard
    errors + 0.01 of the closed form, the mean over 20 points within 0.01 nats (measured
    |mean| ≤ 0.003 over 5 seeds)."""
    vae, W, b, x = iaf_ppca(flow_scale=0.03)
    truth = exact_log_px(x, W, b, SIGMA)
    pyro.set_rng_seed(0)
    est = estimate_marginal(vae.model, vae.guide, x, num_samples=5000, batch_size=20)
    err = est.log_px - truth
    assert float((truth - est.elbo).mean()) > 0.05, "the guide should not be the posterior"
    assert bool((err.abs() <= 4 * est.mc_stderr + 0.01).all()), (err, est.mc_stderr)
    assert abs(float(err.mean())) < 0.01, err


def quadrature_log_px(vae, x: torch.Tensor, W, b, step: float = 0.02, half: float = 8.0):
    """log ∫ p(z) N(x; W z + b, σ² I) dz on a 2-d grid (spacing ``step`` over [−half, half]²),
    per row of x: the ground truth of a PPCA model whose prior is a flow."""
    axis = torch.arange(-half, half + step / 2, step, dtype=F64)
    grid = torch.cartesian_prod(axis, axis)  # (G, 2)
    with torch.no_grad():
        log_prior = vae.generative.prior().log_prob(grid)  # (G,)
        mean = grid @ W.T + b  # (G, D)
        out = []
        for row in x:
            log_lik = torch.distributions.Normal(mean, SIGMA).log_prob(row).sum(-1)  # (G,)
            out.append(torch.logsumexp(log_prior + log_lik, 0) + 2 * math.log(step))
    return torch.stack(out)


FLOW_PRIOR = '{name = "flow", num_flows = 2, hidden_sizes = [8]}'


def test_is_and_ais_with_a_flow_prior_converge_to_quadrature(float64):
    """PPCA with a perturbed MAF prior (d = 2; log p(x) moves by 0.47 nats on average from the
    standard-normal model's) and a perturbed IAF guide; truth by quadrature (0.02 grid over
    [−8, 8]²; the prior alone sums to 1 within 1e-6 there). IS with K = 5000: every point
    within 4 MC standard errors + 0.02, the mean within 0.02 nats (measured |mean| ≤ 0.01 over
    3 seeds). AIS from the prior (T=300, C=16, L=5, as in
    tests/inference/test_ais.py): the mean over 20
    points within 0.1 nats (measured −0.012), every point within 4 standard errors + 0.1."""
    vae, W, b, x = iaf_ppca(flow_scale=0.03, prior=FLOW_PRIOR)
    perturb(vae.generative.prior, 0.2, seed=4)
    step, half = 0.02, 8.0
    axis = torch.arange(-half, half + step / 2, step, dtype=F64)
    with torch.no_grad():
        mass = vae.generative.prior().log_prob(torch.cartesian_prod(axis, axis)).exp().sum()
    assert abs(float(mass) * step**2 - 1) < 1e-6
    truth = quadrature_log_px(vae, x, W, b, step, half)
    assert float((truth - exact_log_px(x, W, b, SIGMA)).abs().mean()) > 0.2  # not N(0, I)
    pyro.set_rng_seed(0)
    est = estimate_marginal(vae.model, vae.guide, x, num_samples=5000, batch_size=20)
    err = est.log_px - truth
    assert bool((err.abs() <= 4 * est.mc_stderr + 0.02).all()), (err, est.mc_stderr)
    assert abs(float(err.mean())) < 0.02, err
    pyro.set_rng_seed(0)
    r = ais(vae.model, vae.guide, x, num_steps=300, num_chains=16, num_leapfrog=5)
    err = r.log_px - truth
    assert abs(float(err.mean())) < 0.1, err
    assert bool((err.abs() <= 4 * r.mc_stderr + 0.1).all()), (err, r.mc_stderr)


def test_ais_from_an_iaf_guide_base_is_exact_at_the_posterior(float64):
    """With the IAF at the identity and its base at the exact posterior, AIS from the guide
    (which scores the chains' z by inverting the flow) gives log p(x) in every chain, to 1e-8
    (T=10, C=4)."""
    vae, W, b, x = iaf_ppca(flow_scale=0.0)
    truth = exact_log_px(x, W, b, SIGMA)
    r = ais(vae.model, vae.guide, x, num_steps=10, num_chains=4, num_leapfrog=3, base="guide")
    torch.testing.assert_close(r.log_w, truth.expand_as(r.log_w), atol=1e-8, rtol=0)


@pytest.mark.parametrize("name", ["stl", "iwae_dreg"])
def test_stl_and_dreg_encoder_gradients_vanish_at_the_exact_posterior(name, float64):
    """q = p(z|x) (IAF at identity, exact base): the path-only estimators' gradient of every
    guide parameter (encoder and flows) is 0 (|g| < 1e-9, K = 4), where IWAE's is not
    (its score term: ‖g‖ > 1e-3): the IAF's parameters are detached by its stop_gradient."""
    vae, W, b, x = iaf_ppca(flow_scale=0.0)
    guide_params = list(vae.inference.parameters())
    for objective, zero in ((name, True), ("iwae", False)):
        for p in vae.parameters():
            p.grad = None
        obj = build_objective(ObjectiveConfig(name=objective, num_particles=4), vae)
        pyro.set_rng_seed(0)
        obj.loss_and_grads(vae.model, vae.guide, x)
        grads = torch.cat([p.grad.flatten() for p in guide_params if p.grad is not None])
        if zero:
            assert float(grads.abs().max()) < 1e-9, (objective, float(grads.abs().max()))
        else:
            assert float(grads.norm()) > 1e-3, objective


def _objectives():
    from vaelab.inference.objectives import OBJECTIVES

    # mean_field needs an analytic KL (refused below); enum enumerates a categorical latent; the
    # score-function objectives of categorical latents refuse a Gaussian one in one line
    # (tests/inference/test_score_function.py)
    discrete = ("enum", "reinforce_loo", "vimco", "arm", "disarm", "relax")
    return [n for n in OBJECTIVES.names() if n != "mean_field" and n not in discrete]


@pytest.mark.parametrize("name", _objectives())
def test_every_monte_carlo_objective_takes_an_iaf_guide_and_a_flow_prior(name):
    """One step of every objective but mean_field and enum, with K = 3 particles (α = 0.5 for
    renyi), on a VAE with an IAF guide and a flow prior: a finite loss and a nonzero, finite
    gradient for the encoder, the flows of the guide and the flow prior."""
    cfg = load_config(None, ["data.name=synthetic", "model.latent_dim=3", "model.hidden_sizes=[8]",
                             'guide.family={name = "iaf", hidden_sizes = [8], context_size = 4}',
                             f"model.prior={FLOW_PRIOR}", f"objective.name={name}",
                             "objective.num_particles=3", "objective.alpha=0.5",
                             "objective.jit=false"])
    vae = build_vae(cfg, 64)
    perturb(vae, 0.1)  # off the identity, so every flow parameter has a gradient
    x = torch.bernoulli(torch.full((6, 64), 0.3))
    loss = build_objective(cfg.objective, vae).loss_and_grads(vae.model, vae.guide, x)
    assert math.isfinite(loss)
    for part in (vae.inference.encoder, vae.inference.posterior, vae.generative.prior):
        grads = [p.grad for p in part.parameters()]
        assert all(g is not None and bool(g.isfinite().all()) for g in grads), name
        assert any(bool((g != 0).any()) for g in grads), (name, type(part).__name__)


# --------------------------------------------------------------------------------------------
# refusals


@pytest.mark.parametrize("overrides,key", [
    ([IAF_FAMILY], "guide.family"),
    ([f"model.prior={FLOW_PRIOR}"], "model.prior"),
])
def test_mean_field_refuses_flows_in_one_line(overrides, key):
    vae = build_vae(ppca_config(6, 2, SIGMA, overrides), 6)
    with pytest.raises(ConfigError) as err:
        build_objective(ObjectiveConfig(name="mean_field"), vae)
    msg = str(err.value)
    assert "\n" not in msg and key in msg and "closed form" in msg and "'trace'" in msg, msg


def test_mean_field_with_an_iaf_guide_exits_2_and_writes_nothing(tmp_path, capsys):
    cfg = tmp_path / "c.toml"
    cfg.write_text('[data]\nname = "synthetic"\n[guide]\nfamily = "iaf"\n'
                   '[objective]\nname = "mean_field"\n')
    out = tmp_path / "run"
    assert main(["train", str(cfg), "--out", str(out), "--set", "model.latent_dim=2",
                 "--set", "train.epochs=1", "--set", "train.progress=false"]) == 2
    err = [ln for ln in capsys.readouterr().err.splitlines()
           if ln.strip() and not ln.startswith("vaelab: note:")]
    assert len(err) == 1 and "mean_field" in err[0] and "normalizing flow" in err[0], err
    assert not out.exists()


def test_vamp_prior_refuses_an_iaf_guide_and_made_widths_are_checked():
    with pytest.raises(ConfigError, match=r"model\.prior = 'vamp'.*guide\.family = 'iaf'"):
        build_vae(load_config(None, ["model.latent_dim=2", "model.prior=vamp",
                                     "guide.family=iaf"]), 10)
    with pytest.raises(ConfigError, match=r"guide\.family\.hidden_sizes: .* at least the latent "
                                          r"dimension 20"):
        build_vae(load_config(None, ['guide.family={name = "iaf", hidden_sizes = [10]}']), 10)
    with pytest.raises(ConfigError, match=r"model\.prior: kind = 'spline_coupling' .* ≥ 2"):
        build_vae(load_config(None, ["model.latent_dim=1",
                                     'model.prior={name = "flow", kind = "spline_coupling"}']), 10)
