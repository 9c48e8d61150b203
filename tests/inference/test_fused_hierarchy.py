"""The fused path of the L-layer models (:mod:`vaelab.inference.fused_hierarchy`) equals the
traced Pyro path on the same draws: per point log w and log p̂ for the bottom_up, top_down and
ladder guides, with and without skip, a VampPrior on z_2 (top_down), a normal likelihood and
three layers, K in chunks that do not divide it; log w = log p(x) at every draw of the exact
guide of a linear-Gaussian hierarchy; the fused log joint of AIS equals the traced
one in value and gradient, from the prior and from the guide, and gives the traced AIS run.
Float tolerances only (float32: rtol 1e-5, and atol 1e-5 nats where terms of O(10) nats cancel
to a log weight near 0; float64: 1e-12): the fused path sums the same terms in another order
and splits the top_down guide's first layer (no Monte Carlo error: the draws are the same, a
different draw would move a log weight by O(1) nats)."""

import pytest
import torch

from fused_pairs import ais_runs, estimates
from vaelab.inference.ais import LogJoint
from vaelab.inference.fast_ais import FusedLogJoint
from vaelab.inference.fused import fused_log_weights
from vaelab.inference.importance import log_weights
from vaelab.resolve import resolve
from vaelab.vae import build_vae

D = 10
MLP = {"name": "mlp", "hidden_sizes": [5], "activation": "tanh"}
LAYER = {"latent_dim": 2, "network": MLP}

CASES = {f"{h}{'_skip' if skip else ''}": {"guide": {"hierarchy": h}, "model": {"skip": skip}}
         for h in ("bottom_up", "top_down", "ladder") for skip in (False, True)}
CASES.update({
    "top_down_vamp_prior": {"guide": {"hierarchy": "top_down"},
                            "model": {"prior": {"name": "vamp", "components": 3}}},
    "ladder_normal_likelihood": {"guide": {"hierarchy": "ladder"},
                                 "model": {"likelihood": {"name": "normal", "scale": 0.4}}},
    "bottom_up_three_layers": {"guide": {"hierarchy": "bottom_up"},
                               "model": {"layers": [LAYER, {"latent_dim": 2, "network": MLP}]}},
    "top_down_three_layers_log_var": {
        "guide": {"hierarchy": "top_down", "family": {"name": "normal", "scale": "log_var"}},
        "model": {"layers": [LAYER, {"latent_dim": 2, "network": MLP}]}},
    # q(z_1 | x, z_2) a gated network: no first layer to split, the network on [x, z_2]
    "top_down_gated_guide": {"guide": {"hierarchy": "top_down",
                                       "encoder": {"name": "gated", "hidden_sizes": [7]}},
                             "model": {}},
})


def _vae_and_data(case: str, dtype=torch.float32):
    torch.manual_seed(0)
    model = {"latent_dim": 3, "hidden_sizes": [7], "activation": "tanh",
             "likelihood": "bernoulli", "layers": [LAYER], **CASES[case]["model"]}
    raw = {"model": model, "guide": {"hidden_sizes": [7], **CASES[case]["guide"]}}
    vae = build_vae(resolve(raw), D).to(dtype)
    vae.eval()
    g = torch.Generator().manual_seed(1)
    if "normal" in str(model["likelihood"]):
        return vae, torch.randn(5, D, generator=g, dtype=dtype)
    return vae, torch.rand(5, D, generator=g, dtype=dtype).round()


def _traced(vae, x, k):
    model, guide = vae.eval_pair()
    with torch.no_grad():
        lw = log_weights(model, guide, k, x)
    return lw.local + lw.global_.unsqueeze(-1)  # (k, B)


@pytest.mark.parametrize("case", list(CASES))
def test_fused_log_weights_equal_the_traced_ones_on_the_same_draws(case):
    vae, x = _vae_and_data(case)
    fused = fused_log_weights(vae)
    assert fused is not None
    torch.manual_seed(7)
    ref = _traced(vae, x, 40)
    torch.manual_seed(7)
    ours = fused(x, 40)  # (40, 5)
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-5)
    torch.manual_seed(7)
    torch.testing.assert_close(fused(x, 40), ours, rtol=0.0, atol=0.0)  # the cached encoder


