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
