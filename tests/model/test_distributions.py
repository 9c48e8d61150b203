"""Tests of :mod:`vaelab.model.distributions` against exact references.

References used: mpmath at 50 digits for the discretized-logistic bin masses, scipy's logistic
for edge bins and for the binary Concrete closed form, numerical quadrature for the normalization
of the relaxed density, torch's own ExpRelaxedCategorical / Categorical / kl_divergence.
Every Monte Carlo assertion names its sample size and tolerance (in standard errors, "SE").
"""

from __future__ import annotations

import math

import mpmath
import numpy as np
import pyro
import pyro.distributions as dist
import pytest
import scipy.stats
import torch
import torch.nn.functional as F
from pyro import poutine
from torch.distributions import kl_divergence
from torch.distributions.relaxed_categorical import (
    ExpRelaxedCategorical as TorchExpRelaxedCategorical,
)

from vaelab.model.distributions import (
    DiscretizedLogistic,
    ExpRelaxedCategorical,
    PixelCategorical,
    UnitGrid,
    exponential,
    kl_categorical,
    soft,
    straight_through,
)

L = 256
DELTA = 1.0 / (L - 1)


@pytest.fixture(autouse=True)
def _seed():
    """tests/conftest.py resets Pyro's state and turns validation on; this pins the torch seed."""
    torch.manual_seed(0)


# --------------------------------------------------------------------------------------------
# DiscretizedLogistic
# --------------------------------------------------------------------------------------------

LOCS = [-5.0, -0.3, 0.0, 0.2, 0.5, 0.77, 1.0, 1.7, 10.0]
SCALES = [1e-3, 1e-2, 0.1, 1.0, 10.0]


def _mp_log_mass(k: int, loc: float, scale: float, num_levels: int = L) -> float:
    """log P(k) at 50 digits, directly from the logistic CDF (no factorization).

    Right of the location the survival function is differenced instead of the CDF so that the
    difference is between two small, exactly representable numbers (mpmath has no underflow).
    """
    with mpmath.workdps(50):
        d = mpmath.mpf(1) / (num_levels - 1)
        x = mpmath.mpf(k) * d
        mu, s = mpmath.mpf(loc), mpmath.mpf(scale)
        a, b = (x + d / 2 - mu) / s, (x - d / 2 - mu) / s

        def cdf(t):
            return 1 / (1 + mpmath.exp(-t))

        if k == 0:
            return float(mpmath.log(cdf(a)))
        if k == num_levels - 1:
            return float(mpmath.log(cdf(-b)))
        if b <= 0:
            return float(mpmath.log(cdf(a) - cdf(b)))
        return float(mpmath.log(cdf(-b) - cdf(-a)))


@pytest.mark.parametrize("dtype, tol", [(torch.float32, 1e-5), (torch.float64, 1e-12)])
def test_discretized_logistic_sums_to_one(dtype, tol):
    loc, scale = torch.meshgrid(
        torch.tensor(LOCS, dtype=dtype), torch.tensor(SCALES, dtype=dtype), indexing="ij"
    )
    loc.requires_grad_(True)
    scale = scale.clone().requires_grad_(True)
    d = DiscretizedLogistic(loc, scale)  # batch (9, 5)
    lp = d.log_prob(d.enumerate_support())  # (L, 9, 5)
    assert lp.shape == (L, len(LOCS), len(SCALES))
    assert torch.isfinite(lp).all()
    total = lp.double().exp().sum(0)  # (9, 5)
    err = (total - 1).abs().max().item()
    assert err < tol, f"max |sum_k P(k) - 1| = {err:.2e} over all loc/scale pairs (tol {tol})"
    # log_prob_levels is the same table, levels last
    torch.testing.assert_close(d.log_prob_levels(), lp.movedim(0, -1), rtol=0, atol=0)
    # gradients are finite at every level, including the extreme loc/scale pairs
    lp.sum().backward()
    assert torch.isfinite(loc.grad).all() and torch.isfinite(scale.grad).all()
    # chunked exact moments equal the full-table sums
    grid = torch.arange(L, dtype=dtype) / (L - 1)
    probs = lp.detach().exp().movedim(0, -1)  # (9, 5, L)
    mean = (probs * grid).sum(-1)
    torch.testing.assert_close(d.mean.detach(), mean)
    torch.testing.assert_close(
        d.variance.detach(), (probs * (grid - mean[..., None]) ** 2).sum(-1)
    )


