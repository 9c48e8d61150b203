"""AIS with the untraced log joint (:mod:`vaelab.inference.fast_ais`) equals AIS with the traced
one on the same draws: per chain and point, the final log weights, acceptance and states to
float32 rounding (rtol 1e-5; the Bernoulli term is summed in another order, which on these
seeds flips no accept decision), from the prior and from the guide, for a Bernoulli and a
normal likelihood."""

import pytest
import torch

from fused_pairs import ais_runs
from vaelab.inference.fast_ais import FusedLogJoint
from vaelab.resolve import resolve
from vaelab.vae import build_vae

D = 10


def _vae(likelihood):
    torch.manual_seed(0)
    raw = {"model": {"latent_dim": 3, "hidden_sizes": [8], "likelihood": likelihood,
                     "activation": "tanh"}, "guide": {"hidden_sizes": [8]}}
    vae = build_vae(resolve(raw), D)
    vae.eval()
    g = torch.Generator().manual_seed(1)
    x = torch.rand(4, D, generator=g).round() if likelihood == "bernoulli" else torch.randn(
        4, D, generator=g)
    return vae, x


@pytest.mark.parametrize("base", ["prior", "guide"])
@pytest.mark.parametrize("likelihood", ["bernoulli", {"name": "normal", "scale": 0.5}])
def test_fused_log_joint_gives_the_traced_ais_run(base, likelihood):
    vae, x = _vae(likelihood)
    traced, ours = ais_runs(vae, x, 3, base, num_steps=8, num_leapfrog=3)
    torch.testing.assert_close(ours.log_w, traced.log_w, rtol=1e-5, atol=0.0)
    torch.testing.assert_close(ours.z, traced.z, rtol=1e-5, atol=0.0)
    torch.testing.assert_close(ours.acceptance, traced.acceptance, rtol=1e-5, atol=0.0)
    assert 0.0 < float(traced.acceptance.mean()) < 1.0  # moves were proposed and judged


def test_fused_log_joint_refuses_a_discrete_latent():
    raw = {"model": {"latent": "categorical", "prior": "categorical", "hidden_sizes": [8]}}
    vae = build_vae(resolve(raw), D)
    with pytest.raises(ValueError, match="continuous"):
        FusedLogJoint(vae, torch.zeros(2, D), num_chains=2)


def test_estimate_marginal_ais_takes_a_log_joint_per_batch():
    """Two batches of 2 points, the fused log joint built per batch: the same per-point log p̂
    as the traced run on the same draws (rtol 1e-5)."""
    from vaelab.inference.ais import estimate_marginal_ais

    vae, x = _vae("bernoulli")
    model, guide = vae.eval_pair()
    runs = []
    for factory in (None, lambda xb: FusedLogJoint(vae, xb, 3, "prior")):
        torch.manual_seed(6)
        runs.append(estimate_marginal_ais(model, guide, x, num_steps=5, num_chains=3,
                                          batch_size=2, num_leapfrog=2, log_joint_for=factory))
    torch.testing.assert_close(runs[1].log_px, runs[0].log_px, rtol=1e-5, atol=0.0)


@pytest.mark.parametrize("likelihood", ["bernoulli", {"name": "normal", "scale": 0.5}])
def test_bdmc_with_the_fused_log_joint_gives_the_traced_bounds(likelihood):
    """BDMC on 5 simulated points in batches of 3 (T = 6, C = 3, L = 2), the fused log joint
    built per batch and direction: the same simulated (z, x), forward (lower) and reverse
    (upper) bounds per point as the traced BDMC on the same draws (rtol 1e-5; deterministic
    given the seed, so no Monte Carlo tolerance)."""
    from vaelab.inference.bdmc import bdmc

    vae, _ = _vae(likelihood)
    model, guide = vae.eval_pair()
    x_like = torch.zeros(5, D)
    runs = []
    for factory in (None, lambda xb: FusedLogJoint(vae, xb, 3, "prior")):
        torch.manual_seed(7)
        runs.append(bdmc(model, guide, x_like, num_steps=6, num_chains=3, num_leapfrog=2,
                         batch_size=3, log_joint_for=factory))
    traced, ours = runs
    torch.testing.assert_close(ours.x, traced.x, rtol=0.0, atol=0.0)
    torch.testing.assert_close(ours.lower, traced.lower, rtol=1e-5, atol=0.0)
    torch.testing.assert_close(ours.upper, traced.upper, rtol=1e-5, atol=0.0)
    assert 0.0 < ours.extra["acceptance_reverse"] < 1.0  # the reverse chains moved
    assert bool((traced.gap != 0).all())  # the bounds differ: the comparison is not vacuous


@pytest.mark.parametrize("base", ["prior", "guide"])
@pytest.mark.parametrize("prior", ["standard_normal", "normal", "vamp", "mog", "flow"])
def test_fused_terms_equal_the_traced_ones_for_every_prior(prior, base):
    """At z away from the base draw (C = 3 chains of 4 points, latent 3), log f_0, log f_T and
    their gradients in z equal the traced LogJoint's (rtol 1e-5): the prior, decided once per
    batch (a learned one's mixture or flow included), and the one backward pass that returns
    each term's gradient separately."""
    from vaelab.inference.ais import LogJoint

    torch.manual_seed(0)
    raw = {"model": {"latent_dim": 3, "hidden_sizes": [8], "prior": prior,
                     "activation": "tanh"}, "guide": {"hidden_sizes": [8]}}
    vae = build_vae(resolve(raw), D)
    vae.eval()
    if prior == "normal":  # away from its initial N(0, I): the closed form's σ ≠ 1, μ ≠ 0
        with torch.no_grad():
            for p in vae.generative.prior.parameters():
                p.add_(0.3 * torch.randn_like(p))
    x = torch.rand(4, D, generator=torch.Generator().manual_seed(1)).round()
    model, guide = vae.eval_pair()
    traced, ours = LogJoint(model, guide, (x,), {}, 3, base, "z"), FusedLogJoint(vae, x, 3, base)
    assert ours.fused
    torch.manual_seed(2)
    z = traced.sample_base()
    torch.manual_seed(2)
    assert torch.equal(ours.sample_base(), z)
    z = z + 0.3 * torch.randn_like(z)
    a, b = ours(z), traced(z)
    for name in ("log_f0", "log_fT", "grad_f0", "grad_fT"):
        torch.testing.assert_close(getattr(a, name), getattr(b, name), rtol=1e-5, atol=1e-6)
    assert not torch.allclose(a.grad_f0, a.grad_fT)  # f_0 and f_T differ: not vacuous
