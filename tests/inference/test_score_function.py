"""The score-function objectives for discrete latents (``reinforce_loo``, ``vimco``, ``arm``,
``disarm``, ``relax``) against ground truth on models small enough to enumerate.

Ground truth: the exact gradient of the ELBO of the discrete model, autograd of
:func:`vaelab.inference.exact.enumerated_elbo` (a sum over all K^N states); for VIMCO the exact
gradient of the K-sample bound, a sum over all (K^N)^K tuples of joint states. An estimator's
gradient is the gradient of its loss (the negative bound summed over the batch); a batch of B
points replicated R times gives in one call the sum of R independent draws of the B-point
gradient. Float64 throughout; seeds fixed by conftest.
"""

import itertools
import math

import pytest
import torch

from vaelab.cli import main
from vaelab.config import ObjectiveConfig
from vaelab.inference.exact import enumerated_elbo, log_joint_states
from vaelab.inference.objectives import OBJECTIVES, build_objective
from vaelab.inference.objectives._score import guide_logits
from vaelab.inference.objectives.arm import antithetic_pair, arm_grad
from vaelab.inference.objectives.disarm import disarm_grad
from vaelab.inference.objectives.reinforce_loo import ReinforceLOO
from vaelab.inference.objectives.relax import conditional_gumbel
from vaelab.model.distributions import joint_states
from vaelab.registry import ConfigError
from vaelab.resolve import load_config
from vaelab.runs.train import train
from vaelab.vae import build_vae

NEW = ("reinforce_loo", "vimco", "arm", "disarm", "relax")


def tiny_vae(N: int, C: int, D: int = 6, B: int = 3, seed: int = 0):
    """A categorical VAE of N variables × C classes (learned prior, decoder and encoder
    6-4-N·C, unrelaxed categorical guide) in float64, and B binary data points."""
    torch.set_default_dtype(torch.float64)  # conftest restores it
    cfg = load_config(None, [
        "data.name=synthetic", "model.hidden_sizes=[4]", "model.prior=categorical",
        f'model.latent={{name = "categorical", num_variables = {N}, num_classes = {C}, '
        'prior = "learned"}', "guide.family=categorical",
    ])
    torch.manual_seed(seed)
    vae = build_vae(cfg, D)
    x = (torch.rand(B, D) < 0.5).to(torch.float64)
    return vae, x


def model_params(vae) -> list[torch.nn.Parameter]:
    """Encoder, decoder and prior parameters: those the bound depends on (RELAX's control
    network, in the guide family, is not one of them)."""
    return [*vae.inference.encoder.parameters(), *vae.generative.parameters()]


def flat(grads, params) -> torch.Tensor:
    return torch.cat([(g if g is not None else torch.zeros_like(p)).reshape(-1)
                      for g, p in zip(grads, params)])


def estimator_mean(objective, vae, x, calls: int, reps: int):
    """Mean and standard error (over ``calls`` groups of ``reps`` draws) of the gradient of the
    B-point loss, and of the loss itself."""
    params = model_params(vae)
    grads, losses = [], []
    for _ in range(calls):
        loss = objective.differentiable_loss(vae.model, vae.guide, x.repeat(reps, 1))
        grads.append(flat(torch.autograd.grad(loss, params, allow_unused=True), params) / reps)
        losses.append(float(loss.detach()) / reps)
    g = torch.stack(grads)  # (calls, P)
    v = torch.tensor(losses)
    return g.mean(0), g.std(0) / calls**0.5, float(v.mean()), float(v.std() / calls**0.5)


def assert_unbiased(mean, se, exact, z: float = 5.0, rel: float = 0.05):
    """Both tests: every coordinate within ``z`` standard errors (a z-test; the standard error
    is estimated from 40 group means, so its tail is Student's t with 39 degrees of freedom:
    P(|t| > 5) ≈ 1e-5 per coordinate; + 1e-9 for the coordinates whose estimate is exact),
    and ‖mean − exact‖ ≤ ``rel`` ‖exact‖, with the
    sample large enough that 4 ‖se‖ < rel ‖exact‖ (so the absolute test can fail)."""
    scale = float(exact.norm())
    assert 4 * float(se.norm()) < rel * scale, (float(se.norm()), scale)
    err = (mean - exact).abs()
    tol = z * se + 1e-9
    assert bool((err <= tol).all()), f"max err/tol {float((err / tol).max()):.2f}"
    assert float((mean - exact).norm()) <= rel * scale


