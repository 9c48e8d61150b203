"""What the command line prints (issue 29 items 2-5, 7, 11, 13) and how it ends on an interrupt
or a full disk (issue 28 items 9, 11, 12, 17): one line each, never a traceback."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from vaelab import cli
from vaelab.cli import main

TINY = ["data.name=synthetic", "model.latent_dim=4", "model.hidden_sizes=[16]",
        "train.batch_size=32", "eval.num_samples=50", "eval.limit=40"]
ROOT = Path(__file__).resolve().parents[1]
RESULT = re.compile(r"^test log p\(x\) = -\d+\.\d\d ± \d+\.\d\d nats \(IS, K = 50, 40 points; "
                    r"(no point flagged k̂ > 0\.7|\d+ of 40 points flagged k̂ > 0\.7: a loose "
                    r"lower bound)\)$")


def sets(overrides):
    return [a for o in overrides for a in ("--set", o)]


def vaelab(*args, cwd=None, env=None, **kw):
    """``vaelab ARGS`` in a real process, stdout and stderr to pipes (not a terminal)."""
    env = {**os.environ, "VAELAB_OFFLINE": "1", **(env or {})}
    return subprocess.Popen([sys.executable, "-m", "vaelab", *args], cwd=cwd, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw)


@pytest.fixture
def trained(tmp_path, capsys):
    """A run folder of 2 epochs on synthetic data, trained without a config file."""
    out = tmp_path / "run"
    assert main(["train", "--out", str(out), *sets([*TINY, "train.epochs=2"])]) == 0
    capsys.readouterr()
    return out


@pytest.mark.slow
@pytest.mark.parametrize("flags", [[], ["--no-progress"]])
def test_off_a_terminal_one_line_per_epoch_and_no_frames(flags, tmp_path):
    """29.11 and 29.2: to a pipe, ``train --evaluate`` prints one line per epoch and per
    evaluation stage, never a ``\\r`` frame, with or without --no-progress, and ends with the
    log p(x) it computed."""
    p = vaelab("train", "--out", str(tmp_path / "run"), *sets([*TINY, "train.epochs=3"]),
               "--evaluate", *flags)
    out, err = p.communicate(timeout=300)
    assert p.returncode == 0, err
    assert "\r" not in out + err
    lines = out.splitlines()
    assert [line.split(":")[0] for line in lines if line.startswith("epoch ")] == [
        "epoch 1", "epoch 2", "epoch 3"], out
    assert "evaluating: IS, K = 50, on 40 test points" in lines, out
    assert RESULT.match(lines[-1]), lines[-1]


def test_the_result_line_of_is_and_ais():
    """29.2: the one line an evaluation ends with, from the estimate's summary fields."""
    m = {"method": "is", "log_likelihood": -99.234, "log_likelihood_stderr": 0.921,
         "num_samples": 5000, "num_points": 1000, "num_flagged": 45, "split": "test"}
    assert cli.result_line(m) == ("test log p(x) = -99.23 ± 0.92 nats (IS, K = 5000, 1000 "
                                  "points; 45 of 1000 points flagged k̂ > 0.7: a loose lower "
                                  "bound)")
    assert "no point flagged" in cli.result_line({**m, "num_flagged": 0})
    ais = {"method": "ais", "log_likelihood": -88.5, "log_likelihood_stderr": 0.5,
           "num_samples": 16, "num_points": 100, "num_steps": 1000, "num_chains": 16,
           "split": "valid"}
    assert cli.result_line(ais) == ("valid log p(x) = -88.50 ± 0.50 nats (AIS, T = 1000 "
                                    "steps, 16 chains, 100 points; a stochastic lower bound)")


def test_train_needs_no_config_file(tmp_path, capsys):
    """29.5: ``train --out DIR --set ...`` runs on the defaults; its help says so."""
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    assert "optional" in capsys.readouterr().out
    out = tmp_path / "run"
    assert main(["train", "--out", str(out), *sets([*TINY, "train.epochs=1"])]) == 0
    assert (out / "checkpoints" / "last.pt").is_file()


