"""The training step's optimizer (``train.optimizer``, issue 24 item 2): SGD with momentum steps
as ``torch.optim.SGD`` does, on the same gradients, and a step skipped on the device
(``found_inf``) leaves it as it was."""

from __future__ import annotations

import pyro
import pytest
import torch

from vaelab import build_vae, load_config
from vaelab.config import RunConfig, TrainConfig
from vaelab.inference.objectives import build_objective
from vaelab.runs.stepper import Stepper, make_optimizer
from vaelab.vae import VAE

D, STEPS, BATCH = 12, 6, 16
TINY = ["model.latent_dim=3", "model.hidden_sizes=[16]", "objective.name=trace",
        "objective.jit=false", "train.optimizer=sgd", "train.lr=0.05"]


def _batches() -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(7)
    return [torch.bernoulli(torch.full((BATCH, D), 0.3), generator=g) for _ in range(STEPS)]


def _built(cfg: RunConfig) -> VAE:
    pyro.clear_param_store()
    pyro.set_rng_seed(0)  # the same initial parameters for both
    return build_vae(cfg, D)


@pytest.mark.parametrize("momentum", [0.0, 0.9])
def test_sgd_steps_as_torch_sgd_on_the_same_gradients(momentum):
    """The stepper (one fused SGD over every parameter) and ``torch.optim.SGD`` (its default,
    unfused kernel) stepping the gradients of the same ``Trace_ELBO`` losses (the same draws
    under one seed): parameters equal to 1e-6 after 6 steps."""
    cfg = load_config(None, [*TINY, f"train.momentum={momentum}"])
    vae = _built(cfg)
    stepper = Stepper(cfg.train, vae, build_objective(cfg.objective, vae))
    assert isinstance(stepper.optimizer, torch.optim.SGD)
    assert stepper.optimizer.param_groups[0]["momentum"] == momentum
    pyro.set_rng_seed(1)
    for x in _batches():
        stepper.step(x, 1.0, None)

    ref = _built(cfg)
    objective = build_objective(cfg.objective, ref)
    sgd = torch.optim.SGD(ref.parameters(), lr=cfg.train.lr, momentum=momentum)
    pyro.set_rng_seed(1)
    for x in _batches():
        objective.loss_and_grads(ref.model, ref.guide, x, 1.0, None)
        sgd.step()
        sgd.zero_grad(set_to_none=True)

    moved = 0.0
    for (name, p), q, p0 in zip(vae.named_parameters(), ref.parameters(),
                                _built(cfg).parameters()):
        assert torch.allclose(p, q, rtol=0, atol=1e-6), name
        moved = max(moved, float((p - p0).detach().abs().max()))
    assert moved > 1e-3  # the steps did move the parameters


def test_a_skipped_first_sgd_step_leaves_parameters_and_momentum_as_they_were():
    """A step the device skips (``found_inf = 1``, a non-finite loss with ``train.sync_every >
    1``) changes nothing, even the first (torch's fused SGD would fill its momentum buffers from
    uninitialized memory there); the next steps are torch's SGD from the start."""
    tc = TrainConfig(optimizer="sgd", momentum=0.9, lr=0.1)
    p = torch.nn.Parameter(torch.tensor([1.0, -2.0, 3.0]))
    q = torch.nn.Parameter(p.detach().clone())
    opt, ref = make_optimizer(tc, [p]), torch.optim.SGD([q], lr=0.1, momentum=0.9)
    p.grad = torch.full((3,), float("nan"))
    opt.found_inf = torch.tensor(1.0)  # type: ignore[attr-defined]
    opt.step()
    assert p.tolist() == [1.0, -2.0, 3.0]
    assert opt.state[p]["momentum_buffer"].tolist() == [0.0, 0.0, 0.0]
    for g in ([1.0, 2.0, -1.0], [0.5, -0.5, 2.0], [3.0, 0.0, 1.0]):
        p.grad, q.grad = torch.tensor(g), torch.tensor(g)
        opt.found_inf = torch.tensor(0.0)  # type: ignore[attr-defined]
        opt.step()
        ref.step()
    assert torch.allclose(p, q, rtol=0, atol=1e-6)


def test_adam_stays_the_default():
    tc = TrainConfig()
    assert (tc.optimizer, tc.momentum) == ("adam", 0.0)
    assert isinstance(make_optimizer(tc, [torch.nn.Parameter(torch.ones(2))]), torch.optim.Adam)


def _theano_adam(theta, grads, lr, b1, b2, eps):
    """yburda/iwae's ``optimizers.Adam`` transcribed in numpy, one Theano call per gradient:
    every right-hand side reads the values before the call (timestep from 1, moments 0 and 1);
    the code ascends the bound, so it adds ``alpha · m`` of the bound's gradient, −g here."""
    import numpy as np
    theta = np.array(theta, dtype=np.float64)
    m, v, t = np.zeros_like(theta), np.ones_like(theta), 1.0
    for g in grads:
        g_bound = -np.asarray(g, dtype=np.float64)
        alpha = lr * np.sqrt(1 - b2 ** t) / (1 - b1 ** t)
        theta, m, v, t = (theta + alpha * m / (np.sqrt(v) + eps),
                          b1 * m + (1 - b1) * g_bound, b2 * v + (1 - b2) * g_bound ** 2, t + 1)
    return theta


