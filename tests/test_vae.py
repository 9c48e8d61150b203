"""The VAE as a user's script sees it (issue 23, item 3): ``vae.model`` and ``vae.guide`` are Pyro
functions that Pyro's own ``SVI`` trains, whatever ``pyro.settings`` ``module_local_params`` says,
to the parameters of vaelab's one training driver."""

from __future__ import annotations

import math
import re
from pathlib import Path

import pyro
import pyro.optim
import pytest
import torch
from pyro.infer import SVI, Trace_ELBO

from vaelab import build_vae, load_config
from vaelab.config import RunConfig
from vaelab.inference.objectives import build_objective
from vaelab.runs.stepper import Stepper
from vaelab.vae import VAE

D, STEPS, BATCH = 12, 8, 16
#: the tiny VAE: 12 binary pixels, one hidden layer of 16, 3 latent dimensions. The eager
#: objective (``objective.jit = false``): the compiled one is tested equal to it in
#: tests/inference/test_jit.py, and compiling draws random numbers of its own on the first step
TINY = ["model.latent_dim=3", "model.hidden_sizes=[16]", "objective.name=trace",
        "objective.jit=false", "train.lr=0.01", "train.adam_betas=[0.8, 0.99]",
        "train.adam_eps=1e-6"]


def _batches() -> list[torch.Tensor]:
    """The same STEPS batches ``(BATCH, D)`` of binary data for both drivers."""
    g = torch.Generator().manual_seed(7)
    return [torch.bernoulli(torch.full((BATCH, D), 0.3), generator=g) for _ in range(STEPS)]


def _built(cfg: RunConfig) -> VAE:
    pyro.set_rng_seed(0)  # the same initial parameters for both drivers
    return build_vae(cfg, D)


def _vaelab_steps(cfg: RunConfig) -> VAE:
    """vaelab's training step (:class:`~vaelab.runs.stepper.Stepper`): the ``[objective]``'s
    ``loss_and_grads``, then one fused ``torch.optim.Adam`` over every parameter."""
    vae = _built(cfg)
    stepper = Stepper(cfg.train, vae, build_objective(cfg.objective, vae))
    pyro.set_rng_seed(1)  # the same draws for both drivers
    for x in _batches():
        stepper.step(x, 1.0, None)
    return vae


def _svi_steps(cfg: RunConfig) -> VAE:
    """What a user's script writes: Pyro's ``SVI`` with ``pyro.optim.Adam`` at the same rate,
    betas and eps, and ``Trace_ELBO``."""
    vae = _built(cfg)
    tc = cfg.train
    adam = pyro.optim.Adam({"lr": tc.lr, "betas": tuple(tc.adam_betas), "eps": tc.adam_eps})
    svi = SVI(vae.model, vae.guide, adam, Trace_ELBO())
    pyro.set_rng_seed(1)
    for x in _batches():
        svi.step(x)
    return vae


@pytest.mark.parametrize("module_local", [False, True])
def test_pyro_svi_reaches_the_parameters_of_vaelabs_training_step(module_local):
    """``SVI(vae.model, vae.guide, pyro.optim.Adam(...), Trace_ELBO())`` on a built VAE and
    vaelab's step reach the same parameters, within 1e-5 after 8 steps, with Pyro's global
    ``module_local_params`` off or on.

    Why they match: both start from the same initial parameters (the build under one seed) and
    take the same steps on the same batches; the objective is the same ``Trace_ELBO`` with one
    particle, and the draws z ~ q(z|x) come from the global generator in the same order under
    the same seed, so each step has the same loss and the same gradients. ``pyro.optim.Adam``
    is one ``torch.optim.Adam`` per parameter tensor, vaelab's one fused Adam over all of them:
    the same update rule per parameter, different kernels, equal up to float rounding (≈1e-7
    per step here). The setting is read by ``PyroModule`` only; vaelab's networks are plain
    modules declared with ``pyro.module`` (:func:`~vaelab.model.networks.register_module`), so
    it changes nothing. The reference run leaves its tensors in Pyro's global param store under
    the same names: the SVI run must still step its own VAE's parameters, not those.
    """
    cfg = load_config(None, TINY)
    with pyro.settings.context(module_local_params=module_local):
        want = _vaelab_steps(cfg)
        got = _svi_steps(cfg)
        assert pyro.settings.get("module_local_params") is module_local
    moved = [float((a - b).abs().max().detach()) for a, b in
             zip(want.parameters(), _built(cfg).parameters())]
    assert min(moved) > 1e-3  # every parameter tensor trained
    for (name, a), b in zip(want.named_parameters(), got.parameters()):
        assert torch.allclose(a, b, rtol=0, atol=1e-5), name


def test_the_trace_holds_this_vaes_parameters_after_another_vae():
    """Two VAEs built in one process share parameter names in Pyro's global store; each model
    and guide puts its own tensors in the trace (what SVI steps and Pyro's JIT reads back)."""
    cfg = load_config(None, TINY)
    x = _batches()[0]
    for vae in (_built(cfg), _built(cfg)):
        with pyro.poutine.trace(param_only=True) as tr:
            vae.guide(x)
            vae.model(x)
        params = {site["value"] for site in tr.trace.nodes.values()}
        assert {id(p) for p in params} == {id(p) for p in vae.parameters()}
        store = pyro.get_param_store()
        assert all(store[store.param_name(p)] is p for p in vae.parameters())


