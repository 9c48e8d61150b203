"""User-defined components (issue 11, item 5): by import path, by ``plugins``, by entry point.

The worked example (examples/plugins/my_components.py: a logistic prior, a heteroscedastic
normal likelihood, a synthetic data set) is checked against scipy and against the true
log-density of its data by quadrature, and trained and evaluated from its two configs through
the CLI. Every bad plugin gives one line naming the key, exit 2, and no run folder.
"""

from __future__ import annotations

import importlib
import json
import math
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy import stats

import vaelab.catalog  # noqa: F401  (fills REGISTRIES, parametrized over below)
import vaelab.registry.plugins as registry  # the entry-point flag lives in the import machine
from vaelab import register
from vaelab.cli import main
from vaelab.registry import REGISTRIES, ConfigError, registry_for

EXAMPLES = Path(__file__).resolve().parents[1] / "examples" / "plugins"


@pytest.fixture(autouse=True)
def _isolated_registries(tmp_path):
    """Every registry, the entry-point flag and the imported user modules as they were before
    the test (a user module registers names when imported: the next test imports it afresh)."""
    saved = {k: (dict(r._entries), dict(r._imported)) for k, r in REGISTRIES.items()}
    loaded = registry._entry_points_loaded
    modules = set(sys.modules)
    yield
    for k, r in REGISTRIES.items():
        entries, imported = saved.get(k, ({}, {}))
        r._entries.clear()
        r._entries.update(entries)
        r._imported.clear()
        r._imported.update(imported)
    registry._entry_points_loaded = loaded
    for name in set(sys.modules) - modules:
        file = getattr(sys.modules[name], "__file__", None) or ""
        if file.startswith((str(tmp_path), str(EXAMPLES))):
            del sys.modules[name]


@pytest.fixture
def components(monkeypatch):
    """The example module, imported from examples/plugins."""
    monkeypatch.syspath_prepend(str(EXAMPLES))
    return importlib.import_module("my_components")


def _module(folder: Path, name: str, source: str) -> None:
    (folder / f"{name}.py").write_text(textwrap.dedent(source))
    importlib.invalidate_caches()


# --------------------------------------------------------------------------------------------
# ground truth: the example's densities


@pytest.mark.parametrize("opts", [{}, {"scale": 0.3, "learn_scale": True}])
def test_logistic_prior_log_density_matches_scipy(components, opts):
    from vaelab.catalog import PRIORS

    torch.set_default_dtype(torch.float64)  # built in float64 (conftest restores the default)
    parsed = PRIORS.parse({"name": "my_components:LogisticPrior", **opts}, "model.prior")
    prior = parsed.build(3, None)
    z = torch.cat([torch.randn(50, 3, dtype=torch.float64) * 3,
                   torch.tensor([[0.0, 8.0, -15.0]], dtype=torch.float64)])  # (51, 3), tails
    s = opts.get("scale", math.sqrt(3) / math.pi)
    truth = stats.logistic.logpdf(z.numpy(), loc=0.0, scale=s).sum(-1)  # (51,)
    p = prior()
    assert p.batch_shape == () and p.event_shape == (3,)
    np.testing.assert_allclose(p.log_prob(z).detach().numpy(), truth, rtol=0, atol=1e-10)
    assert [n for n, _ in prior.named_parameters()] == (["raw_scale"] if opts else [])
    if not opts:  # the default scale is the unit-variance one
        assert stats.logistic.var(scale=s) == pytest.approx(1.0, abs=1e-12)


def test_heteroscedastic_normal_log_density_matches_scipy(components):
    from vaelab.catalog import LIKELIHOODS

    parsed = LIKELIHOODS.parse({"name": "heteroscedastic_normal", "min_scale": 0.05},
                               "model.likelihood")
    D = 4
    lik = parsed.build(D).double()
    assert lik.param_size == 2 * D
    g = torch.Generator().manual_seed(3)
    params = 2 * torch.randn(7, 2 * D, generator=g, dtype=torch.float64)  # (B, 2D)
    x = 10 * torch.randn(7, D, generator=g, dtype=torch.float64)  # (B, D), far from [0, 1]
    loc, rho = params[:, :D].numpy(), params[:, D:].numpy()
    scale = np.logaddexp(0.0, rho) + 0.05  # softplus, computed apart from torch
    truth = stats.norm.logpdf(x.numpy(), loc=loc, scale=scale).sum(-1)  # (B,)
    d = lik(params)
    assert d.batch_shape == (7,) and d.event_shape == (D,)
    np.testing.assert_allclose(d.log_prob(x).numpy(), truth, rtol=0, atol=1e-10)
    lik.check_data(x)  # real values are accepted
    with pytest.raises(ConfigError, match="model.likelihood: HeteroscedasticNormal needs .*NaN"):
        lik.check_data(torch.tensor([[0.0, float("nan"), 1.0, 2.0]]))


