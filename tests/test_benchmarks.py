"""Every benchmark runs end to end at tiny sizes (``--smoke``) and prints its table of ratios.

Benchmarks are discovered, not listed: a new ``benchmarks/*.py`` is smoke-run automatically. One
with ``main(argv)`` runs in this process (the autouse fixture restores the thread count); one
without runs as a subprocess under a timeout.
"""

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # real training and timing loops, seconds each

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"
SCRIPTS = sorted(p for p in BENCHMARKS.glob("*.py") if not p.name.startswith("_"))
TIMEOUT_S = 120


def _load(path: Path):
    spec = importlib.util.spec_from_file_location(f"benchmarks_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_benchmarks_are_discovered():
    assert {p.stem for p in SCRIPTS} >= {"marginal", "train_step"}


@pytest.mark.parametrize("script", SCRIPTS, ids=[p.stem for p in SCRIPTS])
def test_benchmark_smoke(script, capsys):
    module = _load(script)
    if callable(getattr(module, "main", None)):
        rc = module.main(["--smoke"])
        out = capsys.readouterr().out
    else:
        proc = subprocess.run(
            [sys.executable, str(script), "--smoke"], capture_output=True, text=True,
            timeout=TIMEOUT_S, env={**os.environ, "OMP_NUM_THREADS": "1"},
        )
        rc, out = proc.returncode, proc.stdout
        assert rc == 0, proc.stderr[-2000:]
    assert rc in (0, None)
    lines = out.strip().splitlines()
    header = next((i for i, line in enumerate(lines) if "ratio" in line.lower()), None)
    assert header is not None, f"{script.name} --smoke printed no table of ratios:\n{out}"
    rows = lines[header + 1:]
    assert len(rows) >= 2, f"{script.name} --smoke printed an empty table:\n{out}"


def _table_rows(out: str) -> list[str]:
    lines = out.strip().splitlines()
    header = next((i for i, line in enumerate(lines) if "ratio" in line.lower()), None)
    return [] if header is None else lines[header + 1:]


def test_gpu_sh_runs_on_the_cpu_in_smoke_mode():
    """``benchmarks/gpu.sh --smoke``: the shell script itself (interpreter lookup, arguments)
    runs end to end on the CPU at tiny sizes and prints its table."""
    proc = subprocess.run(["bash", str(BENCHMARKS / "gpu.sh"), "--smoke"], capture_output=True,
                          text=True, timeout=TIMEOUT_S,
                          env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHON": sys.executable})
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert len(_table_rows(proc.stdout)) >= 2, proc.stdout


def test_gpu_sh_without_a_gpu_says_so_and_exits_2():
    import torch

    if torch.cuda.is_available():
        pytest.skip("a CUDA device is present")
    proc = subprocess.run(["bash", str(BENCHMARKS / "gpu.sh")], capture_output=True, text=True,
                          timeout=TIMEOUT_S)
    assert proc.returncode == 2
    assert "sees no CUDA device" in proc.stderr and "--smoke" in proc.stderr


def test_limit_benchmark_values_match_the_hand_written_twin():
    """``benchmarks/limit.py``'s hand-written IS and vaelab's paths give the same log p̂ per
    point on the same draws (tiny recipes' networks, K = 30 in chunks of 7, float32: rtol 1e-5),
    so that its ratios compare equal work: the fused and traced paths of every row (the
    two-layer row's fused path :mod:`vaelab.inference.fused_hierarchy`)."""
    import torch

    from vaelab.inference.fused import fused_log_weights

    limit = _load(BENCHMARKS / "limit.py")
    x, _ = limit.load_points(3, smoke=True)
    assert "iwae_static_2layer" in limit.RECIPES
    for name in limit.RECIPES:
        vae = limit.recipe_vae(name, smoke=True)
        fns = limit.paths(vae, x, 30, 7)
        compared = ["fused", "traced"]
        assert set(compared) < set(fns) and limit.TRACED_ONLY not in fns
        assert fused_log_weights(vae) is not None
        values = {}
        for path in (*compared, "hand-written"):
            torch.manual_seed(4)
            values[path] = fns[path]().double()
        for path in compared:
            torch.testing.assert_close(values[path], values["hand-written"], rtol=1e-5, atol=0.0)


def test_limit_benchmark_counts_the_two_layer_gemms_of_burda2016():
    """The two-layer row's limit counts the recipe's networks (Burda et al. 2016, Sec. 5):
    q(z_1 | x) 784-200-200-(2·100) once per batch; q(z_2 | z_1) 100-100-100-(2·50),
    p(z_1 | z_2) 50-100-100-(2·100) and p(x | z_1) 100-200-200-784 on every particle."""
    limit = _load(BENCHMARKS / "limit.py")
    once, per_particle = limit.gemm_shapes(limit.recipe_vae("iwae_static_2layer"))
    assert once == [(784, 200), (200, 200), (200, 200)]
    assert per_particle == [(100, 100), (100, 100), (100, 100),
                            (50, 100), (100, 100), (100, 200),
                            (100, 200), (200, 200), (200, 784)]


def test_ais_benchmark_values_match_the_hand_written_twin():
    """``benchmarks/ais.py``'s hand-written HMC AIS and vaelab's AIS paths give the same log p̂
    per point from the same draws (tiny recipes' networks, 3 points, T = 4, C = 4, L = 5,
    float32: rtol 1e-5; float rounding of the gradients could flip an accept decision near its
    threshold, which these seeds do not): the traced and fused log joints of ``iwae_static``
    and of ``iwae_static_2layer`` (over (z_1, z_2) jointly)."""
    import torch

    bench = _load(BENCHMARKS / "ais.py")
    x, _ = bench.load_points(3, smoke=True)
    assert set(bench.RECIPES) == {"iwae_static", "iwae_static_2layer"}
    for name in bench.RECIPES:
        fns = bench.paths(bench.recipe_vae(name, smoke=True), x, 4)
        assert bench.TRACED_ONLY not in fns and "vaelab ais, FusedLogJoint" in fns
        values = {}
        for path in fns:
            torch.manual_seed(4)
            values[path] = fns[path]().double()
        assert len(values) >= 2
        for path in values:
            torch.testing.assert_close(values[path], values["hand-written"], rtol=1e-5, atol=0.0)


def test_estimators_benchmark_times_every_discrete_estimator_of_the_paulus2021_recipe(capsys):
    """``benchmarks/estimators.py --smoke``: one row per discrete variant of the recipe, the
    reference (``trace`` with the plain Gumbel-softmax guide) first, each a finite positive
    time and ratio; and the timed step is a real training step (the loop's Stepper: one step
    moves the parameters)."""
    import math

    import pyro

    from vaelab.runs.recipes import load_recipe

    bench = _load(BENCHMARKS / "estimators.py")
    assert bench.main(["--smoke"]) == 0
    rows = [line.split("|")[1:-1] for line in capsys.readouterr().out.splitlines()
            if line.startswith("| ") and not line.startswith("| estimator")]
    names = [r[0].strip().split(" ")[0] for r in rows]
    discrete = [v for v in load_recipe("paulus2021").table.variants if v != "gaussian"]
    assert names[0] == "gumbel_softmax" and sorted(names) == sorted(discrete)
    for r in rows:
        ms, ref, ratio = (float(c) for c in r[1:4])
        assert all(math.isfinite(v) and v > 0 for v in (ms, ref, ratio))
        assert ratio == pytest.approx(ms / ref, rel=2.0)  # a median of paired ratios
    twins = {n: r[4].strip() for n, r in zip(names, rows)}  # compiled / eager, or why not
    assert float(twins["gumbel_softmax"]) > 0 and twins["graph"].startswith("eager")
    import torch

    pyro.clear_param_store()
    step, label, compiled = bench.make_step("disarm", bench.SMOKE, smoke=True)
    x = torch.bernoulli(torch.full((16, bench.SMOKE.D), 0.3))
    step(x)  # the first trace registers the parameters in the store
    before = {k: v.detach().clone() for k, v in pyro.get_param_store().items()}
    step(x)
    after = dict(pyro.get_param_store().items())
    assert label == "disarm" and not compiled and before
    assert any(not torch.equal(before[k], after[k]) for k in before)


def test_rows_benchmark_times_each_reproduction_row_before_and_after(capsys):
    """``benchmarks/rows.py --smoke`` (4 random images, K = 20, 1 round): one row per
    reproduction row, in order, each with finite positive points/s before and after, a ratio
    within a factor 2 of after/before (a median of paired ratios; one round here), both paths
    giving the same mean log p̂ (the same draws: float32 rounding, 1e-3 nats), and the fused
    path applying to every row."""
    import math

    bench = _load(BENCHMARKS / "rows.py")
    assert bench.main(["--smoke"]) == 0
    out = capsys.readouterr().out
    assert "seeded random binary images" in out
    rows = [line.split("|")[1:-1] for line in out.splitlines()
            if line.startswith("| ") and not line.startswith("| row")]
    assert [r[0].strip() for r in rows] == [f"{r}/{v}" for r, v in bench.ROWS]
    for r in rows:
        before, after = (float(c.replace(",", "")) for c in r[2:4])
        ratio, diff = float(r[6].strip().rstrip("x")), float(r[7])
        assert all(math.isfinite(v) and v > 0 for v in (before, after, ratio))
        assert ratio == pytest.approx(after / before, rel=1.0)
        assert diff < 1e-3 and r[1].strip() == "yes"
