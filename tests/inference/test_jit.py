"""``objective.jit = "auto"``: the compiled objective (Pyro's JIT) reaches the parameters of the
eager one, for every objective that compiles and every component on the allowlist; anything else
falls back to eager, and says so."""

from __future__ import annotations

import pytest
import torch

from vaelab.inference.objectives import build_objective
from vaelab.inference.objectives._jit import JIT_ALLOWLIST, TensorArgsMixin, jit_blockers
from vaelab.resolve import load_config
from vaelab.runs.train import train

TINY = ["data.name=synthetic", "model.latent_dim=3", "model.hidden_sizes=[16]",
        "train.batch_size=20", "train.progress=false", "train.max_steps_per_epoch=25",
        "train.epochs=2"]  # 50 steps

ALLOWED = [  # every allowlisted prior and likelihood, under each objective that compiles
    ("trace", "standard_normal", "bernoulli"),
    ("trace", "normal", "bernoulli"),
    ("trace", "laplace", "bernoulli"),
    ("trace", "standard_normal", "{name='normal', learn='pixel'}"),
    ("mean_field", "standard_normal", "bernoulli"),
    ("mean_field", "normal", "{name='normal', learn='shared'}"),
    ("mean_field", "laplace", "bernoulli"),
]


#: the categorical latent under ``trace``: every relaxed estimator, both KL conventions, a
#: uniform and a learned prior, τ annealed every 5 steps (a τ frozen into the graph would show)
CATEGORICAL = ("model.latent={{name='categorical', num_variables=3, num_classes=4, "
               "prior='{prior}', temperature={tau}, temperature_min={tau_min}, "
               "anneal_rate=0.05, anneal_every=5}}")
RELAXED = [  # (estimator or None for Gumbel-softmax, kl, prior, τ_0, τ_min)
    (None, "relaxed", "uniform", 1.0, 0.5),
    ("gumbel_softmax", "categorical", "learned", 1.0, 0.5),
    ("straight_through", "categorical", "learned", 1.0, 0.5),
    ("gapped_st", "categorical", "uniform", 1.0, 0.5),
    ("gr_mck", "categorical", "learned", 1.0, 0.5),
    ("reinmax", "categorical", "learned", 2.0, 1.0),
]


@pytest.mark.parametrize("estimator,kl,prior,tau,tau_min", RELAXED)
def test_compiled_and_eager_relaxed_categorical_reach_the_same_parameters(
        estimator, kl, prior, tau, tau_min, tmp_path, capsys):
    """The relaxed guide family on a categorical latent, 50 steps compiled and eager: the same
    parameters to 1e-4 (measured: identical, reinmax 2e-5)."""
    family = "{name = 'relaxed', kl = '" + kl + "'" + (
        f", estimator = '{estimator}'" if estimator else "") + "}"
    base = [*TINY, "model.prior=categorical", f"guide.family={family}",
            CATEGORICAL.format(prior=prior, tau=tau, tau_min=tau_min), "train.warmup_epochs=1"]
    runs = {}
    for jit in ("auto", "false"):
        cfg = load_config(None, [*base, f"objective.jit={jit}"])
        result = train(cfg, tmp_path / jit)
        runs[jit] = result.vae.state_dict()
        if jit == "auto":  # compiled
            assert isinstance(build_objective(cfg.objective, result.vae), TensorArgsMixin)
    assert "eager" not in capsys.readouterr().err
    for name, value in runs["false"].items():
        assert torch.allclose(runs["auto"][name], value, rtol=1e-4, atol=1e-5), name


@pytest.mark.parametrize("objective,prior,likelihood", ALLOWED)
def test_compiled_and_eager_reach_the_same_parameters_after_50_steps(objective, prior, likelihood,
                                                                     tmp_path, capsys):
    base = [*TINY, f"objective.name={objective}", f"model.prior={prior}",
            f"model.likelihood={likelihood}", "train.warmup_epochs=1"]  # β ramps from 0
    runs = {}
    for jit in ("auto", "false"):
        result = train(load_config(None, [*base, f"objective.jit={jit}"]), tmp_path / jit)
        runs[jit] = result.vae.state_dict()
    assert "eager" not in capsys.readouterr().err  # auto compiled: nothing to say
    # float32 sums in another order: agreement to 1e-4 after 50 Adam steps (1e-3 lr)
    for name, value in runs["false"].items():
        assert torch.allclose(runs["auto"][name], value, rtol=1e-4, atol=1e-5), name