@pytest.mark.parametrize("dtype, rtol", [(torch.float32, 2e-5), (torch.float64, 1e-12)])
def test_discretized_logistic_log_prob_matches_reference(dtype, rtol):
    n = 400
    gen = np.random.default_rng(0)
    loc = torch.tensor(gen.uniform(-1.0, 2.0, n), dtype=dtype)
    scale = torch.tensor(np.exp(gen.uniform(math.log(1e-3), math.log(10.0), n)), dtype=dtype)
    k = gen.integers(0, L, n)
    k[:40] = 0  # force both edge bins into the sample
    k[40:80] = L - 1
    x = torch.tensor(k / (L - 1), dtype=dtype)
    ours = DiscretizedLogistic(loc, scale).log_prob(x)
    ref = torch.tensor(
        [_mp_log_mass(int(k[i]), loc[i].item(), scale[i].item()) for i in range(n)],
        dtype=torch.float64,
    )
    assert torch.isfinite(ours).all()
    # Relative tolerance: float32 evaluates (x - loc)/scale to ~1e-7 relative, and log P reaches
    # -2000 for scale 1e-3, so the absolute error scales with |log P|.
    torch.testing.assert_close(ours.double(), ref, rtol=rtol, atol=rtol)

    # Cross-check with scipy's float64 logistic CDF where the CDF difference is well conditioned.
    ok = (ref > -10).numpy()
    lo = np.where(k == 0, -np.inf, k / (L - 1) - DELTA / 2)
    hi = np.where(k == L - 1, np.inf, k / (L - 1) + DELTA / 2)
    ln, sn = loc.double().numpy(), scale.double().numpy()
    mass = scipy.stats.logistic.cdf(hi, ln, sn) - scipy.stats.logistic.cdf(lo, ln, sn)
    np.testing.assert_allclose(ours.double().numpy()[ok], np.log(mass[ok]), rtol=1e-4, atol=1e-5)


def test_discretized_logistic_edge_bins_carry_tails():
    f64 = torch.float64
    d = DiscretizedLogistic(torch.tensor(0.5, dtype=f64), torch.tensor(0.3, dtype=f64))
    p0 = d.log_prob(torch.tensor(0.0).double()).exp().item()
    p_last = d.log_prob(torch.tensor(1.0).double()).exp().item()
    # k = 0 owns (-inf, Delta/2]; k = 255 owns [1 - Delta/2, inf)
    assert p0 == pytest.approx(scipy.stats.logistic.cdf(DELTA / 2, 0.5, 0.3), rel=1e-12)
    assert p_last == pytest.approx(scipy.stats.logistic.sf(1 - DELTA / 2, 0.5, 0.3), rel=1e-12)
    # the edge bin is its own interior bin plus the whole tail beyond the grid
    assert p0 == pytest.approx(
        scipy.stats.logistic.cdf(DELTA / 2, 0.5, 0.3)
        - scipy.stats.logistic.cdf(-DELTA / 2, 0.5, 0.3)
        + scipy.stats.logistic.cdf(-DELTA / 2, 0.5, 0.3),
        rel=1e-12,
    )
    assert p0 > 10 * d.log_prob(torch.tensor(DELTA).double()).exp().item()

    # location far outside [0, 1]: all the mass sits in the nearest edge bin
    below = DiscretizedLogistic(torch.tensor(-3.0), torch.tensor(0.1))
    above = DiscretizedLogistic(torch.tensor(4.0), torch.tensor(0.1))
    assert below.log_prob(torch.tensor(0.0)).item() > -1e-6
    assert above.log_prob(torch.tensor(1.0)).item() > -1e-6
    assert below.mean.item() < 1e-6 and above.mean.item() > 1 - 1e-6


def test_discretized_logistic_sample_moments_and_frequencies():
    n = 200_000
    loc = torch.tensor([0.5, 0.1, 0.9, 0.3, -0.2])
    scale = torch.tensor([0.1, 0.05, 0.5, 1e-3, 0.2])
    d = DiscretizedLogistic(loc, scale)  # batch (5,)
    x = d.sample((n,))  # (n, 5)
    assert x.shape == (n, 5) and UnitGrid(L).check(x).all()

    mean, var = d.mean.double(), d.variance.double()  # exact, (5,)
    probs = d.log_prob_levels().double().exp()  # (5, L)
    grid = torch.arange(L, dtype=torch.float64) / (L - 1)
    mu4 = (probs * (grid - mean[:, None]) ** 4).sum(-1)  # exact 4th central moment
    xd = x.double()
    se_mean = (var / n).sqrt()
    se_var = ((mu4 - var**2) / n).sqrt()
    # n = 200k samples per case, tolerance 5 SE for both the mean and the variance
    assert ((xd.mean(0) - mean).abs() <= 5 * se_mean).all(), (xd.mean(0), mean, se_mean)
    assert ((xd.var(0) - var).abs() <= 5 * se_var).all(), (xd.var(0), var, se_var)

    # Level frequencies against P(k): n = 200k, tolerance 5 SE + 2/n per level (256 x 5 levels)
    counts = torch.stack([torch.bincount((xd[:, j] * (L - 1)).round().long(), minlength=L)
                          for j in range(5)])  # (5, L)
    freq = counts.double() / n
    tol = 5 * (probs * (1 - probs) / n).sqrt() + 2 / n
    assert ((freq - probs).abs() <= tol).all()