def test_a_current_eval_json_is_reused_unless_recompute(trained, capsys, monkeypatch):
    """29.3: ``train --resume --evaluate`` on a finished run with a current eval.json says so in
    one line and reuses it; --recompute, other [eval] settings or another best checkpoint
    estimate again."""
    from vaelab.runs import sharded

    base = ["train", "--out", str(trained), *sets([*TINY, "train.epochs=2"]), "--resume",
            "--evaluate"]
    assert main(base) == 0  # the first evaluation: computed and saved
    first = capsys.readouterr().out.splitlines()
    assert first[0].startswith("evaluating: ") and RESULT.match(first[-1])
    saved = json.loads((trained / "eval.json").read_text())
    assert saved["estimand"]["epoch"] == 2 and saved["estimand"]["eval"]["num_samples"] == 50

    real = sharded.evaluate_sharded
    calls = []
    monkeypatch.setattr(sharded, "evaluate_sharded",
                        lambda *a, **k: calls.append(1) or real(*a, **k))
    assert main(base) == 0
    again = capsys.readouterr().out.splitlines()
    assert calls == [] and "is current" in again[0] and "--recompute" in again[0]
    assert again[-1] == first[-1]  # the same numbers, read back
    assert main([*base, "--recompute"]) == 0 and calls == [1]
    capsys.readouterr()
    assert main([*base, "--set", "eval.num_samples=20"]) == 0 and calls == [1, 1]
    assert "K = 20" in capsys.readouterr().out
    (trained / "eval.json").write_text("{")  # a cut file is estimated again, not an error
    assert main(base) == 0 and len(calls) == 3


