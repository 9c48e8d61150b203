"""The tutorial runs as written, and the documentation site builds with warnings as errors.

The site's build test needs the ``[docs]`` extra, which ``make docs`` installs (and CI runs
``make docs`` after ``make test``); without it the test is skipped, saying so.
"""

import importlib.util
import runpy
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
TUTORIAL = ROOT / "examples" / "tutorial.py"


def _load_conf():
    """docs/conf.py as a module (it imports only vaelab and the standard library)."""
    spec = importlib.util.spec_from_file_location("vaelab_docs_conf", ROOT / "docs" / "conf.py")
    conf = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(conf)
    return conf


def test_the_tutorial_runs_as_written(tmp_path, monkeypatch):
    # its run folders go to a fresh temporary folder: put that under tmp_path
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    monkeypatch.chdir(tmp_path)
    ns = runpy.run_path(str(TUTORIAL), run_name="__main__")

    out = ns["OUT"]
    assert out.parent == tmp_path
    for name in ("trace", "vamp", "iwae_dreg", "normal", "student_t"):
        assert (out / name / "checkpoints" / "last.pt").is_file(), name
    assert ns["cfg_vamp"].model.prior.name == "vamp"
    assert ns["cfg_dreg"].objective.name == "iwae_dreg"
    for est in (ns["est"], ns["est_vamp"], ns["est_dreg"]):
        s = est.summary()
        assert s["num_points"] == 100 and s["num_samples"] == 500
        # log p̂ = log mean w ≥ mean log w: Jensen on the same K draws, per point
        assert bool((est.log_px >= est.elbo - 1e-6).all())


def test_percent_cells_become_a_page():
    conf = _load_conf()
    script = "\n".join([
        "# ---", "# jupyter:", "#   jupytext: {}", "# ---", "",
        "# %% [markdown]", "# # Title", "#", "# Text with `code`.", "",
        "# %%", "x = 1  # a comment", "", "",
        "# %% [markdown]", "# ## Section", "",
        "# %% a titled code cell", "print(x)", "",
    ])
    page = conf.percent_to_myst(script, "examples/t.py")
    assert page == (
        "# Title\n\n*Generated from `examples/t.py`.*\n\nText with `code`.\n\n"
        "```python\nx = 1  # a comment\n```\n\n## Section\n\n```python\nprint(x)\n```\n"
    )
    with pytest.raises(ValueError, match="first cell must be a markdown cell"):
        conf.percent_to_myst("# %%\nx = 1\n", "examples/t.py")


def test_the_tutorial_page_keeps_every_cell():
    page = _load_conf().percent_to_myst(TUTORIAL.read_text(encoding="utf-8"), "tutorial.py")
    code = TUTORIAL.read_text(encoding="utf-8")
    assert page.startswith("# Tutorial")
    assert page.count("```python") == code.count("\n# %%\n")
    assert "# %%" not in page


def _docs_extra_missing() -> str | None:
    for module in ("sphinx", "myst_parser", "sphinx-mathjax-offline"):
        if importlib.util.find_spec(module) is None:
            return (f"the [docs] extra is not installed ({module!r} missing); "
                    "`make docs` installs it")
    return None


@pytest.mark.slow
def test_the_site_builds_with_warnings_as_errors(tmp_path):
    missing = _docs_extra_missing()
    if missing:
        pytest.skip(missing)
    html = tmp_path / "html"
    cmd = [sys.executable, "-m", "sphinx", "-W", "--keep-going", "-q", "-b", "html",
           "-d", str(tmp_path / "doctrees"), "docs", str(html)]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr

    for page in ("index", "_generated/README", "_generated/tutorial", "results", "api",
                 "_autosummary/vaelab.inference.objectives.iwae",
                 "_generated/experiments/results/priors"):
        assert (html / f"{page}.html").is_file(), page
    # the docstrings' math goes to MathJax, which the site serves itself
    iwae = (html / "_autosummary/vaelab.inference.objectives.iwae.html").read_text()
    assert 'class="math' in iwae and "mathjax/tex-chtml.js" in iwae
    assert (html / "_static" / "mathjax" / "tex-chtml.js").is_file()
    # the README's links to the result pages resolve inside the site
    assert 'href="experiments/results/priors.html"' in (html / "_generated/README.html").read_text()