def test_discretized_logistic_shapes_expand_broadcast():
    loc = torch.rand(3, 1)
    scale = torch.rand(4) + 0.05
    d = DiscretizedLogistic(loc, scale, num_levels=16)
    assert d.batch_shape == (3, 4) and d.event_shape == ()
    x = d.sample((5,))
    assert x.shape == (5, 3, 4)
    assert d.log_prob(x).shape == (5, 3, 4)
    assert d.log_prob(torch.tensor(1.0 / 15)).shape == (3, 4)  # scalar value broadcasts
    assert d.mean.shape == d.variance.shape == (3, 4)
    assert d.enumerate_support().shape == (16, 3, 4)
    assert d.enumerate_support(expand=False).shape == (16, 1, 1)
    assert d.to_event(1).log_prob(x).shape == (5, 3)

    e = d.expand((2, 3, 4))
    assert type(e) is DiscretizedLogistic and e.num_levels == 16
    assert e.batch_shape == (2, 3, 4) and e.loc.shape == e.scale.shape == (2, 3, 4)
    torch.testing.assert_close(e.log_prob(x[:2]), d.log_prob(x[:2]), rtol=0, atol=0)
    torch.testing.assert_close(e.mean, d.mean.expand(2, 3, 4), rtol=0, atol=0)
    assert e.sample().shape == (2, 3, 4)

    # num_levels = 2: a binary variable with P(1) = 1 - sigma((0.5 - mu) / s)
    b = DiscretizedLogistic(torch.tensor(0.2), torch.tensor(0.3), num_levels=2)
    p1 = b.log_prob(torch.tensor(1.0)).exp()
    torch.testing.assert_close(p1, torch.sigmoid(-(0.5 - torch.tensor(0.2)) / 0.3))

    # works as a pyro observation site inside a plate
    def model(data):
        with pyro.plate("data", data.shape[0]):
            pyro.sample("x", DiscretizedLogistic(torch.full((6,), 0.5), torch.ones(6) * 0.1)
                        .to_event(1), obs=data)

    data = torch.randint(0, L, (8, 6)) / 255.0
    tr = poutine.trace(model).get_trace(data)
    tr.compute_log_prob()
    assert tr.nodes["x"]["log_prob"].shape == (8,)


def test_discretized_logistic_validation():
    d = DiscretizedLogistic(torch.tensor(0.5), torch.tensor(0.1), validate_args=True)
    d.log_prob(torch.tensor([0.0, 17 / 255, 1.0]))  # on the grid: fine
    with pytest.raises(ValueError):
        d.log_prob(torch.tensor(0.5 / 255))  # between two levels
    with pytest.raises(ValueError):
        d.log_prob(torch.tensor(1.1))  # above the grid
    with pytest.raises(ValueError):
        d.log_prob(torch.tensor(-1 / 255))  # below the grid
    with pytest.raises(ValueError):
        DiscretizedLogistic(torch.tensor(0.5), torch.tensor(-0.1), validate_args=True)
    with pytest.raises(ValueError, match="num_levels"):
        DiscretizedLogistic(torch.tensor(0.5), torch.tensor(0.1), num_levels=1)
    # without validation an off-grid value is snapped to the nearest level
    lax = DiscretizedLogistic(torch.tensor(0.5), torch.tensor(0.1), validate_args=False)
    assert lax.log_prob(torch.tensor(17.2 / 255)) == lax.log_prob(torch.tensor(17 / 255))


@pytest.mark.parametrize(
    "loc, scale, k",
    [
        (-1.0, 0.05, 254),  # 40 scales right of loc: both CDFs round to 1 in float32
        (-1.0, 0.05, 128),
        (2.0, 0.01, 3),  # 200 scales left of loc: both CDFs underflow to 0 in float32
        (0.0, 0.002, 200),  # tiny scale, 390 scales away
    ],
)
def test_discretized_logistic_finite_where_cdf_difference_underflows(loc, scale, k):
    loc_t = torch.tensor(loc, requires_grad=True)
    scale_t = torch.tensor(scale, requires_grad=True)
    x = torch.tensor(k / (L - 1))
    # the naive float32 formula gives log(0) = -inf here: that is the regime under test
    a, b = (x + DELTA / 2 - loc_t) / scale_t, (x - DELTA / 2 - loc_t) / scale_t
    assert torch.log(torch.sigmoid(a) - torch.sigmoid(b)).item() == -math.inf

    lp = DiscretizedLogistic(loc_t, scale_t).log_prob(x)
    assert torch.isfinite(lp)
    lp.backward()
    assert torch.isfinite(loc_t.grad) and torch.isfinite(scale_t.grad)

    ref = _mp_log_mass(k, loc, scale)  # exact bin mass (float32 inputs are exact here)
    assert lp.item() == pytest.approx(ref, rel=1e-5)
    # PixelCNN++ fallback value: log density at the bin centre + log bin width. It approximates
    # the bin mass with log-error log(sinh(r/2) / (r/2)) ~ r^2/24, r = Delta/scale.
    z = (k / (L - 1) - loc) / scale
    log_density_approx = z - 2 * np.logaddexp(0, z) - math.log(scale) + math.log(DELTA)
    r = DELTA / scale
    gap = math.log(math.sinh(r / 2) / (r / 2))
    assert abs(lp.item() - log_density_approx) <= gap + 1e-5 * abs(ref)


