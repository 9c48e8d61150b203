"""The straight-through estimators of vaelab.guide.straight_through against ground truth.

Ground truth: the exact gradient of the discrete ELBO by enumeration of the K^N = 9 joint states
(``enumerated_elbo`` + autograd) of a tiny model (N = 2 variables, K = 3 classes, D = 6, float64);
the exact expectation over D of the estimators that are deterministic given D (GST, ReinMax);
the exact conditional law of the Gumbels given the argmax. Gradients are of the encoder (where
the estimators differ) unless said otherwise. Seeds are fixed (conftest); every Monte Carlo
assertion states its draws and tolerance.
"""

import math

import pytest
import torch
from _st_helpers import (
    FAMILIES,
    exact_gradient,
    expected_estimate,
    gr_family,
    mc_draws,
    relative_bias,
    tiny_vae,
    total_variance,
)
from _st_helpers import data as tiny_data
from scipy import stats

from vaelab.guide.straight_through.gapped import gapped_logits
from vaelab.guide.straight_through.gr_mck import (
    CHUNK,
    conditional_gumbel,
    conditional_logit_gap,
    gr_mck,
)
from vaelab.registry import ConfigError
from vaelab.resolve import load_config
from vaelab.runs.train import train

R, M = 20, 200  # repeats × draws per repeat: 4000 one-draw gradients per mean


def z_close(a: torch.Tensor, b: torch.Tensor, z: float = 4.5) -> bool:
    """Means of two ``(R, P)`` draw sets agree coordinate-wise within z combined standard errors
    (+1e-9). 4.5 σ over 42 near-normal coordinates: about 3e-4 chance of a false failure."""
    se = (a.var(0) / a.shape[0] + b.var(0) / b.shape[0]).sqrt()
    return bool(((a.mean(0) - b.mean(0)).abs() <= z * se + 1e-9).all())


def z_close_to(a: torch.Tensor, truth: torch.Tensor, z: float = 4.5) -> bool:
    """The mean of ``a (R, P)`` is within z standard errors (+1e-9) of ``truth`` everywhere."""
    se = a.std(0) / math.sqrt(a.shape[0])
    return bool(((a.mean(0) - truth).abs() <= z * se + 1e-9).all())


# --------------------------------------------------------------------------------------------
# GR-MCK


@pytest.mark.parametrize("k", [1, 10, 100])
def test_gr_mck_has_the_expectation_of_st_gumbel_softmax(k):
    """Rao-Blackwellization keeps the mean: GR-MCK's mean gradient equals ST-GS's for every K
    (R × M = 4000 draws each, 4.5 combined standard errors per coordinate, τ = 0.5)."""
    x = tiny_data()
    st, st_cfg = tiny_vae(FAMILIES["straight_through"], tau=0.5)
    gr, gr_cfg = tiny_vae(gr_family(k), tau=0.5)
    assert z_close(mc_draws(gr, gr_cfg, x, R, M), mc_draws(st, st_cfg, x, R, M, seed=900))


def test_gr_mck_lowers_the_variance_of_st_gumbel_softmax():
    """At K = 100 and τ = 0.5 the total variance of a one-draw encoder gradient is below half of
    ST-GS's (200 one-draw gradients each; measured ratio 0.18; the variance estimate of a sum
    of 42 coordinates from 200 draws is good to ~10 %, far from the margin), and K = 1 has
    ST-GS's law (ratio within 0.75..1.33, measured 0.93)."""
    x = tiny_data()
    st, st_cfg = tiny_vae(FAMILIES["straight_through"], tau=0.5)
    var_st = total_variance(mc_draws(st, st_cfg, x, 200, 1))
    ratio = {}
    for k in (1, 100):
        gr, gr_cfg = tiny_vae(gr_family(k), tau=0.5)
        ratio[k] = total_variance(mc_draws(gr, gr_cfg, x, 200, 1, seed=500)) / var_st
    print(f"\nvariance GR-MCK / ST-GS at tau = 0.5: K=1 {ratio[1]:.3f}, K=100 {ratio[100]:.3f}")
    assert ratio[100] < 0.5
    assert 0.75 < ratio[1] < 1.33


@pytest.mark.parametrize("dtype,classes,tol", [(torch.float64, 2, 1e-12), (torch.float64, 3, 1e-12),
                                               (torch.float32, 2, 1e-5)])