def _true_log_px(components, x: torch.Tensor, seed: int = 0, n: int = 401, half: float = 10.0):
    """log p(x) of the example's data-generating model by the trapezoid rule on a 401² grid
    over [−10, 10]² (converged: 801² and [−14, 14]² agree to 1e-12), ``(N,)``."""
    w, v, b = (t.double() for t in components.toy_parameters(seed))
    t = torch.linspace(-half, half, n, dtype=torch.float64)
    z = torch.stack(torch.meshgrid(t, t, indexing="ij"), -1).reshape(-1, 2)  # (n², 2)
    s = components.UNIT_SCALE
    log_pz = torch.tensor(stats.logistic.logpdf(z.numpy(), scale=s).sum(-1))  # (n²,)
    loc = z @ w.T + b  # (n², D)
    scale = 0.1 + torch.nn.functional.softplus(z @ v.T)  # (n², D)
    log_cell = 2 * math.log(float(t[1] - t[0]))
    out = [torch.logsumexp(torch.distributions.Normal(loc, scale).log_prob(xi).sum(-1) + log_pz,
                           0) + log_cell for xi in x.double()]
    return torch.stack(out)


# --------------------------------------------------------------------------------------------
# the worked example through the CLI


@pytest.mark.parametrize("config", ["config.toml", "by_path.toml"])
def test_example_trains_and_evaluates_from_its_config(config, tmp_path, monkeypatch, capsys):
    """The example's config as shipped (50 epochs, seconds), run from its folder as the README
    says: train, evaluate by IS, and reload from the saved config alone in a fresh process."""
    monkeypatch.chdir(EXAMPLES)  # the module is found in the current directory
    out = tmp_path / "run"
    assert main(["train", config, "--out", str(out), "--evaluate", "--set",
                 "train.progress=false", "--set", "eval.num_samples=500"]) == 0
    saved = (out / "config.toml").read_text()
    if config == "config.toml":
        assert 'plugins = [\n    "my_components",\n]' in saved and 'name = "logistic"' in saved
    else:
        assert "plugins" not in saved or "plugins = []" in saved
        assert 'name = "my_components:LogisticPrior"' in saved
        assert 'name = "my_components:HeteroscedasticNormal"' in saved
    capsys.readouterr()

    from vaelab.runs.run import eval_config, evaluate, load_run

    components = sys.modules["my_components"]
    run = load_run(out)
    assert type(run.vae.generative.prior) is components.LogisticPrior
    assert type(run.vae.generative.likelihood) is components.HeteroscedasticNormal
    assert float(run.data.test.min()) < -5 and float(run.data.test.max()) > 5  # real-valued
    est = evaluate(run, eval_config(run.cfg, ["eval.num_samples=500"]))
    # ground truth: log p(x) of the generating model by quadrature, on the same 100 test
    # points. The cross-entropy bound E[log p_θ(x)] ≤ E[log p(x)] holds in expectation: the
    # paired mean difference lies below 3 standard errors; and 50 epochs come within 3 nats
    # (about 1.2 measured)
    diff = (est.log_px.double() - _true_log_px(components, run.data.test)).double()  # (100,)
    se = float(diff.std()) / math.sqrt(diff.numel())
    assert float(diff.mean()) <= 3 * se, (float(diff.mean()), se)
    assert float(diff.mean()) > -3.0, float(diff.mean())

    # a fresh interpreter that finds the module in the current directory only (-P: no script
    # directory on sys.path, as for the `vaelab` command) rebuilds the run from its saved config
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["OMP_NUM_THREADS"] = "1"
    proc = subprocess.run(
        [sys.executable, "-P", "-m", "vaelab", "evaluate", str(out), "--json",
         "--num-samples", "64", "--limit", "20", "--no-progress"],
        cwd=EXAMPLES, env=env, capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    fresh = json.loads(proc.stdout)
    # `vaelab evaluate` scores in blocks, each seeded by its index (vaelab.runs.sharded)
    from vaelab.runs.sharded import evaluate_sharded

    here = evaluate_sharded(run, eval_config(run.cfg, ["eval.num_samples=64", "eval.limit=20"]))
    assert fresh["log_likelihood"] == pytest.approx(float(here.log_px.mean()), abs=1e-6)


# --------------------------------------------------------------------------------------------
# bad plugins: one line naming the key, exit 2, nothing written

BAD_MODULES = {
    "vl_broken_dep": "import vl_missing_dependency\n",
    "vl_raises": "x = 1 / 0\n",
    "vl_dup": """
        from vaelab import register

        @register("prior", "laplace")
        def laplace_again(opts, latent_dim, ctx):
            raise AssertionError("never built")
    """,
    "vl_dup_logistic": """
        from vaelab import register

        @register("prior", "logistic")
        def another_logistic(opts, latent_dim, ctx):
            raise AssertionError("never built")
    """,
    "vl_plain": """
        def helper(opts, latent_dim, ctx):
            return None

        class BadOptions:
            Options = dict
    """,
}

BAD_CASES = {
    "module does not import": (
        'prior = "vl_no_such_module:Thing"',
        ["model.prior: module 'vl_no_such_module' does not import: "
         "No module named 'vl_no_such_module'", "current directory"]),
    "module's dependency does not import": (
        'prior = "vl_broken_dep:Thing"',
        ["model.prior: module 'vl_broken_dep' does not import: "
         "No module named 'vl_missing_dependency'"]),
    "module raises": (
        'prior = "vl_raises:Thing"',
        ["model.prior: importing module 'vl_raises' failed: ZeroDivisionError: division by zero"]),
    "name not in the module": (
        'prior = "my_components:LogisticPrio"',
        ["model.prior: module 'my_components' has no 'LogisticPrio' (did you mean "
         "'LogisticPrior'?); prior components in it: LogisticPrior"]),
    "not a component": (
        'prior = "vl_plain:helper"',
        ["model.prior: 'vl_plain:helper' is function 'helper', not a vaelab component; a prior "
         "component is a class or function decorated with @vaelab.register('prior', ...), or "
         "one with an Options attribute (a vaelab.Options subclass), called as "
         "obj(options, latent_dim, ctx)"]),
    "a built-in function": (
        'likelihood = "math:sqrt"',
        ["model.likelihood: 'math:sqrt' is builtin_function_or_method 'sqrt', not a vaelab "
         "component", "called as obj(options, data_dim)"]),
    "Options is not vaelab.Options": (
        'prior = "vl_plain:BadOptions"',
        ["model.prior: class 'BadOptions' has an Options attribute that is not a subclass of "
         "vaelab.Options"]),
    "a component of another kind": (
        'prior = "my_components:HeteroscedasticNormal"',
        ["model.prior: 'my_components:HeteroscedasticNormal' is a likelihood component, "
         "not a prior"]),
    "not an import path": (
        'prior = "my-components:LogisticPrior"',
        ["model.prior: 'my-components:LogisticPrior' is not an import path; expected "
         "'module:name'"]),
    "option out of range": (
        'prior = {name = "my_components:LogisticPrior", scale = -1.0}',
        ["model.prior.scale: Input should be greater than 0 (got -1.0); options of prior "
         "'my_components:LogisticPrior': learn_scale, scale"]),
    "unknown option": (
        'likelihood = {name = "my_components:HeteroscedasticNormal", min_scael = 0.1}',
        ["model.likelihood.min_scael: unknown key (set to 0.1) (did you mean 'min_scale'?)",
         "options of likelihood 'my_components:HeteroscedasticNormal': min_scale"]),
    "registered name, bad option": (
        'plugins = ["my_components"]\n[model]\nprior = {name = "logistic", learn_scale = "maybe"}',
        ["model.prior.learn_scale: Input should be a valid boolean", "(got 'maybe')"]),
    "plugin does not import": (
        'plugins = ["vl_no_such_plugin"]',
        ["plugins: module 'vl_no_such_plugin' does not import: "
         "No module named 'vl_no_such_plugin'"]),
    "plugin given as a file name": (
        'plugins = ["my_components.py"]',
        ["plugins: module 'my_components.py' does not import", "(a module name, not a file "
         "name: 'my_components')"]),
    "plugin registers a built-in name": (
        'plugins = ["vl_dup"]',
        ["plugins: importing module 'vl_dup' failed: prior 'laplace' is already registered by "
         "vaelab.model.priors; choose another name"]),
    "two plugins register one name": (
        'plugins = ["my_components", "vl_dup_logistic"]',
        ["plugins: importing module 'vl_dup_logistic' failed: prior 'logistic' is already "
         "registered by my_components; choose another name"]),
    "unknown registered name": (
        'plugins = ["my_components"]\n[model]\nprior = "logistc"',
        ["model.prior: unknown prior 'logistc' (did you mean 'logistic'?)"]),
    "a prior that does not fit the latent type": (
        'plugins = ["my_components"]\n[model]\nlatent = "categorical"\nprior = "logistic"',
        ["model.prior: 'logistic' does not fit latent type 'categorical'"]),
}


@pytest.mark.parametrize("case", sorted(BAD_CASES))
def test_a_bad_plugin_is_one_line_exit_2_and_writes_nothing(case, tmp_path, monkeypatch,
                                                            capsys):
    monkeypatch.syspath_prepend(str(EXAMPLES))
    monkeypatch.syspath_prepend(str(tmp_path))
    for name, source in BAD_MODULES.items():
        _module(tmp_path, name, source)
    spec, expected = BAD_CASES[case]
    text = spec if spec.startswith("plugins") else f"[model]\n{spec}"
    cfg = tmp_path / "bad.toml"
    cfg.write_text(f'{text}\n[data]\nname = "synthetic"\n')
    out = tmp_path / "run"
    assert main(["train", str(cfg), "--out", str(out)]) == 2
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(lines) == 1, lines
    assert lines[0].startswith("vaelab train: error: "), lines[0]
    for fragment in expected:
        assert fragment in lines[0], (fragment, lines[0])
    assert not out.exists()


# --------------------------------------------------------------------------------------------
# entry points of installed packages


def _distribution(site: Path, entry_points: str, modules: dict[str, str]) -> None:
    """A package "installed" in ``site``: its modules and a ``.dist-info`` with METADATA and
    entry_points.txt, which is all :mod:`importlib.metadata` reads."""
    info = site / "vl_ep_pkg-0.1.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: vl-ep-pkg\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(textwrap.dedent(entry_points))
    for name, source in modules.items():
        _module(site, name, source)


EP_MODULE = """
    from vaelab import register
    from vaelab.model.priors import StandardNormalPrior

    CALLS = []

    @register("prior", "ep_prior")
    def ep_prior(opts, latent_dim, ctx):
        return StandardNormalPrior(latent_dim)

    def register_more():
        from vaelab.model.likelihoods import BernoulliLikelihood

        CALLS.append(1)
        register("likelihood", "ep_bernoulli")(lambda opts, data_dim: BernoulliLikelihood(data_dim))
"""


def test_entry_points_register_components_once_before_resolution(tmp_path, monkeypatch,
                                                                  capsys):
    site = tmp_path / "site"
    _distribution(site, """
        [vaelab.plugins]
        priors = vl_ep_mod
        more = vl_ep_mod:register_more
    """, {"vl_ep_mod": EP_MODULE})
    monkeypatch.syspath_prepend(str(site))
    monkeypatch.setattr(registry, "_entry_points_loaded", False)
    cfg = tmp_path / "c.toml"
    cfg.write_text('[model]\nprior = "ep_prior"\nlikelihood = "ep_bernoulli"\n')
    assert main(["config", "show", str(cfg)]) == 0  # no plugins line: the entry points did it
    shown = capsys.readouterr().out
    assert 'name = "ep_prior"' in shown and 'name = "ep_bernoulli"' in shown
    assert main(["config", "show", str(cfg)]) == 0
    assert sys.modules["vl_ep_mod"].CALLS == [1]  # loaded once per process

    from vaelab.resolve import load_config
    from vaelab.vae import build_vae

    vae = build_vae(load_config(cfg, ["model.latent_dim=3", "model.hidden_sizes=[8]"]), 5)
    assert type(vae.generative.prior).__name__ == "StandardNormalPrior"


def test_a_broken_entry_point_names_itself_and_its_package(tmp_path, monkeypatch, capsys):
    site = tmp_path / "site"
    _distribution(site, """
        [vaelab.plugins]
        gone = vl_ep_gone
    """, {})
    monkeypatch.syspath_prepend(str(site))
    monkeypatch.setattr(registry, "_entry_points_loaded", False)
    cfg = tmp_path / "c.toml"
    cfg.write_text("")
    out = tmp_path / "run"
    assert main(["train", str(cfg), "--out", str(out)]) == 2
    (line,) = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert ("entry point 'gone' = 'vl_ep_gone' (group 'vaelab.plugins', package 'vl-ep-pkg'): "
            "module 'vl_ep_gone' does not import: No module named 'vl_ep_gone'") in line, line
    assert not out.exists()
    assert registry._entry_points_loaded is False  # tried again by the next resolution


# --------------------------------------------------------------------------------------------
# every registry takes a user component


@pytest.mark.parametrize("kind", sorted(REGISTRIES))
def test_every_registry_takes_a_decorated_component_by_name_and_by_path(kind, tmp_path,
                                                                        monkeypatch):
    monkeypatch.syspath_prepend(str(tmp_path))
    name = f"vl_kind_{kind}"
    _module(tmp_path, name, f"""
        from vaelab import register

        @register({kind!r}, "user_{kind}")
        def build(*args):
            return args
    """)
    module = importlib.import_module(name)
    reg = registry_for(kind)
    assert reg.entry(f"user_{kind}").builder is module.build
    assert reg.entry(f"{name}:build", key="k").builder is module.build
    assert f"user_{kind}" in reg.names() and f"{name}:build" not in reg.names()
    assert registry_for(reg.kind) is reg  # the full kind ("guide family") works too


def test_a_user_guide_family_and_objective_train(tmp_path, monkeypatch, tiny_cfg_overrides):
    """The Options protocol without the decorator (a family class) and a decorated objective
    builder, both by import path, in one training epoch and an IS evaluation."""
    monkeypatch.syspath_prepend(str(tmp_path))
    _module(tmp_path, "vl_more", """
        from pydantic import Field
        from pyro.infer import Trace_ELBO

        from vaelab import Options, register
        from vaelab.guide.posteriors import NormalPosterior

        CALLS = []

        class WideNormal(NormalPosterior):
            class Options(Options):
                floor: float = Field(0.2, gt=0.0)

            def __init__(self, opts, latent):
                super().__init__(latent.flat_dim, opts.floor)

        @register("objective")
        def plain_trace(cfg, vae):
            CALLS.append(cfg.num_particles)
            return Trace_ELBO(num_particles=cfg.num_particles)
    """)
    from vaelab.resolve import load_config
    from vaelab.runs.run import evaluate
    from vaelab.runs.train import train

    cfg = load_config(None, [*tiny_cfg_overrides, "train.epochs=1",
                             'guide.family={name = "vl_more:WideNormal", floor = 0.3}',
                             "objective.name=vl_more:plain_trace", "objective.num_particles=2"])
    assert cfg.guide.family.floor == 0.3
    run = train(cfg, tmp_path / "run").run()
    assert run.vae.inference.posterior.min_scale == 0.3
    assert sys.modules["vl_more"].CALLS and set(sys.modules["vl_more"].CALLS) == {2}
    assert math.isfinite(float(evaluate(run).log_px.mean()))
    with pytest.raises(ConfigError, match="guide.family.floor: Input should be greater than 0"):
        load_config(None, ['guide.family={name = "vl_more:WideNormal", floor = 0}'])


def test_register_refuses_an_unknown_kind_and_options_that_are_not_options():
    with pytest.raises(ConfigError, match="unknown component kind 'priors' \\(did you mean "
                                          "'prior'\\?\\); kinds: .*likelihood"):
        register("priors", "x")
    with pytest.raises(TypeError, match="options must subclass vaelab.Options"):
        register("prior", "x", dict)(lambda opts, latent_dim, ctx: None)
    assert "x" not in registry_for("prior")


def test_reregistering_the_same_definition_replaces_it(tmp_path, monkeypatch):
    """A module reload (a notebook's autoreload) re-runs its decorators without an error."""
    monkeypatch.syspath_prepend(str(tmp_path))
    _module(tmp_path, "vl_reload", """
        from vaelab import register

        @register("prior", "vl_reloaded")
        def build(opts, latent_dim, ctx):
            return 1
    """)
    first = importlib.import_module("vl_reload")
    again = importlib.reload(first)
    assert registry_for("prior").entry("vl_reloaded").builder is again.build