# --------------------------------------------------------------------------------------------
# PixelCategorical
# --------------------------------------------------------------------------------------------


def test_pixel_categorical_log_prob_and_normalization():
    logits = torch.randn(3, 5, L) * 3  # batch (3, 5)
    d = PixelCategorical(logits)
    assert d.batch_shape == (3, 5) and d.event_shape == ()
    lp = d.log_prob(d.enumerate_support())  # (L, 3, 5)
    err = (lp.double().exp().sum(0) - 1).abs().max().item()
    assert err < 1e-5, f"max |sum_k P(k) - 1| = {err:.2e} (tol 1e-5)"

    k = torch.randint(0, L, (7, 3, 5))
    x = k / 255.0  # float32 data in [0, 1]
    expected = dist.Categorical(logits=logits).log_prob(k)
    torch.testing.assert_close(d.log_prob(x), expected, rtol=0, atol=0)

    probs = logits.softmax(-1)
    grid = torch.arange(L) / 255.0
    torch.testing.assert_close(d.mean, (probs * grid).sum(-1))
    torch.testing.assert_close(
        d.variance, (probs * (grid - d.mean[..., None]) ** 2).sum(-1), rtol=1e-5, atol=1e-7
    )
    torch.testing.assert_close(d.entropy(), dist.Categorical(logits=logits).entropy())


def test_pixel_categorical_sample_expand_validation():
    logits = torch.randn(4, L)
    d = PixelCategorical(logits)
    n = 100_000
    x = d.sample((n,))  # (n, 4)
    assert x.shape == (n, 4) and x.dtype == logits.dtype and UnitGrid(L).check(x).all()
    se = (d.variance / n).sqrt()
    # n = 100k samples, tolerance 5 SE on each mean
    assert ((x.mean(0) - d.mean).abs() <= 5 * se).all(), (x.mean(0), d.mean, se)

    e = d.expand((2, 4))
    assert type(e) is PixelCategorical and e.batch_shape == (2, 4)
    assert e.sample((3,)).shape == (3, 2, 4)
    torch.testing.assert_close(e.log_prob(x[:2]), d.log_prob(x[:2]), rtol=0, atol=0)

    with pytest.raises(ValueError, match="num_levels"):
        PixelCategorical(torch.randn(4, 10))
    small = PixelCategorical(torch.randn(10), num_levels=10, validate_args=True)
    small.log_prob(torch.tensor(4 / 9))
    with pytest.raises(ValueError):
        small.log_prob(torch.tensor(0.5))  # not on the 10-level grid
    with pytest.raises(ValueError):
        small.log_prob(torch.tensor(2.0))


# --------------------------------------------------------------------------------------------
# ExpRelaxedCategorical
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("tau", [1.0, 0.5, 0.1, 0.05])
def test_exp_relaxed_finite_at_low_temperature(tau):
    K, n = 10, 10_000
    logits = torch.randn(K) * 2
    d = ExpRelaxedCategorical(torch.tensor(tau), logits=logits)
    y = d.rsample((n,))  # (n, K)
    assert torch.isfinite(y).all(), f"non-finite log-space sample at tau={tau}"
    # the samples are logs of points of the simplex
    torch.testing.assert_close(y.logsumexp(-1), torch.zeros(n), rtol=0, atol=1e-5)
    lp = d.log_prob(y)
    assert lp.shape == (n,) and torch.isfinite(lp).all()

    # the same under pyro.sample: a plate of 1000 data points x 10 latents of K classes
    def model():
        with pyro.plate("data", 1000):
            return pyro.sample(
                "z",
                ExpRelaxedCategorical(torch.tensor(tau), logits=logits.expand(1000, 10, K))
                .to_event(1),
            )

    tr = poutine.trace(model).get_trace()
    tr.compute_log_prob()
    site = tr.nodes["z"]
    assert site["value"].shape == (1000, 10, K) and torch.isfinite(site["value"]).all()
    assert site["log_prob"].shape == (1000,) and torch.isfinite(site["log_prob"]).all()