def test_gr_mck_moments_give_the_gradient_through_the_k_softmaxes(dtype, classes, tol):
    """GR-MCK's Jacobian from the two moments of s_k equals autograd through
    (1/K) Σ_k softmax((θ + G_k)/τ) on the same draws, value and vector-Jacobian product: the
    conditional Gumbels for C = 3, and for C = 2, where only the gap G_1 − G_0 = Δ − a counts,
    the conditional logit gaps (G = (0, Δ − a)); K = 150 > 2 CHUNK, so the chunks' draws must
    continue one stream (20 variables, tolerance 1e-12 in float64, 1e-5 in float32)."""
    assert 150 > 2 * CHUNK
    g = torch.Generator().manual_seed(0)
    logits = (2.0 * torch.randn(5, 4, classes, generator=g, dtype=dtype)).requires_grad_()
    one_hot = torch.nn.functional.one_hot(
        torch.multinomial(logits.detach().softmax(-1).view(-1, classes), 1, generator=g).view(5, 4),
        classes).to(dtype)
    tau, v = torch.tensor(0.4, dtype=dtype), torch.randn(5, 4, classes, generator=g, dtype=dtype)
    torch.manual_seed(1)
    if classes == 2:
        a = (logits[..., 1] - logits[..., 0]).detach()
        gap = conditional_logit_gap(logits, one_hot, 150) - a  # (150, 5, 4): G_1 − G_0
        g_k = torch.stack([torch.zeros_like(gap), gap], -1)
    else:
        g_k = conditional_gumbel(logits, one_hot, 150)
    ref = ((logits + g_k) / tau).softmax(-1).mean(0)
    grad_ref, = torch.autograd.grad((ref * v).sum(), logits)
    torch.manual_seed(1)
    ours = gr_mck(logits, one_hot, tau, 150)
    grad, = torch.autograd.grad((ours * v).sum(), logits)
    torch.testing.assert_close(ours, ref, rtol=tol, atol=tol)
    torch.testing.assert_close(grad, grad_ref, rtol=tol, atol=tol)
    assert float(grad.abs().max()) > 1e-3  # a gradient that is there


def test_conditional_gumbels_follow_the_exact_conditional_law():
    """G | argmax(θ + G) = i, n = 4000 draws, i a non-maximal class: every draw has argmax i;
    U_i = θ_i + G_i − log Z is Gumbel(0, 1), and for j ≠ i the probability-integral transform
    F_j(U_j) / F_j(U_i) of the truncated Gumbel(θ_j) (F_j(u) = exp(−e^{θ_j − u})) is uniform:
    four Kolmogorov-Smirnov tests at p > 1e-3 each (4e-3 chance of a false failure in all)."""
    theta = torch.tensor([1.0, -0.5, 0.3, 0.0], dtype=torch.float64)
    i, n = 1, 4000
    one_hot = torch.nn.functional.one_hot(torch.tensor(i), 4).to(theta.dtype)
    torch.manual_seed(3)
    u = theta + conditional_gumbel(theta, one_hot, n)  # (n, 4) perturbed logits
    assert bool((u.argmax(-1) == i).all())
    top = u[:, i]
    assert stats.kstest((top - theta.logsumexp(0)).numpy(), "gumbel_r").pvalue > 1e-3
    for j in (0, 2, 3):
        pit = (torch.exp(-torch.exp(theta[j] - u[:, j]))
               / torch.exp(-torch.exp(theta[j] - top))).numpy()
        assert stats.kstest(pit, "uniform").pvalue > 1e-3, j


@pytest.mark.parametrize("a,cls", [(0.7, 1), (0.7, 0), (-3.0, 1), (6.0, 0)])
def test_conditional_logit_gaps_follow_the_truncated_logistic(a, cls):
    """C = 2: Δ = U_1 − U_0 given D is a + logistic truncated to D's side of 0 (likely and
    unlikely D, b = s·a from −6 to 3): with s = ±1 for D = 1 / 0 and b = s a, sΔ > 0 always and
    its CDF is (σ(x − b) − σ(−b)) / σ(b); one Kolmogorov-Smirnov test at p > 1e-3 per case on
    n = 4000 float64 draws (4e-3 chance of a false failure over the four)."""
    theta = torch.tensor([0.0, a], dtype=torch.float64)
    one_hot = torch.nn.functional.one_hot(torch.tensor(cls), 2).to(theta.dtype)
    torch.manual_seed(4)
    s, b = (1.0 if cls else -1.0), (a if cls else -a)
    x = s * conditional_logit_gap(theta, one_hot, 4000)
    assert bool((x > 0).all())
    sig = torch.sigmoid

    def cdf(v):
        v = torch.as_tensor(v, dtype=torch.float64)
        return ((sig(v - b) - sig(torch.tensor(-b))) / sig(torch.tensor(b))).numpy()

    assert stats.kstest(x.numpy(), cdf).pvalue > 1e-3


