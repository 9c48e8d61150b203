"""Configs that age well: run folders saved by vaelab 0.1.0 (``tests/fixtures/run_v1_*``, no
``version`` in their config) load, evaluate and resume under today's code, to the result an
uninterrupted run under the old code reached (``expected_epoch3.json``, recorded by vaelab 0.1.0
training the same config for 3 epochs); configs of version 2 upgrade to version 3 (networks'
widths in one place, one training driver) with the same meaning."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import tomli_w
import torch

import vaelab.versions
from vaelab.cli import main
from vaelab.config import CONFIG_VERSION, RunConfig, to_dict
from vaelab.registry import ConfigError
from vaelab.resolve import CHANGED_DEFAULTS, load_config, migrate, resolve
from vaelab.runs.recipes import load_recipe
from vaelab.runs.run import evaluate, load_run

FIXTURES = Path(__file__).parent / "fixtures"
OLD_RUNS = ["run_v1_gaussian", "run_v1_categorical"]


@pytest.fixture(params=OLD_RUNS)
def old_run(request, tmp_path) -> Path:
    out = tmp_path / request.param
    shutil.copytree(FIXTURES / request.param, out)
    return out


def test_fixtures_were_saved_without_a_version():
    for name in OLD_RUNS:
        assert "version" not in (FIXTURES / name / "config.toml").read_text()


def test_an_old_run_loads_at_its_saved_meaning_and_evaluates(old_run):
    run = load_run(old_run)
    assert run.cfg.version == CONFIG_VERSION
    assert run.cfg.data.subset == "first"  # version 1 kept the first N points
    assert run.data.train.shape[0] == 50
    est = evaluate(run, run.cfg.eval.model_copy(update={"num_samples": 20, "limit": 10}))
    assert est.num_points == 10 and bool(est.log_px.isfinite().all())


def test_an_old_run_resumes_to_the_old_codes_uninterrupted_result(old_run, capsys):
    expected = json.loads((old_run / "expected_epoch3.json").read_text())
    argv = ["train", str(old_run / "config.toml"), "--out", str(old_run), "--resume",
            "--set", "train.epochs=3"]
    assert main(argv) == 0, capsys.readouterr().err
    state = torch.load(old_run / "checkpoints" / "last.pt", weights_only=True)
    # recorded with 2 threads, replayed with 1: equal up to float32 summation order
    for key, total in expected["param_sums"].items():
        assert float(state["model"][key].double().sum()) == pytest.approx(total, rel=1e-4,
                                                                           abs=1e-4), key
    row = json.loads((old_run / "metrics.jsonl").read_text().splitlines()[-1])
    for key in ("epoch", "step", "train_loss", "valid_elbo", "beta", "temperature"):
        want = expected["epoch3_metrics"][key]
        assert row[key] == (want if want is None else pytest.approx(want, rel=1e-5)), key
    saved = (old_run / "config.toml").read_text()
    assert f"version = {CONFIG_VERSION}" in saved and 'subset = "first"' in saved


def test_resume_still_refuses_a_real_change(old_run, capsys):
    argv = ["train", str(old_run / "config.toml"), "--out", str(old_run), "--resume",
            "--set", "train.epochs=3", "--set", "train.lr=0.01"]
    assert main(argv) == 2
    assert "train.lr" in capsys.readouterr().err


def test_a_config_written_by_hand_means_the_current_version(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text('[data]\nname = "synthetic"\nlimit = 10\n')
    assert load_config(path).data.subset == "spread"
    assert load_config(path, saved=True).data.subset == "first"


def test_a_newer_config_is_refused_in_one_line():
    with pytest.raises(ConfigError, match="upgrade vaelab"):
        resolve({"version": CONFIG_VERSION + 1}, saved=True)


def test_changed_defaults_name_real_keys_and_differ_from_today():
    today = RunConfig().model_dump()
    for version, key, old in CHANGED_DEFAULTS:
        section, name = key.split(".")
        assert 1 < version <= CONFIG_VERSION and name in today[section], key
        assert today[section][name] != old, key
        assert migrate({"version": version - 1})[section][name] == old
        assert name not in migrate({"version": version}).get(section, {})


# --------------------------------------------------------------------------------------------
# version 3: one home for a network's widths, one training driver (issue 23, items 3 and 4)


def _as_saved_by_version_3(cfg: RunConfig) -> dict:
    """``cfg`` as vaelab's version 3 saved it: the same keys without those version 4 added
    (``guide.input_transform``, ``train.momentum``), ``version = 3``."""
    raw = to_dict(cfg)
    guide = {k: v for k, v in raw["guide"].items() if k != "input_transform"}
    train = {k: v for k, v in raw["train"].items() if k != "momentum"}
    return {**raw, "version": 3, "guide": guide, "train": train}


def _as_saved_by_version_2(cfg: RunConfig) -> dict:
    """``cfg`` as vaelab's version 2 saved it: the keys of version 3, ``version = 2`` and the
    removed ``train.driver = "torch"`` (checked against the version-2 code's own dumps of every
    variant of the recipes below: equal), i.e. ``model.hidden_sizes`` / ``guide.hidden_sizes``
    beside the networks' widths."""
    raw = _as_saved_by_version_3(cfg)
    return {**raw, "version": 2, "train": {**raw["train"], "driver": "torch"}}