def test_exp_relaxed_matches_torch():
    logits = torch.randn(6, 5)
    tau = torch.tensor(0.3)
    ours = ExpRelaxedCategorical(tau, logits=logits)
    ref = TorchExpRelaxedCategorical(tau, logits=logits)
    torch.manual_seed(1)
    y = ours.rsample((100,))
    torch.manual_seed(1)
    y_ref = ref.rsample((100,))
    assert torch.equal(y, y_ref)
    assert torch.equal(ours.log_prob(y), ref.log_prob(y))
    probs = logits.softmax(-1)
    assert torch.equal(
        ExpRelaxedCategorical(tau, probs=probs).log_prob(y),
        TorchExpRelaxedCategorical(tau, probs=probs).log_prob(y),
    )
    # a Python-number temperature is the same distribution
    assert torch.equal(ExpRelaxedCategorical(0.3, logits=logits).log_prob(y), ref.log_prob(y))


def test_exp_relaxed_low_temperature_approaches_one_hot():
    """As tau -> 0, exp(sample) concentrates on the vertices of the simplex.

    tau = 0.01 is NOT cold enough for "max component > 0.99 in 99% of samples": that needs the
    top two scores l_k + g_k to differ by more than tau * log(99) = 0.046, and for uniform logits
    P(gap > t) = K / (K + (K - 1)(e^t - 1)) = 0.959 at K = 10 (the two smallest of K Exp(1)
    variables), an upper bound on the fraction. Measured: ~96% at tau = 0.01 and ~99.6% at
    tau = 0.001 for random logits.
    """
    n, K = 10_000, 10
    se = math.sqrt(0.25 / n)  # worst-case standard error of a fraction, n = 10k
    logits = torch.randn(K)
    fracs = []
    for tau in (0.1, 0.01, 0.001):
        x = soft(ExpRelaxedCategorical(torch.tensor(tau), logits=logits).sample((n,)))  # (n, K)
        fracs.append((x.max(-1).values > 0.99).double().mean().item())
    assert fracs[0] < fracs[1] < fracs[2], fracs
    # n = 10k samples at tau = 0.001: at least 99% within 0.01 of a vertex
    assert fracs[2] >= 0.99, f"only {fracs[2]:.4f} of {n} samples within 0.01 of a vertex"

    # uniform logits at tau = 0.01: the fraction stays below the gap bound (+ 5 SE, n = 10k)
    x = soft(ExpRelaxedCategorical(torch.tensor(0.01), logits=torch.zeros(K)).sample((n,)))
    frac = (x.max(-1).values > 0.99).double().mean().item()
    t = 0.01 * math.log(99)
    bound = K / (K + (K - 1) * math.expm1(t))
    assert frac <= bound + 5 * se and bound < 0.99, (frac, bound)


@pytest.mark.parametrize("tau", [1.0, 0.5, 0.1])
def test_exp_relaxed_binary_density_closed_form(tau):
    """K = 2 against the closed form of the binary Concrete [Maddison et al. 2017, Sec. 3.3].

    With y = log x, the logit z = y1 - y2 = (l1 - l2 + logistic noise) / tau is exactly
    Logistic(loc=(l1 - l2)/tau, scale=1/tau). torch's log-density, evaluated at
    y = (logsigmoid(z), logsigmoid(-z)), must equal that logistic log-density pointwise: the
    log-space density is the density of the log-ratio coordinate (see the class note). Its
    integral over z is then 1, checked by quadrature, and the sampler is checked against the same
    law with a KS test.
    """
    logits = torch.tensor([0.7, -0.4], dtype=torch.float64)
    d = ExpRelaxedCategorical(torch.tensor(tau, dtype=torch.float64), logits=logits)
    loc, scale = (logits[0] - logits[1]).item() / tau, 1.0 / tau
    z = torch.linspace(loc - 60 * scale, loc + 60 * scale, 200_001, dtype=torch.float64)
    y = torch.stack([F.logsigmoid(z), F.logsigmoid(-z)], -1)  # (N, 2), on the log-simplex
    lp = d.log_prob(y)
    ref = scipy.stats.logistic.logpdf(z.numpy(), loc=loc, scale=scale)
    np.testing.assert_allclose(lp.numpy(), ref, rtol=1e-10, atol=1e-10)
    mass = torch.trapezoid(lp.exp(), z).item()
    assert mass == pytest.approx(1.0, abs=1e-8), f"integral of the density over z = {mass}"

    # sampler vs density: n = 10k samples, KS test at level 1e-3
    s = d.sample((10_000,))
    p_value = scipy.stats.kstest((s[:, 0] - s[:, 1]).numpy(), "logistic", args=(loc, scale)).pvalue
    assert p_value > 1e-3