def exact_grad(vae, x, loss_fn) -> torch.Tensor:
    params = model_params(vae)
    return flat(torch.autograd.grad(loss_fn(vae, x), params, allow_unused=True), params)


def neg_elbo(vae, x) -> torch.Tensor:
    return -enumerated_elbo(vae, x).sum()


def exact_iwae(vae, x, K: int) -> torch.Tensor:
    r"""The K-sample bound E[log (1/K) Σ_k w_k] of the discrete model per point, ``(B,)``, by
    summing over all S^K tuples of joint states (differentiable)."""
    latent = vae.latent
    states = joint_states(latent.num_variables, latent.num_classes, dtype=x.dtype)  # (S, N, C)
    log_q = torch.einsum("snk,bnk->sb", states, vae.inference.logits(x).log_softmax(-1))
    log_w = log_joint_states(vae, x, states) - log_q  # (S, B)
    tuples = torch.tensor(list(itertools.product(range(states.shape[0]), repeat=K)))  # (T, K)
    bound = torch.logsumexp(log_w[tuples], 1) - math.log(K)  # (T, B)
    return (log_q[tuples].sum(1).exp() * bound).sum(0)  # (B,)


# --------------------------------------------------------------------------------------------
# unbiasedness against the exact gradient

# (objective, N variables, C classes, K particles); n = calls × reps = 40 × 250 = 10,000 draws
# of the 3-point gradient each: every coordinate within 5 standard errors, and the whole
# vector within 5 % of ‖exact gradient‖ (4 ‖se‖ is checked to be below that 5 %).
UNBIASED = [("reinforce_loo", 2, 3, 3), ("reinforce_loo", 1, 4, 2), ("arm", 3, 2, 1),
            ("disarm", 3, 2, 1), ("disarm", 1, 2, 1), ("relax", 2, 3, 1), ("relax", 1, 2, 1)]


@pytest.mark.parametrize("name, N, C, K", UNBIASED, ids=[f"{u[0]}-{u[1]}x{u[2]}"
                                                          for u in UNBIASED])
def test_single_sample_estimators_are_unbiased_for_the_exact_elbo_gradient(name, N, C, K):
    vae, x = tiny_vae(N, C)
    objective = build_objective(ObjectiveConfig(name=name, num_particles=K), vae)
    exact = exact_grad(vae, x, neg_elbo)
    mean, se, loss, loss_se = estimator_mean(objective, vae, x, calls=40, reps=250)
    assert_unbiased(mean, se, exact)
    # the loss is an unbiased estimate of −ELBO (same 10,000 draws, 4.5 standard errors)
    truth = float(neg_elbo(vae, x).detach())
    assert abs(loss - truth) <= 4.5 * loss_se + 1e-9, (loss, truth, loss_se)


def test_encoder_gradient_of_each_estimator_is_unbiased_on_its_own():
    """The encoder block alone (where the score-function term acts; the decoder's pathwise
    part dominates the full norm): N = 3 binary variables, n = 40 × 500 = 20,000 draws each,
    within 5 % of the exact encoder gradient's norm (4 ‖se‖ is below it) and 5 standard errors
    per coordinate."""
    vae, x = tiny_vae(3, 2)
    n_enc = sum(p.numel() for p in vae.inference.encoder.parameters())
    exact = exact_grad(vae, x, neg_elbo)[:n_enc]
    for name, K in (("reinforce_loo", 4), ("arm", 1), ("disarm", 1), ("relax", 1)):
        objective = build_objective(ObjectiveConfig(name=name, num_particles=K), vae)
        mean, se, _, _ = estimator_mean(objective, vae, x, calls=40, reps=500)
        assert_unbiased(mean[:n_enc], se[:n_enc], exact)


def test_vimco_is_unbiased_for_the_exact_k_sample_bound_gradient():
    """VIMCO, N = 2 binary variables (S = 4 states), K = 3: the exact gradient of IWAE_3 by
    enumerating the 4³ = 64 triples of states. 10,000 draws (40 × 250): 5 standard errors
    per coordinate and 5 % of ‖exact‖; the mean loss is −IWAE_3 within 4.5 standard errors
    (the exact IWAE_3 is above the exact ELBO)."""
    vae, x = tiny_vae(2, 2)
    objective = build_objective(ObjectiveConfig(name="vimco", num_particles=3), vae)
    exact = exact_grad(vae, x, lambda v, xs: -exact_iwae(v, xs, 3).sum())
    mean, se, loss, loss_se = estimator_mean(objective, vae, x, calls=40, reps=250)
    assert_unbiased(mean, se, exact)
    truth = -float(exact_iwae(vae, x, 3).sum().detach())
    assert abs(loss - truth) <= 4.5 * loss_se, (loss, truth, loss_se)
    assert truth < float(neg_elbo(vae, x).detach()) - 1e-3  # both exact


