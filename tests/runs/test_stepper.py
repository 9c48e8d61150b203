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