@pytest.mark.parametrize("tau", [1.0, 0.5])
def test_exp_relaxed_density_normalizes_in_three_classes(tau):
    """K = 3: integrate exp(log_prob) over the log-ratio plane (z1, z2) = (y1 - y3, y2 - y3).

    The point of the log-simplex with log-ratios z is y = log_softmax(z1, z2, 0); the tails decay
    like exp(-tau |z|), so a square of half-width 40/tau holds all but ~e^-40 of the mass.
    Midpoint rule on a 1201 x 1201 grid; tolerance 1e-6.
    """
    logits = torch.tensor([0.3, -1.0, 0.7], dtype=torch.float64)
    d = ExpRelaxedCategorical(torch.tensor(tau, dtype=torch.float64), logits=logits)
    z = torch.linspace(-40 / tau, 40 / tau, 1201, dtype=torch.float64)
    h = (z[1] - z[0]).item()
    z1, z2 = torch.meshgrid(z, z, indexing="ij")
    y = torch.stack([z1, z2, torch.zeros_like(z1)], -1).log_softmax(-1)  # (1201, 1201, 3)
    mass = d.log_prob(y).exp().sum().item() * h * h
    assert mass == pytest.approx(1.0, abs=1e-6)


def test_exp_relaxed_scalar_temperature_enforced():
    logits = torch.randn(4, 3)
    for bad in (torch.tensor([0.5]), torch.full((4,), 0.5), torch.full((4, 1), 0.5)):
        with pytest.raises(ValueError, match="scalar"):
            ExpRelaxedCategorical(bad, logits=logits)
    with pytest.raises(ValueError):
        ExpRelaxedCategorical(torch.tensor(-1.0), logits=logits, validate_args=True)
    with pytest.raises(TypeError):
        ExpRelaxedCategorical(torch.tensor(0.5), logits)  # logits/probs are keyword-only
    assert ExpRelaxedCategorical(0.5, logits=logits.double()).temperature.dtype == torch.float64


def test_exp_relaxed_expand_mask_to_event():
    K = 5
    tau = torch.tensor(0.2)
    d = ExpRelaxedCategorical(tau, logits=torch.randn(K))
    e = d.expand((4, 3))
    assert type(e) is ExpRelaxedCategorical
    assert e.batch_shape == (4, 3) and e.event_shape == (K,)
    assert e.temperature is tau  # carried over
    y = e.rsample((2,))
    assert y.shape == (2, 4, 3, K)
    lp = e.log_prob(y)
    assert lp.shape == (2, 4, 3)
    torch.testing.assert_close(lp, d.log_prob(y), rtol=0, atol=0)
    assert d.expand_by((6,)).batch_shape == (6,)

    mask = torch.tensor([True, False, True, True])

    def model():
        with pyro.plate("data", 4):
            pyro.sample("z", d.expand((4, 3)).mask(mask[:, None]).to_event(1))

    tr = poutine.trace(model).get_trace()
    tr.compute_log_prob()
    site_lp = tr.nodes["z"]["log_prob"]
    assert site_lp.shape == (4,) and site_lp[1] == 0 and (site_lp[mask] != 0).all()
    torch.testing.assert_close(site_lp[mask], d.log_prob(tr.nodes["z"]["value"]).sum(-1)[mask])


def test_exp_relaxed_rsample_has_gradients():
    logits = torch.randn(8, 6, requires_grad=True)
    d = ExpRelaxedCategorical(torch.tensor(0.1), logits=logits)
    x = soft(d.rsample((500,)))  # (500, 8, 6)
    (x * torch.randn(6)).sum().backward()
    assert torch.isfinite(logits.grad).all() and (logits.grad != 0).any()


def test_exp_relaxed_trace_elbo_low_temperature():
    """A tiny relaxed VAE-like model trains through Trace_ELBO at tau = 0.05 with finite grads."""
    B, N, K = 16, 3, 10
    tau = torch.tensor(0.05)
    w = torch.randn(N * K, 4)
    data = torch.randn(B, 4)

    def model(x):
        with pyro.plate("data", B):
            y = pyro.sample(
                "z", ExpRelaxedCategorical(tau, logits=torch.zeros(B, N, K)).to_event(1)
            )
            h = straight_through(y).flatten(-2)  # (..., B, N * K)
            pyro.sample("x", dist.Normal(h @ w, 1.0).to_event(1), obs=x)

    def guide(x):
        q_logits = pyro.param("q_logits", torch.randn(B, N, K))
        with pyro.plate("data", B):
            pyro.sample("z", ExpRelaxedCategorical(tau, logits=q_logits).to_event(1))

    loss = pyro.infer.Trace_ELBO(num_particles=4, vectorize_particles=True).differentiable_loss(
        model, guide, data
    )
    loss.backward()
    grad = pyro.param("q_logits").unconstrained().grad
    assert torch.isfinite(loss) and torch.isfinite(grad).all() and (grad != 0).any()


