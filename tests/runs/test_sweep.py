"""``vaelab sweep`` and ``vaelab compare``: the grid, the cells, real sweeps of real processes
(parallel, skipped when finished, a failing cell, a killed sweep resumed, submitit's local
executor) and the table's statistics against a hand computation from the run folders."""

from __future__ import annotations

import csv
import json
import math
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from vaelab.cli import main
from vaelab.registry import ConfigError
from vaelab.resolve import parse_value
from vaelab.runs.compare import compare, format_number
from vaelab.runs.grid import cell_name, expand, parse_grid, plan, toml_literal
from vaelab.runs.stats import stat

SAFE = re.compile(r"[A-Za-z0-9._+=,-]+")


@pytest.fixture
def tiny(tmp_path, tiny_cfg_overrides):
    """A config file and the ``--set`` arguments of a seconds-long run."""
    cfg = tmp_path / "tiny.toml"
    # the objective is named: "auto" would choose by the prior, and label the cells by it too
    cfg.write_text('[data]\nname = "synthetic"\n[model]\nlikelihood = "bernoulli"\n'
                   '[objective]\nname = "trace"\n')
    return cfg, [a for o in tiny_cfg_overrides for a in ("--set", o)]


def _history(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


# --------------------------------------------------------------------------------------------
# the grid and the cells


def test_grid_values_are_toml_arrays_parsed_like_set_values():
    grid = parse_grid(['model.prior=["standard_normal", "vamp"]',
                       "model.hidden_sizes=[[200], [400, 400], []]",
                       'model.likelihood=[{name = "normal", scale = 0.1}, "bernoulli"]',
                       "train.lr=[1e-3, 3e-4]", "objective.jit=[true, false]"])
    assert list(grid) == ["model.prior", "model.hidden_sizes", "model.likelihood", "train.lr",
                          "objective.jit"]
    assert grid["model.prior"] == ["standard_normal", "vamp"]
    assert grid["model.hidden_sizes"] == [[200], [400, 400], []]
    assert grid["model.likelihood"] == [{"name": "normal", "scale": 0.1}, "bernoulli"]
    assert grid["train.lr"] == [1e-3, 3e-4] and grid["objective.jit"] == [True, False]
    # each value goes back to a --set as a TOML literal that parses to the same value
    for values in grid.values():
        for v in values:
            assert parse_value(toml_literal(v)) == v, v
    assert parse_value(toml_literal({"a b": "x\"y", "n": [1.5, "z"]})) == {"a b": "x\"y",
                                                                            "n": [1.5, "z"]}


@pytest.mark.parametrize("item, message", [
    ("model.prior=vamp", "must be a TOML array"),
    ("model.prior=[]", "the array is empty"),
    ("model.prior", "expected KEY=[V1, V2, ...]"),
    ('modl.prior=["vamp"]', "did you mean 'model'"),
    ("train.seed=[1, 2]", "--seeds"),
])
def test_grid_errors_name_the_item(item, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        parse_grid([item])


def test_a_key_given_twice_is_refused():
    with pytest.raises(ConfigError, match="given twice"):
        parse_grid(['model.prior=["vamp"]', 'model.prior=["mog"]'])


def test_the_cross_product_and_its_folder_names():
    cells = expand(parse_grid(['model.prior=["standard_normal", "vamp"]',
                               'objective.name=["trace", "iwae_dreg"]']))
    assert [c[0] for c in cells] == [
        "prior=standard_normal,objective=trace", "prior=standard_normal,objective=iwae_dreg",
        "prior=vamp,objective=trace", "prior=vamp,objective=iwae_dreg"]
    assert cells[3][1] == {"model.prior": "vamp", "objective.name": "iwae_dreg"}
    assert cells[3][2] == ['model.prior="vamp"', 'objective.name="iwae_dreg"']

    names = [c[0] for c in expand(parse_grid(["model.hidden_sizes=[[200], [400, 400], []]"]))]
    assert names == ["hidden_sizes=200", "hidden_sizes=400-400", "hidden_sizes=empty"]
    # two keys with the same short label keep their full keys
    names = [c[0] for c in expand(parse_grid(["model.hidden_sizes=[[8]]",
                                              "guide.hidden_sizes=[[4]]"]))]
    assert names == ["model.hidden_sizes=8,guide.hidden_sizes=4"]
    # a table: its name and options; unsafe characters become _, equal names get a hash
    assert cell_name({"model.prior": {"name": "mog", "components": 10}}) == "prior=mog-components10"
    a, b = (c[0] for c in expand({"data.path": ["x/y.npy", "x_y.npy"]}))
    assert a != b and a.startswith("path=x_y.npy-") and b.startswith("path=x_y.npy-")
    long = cell_name({"data.path": ["d" * 300]})
    assert len(long) <= 100
    assert cell_name({}) == "base"
    for n in (a, b, long, *names):
        assert SAFE.fullmatch(n), n


def test_every_cell_is_resolved_before_anything_runs(tiny, tmp_path, error_line):
    cfg, sets = tiny
    out = tmp_path / "sweep"
    # the second value is misspelled: the first cell is valid, yet nothing runs
    rc = main(["sweep", str(cfg), "--out", str(out), *sets,
               "--grid", 'model.prior=["standard_normal", "vampp"]'])
    assert rc == 2
    assert "cell prior=vampp: model.prior: unknown prior 'vampp' (did you mean 'vamp'?)" \
        in error_line()
    assert not out.exists()
    rc = main(["sweep", str(cfg), "--out", str(out), *sets, "--grid", 'model.priorr=["vamp"]'])
    assert rc == 2 and "model.priorr: unknown key" in error_line() and not out.exists()


def test_each_job_gets_its_share_of_the_threads_unless_set(tiny, tmp_path):
    cfg, sets = tiny
    overrides = sets[1::2]
    grid = parse_grid(['model.prior=["standard_normal", "vamp"]'])
    cells = plan(cfg, tmp_path / "s", grid, seeds=2, overrides=overrides, threads=3)
    runs = [r for c in cells for r in c.runs]
    assert [r.dir.relative_to(tmp_path / "s").as_posix() for r in runs] == [
        "prior=standard_normal/seed0", "prior=standard_normal/seed1", "prior=vamp/seed0",
        "prior=vamp/seed1"]
    assert all(r.state == "new" for r in runs)
    assert all(r.overrides[-2:] == [f"train.seed={r.seed}", "train.num_threads=3"]
               for r in runs)
    mine = plan(cfg, tmp_path / "s", grid, overrides=[*overrides, "train.num_threads=1"],
                threads=3)
    assert all("train.num_threads=3" not in r.overrides for c in mine for r in c.runs)
    assert plan(cfg, tmp_path / "s", {}, seeds=1, overrides=["train.seed=7"])[0].runs[0].dir \
        == tmp_path / "s" / "base" / "seed7"


def test_a_missing_submitit_is_one_line(tiny, tmp_path, monkeypatch, error_line):
    cfg, sets = tiny
    monkeypatch.setitem(sys.modules, "submitit", None)  # import submitit raises ImportError
    rc = main(["sweep", str(cfg), "--out", str(tmp_path / "s"), *sets,
               "--executor", "submitit-local"])
    assert rc == 2 and "pip install 'vaelab[submitit]'" in error_line()
    assert not (tmp_path / "s" / "sweep.json").exists()


def test_the_modules_import_nothing_heavy():
    probe = ("import sys, vaelab.runs.sweep, vaelab.runs.compare\n"
             "print(sorted(m for m in ('torch', 'matplotlib', 'pyro') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                         check=True).stdout
    assert out.strip() == "[]"


# --------------------------------------------------------------------------------------------
# compare on run folders written by hand


def _fake_run(folder: Path, prior: str, seed: int, valid: list[float], loss: list[float],
              threads: int = 1, evaluation: dict | None = None) -> Path:
    (folder / "checkpoints").mkdir(parents=True)
    (folder / "config.toml").write_text(
        f"version = 3\n[model]\nprior = {prior}\nhidden_sizes = [16]\n[objective]\n"
        f'name = "trace"\n[train]\nseed = {seed}\nnum_threads = {threads}\n')
    rows = [{"epoch": i + 1, "step": 10 * (i + 1), "train_loss": t, "valid_elbo": v}
            for i, (v, t) in enumerate(zip(valid, loss))]
    (folder / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    if evaluation is not None:
        (folder / "eval.json").write_text(json.dumps(evaluation))
    return folder


def test_compare_groups_by_config_less_the_seed_and_labels_what_differs(tmp_path):
    vamp10 = '{name = "vamp", components = 10}'
    vamp20 = '{name = "vamp", components = 20}'
    _fake_run(tmp_path / "a/s0", vamp10, 0, [-50.0, -47.0, -48.0], [51.0, 48.0, 47.5],
              evaluation={"log_likelihood": -45.0, "ess": {"median": 3.0}})
    _fake_run(tmp_path / "a/s1", vamp10, 1, [-49.0, -46.5], [50.0, 47.0], threads=2,
              evaluation={"log_likelihood": -44.0, "ess": {"median": 4.0}})
    _fake_run(tmp_path / "nested/deeper/a2", vamp10, 2, [-46.0], [45.0])
    _fake_run(tmp_path / "b/s0", '{name = "standard_normal"}', 0, [-52.0], [53.0])
    _fake_run(tmp_path / "b/s1", '{name = "standard_normal"}', 1, [-51.0], [52.0])
    _fake_run(tmp_path / "c/s0", vamp20, 0, [-45.5], [46.0])
    (tmp_path / "not_a_run").mkdir()  # no config.toml: passed over
    comp = compare([tmp_path])
    assert comp.metrics == ["best_valid_elbo", "final_train_loss", "log_likelihood"]
    labels = [comp.label(i) for i in range(len(comp.cells))]
    # the name of the component, and its option only where two cells of that name differ
    assert labels == [{"model.prior": "vamp", "model.prior.components": "10"},
                      {"model.prior": "standard_normal", "model.prior.components": "—"},
                      {"model.prior": "vamp", "model.prior.components": "20"}]
    a = comp.stats[0]
    best = [-47.0, -46.5, -46.0]  # the highest valid ELBO of each run
    assert a["best_valid_elbo"].n == 3
    assert a["best_valid_elbo"].mean == pytest.approx(np.mean(best), abs=1e-12)
    assert a["best_valid_elbo"].sd == pytest.approx(np.std(best, ddof=1), abs=1e-12)
    assert a["best_valid_elbo"].se == pytest.approx(np.std(best, ddof=1) / math.sqrt(3),
                                                    abs=1e-12)
    assert a["final_train_loss"].mean == pytest.approx(np.mean([47.5, 47.0, 45.0]), abs=1e-12)
    assert (a["log_likelihood"].n, a["log_likelihood"].mean) == (2, -44.5)
    assert comp.stats[2]["best_valid_elbo"] == stat([-45.5])  # one seed: no sd, no se
    assert (comp.stats[2]["best_valid_elbo"].sd, comp.stats[1]["log_likelihood"].n) == (None, 0)
    md = comp.markdown()
    assert "| vamp | 10 | 0 1 2 | 1–3 | -46.50 | 0.5000 | 0.2887 | 3 |" in md
    nested = compare([tmp_path / "a", tmp_path / "b"], ["ess.median"])
    assert nested.stats[0]["ess.median"].mean == 3.5 and nested.label_keys == ["model.prior.name"]
    with pytest.raises(ValueError, match="no run has it; metrics there are: best_valid_elbo"):
        compare([tmp_path], ["log_px"])
    with pytest.raises(FileNotFoundError, match="no run folder"):
        compare([tmp_path / "not_a_run"])


def _markdown_cells(md: str) -> list[list[str]]:
    return [[c.strip() for c in line.strip("|").split("|")] for line in md.splitlines()]


def _check_csv_matches_markdown(comp, path: Path) -> None:
    md = _markdown_cells(comp.markdown())
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    assert rows[0][:-1] == md[0] and rows[0][-1] == "runs"
    assert len(rows) == len(md) - 1
    for got, shown in zip(rows[1:], md[2:]):
        for h, v, s in zip(md[0], got, shown):
            if h.endswith((" mean", " sd", " se")):
                assert (format_number(float(v)) if v else "—") == s, (h, v, s)
            else:
                assert v == s, (h, v, s)


# --------------------------------------------------------------------------------------------
# real sweeps


@pytest.mark.slow
def test_a_sweep_runs_in_parallel_skips_finished_cells_and_compares(tiny, tmp_path, capsys):
    """A 2 x 1 grid x 2 seeds with --jobs 2: four ordinary run folders; the same sweep again
    touches none of them; compare's statistics equal a hand computation from metrics.jsonl."""
    cfg, sets = tiny
    out = tmp_path / "sweep"
    args = ["sweep", str(cfg), "--out", str(out), *sets, "--seeds", "2", "--jobs", "2",
            "--grid", 'model.prior=["standard_normal", "vamp"]']
    t0 = time.perf_counter()
    assert main(args) == 0
    wall = time.perf_counter() - t0
    printed = capsys.readouterr().out
    dirs = sorted(p.parent for p in out.glob("*/seed*/config.toml"))
    assert [d.relative_to(out).as_posix() for d in dirs] == [
        "prior=standard_normal/seed0", "prior=standard_normal/seed1", "prior=vamp/seed0",
        "prior=vamp/seed1"]
    manifest = json.loads((out / "sweep.json").read_text())
    assert [c["name"] for c in manifest["cells"]] == ["prior=standard_normal", "prior=vamp"]
    assert manifest["cells"][1]["runs"][1]["dir"] == "prior=vamp/seed1"
    for d in dirs:
        assert (d / "checkpoints" / "last.pt").is_file()
        assert [r["epoch"] for r in _history(d)] == [1, 2]
        saved = (d / "config.toml").read_text()
        assert f"seed = {d.name[4:]}" in saved and "num_threads" in saved
    assert printed.count(": done in ") == 4
    print(f"4 runs, 2 at a time: {wall:.1f}s")

    stamps = {p: p.stat().st_mtime_ns for d in dirs
              for p in (d / "metrics.jsonl", d / "checkpoints" / "last.pt", d / "report.md")}
    assert main(args) == 0
    again = capsys.readouterr().out
    assert again.count("skipped") == 4 and "[1/" not in again
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps
    assert all(len(_history(d)) == 2 for d in dirs)

    csv_path, plots = tmp_path / "t.csv", tmp_path / "plots"
    assert main(["compare", str(out), "--csv", str(csv_path), "--plots", str(plots)]) == 0
    md = capsys.readouterr().out
    comp = compare([out])
    assert md == comp.markdown()
    assert [comp.label(i) for i in range(2)] == [{"model.prior": "standard_normal"},
                                                 {"model.prior": "vamp"}]
    for i, cell in enumerate(["prior=standard_normal", "prior=vamp"]):
        hist = [_history(out / cell / f"seed{s}") for s in (0, 1)]
        best = np.array([max(r["valid_elbo"] for r in h) for h in hist])
        final = np.array([h[-1]["train_loss"] for h in hist])
        for name, x in (("best_valid_elbo", best), ("final_train_loss", final)):
            s = comp.stats[i][name]
            assert s.n == 2
            assert s.mean == pytest.approx(x.mean(), abs=1e-9)
            assert s.sd == pytest.approx(x.std(ddof=1), abs=1e-9)
            assert s.se == pytest.approx(x.std(ddof=1) / math.sqrt(2), abs=1e-9)
    _check_csv_matches_markdown(comp, csv_path)
    for png in ("curves.png", "metrics.png"):
        assert (plots / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_failing_cell_is_reported_and_the_others_complete(tiny, tmp_path, capsys):
    """A learning rate of 1e9 resolves but fails at the first step: its run is reported with
    its error line, exit 1; the other cell trains to the end."""
    cfg, sets = tiny
    out = tmp_path / "sweep"
    rc = main(["sweep", str(cfg), "--out", str(out), *sets, "--jobs", "2",
               "--grid", "train.lr=[1e-3, 1e9]"])
    captured = capsys.readouterr()
    assert rc == 1
    failed = [line for line in captured.err.splitlines() if "failed:" in line]
    assert len(failed) == 1, captured.err
    assert failed[0].startswith("vaelab sweep: failed: lr=1000000000.0/seed0: vaelab train: "
                                "error: non-finite loss")
    assert "log: " in failed[0]
    assert [r["epoch"] for r in _history(out / "lr=0.001" / "seed0")] == [1, 2]
    assert not (out / "lr=1000000000.0" / "seed0" / "checkpoints").exists()
    assert "1 run(s) trained, 0 already finished, 1 failed" in captured.out


@pytest.mark.slow
def test_a_killed_sweep_resumes_to_the_uninterrupted_result(tiny, tmp_path):
    """SIGKILL the whole sweep (its process group) once both runs have committed an epoch; the
    same command resumes them, and each ends where an uninterrupted run of its config ends."""
    cfg, sets = tiny
    out = tmp_path / "sweep"
    epochs = 40
    args = [sys.executable, "-m", "vaelab", "sweep", str(cfg), "--out", str(out), *sets,
            "--set", f"train.epochs={epochs}", "--set", "train.num_threads=1",
            "--seeds", "2", "--jobs", "2"]
    runs = [out / "base" / "seed0", out / "base" / "seed1"]
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not all(
                (r / "metrics.jsonl").is_file() and len(_history(r)) >= 2 for r in runs):
            assert proc.poll() is None, "the sweep ended before it could be killed"
            time.sleep(0.02)
        os.killpg(proc.pid, signal.SIGKILL)
    finally:
        proc.wait()
    done = [len(_history(r)) for r in runs]
    assert all(2 <= n < epochs for n in done), done

    resumed = subprocess.run(args, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    assert resumed.stdout.count("resuming from epoch") == 2, resumed.stdout

    from vaelab.resolve import load_config
    from vaelab.runs.train import train

    for r in runs:
        seed = int(r.name[4:])
        cfg_r = load_config(cfg, [*sets[1::2], f"train.epochs={epochs}", "train.num_threads=1",
                                  f"train.seed={seed}"])
        ref = train(cfg_r, tmp_path / f"ref{seed}").history
        got = _history(r)
        assert [x["epoch"] for x in got] == list(range(1, epochs + 1))
        for a, b in zip(got, ref):
            assert {k: v for k, v in a.items() if k != "epoch_time"} == \
                {k: v for k, v in b.items() if k != "epoch_time"}


@pytest.mark.slow
def test_submitit_local_executor_runs_the_cells(tiny, tmp_path, capsys):
    pytest.importorskip("submitit", reason="the [submitit] extra is not installed")
    cfg, sets = tiny
    out = tmp_path / "sweep"
    rc = main(["sweep", str(cfg), "--out", str(out), *sets, "--executor", "submitit-local",
               "--jobs", "2", "--evaluate", "--grid", "model.hidden_sizes=[[8], [16, 16]]"])
    assert rc == 0, capsys.readouterr()
    for cell in ("hidden_sizes=8", "hidden_sizes=16-16"):
        run = out / cell / "seed0"
        assert [r["epoch"] for r in _history(run)] == [1, 2]
        assert "log_likelihood" in json.loads((run / "eval.json").read_text())
    assert any((out / "submitit").iterdir())  # submitit's own job files
    comp = compare([out])
    assert "log_likelihood" in comp.metrics and comp.label_keys == ["model.hidden_sizes"]


def test_slurm_options_reach_the_sbatch_file(tmp_path, monkeypatch):
    """Without a cluster: stand-in ``srun``/``sbatch`` on PATH let submitit build its Slurm
    executor, whose sbatch file carries each ``--slurm-*`` option."""
    pytest.importorskip("submitit", reason="the [submitit] extra is not installed")
    from vaelab.runs.executors import SlurmOptions, parse_minutes, submitit_executor

    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in ("srun", "sbatch"):
        (bin_dir / tool).write_text("#!/bin/sh\nexit 1\n")
        (bin_dir / tool).chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    assert (parse_minutes("90"), parse_minutes("1:30"), parse_minutes("1:30:00")) == (90, 90, 90)
    with pytest.raises(ValueError, match="--slurm-time"):
        parse_minutes("1h")
    options = SlurmOptions(partition="gpu", time_min=90, cpus=4, gpus=1, mem_gb=8,
                           account="lab", qos="normal", setup=["source .venv/bin/activate"])
    executor = submitit_executor(tmp_path / "sweep", "slurm", options, jobs=3)
    text = executor._executor._make_submission_file_text("python -m x", "uid")
    for line in ("#SBATCH --partition=gpu", "#SBATCH --time=90", "#SBATCH --cpus-per-task=4",
                 "#SBATCH --gpus-per-node=1", "#SBATCH --mem=8GB", "#SBATCH --account=lab",
                 "#SBATCH --qos=normal", "source .venv/bin/activate"):
        assert line in text, (line, text)


@pytest.mark.slow
def test_two_sweeps_on_one_folder_train_each_run_once_and_say_so(tiny, tmp_path):
    """Issue 28, item 6: two real ``vaelab sweep`` processes started together on one folder.
    Each run is trained by one of them; the other waits for it and reports it done by another
    process (or, planned after it ended, finished): both exit 0, no run is called FAILED, and
    each run's log is the whole output of the one process that trained it."""
    cfg, sets = tiny
    out = tmp_path / "sweep"
    args = [sys.executable, "-m", "vaelab", "sweep", str(cfg), "--out", str(out), *sets,
            "--set", "train.num_threads=1", "--jobs", "1",
            "--grid", 'model.prior=["standard_normal", "vamp"]']
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    procs = [subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              env=env) for _ in range(2)]
    try:
        results = [p.communicate(timeout=300) for p in procs]
    finally:
        for p in procs:
            p.kill()
    for p, (stdout, stderr) in zip(procs, results):
        assert p.returncode == 0, (stdout, stderr)
        assert "FAILED" not in stdout and "failed:" not in stderr, (stdout, stderr)
    labels = ["prior=standard_normal/seed0", "prior=vamp/seed0"]
    for label in labels:
        lines = [line for stdout, _ in results for line in stdout.splitlines()
                 if line.strip().startswith(f"{label}: ")]
        trained = [line for line in lines if ": done in " in line]
        assert len(trained) == 1, lines  # trained once, by one sweep
        others = [line for line in lines if line not in trained and "waiting for it" not in line]
        assert len(others) == 1 and "skipped" in others[0], lines  # the other one says so
        run = out / label
        assert [r["epoch"] for r in _history(run)] == [1, 2]
        log = (out / "logs" / f"{label}.log").read_text()
        # the trainer's own output, whole: its last line, and no second run's error in it
        assert log.count("best epoch 2") == 1 and "error" not in log, log
        assert trained[0].endswith(log.strip().splitlines()[-1].strip())


@pytest.mark.slow
def test_a_stopped_sweep_ends_with_runs_left_to_start(tiny, tmp_path):
    """SIGTERM while the first of two runs trains (one at a time): the running one stops with
    its epoch committed, the second is not started, and the sweep ends (exit 143) instead of
    waiting for the run it will not start."""
    cfg, sets = tiny
    out = tmp_path / "sweep"
    args = [sys.executable, "-m", "vaelab", "sweep", str(cfg), "--out", str(out), *sets,
            "--set", "train.epochs=40", "--set", "train.num_threads=1", "--seeds", "2"]
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    first = out / "base" / "seed0"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not (
            (first / "metrics.jsonl").is_file() and _history(first)):
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    try:
        stdout, stderr = proc.communicate(timeout=120)
    finally:
        proc.kill()  # one that never ends must not outlive the test
    assert proc.returncode == 143, (stdout, stderr)
    assert "1 not started" in stdout and "base/seed0: stopped" in stdout, stdout
    assert not (out / "base" / "seed1").exists()