def test_auto_compiles_an_allowlisted_model_and_not_others(capsys):
    cfg = load_config(None, TINY)
    from vaelab.vae import build_vae

    vae = build_vae(cfg, 64)
    assert jit_blockers(vae) == []
    assert isinstance(build_objective(cfg.objective, vae), TensorArgsMixin)
    off = load_config(None, [*TINY, "objective.jit=false"])
    assert not isinstance(build_objective(off.objective, vae), TensorArgsMixin)
    assert capsys.readouterr().err == ""


@pytest.mark.parametrize("overrides,reason", [
    (["model.prior={name='mog', components=3}"], "not on the JIT allowlist: prior"),
    (["guide.family=student_t"], "guide family StudentTPosterior"),
    (["model.likelihood=continuous_bernoulli"], "likelihood"),
])
def test_auto_falls_back_to_eager_and_says_why(overrides, reason, tmp_path, capsys):
    cfg = load_config(None, [*TINY, *overrides, "train.epochs=1"])
    result = train(cfg, tmp_path / "run")
    err = capsys.readouterr().err
    assert "objective.jit = 'auto': eager" in err and reason in err, err
    assert err.count("objective.jit") == 1  # one line
    assert result.best_epoch == 1


def test_objectives_without_a_compiled_variant_run_eager_silently(tmp_path, capsys):
    cfg = load_config(None, [*TINY, "objective.name=iwae", "objective.num_particles=3",
                             "train.epochs=1"])
    train(cfg, tmp_path / "run")
    assert "objective.jit" not in capsys.readouterr().err


def test_a_compiled_loss_that_differs_from_the_eager_one_falls_back(tmp_path, capsys,
                                                                     monkeypatch):
    import vaelab.runs.train as train_module

    monkeypatch.setattr(train_module, "compiled_matches_eager", lambda *a, **k: False)
    result = train(load_config(None, [*TINY, "train.epochs=1"]), tmp_path / "run")
    assert "compiled loss differs" in capsys.readouterr().err
    assert not isinstance(result, TensorArgsMixin)


def test_the_allowlist_names_real_classes():
    import vaelab.guide.posteriors as posteriors
    import vaelab.guide.relaxed as relaxed
    import vaelab.model.latents as latents
    import vaelab.model.likelihoods as likelihoods
    import vaelab.model.priors as priors

    for name in JIT_ALLOWLIST:
        assert any(hasattr(m, name) for m in (posteriors, relaxed, latents, likelihoods,
                                               priors)), name


def test_a_smaller_last_batch_takes_the_eager_twin(tmp_path, capsys, monkeypatch):
    """400 points in batches of 30: 13 compiled steps and the last batch of 10 eager, per
    epoch; the parameters match an all-eager run (the tolerance of the 50-step test)."""
    from vaelab.runs.train import Stepper

    sizes = []
    step = Stepper.step

    def spy(self, x, beta, temperature, *batch):
        sizes.append((x.shape[0], self.eager is not None))
        return step(self, x, beta, temperature, *batch)

    monkeypatch.setattr(Stepper, "step", spy)
    runs = {}
    for jit in ("auto", "false"):
        cfg = load_config(None, [*TINY, "train.batch_size=30", f"objective.jit={jit}"])
        runs[jit] = train(cfg, tmp_path / jit).vae.state_dict()
    assert "eager" not in capsys.readouterr().err
    assert sizes[:14] == [(30, True)] * 13 + [(10, True)]  # auto: compiled with its twin
    for name, value in runs["false"].items():
        assert torch.allclose(runs["auto"][name], value, rtol=1e-4, atol=1e-5), name


def test_a_saved_jit_false_keeps_meaning_false():
    from pathlib import Path

    saved = Path(__file__).parents[1] / "fixtures" / "run_v1_gaussian" / "config.toml"
    assert load_config(saved).objective.jit is False