# --------------------------------------------------------------------------------------------
# straight_through, soft, kl_categorical
# --------------------------------------------------------------------------------------------


def test_straight_through_forward_one_hot_backward_soft():
    K = 7
    logits = torch.randn(K, requires_grad=True)
    y = ExpRelaxedCategorical(torch.tensor(0.5), logits=logits).rsample((1000,))  # (1000, K)
    h = straight_through(y)
    assert ((h == 0) | (h == 1)).all()
    assert (h.sum(-1) == 1).all()
    assert torch.equal(h.argmax(-1), y.argmax(-1))
    torch.testing.assert_close(soft(y), y.exp(), rtol=0, atol=0)

    w = torch.randn(K)
    (g_st,) = torch.autograd.grad((h * w).sum(), logits, retain_graph=True)
    (g_soft,) = torch.autograd.grad((soft(y) * w).sum(), logits)
    assert torch.isfinite(g_st).all() and (g_st != 0).any()
    torch.testing.assert_close(g_st, g_soft)  # the gradient is the soft sample's


def test_straight_through_hard_sample_is_categorical():
    """Gumbel-max: argmax of the relaxed sample is an exact Categorical(logits) draw."""
    n, K = 10_000, 6
    logits = torch.randn(K)
    h = straight_through(ExpRelaxedCategorical(torch.tensor(2.0), logits=logits).sample((n,)))
    freq = h.mean(0).double()
    p = logits.softmax(-1).double()
    # n = 10k samples, tolerance 5 SE per class
    assert ((freq - p).abs() <= 5 * (p * (1 - p) / n).sqrt()).all(), (freq, p)


def test_kl_categorical_exact():
    q_logits = torch.randn(5, 7, 9, dtype=torch.float64) * 2
    p_logits = torch.randn(9, dtype=torch.float64)  # broadcasts against q
    kl = kl_categorical(q_logits, p_logits)
    assert kl.shape == (5, 7)
    q = q_logits.softmax(-1).numpy()
    p = p_logits.softmax(-1).numpy()
    direct = (q * (np.log(q) - np.log(p))).sum(-1)
    np.testing.assert_allclose(kl.numpy(), direct, rtol=1e-12, atol=1e-14)
    ref = kl_divergence(dist.Categorical(logits=q_logits), dist.Categorical(logits=p_logits))
    torch.testing.assert_close(kl, ref, rtol=1e-12, atol=1e-14)
    assert torch.all(kl_categorical(q_logits, q_logits).abs() < 1e-12)

    # a class with q_k = 0 contributes 0, with finite gradients
    q0 = torch.tensor([0.0, 1.0, -math.inf], requires_grad=True)
    p0 = torch.tensor([0.5, 0.0, 0.2])
    kl0 = kl_categorical(q0, p0)
    ref0 = kl_divergence(dist.Categorical(logits=q0), dist.Categorical(logits=p0))
    torch.testing.assert_close(kl0, ref0)
    kl0.backward()
    assert torch.isfinite(q0.grad).all()


# --------------------------------------------------------------------------------------------
# BernoulliImage: the fused Bernoulli image likelihood


def test_bernoulli_image_equals_independent_bernoulli():
    """Same log-density and gradient as Bernoulli(logits).to_event(1), under broadcasting
    (logits (K, B, D), data (B, D)); float64, tolerance 1e-10."""
    from vaelab.model.distributions import BernoulliImage

    torch.manual_seed(0)
    logits = (3 * torch.randn(5, 4, 30, dtype=torch.float64)).requires_grad_()
    x = torch.bernoulli(torch.full((4, 30), 0.4, dtype=torch.float64))
    ours = BernoulliImage(logits).log_prob(x)
    ref = torch.distributions.Independent(torch.distributions.Bernoulli(logits=logits), 1)
    ref = ref.log_prob(x)
    assert ours.shape == (5, 4)
    assert torch.allclose(ours, ref, atol=1e-10, rtol=0)
    (g1,) = torch.autograd.grad(ours.sum(), logits)
    (g2,) = torch.autograd.grad(ref.sum(), logits)
    assert torch.allclose(g1, g2, atol=1e-10, rtol=0)
    d = BernoulliImage(logits.detach()).expand((2, 5, 4))
    assert d.batch_shape == (2, 5, 4) and d.event_shape == (30,)
    assert d.sample().shape == (2, 5, 4, 30)
    assert torch.allclose(d.mean, torch.sigmoid(logits.detach()).expand(2, 5, 4, 30))
    with pytest.raises(ValueError):
        BernoulliImage(logits.detach(), validate_args=True).log_prob(x * 0.5)