#: the variants these recipes had when version 2 and 3 saved their runs (the later ones use keys
#: those versions did not have: SGD's momentum, ``train.shuffle``, ...)
OLD_VARIANTS = {"iwae_static": ["iwae_k1", "iwae_k5", "iwae_k50", "dreg_k5", "dreg_k50"],
                "gumbel_softmax": ["gumbel", "straight_through", "reinforce"]}


@pytest.mark.parametrize("version", [2, 3])
@pytest.mark.parametrize("recipe", ["iwae_static", "gumbel_softmax"])
def test_a_version_2_recipe_run_upgrades_to_the_new_resolution_of_its_recipe(recipe, version):
    """Long runs of these recipes started before version 3 (or 4) resume under today's: their
    saved config, upgraded, equals the recipe's config resolved today (what ``--resume``
    compares)."""
    saved_by = {2: _as_saved_by_version_2, 3: _as_saved_by_version_3}[version]
    r = load_recipe(recipe)
    for variant in OLD_VARIANTS[recipe]:
        today = r.config(variant)
        upgraded = resolve(saved_by(today), saved=True)
        assert upgraded == today and to_dict(upgraded) == to_dict(today), variant


def test_an_old_configs_widths_become_the_networks_on_upgrade():
    """Before version 3 ``model.hidden_sizes`` / ``guide.hidden_sizes`` were an MLP's widths;
    the upgrade moves them into the networks they meant."""
    old = {"version": 2, "model": {"latent_dim": 2, "hidden_sizes": [30, 20],
                                   "activation": "tanh"},
           "guide": {"hidden_sizes": [5]}}
    up = migrate(old)
    assert "hidden_sizes" not in up["model"] and "hidden_sizes" not in up["guide"]
    assert up["model"]["decoder"] == {"name": "mlp", "hidden_sizes": [30, 20]}
    assert up["guide"]["encoder"] == {"hidden_sizes": [5]}  # the decoder mirrored, these widths
    cfg = resolve(old, saved=True)
    assert cfg.model.decoder.model_dump() == {"name": "mlp", "init": "default",
                                              "hidden_sizes": [30, 20], "activation": "tanh"}
    assert cfg.guide.encoder.model_dump() == {"name": "mlp", "init": "default",
                                              "hidden_sizes": [5], "activation": "tanh"}
    # beside another decoder, guide.hidden_sizes made an MLP encoder (today: that network's)
    cfg = resolve({"version": 2, "model": {"decoder": "gated"}, "guide": {"hidden_sizes": [9]}},
                  saved=True)
    assert (cfg.guide.encoder.name, cfg.guide.encoder.hidden_sizes) == ("mlp", [9])
    # a named MLP encoder without widths took model.hidden_sizes reversed (today: its default)
    cfg = resolve({"version": 2, "model": {"hidden_sizes": [30, 20]},
                   "guide": {"encoder": "mlp"}}, saved=True)
    assert cfg.guide.encoder.hidden_sizes == [20, 30]
    # for another network the width keys changed nothing (they had to agree): dropped
    cfg = resolve({"version": 2, "model": {"hidden_sizes": [], "decoder": "conv"},
                   "guide": {"hidden_sizes": [], "encoder": "conv"}}, saved=True)
    assert cfg.model.decoder.hidden_sizes == [] and cfg.guide.encoder.hidden_sizes == []


def test_an_old_svi_config_trains_with_the_one_driver_and_one_note(tiny_cfg_overrides, tmp_path,
                                                                   capsys):
    """``train.driver = "svi"`` is gone (pyro.infer.SVI reaches the one driver's parameters,
    tests/test_vae.py); a config saved with it loads, trains, and says so in one note."""
    raw = _as_saved_by_version_2(load_config(None, tiny_cfg_overrides))
    raw["train"]["driver"] = "svi"
    path = tmp_path / "old.toml"
    path.write_text(tomli_w.dumps(json.loads(json.dumps(raw), object_hook=_no_nulls)))
    vaelab.versions._NOTED.clear()  # notes said by earlier tests in this process
    assert main(["train", str(path), "--out", str(tmp_path / "run")]) == 0
    err = capsys.readouterr().err
    notes = [line for line in err.splitlines() if "train.driver" in line]
    assert len(notes) == 1 and notes[0].startswith("vaelab: note: "), err
    assert "driver" not in (tmp_path / "run" / "config.toml").read_text()
    with pytest.raises(ConfigError, match=r"train\.driver: unknown key"):
        resolve({"train": {"driver": "torch"}})  # a config written today has no driver