@pytest.mark.parametrize("hierarchy", ["bottom_up", "top_down", "ladder"])
def test_exact_guide_gives_log_px_at_every_fused_draw(hierarchy):
    """The linear-Gaussian hierarchy with every guide at the exact posterior
    (tests/hier_ground_truth.py): log w = log p(x) in closed form at each of 200 draws × 5
    points, float64 (1e-9)."""
    from hier_ground_truth import make_hier

    vae, truth = make_hier(hierarchy)
    x = truth.sample_x(5)
    log_w = fused_log_weights(vae)(x, 200)  # (200, 5)
    want = truth.log_px(x)
    torch.testing.assert_close(log_w, want.expand_as(log_w), rtol=0.0, atol=1e-9)


def test_float64_log_weights_agree_to_1e_12():
    vae, x = _vae_and_data("ladder_skip", torch.float64)
    torch.manual_seed(7)
    ref = _traced(vae, x, 30)
    torch.manual_seed(7)
    torch.testing.assert_close(fused_log_weights(vae)(x, 30), ref, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("case", ["bottom_up", "top_down_skip", "ladder",
                                  "top_down_vamp_prior"])
def test_fused_estimate_equals_the_traced_estimate_per_point(case):
    """K = 50 in chunks of 7 (the last one 1), batches of 2 points: the same log p̂ and ESS per
    point as the traced estimate on the same draws."""
    vae, x = _vae_and_data(case)
    a, b = estimates(vae, x, num_samples=50, batch_size=2, chunk_size=7)
    torch.testing.assert_close(b.log_px, a.log_px, rtol=1e-5, atol=0.0)
    torch.testing.assert_close(b.ess, a.ess, rtol=1e-4, atol=0.0)


def test_no_fused_path_where_the_hierarchy_is_not_covered():
    """A likelihood without a fused path, a clamped Bernoulli: ``None``, the traced path."""
    for likelihood in ("beta", {"name": "bernoulli", "clamp": 1e-3}):
        raw = {"model": {"latent_dim": 3, "hidden_sizes": [7], "layers": [LAYER],
                         "likelihood": likelihood}, "guide": {"hidden_sizes": [7]}}
        assert fused_log_weights(build_vae(resolve(raw), D)) is None, likelihood


def _terms(lj, z):
    t = lj(z)
    return t.log_f0, t.log_fT, t.grad_f0, t.grad_fT


@pytest.mark.parametrize("base", ["prior", "guide"])
@pytest.mark.parametrize("case", ["bottom_up", "top_down_skip", "ladder",
                                  "top_down_vamp_prior"])
def test_fused_log_joint_value_and_gradient_equal_the_traced_ones(case, base):
    """At z = [z_1, z_2] (C = 3 chains of 5 points, the traced layout: sites by name), log f_0,
    log f_T and their gradients in z (rtol 1e-5)."""
    vae, x = _vae_and_data(case)
    model, guide = vae.eval_pair()
    traced = LogJoint(model, guide, (x,), {}, 3, base)
    ours = FusedLogJoint(vae, x, num_chains=3, base=base)
    assert ours.layered
    torch.manual_seed(2)
    z = traced.sample_base()  # (3, 5, 3 + 2)
    torch.manual_seed(2)
    assert torch.equal(ours.sample_base(), z) and traced.sites == ["z_1", "z_2"]
    z = z + 0.3 * torch.randn_like(z)  # away from the draw
    for a, b in zip(_terms(ours, z), _terms(traced, z)):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("base", ["prior", "guide"])
def test_fused_log_joint_gives_the_traced_ais_run(base):
    vae, x = _vae_and_data("top_down")
    traced, ours = ais_runs(vae, x, 3, base, num_steps=6, num_leapfrog=3, init_step_size=0.3)
    torch.testing.assert_close(ours.log_w, traced.log_w, rtol=1e-5, atol=0.0)
    torch.testing.assert_close(ours.z, traced.z, rtol=1e-5, atol=0.0)
    assert 0.0 < float(traced.acceptance.mean()) < 1.0  # moves were proposed and judged


def test_fused_log_joint_falls_back_to_the_traced_terms_where_not_covered():
    """A ladder whose merge reads other conditionals than the model's: the traced terms."""
    vae, x = _vae_and_data("ladder")
    vae.inference.merges[0]._prior = None  # no longer the model's p(z_1 | z_2)
    lj = FusedLogJoint(vae, x, num_chains=2)
    assert not lj.layered and fused_log_weights(vae) is None


def test_bdmc_with_the_fused_log_joint_gives_the_traced_bounds():
    """BDMC on 4 simulated points of a two-layer model (T = 5, C = 3, L = 2), the fused log
    joint built per batch and direction: the same simulated x and forward (lower) and reverse
    (upper) bounds per point as the traced BDMC on the same draws (rtol 1e-5)."""
    from vaelab.inference.bdmc import bdmc

    vae, _ = _vae_and_data("ladder_skip")
    model, guide = vae.eval_pair()
    runs = []
    for factory in (None, lambda xb: FusedLogJoint(vae, xb, 3, "prior")):
        torch.manual_seed(7)
        runs.append(bdmc(model, guide, torch.zeros(4, D), num_steps=5, num_chains=3,
                         num_leapfrog=2, batch_size=4, init_step_size=0.3,
                         log_joint_for=factory))
    traced, ours = runs
    torch.testing.assert_close(ours.x, traced.x, rtol=0.0, atol=0.0)
    torch.testing.assert_close(ours.lower, traced.lower, rtol=1e-5, atol=0.0)
    torch.testing.assert_close(ours.upper, traced.upper, rtol=1e-5, atol=0.0)
    assert bool((traced.gap != 0).all())  # the bounds differ: the comparison is not vacuous


@pytest.mark.parametrize("scale,bounds", [("log_var", (None, None)), ("log_var", (-6.0, 2.0)),
                                          ("softplus", (None, None))])
def test_log_normal_equals_normal_log_prob_with_the_heads_log_scale(scale, bounds):
    """log_normal from u = (z − μ)/σ and the head's log σ (``loc_scale_log``, no ``log`` for the
    log_var rule) = ``Normal(μ, σ).log_prob(z).sum(-1)`` in float64 to 1e-12, on raw outputs
    wide enough that the [−6, 2] clamp bites (1000 rows of d = 7); at the guide's own draw
    z = μ + σ ε, u is ε; and a normal prior's log density (the standard one's shortcut, a
    learned one's standardizing pass) equals its log_prob."""
    from torch.distributions import Normal

    from vaelab.guide.posteriors import NormalPosterior
    from vaelab.inference.fused_hierarchy import log_normal, prior_density
    from vaelab.model.priors import LearnedNormalPrior, StandardNormalPrior

    g = torch.Generator().manual_seed(0)
    head = NormalPosterior(7, 1e-3, scale, *bounds)
    h = 4.0 * torch.randn(1000, 14, generator=g, dtype=torch.float64)
    loc, sigma, log_sigma = head.loc_scale_log(h)
    want_loc, want_sigma = head.loc_scale(h)
    assert torch.equal(loc, want_loc) and torch.equal(sigma, want_sigma)
    torch.testing.assert_close(log_sigma, want_sigma.log(), rtol=1e-12, atol=1e-12)
    if bounds[0] is not None:
        assert bool((log_sigma == -3.0).any()) and bool((log_sigma == 1.0).any())  # clamped
    z = torch.randn(1000, 7, generator=g, dtype=torch.float64)
    want = Normal(loc, sigma).log_prob(z).sum(-1)
    got = log_normal((z - loc) / sigma, log_sigma.sum(-1))
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    eps = torch.randn(1000, 7, generator=g, dtype=torch.float64)
    at_draw = Normal(loc, sigma).log_prob(loc + eps * sigma).sum(-1)
    torch.testing.assert_close(log_normal(eps, log_sigma.sum(-1)), at_draw, rtol=1e-10, atol=1e-10)
    learned = LearnedNormalPrior(7).double()
    with torch.no_grad():  # away from N(0, I), so that the shortcut would be wrong
        learned.loc.normal_(generator=g)
        learned.raw_scale.normal_(generator=g)
    for prior in (StandardNormalPrior(7).double()(None), learned(None)):
        torch.testing.assert_close(prior_density(prior)(z), prior.log_prob(z), rtol=1e-12,
                                   atol=1e-12)