def test_exact_iwae_with_one_sample_is_the_enumerated_elbo():
    """The ground truth of the VIMCO test reduces to the ELBO at K = 1 (exactly)."""
    vae, x = tiny_vae(2, 3)
    assert torch.allclose(exact_iwae(vae, x, 1), enumerated_elbo(vae, x), atol=1e-12)


# --------------------------------------------------------------------------------------------
# exact reductions under one seed


def test_reinforce_loo_loss_is_the_negative_mean_signal_and_its_baseline_leaves_one_out():
    """Under one seed the loss equals −Σ_n (1/K) Σ_k f(z_kn) computed by hand from the same
    draws, and the encoder gradient equals the hand-written (1/(K−1)) Σ_k (f_k − f̄) ∇ log q(z_k)
    (float64, atol 1e-10)."""
    vae, x = tiny_vae(2, 3)
    K = 4
    objective = ReinforceLOO(num_particles=K)
    torch.manual_seed(3)
    loss = objective.differentiable_loss(vae.model, vae.guide, x)
    enc = list(vae.inference.encoder.parameters())
    g = flat(torch.autograd.grad(loss, enc), enc)
    # the same draws by hand
    torch.manual_seed(3)
    logits = vae.inference.logits(x).log_softmax(-1)  # (B, N, C)
    z = torch.distributions.Categorical(logits=logits.detach()).sample((K,))  # (K, B, N)
    z = torch.nn.functional.one_hot(z, 3).to(x.dtype)  # (K, B, N, C)
    states = joint_states(2, 3, dtype=x.dtype)  # (S, N, C)
    index = (z.argmax(-1) * torch.tensor([3, 1])).sum(-1)  # (K, B): state number
    log_p = log_joint_states(vae, x, states).detach()  # (S, B)
    log_q = (z * logits).sum((-2, -1))  # (K, B)
    f = log_p.gather(0, index) - log_q.detach()  # (K, B)
    assert float(loss.detach()) == pytest.approx(-float(f.mean(0).sum()), abs=1e-10)
    surrogate = ((f - f.mean(0)) * log_q).sum() / (K - 1)
    g_hand = flat(torch.autograd.grad(-surrogate, enc), enc)
    assert torch.allclose(g, g_hand, atol=1e-10)


def test_no_grad_loss_equals_differentiable_loss_under_one_seed():
    """``loss`` (no gradient) and ``differentiable_loss`` give the same value for the same draws
    (the single-draw-value estimators; RELAX draws its Gumbels differently for the gradient)."""
    for name, N, C, K in (("reinforce_loo", 2, 3, 3), ("vimco", 2, 3, 3), ("arm", 2, 2, 1),
                          ("disarm", 2, 2, 1)):
        vae, x = tiny_vae(N, C)
        objective = build_objective(ObjectiveConfig(name=name, num_particles=K), vae)
        torch.manual_seed(7)
        a = objective.loss(vae.model, vae.guide, x)
        torch.manual_seed(7)
        b = float(objective.differentiable_loss(vae.model, vae.guide, x).detach())
        assert a == pytest.approx(b, abs=1e-10), name


# --------------------------------------------------------------------------------------------
# ARM and DisARM by quadrature over the uniform noise


def gauss_legendre_nodes(alpha: torch.Tensor):
    """Nodes ``u (P, N)`` and weights ``(P,)`` integrating exactly, over U(0,1)^N, every function
    that is a polynomial of degree ≤ 3 in each u_n on the cells cut by σ(α_n) and σ(−α_n)
    (2-point Gauss-Legendre on each of the 3 intervals per variable, tensor product)."""
    per_var = []
    for a in alpha.tolist():
        cuts = sorted([0.0, 1.0 / (1.0 + math.exp(a)), 1.0 / (1.0 + math.exp(-a)), 1.0])
        nodes, weights = [], []
        for lo, hi in zip(cuts[:-1], cuts[1:]):
            for s in (-1.0, 1.0):
                nodes.append(lo + (hi - lo) * (1.0 + s / math.sqrt(3.0)) / 2.0)
                weights.append((hi - lo) / 2.0)
        per_var.append((nodes, weights))
    u = torch.tensor(list(itertools.product(*(n for n, _ in per_var))))  # (P, N)
    w = torch.tensor([math.prod(c) for c in itertools.product(*(w for _, w in per_var))])
    return u, w