def _no_nulls(d: dict) -> dict:
    return {k: v for k, v in d.items() if v is not None}


# --------------------------------------------------------------------------------------------
# run folders written by the code before the redesign (issue 23, item 7): config version 2,
# written by vaelab at commit 3abc8f2 with 1 thread (tests/fixtures/*_v2_*)

V2_RUN = FIXTURES / "run_v2_trained"
V2_REPRODUCE = FIXTURES / "reproduce_v2_half"


def _sums(path: Path) -> dict[str, float]:
    state = torch.load(path, weights_only=True)
    return {k: float(v.double().sum()) for k, v in state["model"].items()}


def test_a_version_2_trained_run_scores_and_resumes_as_the_old_code_did(tmp_path, capsys):
    """The fixture's parameters after 2 epochs, its IS of 10 test points (K = 100, seed 0) and
    its resume to epoch 3 equal what the old code computed (``expected.json``), up to float32
    summation order (recorded with 1 thread)."""
    expected = json.loads((V2_RUN / "expected.json").read_text())
    out = tmp_path / "run"
    shutil.copytree(V2_RUN, out)
    assert _sums(out / "checkpoints" / "last.pt") == expected["epoch2_param_sums"]
    run = load_run(out, checkpoint="last")
    spec = expected["epoch2_is"]
    est = evaluate(run, run.cfg.eval.model_copy(update={
        "num_samples": spec["num_samples"], "limit": spec["limit"], "seed": spec["seed"]}))
    assert est.log_px.tolist() == pytest.approx(spec["log_px"], rel=1e-5, abs=1e-5)
    argv = ["train", str(out / "config.toml"), "--out", str(out), "--resume", "--set",
            "train.epochs=3"]
    assert main(argv) == 0, capsys.readouterr().err
    for key, total in expected["epoch3_param_sums"].items():
        assert _sums(out / "checkpoints" / "last.pt")[key] == pytest.approx(total, rel=1e-4,
                                                                           abs=1e-4), key
    row = json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])
    for key in ("epoch", "step", "train_loss", "valid_elbo", "beta", "temperature"):
        want = expected["epoch3_metrics"][key]
        assert row[key] == (want if want is None else pytest.approx(want, rel=1e-5)), key


def _without_timing(d: dict) -> dict:
    return {k: _without_timing(v) if isinstance(v, dict) else v for k, v in d.items()
            if not k.endswith("_s")}


def test_a_version_2_reproduce_folder_with_half_its_blocks_finishes_to_the_old_numbers(
        tmp_path, capsys):
    """A ``vaelab reproduce`` folder the old code left with 2 of its 3 IS blocks done: the same
    command finishes it (the stamped blocks are reused, training is not rerun) to the numbers of
    the old code's uninterrupted run (``expected_result.json``): IS, AIS, AIS − IS, BDMC."""
    out = tmp_path / "repro"
    shutil.copytree(V2_REPRODUCE, out)
    blocks = sorted((out / "iwae_k5" / "seed0" / "reproduce" / "is").iterdir())
    kept = {p.name: p.read_bytes() for p in blocks}
    assert list(kept) == ["block_0000.pt", "block_0001.pt"]
    overrides = (V2_REPRODUCE / "overrides.txt").read_text().split()
    argv = ["reproduce", "iwae_static", "--out", str(out), "--variant", "iwae_k5",
            "--no-progress", *overrides]
    assert main(argv) == 0, capsys.readouterr().err
    run_dir = out / "iwae_k5" / "seed0"
    for name, data in kept.items():  # reused as they were
        assert (run_dir / "reproduce" / "is" / name).read_bytes() == data
    assert len(run_dir.joinpath("metrics.jsonl").read_text().splitlines()) == 2
    got = json.loads((run_dir / "reproduce" / "result.json").read_text())
    want = json.loads((V2_REPRODUCE / "expected_result.json").read_text())
    for key in ("is", "ais", "ais_vs_is", "bdmc", "budget"):
        g, w = _without_timing(got[key]), _without_timing(want[key])
        assert g.keys() == w.keys(), key
        for k in w:
            if isinstance(w[k], float):
                assert g[k] == pytest.approx(w[k], rel=1e-5, abs=1e-6), (key, k)
            elif isinstance(w[k], dict):  # e.g. the ESS quantiles: float32 sums, to 1e-5
                assert g[k] == pytest.approx(w[k], rel=1e-5, abs=1e-6), (key, k)
            else:
                assert g[k] == w[k], (key, k)