def test_conditional_logit_gaps_stay_finite_and_on_their_side_at_extreme_logits():
    """float32, |a| = 100 (σ(−b) underflows for the likely class, σ(b) for the unlikely one) and
    5000 draws: every gap finite and on D's side of 0 (≥ 0 for D = 1, ≤ 0 for D = 0); the likely
    side's gaps are about a + logistic noise (mean within 0.5 of a), the unlikely side's an
    Exp(1) tail (mean within 0.1 of 1: se 0.014)."""
    torch.manual_seed(5)
    for a in (100.0, -100.0):
        theta = torch.tensor([[0.0, a]])
        for cls in (0, 1):
            one_hot = torch.nn.functional.one_hot(torch.tensor([cls]), 2).float()
            s = 1.0 if cls else -1.0
            x = s * conditional_logit_gap(theta, one_hot, 5000)[:, 0]
            assert bool(torch.isfinite(x).all()) and bool((x >= 0).all())
            if s * a > 0:
                assert abs(float(x.mean()) - abs(a)) < 0.5
            else:
                assert abs(float(x.mean()) - 1.0) < 0.1


# --------------------------------------------------------------------------------------------
# ReinMax


def test_reinmax_is_exact_where_heun_is_exact():
    """Liu et al. (2023): ReinMax is second-order accurate (Heun's method), so at τ = 1 its
    expectation is the exact gradient whenever the decoder's log-likelihood is quadratic in the
    one-hot z: a linear decoder with a Normal likelihood. Checked exactly (enumerating D, every
    parameter, atol 1e-10), and through the public `trace` objective (R × M = 4000 draws, 4.5
    standard errors per coordinate). ST-GS on the same model is measurably biased (its relative
    bias > 20 standard errors of its mean), and ReinMax at τ = 2 is no longer exact."""
    x = tiny_data(linear_gaussian=True)
    vae, cfg = tiny_vae(FAMILIES["reinmax"], tau=1.0, linear_gaussian=True)
    truth = exact_gradient(vae, x)
    assert torch.allclose(expected_estimate(vae, x, "reinmax", 1.0), truth, atol=1e-10)
    assert z_close_to(mc_draws(vae, cfg, x, R, M), truth)
    st, st_cfg = tiny_vae(FAMILIES["straight_through"], tau=1.0, linear_gaussian=True)
    draws = mc_draws(st, st_cfg, x, R, M)
    se = float((draws.std(0) / math.sqrt(R)).norm() / truth.norm())
    assert relative_bias(draws.mean(0), truth) > 20 * se
    hot, _ = tiny_vae(FAMILIES["reinmax"], tau=2.0, linear_gaussian=True)
    assert relative_bias(expected_estimate(hot, x, "reinmax", 2.0), truth) > 1e-3


def test_reinmax_refuses_a_temperature_below_one():
    """The authors' code raises for τ < 1; so does the family, in one line."""
    with pytest.raises(ConfigError, match="temperature >= 1"):
        tiny_vae(FAMILIES["reinmax"], tau=0.5)


# --------------------------------------------------------------------------------------------
# GST


@pytest.mark.parametrize("gap", [1.0, "p"])
def test_gapped_logits_are_consistent_and_gapped(gap):
    """Fan et al. (2022)'s two properties, exactly: the moved logits' argmax is the sample D
    (consistency), at least δ above every other class (the gap); the sampled class is not moved
    below the maximum, and classes already δ below it are not moved."""
    torch.manual_seed(0)
    theta = 2.0 * torch.randn(500, 5, dtype=torch.float64)
    one_hot = torch.nn.functional.one_hot(torch.randint(0, 5, (500,)), 5).to(theta.dtype)
    moved = gapped_logits(theta, one_hot, gap)
    top = (moved * one_hot).sum(-1)
    rest = moved.masked_fill(one_hot.bool(), -math.inf).max(-1).values
    if gap == "p":
        p = (one_hot * theta.softmax(-1)).sum(-1) * (1 - 1e-5)
        delta = -torch.log1p(-p) / p
    else:
        delta = torch.full_like(top, gap)
    assert bool((moved.argmax(-1) == one_hot.argmax(-1)).all())
    assert bool((top - rest >= delta - 1e-12).all())
    assert torch.allclose(top, theta.max(-1).values)
    far = (theta <= theta.max(-1, keepdim=True).values - delta.unsqueeze(-1)) & ~one_hot.bool()
    assert torch.equal(moved[far], theta[far])


# --------------------------------------------------------------------------------------------
# bias against the exact gradient, all estimators