@pytest.mark.parametrize("N", [1, 2, 3])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_disarm_variance_is_at_most_arms_by_quadrature(N, seed):
    """For a random learning signal f on {0,1}^N and random logits α (some large), the exact
    means of the ARM and DisARM estimators (quadrature over u, exact for these piecewise
    polynomials) both equal ∇_α E_q[f] (to 1e-12), and DisARM's variance is ≤ ARM's in every
    coordinate (strictly below in at least one)."""
    torch.set_default_dtype(torch.float64)
    gen = torch.Generator().manual_seed(seed)
    f_table = 10.0 * torch.randn(2**N, generator=gen, dtype=torch.float64)  # f(b), b as binary
    alpha = 3.0 * torch.randn(N, generator=gen, dtype=torch.float64)
    # ground truth ∇_α Σ_b q_α(b) f(b)
    a = alpha.clone().requires_grad_()
    bits = torch.tensor(list(itertools.product((0.0, 1.0), repeat=N)))  # (2^N, N)
    log_q = (bits * torch.nn.functional.logsigmoid(a)
             + (1 - bits) * torch.nn.functional.logsigmoid(-a)).sum(-1)
    (truth,) = torch.autograd.grad((log_q.exp() * f_table).sum(), a)
    # quadrature over u
    u, w = gauss_legendre_nodes(alpha)
    b1, b2 = antithetic_pair(alpha.expand_as(u), u)  # (P, N) each
    weights = 2 ** torch.arange(N - 1, -1, -1)
    f1, f2 = f_table[(b1.long() * weights).sum(-1)], f_table[(b2.long() * weights).sum(-1)]
    moments = {}
    for name, estimator in (("arm", arm_grad), ("disarm", disarm_grad)):
        g = estimator(f1, f2, u, b1, b2, alpha.expand_as(u))  # (P, N)
        mean = (w.unsqueeze(-1) * g).sum(0)
        var = (w.unsqueeze(-1) * g.pow(2)).sum(0) - mean.pow(2)
        assert torch.allclose(mean, truth, atol=1e-12, rtol=0), (name, mean, truth)
        moments[name] = var
    assert bool((moments["disarm"] <= moments["arm"] + 1e-12).all()), moments
    assert bool((moments["disarm"] < moments["arm"] - 1e-9).any()), moments
    assert float(w.sum()) == pytest.approx(1.0, abs=1e-14)


# --------------------------------------------------------------------------------------------
# RELAX


def test_conditional_gumbels_have_the_argmax_and_the_law_of_z_given_b():
    """z̃ ~ p(z | b): its argmax is b always, and its per-class mean and mean square given b
    equal those of independent unconditional Gumbels with argmax b (200,000 draws of each,
    3 classes; 5 joint standard errors each)."""
    torch.set_default_dtype(torch.float64)
    theta = torch.tensor([0.5, -1.0, 0.2]).log_softmax(-1)
    n = 200_000
    z = theta - torch.log(-torch.log(torch.rand(n, 3)))
    b = torch.nn.functional.one_hot(z.argmax(-1), 3).to(z.dtype)
    z_tilde = conditional_gumbel(theta, b, torch.rand(n, 3))
    assert torch.equal(z_tilde.argmax(-1), z.argmax(-1))
    z_alt = theta - torch.log(-torch.log(torch.rand(n, 3)))  # independent z, its own argmax
    b_alt = z_alt.argmax(-1)
    for k in range(3):
        a, c = z_tilde[z.argmax(-1) == k], z_alt[b_alt == k]  # both ~ p(z | argmax = k)
        for power in (1, 2):
            ma, mc = a.pow(power).mean(0), c.pow(power).mean(0)
            se = (a.pow(power).var(0) / len(a) + c.pow(power).var(0) / len(c)).sqrt()
            assert bool(((ma - mc).abs() <= 5 * se).all()), (k, power, ma, mc)