# --------------------------------------------------------------------------------------------
# version 4: the analytic KL where one exists (issue 29, item 9); log1p for counts (item 8)


def test_every_recipe_names_its_objective():
    """A recipe that relied on the default would change meaning with it (before version 4 the
    default was trace): every recipe names its objective, so its runs keep their meaning."""
    import tomllib
    from importlib import resources

    for path in resources.files("vaelab.recipes").iterdir():
        if path.name.endswith(".toml"):
            raw = tomllib.loads(path.read_text())
            assert "name" in raw.get("objective", {}), path.name


def test_a_version_3_config_without_an_objective_still_trains_trace():
    """Before version 4 the default objective was trace and the encoder read raw counts."""
    old = {"version": 3, "model": {"likelihood": "poisson"}}
    cfg = resolve(old, saved=True)
    assert (cfg.objective.name, cfg.guide.input_transform) == ("trace", "none")
    cfg = resolve({"model": {"likelihood": "poisson"}})  # written today
    assert (cfg.objective.name, cfg.guide.input_transform) == ("mean_field", "log1p")


CASES = {  # overrides → the objective the rule picks
    "normal/standard_normal": ([], "mean_field"),
    "normal/normal": (["model.prior=normal"], "mean_field"),
    "normal/laplace": (["model.prior=laplace"], "mean_field"),
    "normal/student_t": (["model.prior=student_t"], "trace"),
    "normal/mog": (["model.prior=mog"], "trace"),
    "normal/vamp": (["model.prior=vamp"], "trace"),
    "normal/flow": (["model.prior=flow"], "trace"),
    "student_t/standard_normal": (["guide.family=student_t"], "trace"),
    "iaf/standard_normal": (["guide.family=iaf"], "trace"),
    "relaxed/categorical": (["model.latent={name='categorical', num_variables=2, "
                             "num_classes=3}"], "trace"),
    "relaxed(kl=categorical)/categorical": (
        ["model.latent={name='categorical', num_variables=2, num_classes=3}",
         "guide.family={name='relaxed', kl='categorical'}"], "trace"),
    "categorical/categorical": (["model.latent={name='categorical', num_variables=2, "
                                 "num_classes=3}", "guide.family=categorical"], "trace"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_the_default_objective_is_mean_field_exactly_where_torch_has_the_kl(case):
    """Ground truth: the built guide's q(z|x) and prior p(z) (expanded over the data plate, as
    the model samples it) have a closed-form ``kl_divergence`` registered in torch, and the guide
    is reparameterized (TraceMeanField_ELBO has no score-function term), exactly when
    ``objective.name = "auto"`` resolves to ``mean_field``; and the objective builds."""
    from pyro.distributions.torch_distribution import MaskedDistribution

    from vaelab.inference.objectives import build_objective
    from vaelab.model.priors import has_analytic_kl
    from vaelab.vae import build_vae

    overrides, expected = CASES[case]
    cfg = load_config(None, ["model.latent_dim=2", "model.hidden_sizes=[4]", *overrides])
    assert cfg.objective.name == expected
    vae = build_vae(cfg, data_dim=6)
    x = torch.rand(3, 6).round()  # (B, D)
    q = vae.inference.posterior_dist(x)  # batch (3,)
    p = vae.generative.prior().expand((3,))
    # a site masked out of the ELBO (Jang et al.'s relaxed guide, whose categorical KL is a
    # closed-form guide term under any objective) has no KL of its own to compute
    scored = not isinstance(q, MaskedDistribution) or q._mask is not False
    analytic = scored and has_analytic_kl(q, p) and vae.inference.posterior.reparameterized
    assert analytic == (expected == "mean_field"), case
    assert cfg.chosen["objective.name"].startswith("default: ")
    build_objective(cfg.objective, vae)  # the default always fits the model
    # and trace is one --set away
    assert load_config(None, [*overrides, "objective.name=trace"]).objective.name == "trace"


@pytest.mark.parametrize("likelihood,transform", [
    ("poisson", "log1p"), ("negative_binomial", "log1p"),
    ("zero_inflated_negative_binomial", "log1p"), ("bernoulli", "none"), ("normal", "none"),
    ("discretized_logistic", "none"),
])
def test_the_encoder_reads_log1p_of_counts_by_default(likelihood, transform):
    cfg = load_config(None, [f"model.likelihood={likelihood}"])
    assert cfg.guide.input_transform == transform
    assert load_config(None, [f"model.likelihood={likelihood}",
                              "guide.input_transform=none"]).guide.input_transform == "none"