def test_adam_burda_steps_as_the_authors_theano_update():
    """``train.optimizer = "adam_burda"`` equals a numpy transcription of the IWAE code's
    update on 5 fixed gradients (float32 against float64: 1e-6), and differs from torch's Adam
    (whose first step moves every coordinate by about lr)."""
    tc = TrainConfig(optimizer="adam_burda", lr=1e-2, adam_betas=[0.99, 0.999], adam_eps=1e-4)
    p = torch.nn.Parameter(torch.tensor([1.0, -2.0, 3.0]))
    opt = make_optimizer(tc, [p])
    grads = [[1.0, 2.0, -1.0], [0.5, -0.5, 2.0], [3.0, 0.0, 1.0], [-1.0, 1.0, 0.2], [2.0, 2.0, 2.0]]
    p.grad = torch.tensor(grads[0])
    opt.step()
    assert p.tolist() == [1.0, -2.0, 3.0]  # the first step applies m_0 = 0
    for g in grads[1:]:
        p.grad = torch.tensor(g)
        opt.step()
    want = _theano_adam([1.0, -2.0, 3.0], grads, 1e-2, 0.99, 0.999, 1e-4)
    assert torch.allclose(p.double(), torch.tensor(want), rtol=0, atol=1e-6)
    q = torch.nn.Parameter(torch.tensor([1.0, -2.0, 3.0]))
    adam = torch.optim.Adam([q], lr=1e-2, betas=(0.99, 0.999), eps=1e-4)
    for g in grads:
        q.grad = torch.tensor(g)
        adam.step()
    assert float((p - q).detach().abs().max()) > 1e-2


def test_adam_burda_trains_through_the_stepper_and_skips_a_flagged_step():
    cfg = load_config(None, [*TINY[:-2], "train.optimizer=adam_burda", "train.lr=0.01"])
    vae = _built(cfg)
    stepper = Stepper(cfg.train, vae, build_objective(cfg.objective, vae))
    before = [p.detach().clone() for p in vae.parameters()]
    pyro.set_rng_seed(1)
    for x in _batches():
        stepper.step(x, 1.0, None)
    assert max(float((p.detach() - q).abs().max()) for p, q in zip(vae.parameters(), before)) > 1e-4
    p = torch.nn.Parameter(torch.ones(2))
    opt = make_optimizer(cfg.train, [p])
    p.grad = torch.ones(2)
    opt.step()
    p.grad = torch.ones(2)
    opt.found_inf = torch.tensor(1.0)  # type: ignore[attr-defined]
    opt.step()
    assert p.tolist() == [1.0, 1.0] and float(opt.state[p]["step"]) == 2.0


@pytest.mark.parametrize("shuffle", [True, False])
def test_train_shuffle_false_visits_the_file_order_every_epoch(shuffle):
    """``train.shuffle = false``: every epoch's batches are 0..B−1, B..2B−1, ... (the IWAE
    code's minibatch index); ``true``: a permutation that changes with the epoch."""
    cfg = load_config(None, [*TINY, f"train.shuffle={str(shuffle).lower()}", "train.batch_size=4"])
    vae = _built(cfg)
    stepper = Stepper(cfg.train, vae, build_objective(cfg.objective, vae))

    class Identity:
        is_identity = True

        def train_batch(self, x, noise):
            return x

    x_train = torch.arange(10.0)[:, None]  # (10, 1): each point is its index
    orders = [torch.cat([b.idx for _, b in stepper.batches(x_train, Identity(), e,
                                                            torch.device("cpu"))]).tolist()
              for e in (0, 1)]
    if shuffle:
        assert sorted(orders[0]) == list(range(10)) and orders[0] != orders[1]
    else:
        assert orders == [list(range(10))] * 2


def test_warmup_per_epoch_is_the_vampprior_codes_beta():
    """``train.warmup_per = "epoch"``: β = min(1, (e + 1) / W) for every step of 0-based epoch
    e (the code's β = epoch / warmup, epochs from 1); ``step`` rises within the epoch."""
    from vaelab.runs.stepper import kl_weight

    W = 100
    for e, i in [(0, 0), (0, 499), (49, 250), (98, 10), (99, 0), (150, 3)]:
        assert kl_weight(e, i, 500, W, 1.0, "epoch") == min(1.0, (e + 1) / W)
        assert kl_weight(e, i, 500, W, 1.0, "step") == min(1.0, (e + i / 500) / W)
    assert kl_weight(0, 0, 500, 0, 0.7, "epoch") == 0.7  # no warm-up
    assert TrainConfig().warmup_per == "step"


def test_a_guide_fed_nan_parameters_is_a_diverged_run_not_a_crash():
    """A categorical guide whose encoder went NaN makes torch's sampler raise before any loss
    exists; the step says so as :class:`NonFiniteLossError` (what stops a diverged run), and
    an unrelated error with finite parameters still propagates as itself."""
    from vaelab.runs.stepper import NonFiniteLossError

    cfg = load_config(None, ["model.latent={name = 'categorical', num_variables = 2, "
                             "num_classes = 3}", 'guide.family={name = "categorical"}',
                             "model.hidden_sizes=[8]", "objective.name=graph",
                             "objective.jit=false"])
    vae = _built(cfg)
    stepper = Stepper(cfg.train, vae, build_objective(cfg.objective, vae))
    with torch.no_grad():
        for p in vae.inference.encoder.parameters():
            p.fill_(float("nan"))
    with pytest.raises(NonFiniteLossError, match="step 1"):
        stepper.step(_batches()[0], 1.0, None)
    vae = _built(cfg)  # finite parameters: an unrelated error stays itself
    stepper = Stepper(cfg.train, vae, build_objective(cfg.objective, vae))
    with pytest.raises(RuntimeError, match="shapes"):
        stepper.step(torch.ones(4, D + 1), 1.0, None)