def test_nothing_in_vaelab_sets_pyros_global_module_local_params():
    """One parameter regime for every run: vaelab never switches ``module_local_params`` (a
    global setting a user's script may rely on), under torchrun included."""
    root = Path(__file__).parents[1] / "vaelab"
    setter = re.compile(r"settings\.set\([^)]*module_local_params")
    assert not [p for p in root.rglob("*.py") if setter.search(p.read_text())]


# --------------------------------------------------------------------------------------------
# issue 29, item 8: count data up to ~15,000 (single-cell scale) train; the encoder reads
# log(1 + x), the likelihood scores the raw counts


def _counts(path: Path) -> torch.Tensor:
    """A seeded count matrix ``(300, 40)``: negative-binomial counts (θ = 2) around means
    e^{N(3, 2)} per gene (three highly expressed: 1000, 1500, 2000), scaled per cell, up to
    17,549, saved as ``.npy``."""
    import numpy as np

    rng = np.random.default_rng(0)
    gene = np.exp(rng.normal(3.0, 2.0, 40))  # (D,)
    gene[:3] = [1000.0, 1500.0, 2000.0]
    cell = np.exp(rng.normal(0.0, 0.5, (300, 1)))  # (N, 1)
    mu = gene * cell  # (N, D)
    counts = rng.negative_binomial(2.0, 2.0 / (2.0 + mu)).astype(np.float32)
    np.save(path, counts)
    return torch.from_numpy(counts)


def test_counts_up_to_15000_train_with_log1p_input_and_raw_counts_scored(tmp_path):
    from vaelab import train
    from vaelab.runs.checkpoint import read_metrics

    x_all = _counts(tmp_path / "counts.npy")
    assert float(x_all.max()) == 17_549
    overrides = ["data.name=array", f"data.path={tmp_path / 'counts.npy'}",
                 "data.values=counts", "model.likelihood=negative_binomial",
                 "model.latent_dim=4", "model.hidden_sizes=[32]", "train.epochs=2",
                 "train.batch_size=50", "train.progress=false", "objective.jit=false"]
    cfg = load_config(None, overrides)
    assert cfg.guide.input_transform == "log1p"  # chosen for a likelihood of counts
    result = train(cfg, tmp_path / "run")  # raises NonFiniteLossError if it diverges
    rows = read_metrics(tmp_path / "run")
    assert len(rows) == 2 and all(torch.isfinite(torch.tensor(r["valid_elbo"])) for r in rows)

    vae = result.run("last").vae
    x = x_all[:5]  # (5, D) raw counts
    seen = []
    hook = vae.inference.encoder.register_forward_pre_hook(lambda m, a: seen.append(a[0]))
    with torch.no_grad():
        z = vae.inference.posterior_dist(x).mean  # (5, d)
        params = vae.generative.decoder(vae.latent.decoder_input(z))  # (5, D)
        lp = vae.generative.likelihood(params).log_prob(x)  # (5,)
    hook.remove()
    assert torch.equal(seen[0], torch.log1p(x))  # the encoder read log(1 + x)
    # NB(x; μ, θ) by hand on the raw counts: lgamma(x + θ) − lgamma(θ) − lgamma(x + 1)
    # + θ log(θ / (θ + μ)) + x log(μ / (θ + μ)), μ = e^η
    theta = vae.generative.likelihood.inverse_dispersion().double()  # (D,)
    mu, xd = params.double().exp(), x.double()
    hand = (torch.lgamma(xd + theta) - torch.lgamma(theta) - torch.lgamma(xd + 1)
            + theta * (theta / (theta + mu)).log() + xd * (mu / (theta + mu)).log()).sum(-1)
    assert torch.allclose(lp.double(), hand, rtol=1e-4, atol=1e-2), (lp, hand)


@pytest.mark.filterwarnings("ignore:Encountered NaN")  # Pyro's own warning for the loss
def test_poisson_on_raw_counts_diverges_and_trains_on_log1p(tmp_path):
    """The control: the same counts with a Poisson likelihood stop as non-finite at the first
    step when the encoder reads them raw (``guide.input_transform = "none"``, what configs meant
    before version 4) and train with the default ``log1p``."""
    from vaelab import train
    from vaelab.runs.stepper import NonFiniteLossError

    _counts(tmp_path / "counts.npy")
    base = ["data.name=array", f"data.path={tmp_path / 'counts.npy'}", "data.values=counts",
            "model.likelihood=poisson", "train.epochs=2", "train.batch_size=50",
            "train.progress=false", "objective.jit=false"]
    with pytest.raises(NonFiniteLossError, match="non-finite loss"):
        train(load_config(None, [*base, "guide.input_transform=none"]), tmp_path / "raw")
    result = train(load_config(None, base), tmp_path / "log1p")
    assert result.best_epoch is not None and math.isfinite(result.best_valid_elbo)


def test_a_categorical_familys_baseline_is_its_own_parameter_group():
    """The score-function baseline (NVIL's network, RELAX's control variate) is no part of
    q(z | x): ``parameter_groups`` lists it as ``baseline``, not under ``encoder``; every
    parameter is in exactly one group."""
    from vaelab import build_vae, load_config

    cfg = load_config(None, ["model.latent={name = 'categorical', num_variables = 2, "
                             "num_classes = 3}", 'guide.family={name = "categorical"}',
                             "model.hidden_sizes=[8]"])
    vae = build_vae(cfg, 6)
    groups = vae.parameter_groups()
    base = {id(p) for p in vae.inference.posterior.baseline.parameters()}
    assert base and {id(p) for p in groups["baseline"]} == base
    assert not base & {id(p) for p in groups["encoder"]}
    listed = [id(p) for ps in groups.values() for p in ps]
    assert sorted(listed) == sorted(id(p) for p in vae.parameters())