def test_bias_against_the_exact_gradient():
    """Relative bias ‖E ĝ − ∇L‖ / ‖∇L‖ of each estimator on the Bernoulli model (MLP decoder),
    printed. ST-GS and GR-MCK: Monte Carlo (R × M = 4000 draws); GST and ReinMax: exact over D,
    and their Monte Carlo mean through `trace` agrees with it (4.5 standard errors per
    coordinate). Asserted: GR-MCK's bias equals ST-GS's (4.5 combined standard errors per
    coordinate, the claim of Paulus et al. 2021); every estimator here is biased (bias above 5
    standard errors of its mean, or above 1e-3 for the exact ones); none is far off (< 5 %)."""
    x, lines = tiny_data(), []
    for tau in (1.0, 0.5):
        st, st_cfg = tiny_vae(FAMILIES["straight_through"], tau=tau)
        truth = exact_gradient(st, x)
        st_draws = mc_draws(st, st_cfg, x, R, M)
        gr, gr_cfg = tiny_vae(gr_family(100), tau=tau)
        gr_draws = mc_draws(gr, gr_cfg, x, R, M, seed=700)
        assert z_close(gr_draws, st_draws)
        bias = {"straight_through": relative_bias(st_draws.mean(0), truth),
                "gr_mck (K=100)": relative_bias(gr_draws.mean(0), truth)}
        for draws in (st_draws, gr_draws):
            se = float((draws.std(0) / math.sqrt(R)).norm() / truth.norm())
            assert relative_bias(draws.mean(0), truth) > 5 * se
        for name in ("gapped_st", "reinmax")[: 2 if tau >= 1 else 1]:
            vae, cfg = tiny_vae(FAMILIES[name], tau=tau)
            exact_mean = expected_estimate(vae, x, name, tau)
            assert z_close_to(mc_draws(vae, cfg, x, R, M), exact_mean)
            bias[name] = relative_bias(exact_mean, truth)
            assert bias[name] > 1e-3
        assert max(bias.values()) < 0.05
        lines += [f"tau={tau} {name}: relative bias {b:.4f}" for name, b in bias.items()]
    print("\n" + "\n".join(lines))


# --------------------------------------------------------------------------------------------
# configuration and training


@pytest.mark.parametrize("family, match", [
    ('{name = "relaxed", estimator = "reinmax"}', "needs kl = 'categorical'"),
    ('{name = "relaxed", kl = "categorical", hard = true, estimator = "gr_mck"}', "hard = true"),
    ('{name = "relaxed", kl = "categorical", estimator = "reinmax", num_gumbels = 5}',
     "num_gumbels is an option of estimator = 'gr_mck'"),
    ('{name = "relaxed", kl = "categorical", estimator = "gapped_st", gap = 0.0}', "gap = 0.0"),
    ('{name = "relaxed", kl = "categorical", estimator = "gr_mck", num_gumbels = 0}',
     "num_gumbels"),
    ('{name = "relaxed", kl = "categorical", estimator = "rein_max"}', "estimator"),
])
def test_invalid_combinations_are_one_line_config_errors(family, match):
    with pytest.raises(ConfigError, match=match) as err:
        load_config(None, ["data.name=synthetic", "model.prior=categorical",
                           'model.latent={name = "categorical", num_variables = 2, '
                           'num_classes = 3}', f"guide.family={family}"])
    assert "\n" not in str(err.value)


def test_hard_is_the_straight_through_estimator_bit_for_bit():
    """``hard = true`` and ``estimator = "straight_through"`` build the same model: the same loss
    and gradients under one seed, to the bit."""
    x = tiny_data()
    out = []
    for family in (FAMILIES["straight_through"],
                   '{name = "relaxed", kl = "categorical", estimator = "straight_through"}'):
        vae, cfg = tiny_vae(family, tau=0.5)
        out.append(mc_draws(vae, cfg, x, 1, 3))
    assert torch.equal(out[0], out[1])


@pytest.mark.parametrize("estimator", [
    'estimator = "gapped_st"', 'estimator = "gapped_st", gap = "p"',
    'estimator = "gr_mck", num_gumbels = 4', 'estimator = "reinmax"',
])
def test_each_estimator_trains_two_steps(estimator, tiny_cfg_overrides, tmp_path):
    """Two steps on seeded synthetic data through ``train`` (validation on): finite losses."""
    cfg = load_config(None, [
        *tiny_cfg_overrides, "model.prior=categorical",
        'model.latent={name = "categorical", num_variables = 2, num_classes = 3, '
        'temperature = 1.0}',
        f'guide.family={{name = "relaxed", kl = "categorical", {estimator}}}',
        "train.epochs=1", "train.max_steps_per_epoch=2",
    ])
    result = train(cfg, tmp_path / "run")
    assert math.isfinite(result.history[-1]["train_loss"])
    assert math.isfinite(result.history[-1]["valid_elbo"])


def test_site_value_is_one_hot_forward():
    """The decoder input of every estimator is exactly one-hot in the forward pass."""
    x = tiny_data()
    for family in (*FAMILIES.values(), gr_family(3)):
        vae, _ = tiny_vae(family)
        z = vae.guide(x, 1.0, vae.latent.temperature_at(0))
        inp = vae.latent.decoder_input(z).reshape(x.shape[0], 2, 3)
        assert torch.equal(inp.sum(-1), torch.ones(x.shape[0], 2, dtype=inp.dtype))
        assert bool(((inp == 0) | (inp == 1)).all())