def test_evaluate_ends_with_the_result_and_explains_its_keys(trained, capsys):
    """29.2, 29.13: ``vaelab evaluate`` without --json ends with the result line and says what
    num_flagged and log_jacobian mean."""
    assert main(["evaluate", str(trained)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "evaluating: IS, K = 50, on 40 test points"
    assert RESULT.match(lines[-1]), lines[-1]
    flagged = next(line for line in lines if line.strip().startswith("num_flagged:"))
    assert "Pareto k̂ > 0.7" in flagged and "unreliable" in flagged
    jac = next(line for line in lines if line.strip().startswith("log_jacobian:"))
    assert "own units" in jac and "included in log_likelihood" in jac


def test_samples_as_numbers_in_the_data_units(tmp_path, capsys):
    """29.7: ``sample --out s.csv`` / ``s.npy`` write the decoded means with
    ``data.standardize`` undone: the model's output times the training split's scale plus its
    mean, feature by feature."""
    rng = np.random.default_rng(0)
    data = rng.normal(size=(300, 5)) * [1, 10, 100, 1000, 5] + [0, 50, -300, 1e4, 2]
    np.save(tmp_path / "real.npy", data.astype(np.float32))
    out = tmp_path / "run"
    assert main(["train", "--out", str(out), *sets([
        "data.name=array", f"data.path={tmp_path / 'real.npy'}", "data.values=real",
        "data.standardize=true", "model.likelihood=normal", "model.latent_dim=2",
        "model.hidden_sizes=[16]", "train.epochs=1"])]) == 0
    assert main(["sample", str(out), "-n", "4", "--out", str(tmp_path / "s.npy")]) == 0
    assert main(["sample", str(out), "-n", "4", "--out", str(tmp_path / "s.csv")]) == 0
    got = np.load(tmp_path / "s.npy")
    np.testing.assert_allclose(np.loadtxt(tmp_path / "s.csv", delimiter=","), got, rtol=1e-6)

    from vaelab.runs.run import load_run

    run = load_run(out)
    torch.manual_seed(0)  # sample's --seed
    with torch.no_grad():
        y = run.vae.generative.sample(4).double()  # (4, 5), standardized units
    expected = y * run.pre.scale.double() + run.pre.mean.double()
    assert got.shape == (4, 5)
    np.testing.assert_allclose(got, expected.numpy(), rtol=1e-5)
    assert abs(got[:, 3].mean() - 1e4) < 3000  # the data's own units, not standardized ones


@pytest.mark.slow
def test_list_prints_whole_sentences_and_loads_plugins(tmp_path):
    """29.13, 28.17: ``vaelab list`` prints whole first sentences; ``list --set
    plugins=[...]``, the example of its own --help, lists a module's components, also once the
    shell has removed the quotes."""
    p = vaelab("list", "priors", "--set", "plugins=[my_components]",
               cwd=ROOT / "examples" / "plugins")
    out, err = p.communicate(timeout=120)
    assert p.returncode == 0, err
    docs = [line.split(" — ", 1)[1] for line in out.splitlines()
            if line.startswith("  ") and not line.startswith("   ") and " — " in line]
    assert docs and all(d.endswith((".", ")")) for d in docs), docs
    assert any(line.startswith("  logistic — ") for line in out.splitlines()), out


def test_help_names_every_command(capsys):
    """29.13: ``vaelab --help`` names all eleven commands."""
    with pytest.raises(SystemExit):
        main(["--help"])
    text = " ".join(capsys.readouterr().out.split())
    described = text.split("positional arguments")[0]
    for name in ("train", "evaluate", "sample", "report", "list", "config show", "diagnose",
                 "bdmc", "reproduce", "sweep", "compare"):
        assert name in described, name


def test_a_set_value_cut_by_the_shell_is_one_line(tmp_path, capsys, error_line):
    """29.13: ``--set model.hidden_sizes=[300, 300]`` typed without quotes: one line saying
    how to quote it, exit 2, nothing written."""
    out = tmp_path / "run"
    assert main(["train", "--out", str(out), "--set", "model.hidden_sizes=[300,", "300]"]) == 2
    line = error_line()
    assert "quote it" in line and "--set 'model.hidden_sizes=[300, 300]'" in line
    assert not out.exists()


class _Failing:
    """A file whose writes fail with ``exc`` after ``after`` writes (torch's zip writer wraps
    what it raises in a RuntimeError, as it does with a real full disk or a Ctrl-C)."""

    def __init__(self, f, exc, after=3):
        self.f, self.exc, self.left = f, exc, after

    def write(self, data):
        self.left -= 1
        if self.left < 0:
            raise self.exc
        return self.f.write(data)

    def flush(self):
        self.f.flush()


@pytest.mark.parametrize("exc,code,words", [
    (KeyboardInterrupt(), 130, ["interrupted by Ctrl-C", "last committed epoch", "--resume"]),
    (OSError(28, "No space left on device"), 2, ["No space left on device", "--resume"]),
])
def test_a_fault_inside_a_checkpoint_write_is_one_line(exc, code, words, tmp_path, capsys,
                                                       monkeypatch):
    """28.9, 28.11: a second Ctrl-C or a full disk inside torch's checkpoint writer (a
    RuntimeError whose context is the real error) ends in one line, exit 130 / 2; the folder
    resumes to the end."""
    out = tmp_path / "run"
    args = ["train", "--out", str(out), *sets([*TINY, "train.epochs=3"])]
    real, calls = torch.save, []

    def save(obj, f, *a, **k):
        calls.append(1)
        return real(obj, _Failing(f, exc) if len(calls) == 2 else f, *a, **k)

    monkeypatch.setattr(torch, "save", save)  # the 2nd commit fails midway
    assert main(args) == code
    err = capsys.readouterr().err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    for w in words:
        assert w in err, (w, err)
    monkeypatch.setattr(torch, "save", real)
    assert main([*args, "--resume"]) == 0
    rows = (out / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(r)["epoch"] for r in rows] == [1, 2, 3]


@pytest.mark.slow
def test_sigterm_during_an_evaluation_is_one_line(trained):
    """28.12: SIGTERM while an evaluation runs (no training signal handler there) ends in one
    line naming the signal, exit 143."""
    p = vaelab("evaluate", str(trained), "--num-samples", "20000", "--limit", "100")
    assert p.stdout.readline().startswith("evaluating: ")
    p.send_signal(signal.SIGTERM)
    out, err = p.communicate(timeout=120)
    assert p.returncode == 143, err
    assert "Traceback" not in err and "interrupted by SIGTERM" in err, err
    assert len(err.strip().splitlines()) == 1, err


@pytest.mark.parametrize("exc,code,signame", [
    (cli.Terminated(), 143, "SIGTERM"),
    (KeyboardInterrupt(), 130, "SIGINT"),
])
def test_an_interrupted_reproduce_says_how_to_continue(exc, code, signame, tmp_path, capsys,
                                                       monkeypatch):
    """28.12: ``vaelab reproduce`` stopped in its evaluation says that the same command
    continues and that the finished blocks are kept."""
    from vaelab.runs import reproduce as rp

    def stopped(*a, **k):
        raise exc

    monkeypatch.setattr(rp, "reproduce", stopped)
    argv = ["reproduce", "vampprior", "--out", str(tmp_path / "r"), "--set", "train.epochs=1"]
    assert main(argv) == code
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and signame in err, err
    assert "evaluation blocks are kept" in err and "the same command" in err
    assert f"vaelab reproduce vampprior --out {tmp_path / 'r'} --set train.epochs=1" in err


def test_reproduce_says_each_run_and_its_evaluation(tmp_path, monkeypatch):
    """29.4: ``reproduce(say=...)`` says each run (with its training budget) and its
    evaluation, before and after, on rank 0."""
    from vaelab.runs import reproduce as rp
    from vaelab.runs import train as train_module

    monkeypatch.setattr(train_module, "train",
                        lambda cfg, run_dir, resume: Path(run_dir).mkdir(parents=True))
    monkeypatch.setattr(rp, "read_metrics", lambda run_dir: [])
    monkeypatch.setattr(rp, "evaluate_run", lambda *a, **k: {
        "is": {"log_likelihood": -90.0}, "ais": {"log_likelihood": -89.5},
        "bdmc": {"lower_bound": -89.6, "upper_bound": -89.4}})
    monkeypatch.setattr(rp, "table", lambda folders: "")
    lines: list[str] = []
    rp.reproduce("vampprior", tmp_path, seeds=2, overrides=["train.epochs=3"], say=lines.append)
    assert lines[0].startswith("run 1/2: vampprior default, seed ") and "3 epochs" in lines[0]
    assert lines[1].startswith("evaluating ")
    assert lines[2].endswith("IS -90.00, AIS -89.50, BDMC [-89.60, -89.40] on simulated points "
                             "(nats per point)")
    assert lines[3].startswith("run 2/2: ") and len(lines) == 6


def test_list_recipes_states_the_measured_cost(tmp_path, capsys):
    """29.4: ``reproduce --list-recipes`` says what a recipe costs here: hours from the runs
    measured under --out DIR (training per epoch x the recipe's epochs, plus the evaluation),
    else "not measured here"."""
    assert main(["reproduce", "--list-recipes"]) == 0
    out = capsys.readouterr().out
    assert out.count("cost: not measured here") == out.count("variants: ") > 0
    from vaelab.runs.recipes import load_recipe

    epochs = load_recipe("vampprior").config("default").train.epochs
    folder = tmp_path / "default" / "seed0" / "reproduce"
    folder.mkdir(parents=True)
    (folder / "result.json").write_text(json.dumps({
        "recipe": "vampprior", "variant": "default", "machine": "x86_64, 2 thread(s)",
        "overrides": ["train.epochs=2"],
        "budget": {"epochs": 2, "train_wall_s": 720.0}, "is": {"wall_s": 1800.0},
        "ais": {"wall_s": 1800.0}}))
    assert main(["reproduce", "--list-recipes", "--out", str(tmp_path)]) == 0
    line = next(x for x in capsys.readouterr().out.splitlines() if x.startswith("vampprior:"))
    assert f"about {360.0 * epochs / 3600 + 1.0:.1f} h per run" in line, line
    assert "x86_64, 2 thread(s)" in line and "1 measured run(s)" in line
    # an exported grid member (the repository's layout): its 200 epochs and its grid's three
    # screens of 40 epochs at 10 s an epoch, plus IS: (200 + 3 x 40) x 10 + 400 s = 1.0 h
    member = tmp_path / "exported" / "paulus2021" / "graph_lr@lr=1e-06" / "seed0"
    member.mkdir(parents=True)
    (member / "result.json").write_text(json.dumps({
        "format_version": 1, "recipe": "paulus2021", "variant": "graph_lr@lr=1e-06",
        "machine": "x86_64, 1 thread(s)", "overrides": [],
        "budget": {"epochs": 200, "train_wall_s": 2000.0}, "is": {"wall_s": 400.0}}))
    assert main(["reproduce", "--list-recipes", "--out", str(tmp_path / "exported")]) == 0
    line = next(x for x in capsys.readouterr().out.splitlines() if x.startswith("paulus2021:"))
    assert "about 1.0 h per run" in line and "1 measured run(s)" in line, line


def test_reproduce_help_documents_the_small_run(capsys):
    """29.4: ``reproduce --help`` names the keys that shrink AIS and BDMC and a smoke run."""
    with pytest.raises(SystemExit):
        main(["reproduce", "--help"])
    text = capsys.readouterr().out
    for key in ("recipe.ais.points", "recipe.bdmc.points", "eval.limit", "smoke run"):
        assert key in text, key