def test_relax_trains_its_control_network_to_lower_the_variance():
    """The control network r_ρ (the guide family's baseline MLP) gets a gradient from the
    objective; 60 Adam steps on ρ alone (lr 0.01) with that gradient lower the mean of
    Σ_n ‖ĝ_ℓ(x_n)‖² (estimated on the same 4,000 replicated points before and after, fixed
    seed) by at least 10 %, while the decoder and encoder are not touched."""
    vae, x = tiny_vae(2, 3)
    objective = build_objective(ObjectiveConfig(name="relax"), vae)
    rho = list(vae.inference.posterior.baseline.net.parameters())
    opt = torch.optim.Adam(rho, lr=0.01)
    xr = x.repeat(1000, 1)

    def second_moment() -> float:
        torch.manual_seed(11)
        q = guide_logits(vae.guide, (xr,), {}, "relax")
        g, _ = objective.logit_grad(vae.model, q, (xr,), {})
        return float(g.detach().pow(2).sum((-2, -1)).mean())

    before = second_moment()
    for _ in range(60):
        opt.zero_grad()
        objective.differentiable_loss(vae.model, vae.guide, x.repeat(50, 1)).backward()
        assert all(p.grad is not None and bool(p.grad.abs().sum() > 0) for p in rho)
        opt.step()
    after = second_moment()
    assert after < 0.9 * before, (before, after)


# --------------------------------------------------------------------------------------------
# refusals, training, listing


@pytest.mark.parametrize("name", NEW)
def test_a_latent_they_do_not_fit_is_refused(name):
    gaussian = load_config(None, ["data.name=synthetic", "model.latent_dim=2",
                                  "model.hidden_sizes=[4]"])
    relaxed = load_config(None, [
        "data.name=synthetic", "model.hidden_sizes=[4]", "model.prior=categorical",
        'model.latent={name = "categorical", num_variables = 2, num_classes = 2}',
    ])
    for cfg in (gaussian, relaxed):
        vae = build_vae(cfg, 6)
        with pytest.raises(ConfigError, match=name) as info:
            build_objective(ObjectiveConfig(name=name, num_particles=2), vae)
        assert "\n" not in str(info.value)


@pytest.mark.parametrize("overrides, match", [
    (["objective.name=arm", "num_classes = 3"], "num_classes = 3"),
    (["objective.name=disarm", "num_classes = 4"], "binary latents"),
    (["objective.name=reinforce_loo", "objective.num_particles=1"], "K ≥ 2"),
    (["objective.name=vimco", "objective.num_particles=1"], "K ≥ 2"),
    (["objective.name=vimco", "objective.num_particles=2", "objective.beta=0.5"], "beta"),
    (["objective.name=relax", "objective.num_particles=2"], "single-sample"),
    (["objective.name=arm", "objective.jit=true"], "no compiled variant"),
])
def test_config_refusals(overrides, match):
    classes = next((s for s in overrides if s.startswith("num_classes")), "num_classes = 2")
    cfg = load_config(None, [
        "data.name=synthetic", "model.hidden_sizes=[4]", "model.prior=categorical",
        f'model.latent={{name = "categorical", num_variables = 2, {classes}}}',
        "guide.family=categorical", *[s for s in overrides if s.startswith("objective")],
    ])
    vae = build_vae(cfg, 6)
    with pytest.raises(ConfigError, match=match) as info:
        build_objective(cfg.objective, vae)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("name, K", [("reinforce_loo", 3), ("vimco", 3), ("arm", 1),
                                     ("disarm", 1), ("relax", 1)])
def test_each_trains_two_steps_through_the_public_api(name, K, tiny_cfg_overrides, tmp_path):
    """Two steps on seeded synthetic data through ``train`` (validation on): finite losses; the
    optimizer steps every parameter the objective trains (RELAX: its control network too)."""
    cfg = load_config(None, [
        *tiny_cfg_overrides, "train.epochs=1", "train.max_steps_per_epoch=2",
        'model.latent={name = "categorical", num_variables = 3, num_classes = 2}',
        "model.prior=categorical", "guide.family=categorical",
        f"objective.name={name}", f"objective.num_particles={K}",
    ])
    result = train(cfg, tmp_path / name)
    assert math.isfinite(result.history[-1]["train_loss"])
    assert math.isfinite(result.history[-1]["valid_elbo"])
    from vaelab.runs.checkpoint import load_checkpoint

    state = load_checkpoint(tmp_path / name / "checkpoints" / "last.pt")
    control = [k for k in state["model"] if k.startswith("inference.posterior.baseline.net")]
    assert control  # RELAX's control network is saved with the guide family
    # Adam holds a state for every parameter that received a gradient: all of them for RELAX
    # (its control network is trained), all but the unused baseline network for the others
    trained = len(state["optimizer"]["state"])
    total = len(list(result.vae.parameters()))
    assert trained == (total if name == "relax" else total - len(control)), (trained, total)


def test_vaelab_list_shows_them(capsys):
    assert set(NEW) <= set(OBJECTIVES.names())
    assert main(["list", "objectives"]) == 0
    out = capsys.readouterr().out
    for name in NEW:
        assert f"  {name} — " in out, name