# --------------------------------------------------------------------------------------------
# Count distributions: count_distribution and LibraryScaledCounts


@pytest.mark.parametrize("family", ["poisson", "negative_binomial",
                                    "zero_inflated_negative_binomial"])
def test_count_distribution_moments_match_the_parameterisation(family):
    """Mean μ (NB, Poisson) or (1 − π) μ (ZINB) and variance μ + μ²/θ (NB) from the closed
    forms of Pyro's classes, and 200k-draw sample moments within 5 standard errors."""
    from vaelab.model.distributions import count_distribution

    log_mu = torch.tensor([0.0, 1.5, 3.0], dtype=torch.float64)
    theta = torch.tensor([0.5, 2.0, 20.0], dtype=torch.float64)
    gate = torch.tensor([-1.0, 0.0, 1.0], dtype=torch.float64)
    d = count_distribution(family, log_mu, theta, gate)
    mu, pi = log_mu.exp(), torch.sigmoid(gate)
    if family == "poisson":
        mean, var = mu, mu
    elif family == "negative_binomial":
        mean, var = mu, mu + mu**2 / theta
    else:
        nb_var = mu + mu**2 / theta
        mean, var = (1 - pi) * mu, (1 - pi) * (nb_var + mu**2) - ((1 - pi) * mu) ** 2
    assert torch.allclose(d.mean, mean) and torch.allclose(d.variance, var)
    n = 200_000
    x = d.sample((n,))
    assert torch.equal(x, x.round()) and bool((x >= 0).all())
    assert bool(((x.mean(0) - mean).abs() < 5 * (var / n).sqrt()).all()), (x.mean(0), mean)
    with pytest.raises(ValueError, match="needs inverse_dispersion"):
        count_distribution("negative_binomial", log_mu)
    with pytest.raises(ValueError, match="unknown count family"):
        count_distribution("binomial", log_mu, theta)


def test_library_scaled_counts_follows_the_template():
    """Shapes under broadcasting and expand, validation of the value, sampling and moments
    with a given total, log_prob reading the total from the value."""
    from vaelab.model.distributions import LibraryScaledCounts

    log_rho = torch.randn(4, 6, dtype=torch.float64).log_softmax(-1)  # (B, D)
    theta = torch.full((6,), 3.0, dtype=torch.float64)
    gate = torch.randn(4, 6, dtype=torch.float64)
    d = LibraryScaledCounts(log_rho, "zero_inflated_negative_binomial", theta, gate,
                            validate_args=True)
    assert d.batch_shape == (4,) and d.event_shape == (6,)
    x = torch.randint(0, 30, (4, 6)).double()
    lp = d.log_prob(x)
    assert lp.shape == (4,)
    big = d.expand((3, 4))
    assert big.batch_shape == (3, 4) and torch.allclose(big.log_prob(x), lp.expand(3, 4))
    with pytest.raises(ValueError):
        d.log_prob(x + 0.5)  # not counts
    with pytest.raises(ValueError, match="pass library="):
        d.sample()
    with pytest.raises(ValueError):  # the arguments are validated: θ > 0
        LibraryScaledCounts(log_rho, "negative_binomial", -theta, validate_args=True)
    # a given total: mean ℓ (1 − π) ρ and a sample of the right shape
    lib = torch.tensor([10.0, 100.0, 0.0, 5.0], dtype=torch.float64)
    dl = LibraryScaledCounts(log_rho, "zero_inflated_negative_binomial", theta, gate,
                             library=lib)
    expected = torch.sigmoid(-gate) * log_rho.exp() * lib.clamp(min=1e-8)[:, None]
    assert torch.allclose(dl.mean, expected)
    assert dl.sample((2,)).shape == (2, 4, 6) and dl.expand((3, 4)).mean.shape == (3, 4, 6)
    # an all-zero row: every mean ≈ 0, so its probability ≈ 1
    zero = LibraryScaledCounts(log_rho, "poisson").log_prob(torch.zeros(4, 6,
                                                                        dtype=torch.float64))
    assert torch.allclose(zero, torch.zeros(4, dtype=torch.float64), atol=1e-7)


def test_exponential_draws_are_torchs_own_bit_for_bit():
    """The vectorized Exp(1) draws equal ``exponential_``'s exactly (2·10⁵ of them) and leave
    the global RNG where ``exponential_`` leaves it."""
    shape = (10, 20, 100, 10)
    torch.manual_seed(11)
    ref, after_ref = torch.empty(shape).exponential_(), torch.rand(5)
    torch.manual_seed(11)
    ours, after = exponential(shape, torch.ones(1)), torch.rand(5)
    assert torch.equal(ours, ref)
    assert torch.equal(after, after_ref)
