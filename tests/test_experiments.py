"""Every experiment script runs end to end with a tiny budget (``--smoke``).

Scripts are discovered, not listed: a new ``experiments/*.py`` is smoke-run automatically, and
one that lacks ``main(argv)`` fails here.
"""

import importlib.util
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # real training and timing loops, seconds each

EXPERIMENTS = Path(__file__).resolve().parent.parent / "experiments"
SCRIPTS = sorted(p for p in EXPERIMENTS.glob("*.py") if not p.name.startswith("_"))


def _load(path: Path):
    spec = importlib.util.spec_from_file_location(f"experiments_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("script", SCRIPTS, ids=[p.stem for p in SCRIPTS])
def test_experiment_smoke(script, tmp_path):
    module = _load(script)
    assert callable(getattr(module, "main", None)), f"{script.name} has no main(argv)"
    rc = module.main(["--smoke", "--out", str(tmp_path)])
    assert rc in (0, None)
    tables = list(tmp_path.rglob("*.md"))
    assert tables, f"{script.name} --smoke wrote no Markdown table into --out"
    assert all(t.read_text().strip() for t in tables)
