"""Configs that age well: run folders saved by vaelab 0.1.0 (``tests/fixtures/run_v1_*``, no
``version`` in their config) load, evaluate and resume under today's code, to the result an
uninterrupted run under the old code reached (``expected_epoch3.json``, recorded by vaelab 0.1.0
training the same config for 3 epochs)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from vaelab.cli import main
from vaelab.config import CONFIG_VERSION, RunConfig
from vaelab.registry import ConfigError
from vaelab.resolve import CHANGED_DEFAULTS, load_config, migrate, resolve
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
