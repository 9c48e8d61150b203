"""The tutorial runs as written, every example of the README and the documentation pages runs at
a tiny size, the configuration reference is generated from the schema, and the documentation site
builds with warnings as errors.

**The examples.** Every fenced block of ``README.md``, ``CONTRIBUTING.md`` and ``docs/*.md`` is
an example unless it is ``text`` (a synopsis, an output) or a MyST directive. ``python`` blocks run
in-process, ``sh`` blocks run each ``vaelab ...`` command through :func:`vaelab.cli.main`, and
``toml`` blocks are loaded by :func:`vaelab.load_config`, all in one temporary folder per page
that holds the repository's ``experiments/`` and ``examples/`` and two small data files
(``features.csv``, ``counts.csv``). The size is made tiny from outside: every config is loaded
with :data:`TINY` appended (seeded synthetic data unless the example reads its own file, 2
epochs, small evaluations), and the commands get the flags of :data:`TINY_FLAGS`. A comment line
just above a block changes what happens to it:

- ``<!-- docs-test: skip (reason) -->``: not run (installs, torchrun, a GPU, a web server);
- ``<!-- docs-test: slow (reason) -->``: run by the ``slow``-marked test only;
- ``<!-- docs-test: excerpt PATH -->``: a code excerpt, checked to be in the file PATH.

The site's build test needs the ``[docs]`` extra, which ``make docs`` installs (and CI runs
``make docs`` after ``make test``); without it the test is skipped, saying so.
"""

import importlib.util
import re
import runpy
import shlex
import subprocess
import sys
import tempfile
import textwrap
import tomllib
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
TUTORIAL = ROOT / "examples" / "tutorial.py"
#: the pages whose examples run
PAGES = [ROOT / "README.md", ROOT / "CONTRIBUTING.md", *sorted((ROOT / "docs").glob("*.md"))]
#: the site's hand-written pages (besides index.md and api.rst) and the generated ones
SITE_PAGES = ["install", "python", "cli", "configuration", "data", "estimators", "hierarchical",
              "reproduce", "results", "scaling", "tracking", "survival", "benchmarks",
              "dependencies"]


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

    for page in ("index", *SITE_PAGES, "_generated/tutorial", "_generated/CONTRIBUTING",
                 "_generated/CHANGELOG", "api", "_autosummary/vaelab.inference.objectives.iwae",
                 "_autosummary/vaelab.runs.train", "_generated/experiments/results/priors"):
        assert (html / f"{page}.html").is_file(), page
    assert not (html / "_generated" / "README.html").exists()  # the site does not embed it
    # the docstrings' math goes to MathJax, which the site serves itself
    iwae = (html / "_autosummary/vaelab.inference.objectives.iwae.html").read_text()
    assert 'class="math' in iwae and "mathjax/tex-chtml.js" in iwae
    assert (html / "_static" / "mathjax" / "tex-chtml.js").is_file()
    # the pages' links to the result pages resolve inside the site
    results = (html / "results.html").read_text()
    assert 'href="_generated/experiments/results/priors.html"' in results
    # the configuration reference is on its page, component options included
    conf = (html / "configuration.html").read_text()
    assert "valid_particles" in conf and "pseudo-inputs" in conf


# ---- every example of the README and the documentation pages -----------------------------------

#: appended to every config an example loads: a seconds-long run on seeded synthetic data
TINY = ["data.name=synthetic", "model.latent_dim=4", "train.epochs=2", "train.batch_size=50",
        "train.progress=false", "train.valid_limit=50", "eval.num_samples=50", "eval.limit=20",
        "eval.ais_steps=5", "eval.ais_chains=2", "eval.ais_leapfrog=2"]
#: what ``vaelab reproduce RECIPE`` gets on top (the keys of its AIS and BDMC stages)
TINY_RECIPE = ["train.max_steps_per_epoch=3", "recipe.ais.points=4", "recipe.ais.steps=3",
               "recipe.ais.chains=2", "recipe.ais.leapfrog=2", "recipe.bdmc.points=2",
               "recipe.bdmc.steps=3", "recipe.bdmc.chains=2", "recipe.bdmc.leapfrog=2"]
#: flags appended to the commands that take no ``--set`` (the last flag given wins)
TINY_FLAGS = {"bdmc": ["-n", "4", "-T", "3", "-C", "2", "--leapfrog", "2"],
              "diagnose": ["--draws", "3", "--batch-size", "10"]}
#: the block languages that are examples; ``text`` blocks and MyST directives are not
RUN = ("python", "sh", "toml")
#: how many blocks of all the pages may carry ``docs-test: skip``
MAX_SKIPS = 8

_FENCE = re.compile(r"^(`{3,}|~{3,})(.*)$")
_MARK = re.compile(r"^<!--\s*docs-test:\s*(skip|slow|excerpt)\b\s*(.*?)\s*-->$")


@dataclass
class Block:
    page: Path
    line: int  # of the opening fence, from 1
    lang: str
    text: str
    mark: str | None  # skip, slow, excerpt or None
    why: str

    def __str__(self) -> str:
        return f"{self.page.relative_to(ROOT)}:{self.line}"


def code_blocks(page: Path) -> list[Block]:
    """The fenced blocks of a Markdown page, each with the ``docs-test`` mark above it."""
    lines = page.read_text(encoding="utf-8").splitlines()
    blocks, i = [], 0
    while i < len(lines):
        fence = _FENCE.match(lines[i])
        if not fence:
            i += 1
            continue
        end = next(j for j in range(i + 1, len(lines)) if lines[j].strip() == fence[1])
        above = next((lines[j].strip() for j in range(i - 1, -1, -1) if lines[j].strip()), "")
        mark = _MARK.match(above)
        info = fence[2].strip()
        blocks.append(Block(page, i + 1, info.split()[0] if info else "",
                            "\n".join(lines[i + 1:end]) + "\n", mark and mark[1],
                            mark[2] if mark else ""))
        i = end + 1
    return blocks


def _examples(slow: bool) -> list[Block]:
    return [b for p in PAGES for b in code_blocks(p)
            if b.lang in RUN and b.mark not in ("skip", "excerpt") and (b.mark == "slow") == slow]


def shell_commands(text: str) -> list[list[str]]:
    """The commands of a shell block: continuation lines joined, comments dropped."""
    joined = re.sub(r"\\\n\s*", " ", text)
    return [words for line in joined.splitlines() if (words := shlex.split(line, comments=True))]


def _own_file(overrides: list[str]) -> bool:
    return any(o.replace(" ", "").startswith(("data.name=array", "data.path=")) for o in overrides)


def tiny(overrides: list[str]) -> list[str]:
    """The overrides of an example with :data:`TINY` after them; the data stays the example's
    own only where it reads a file of its own (``data.name = "array"``)."""
    extra = [t for t in TINY if not (t.startswith("data.") and _own_file(overrides))]
    return [*overrides, *extra]


def tiny_argv(argv: list[str]) -> list[str]:
    """A ``vaelab`` command line at a tiny size."""
    cmd = argv[0]
    sets = [argv[i + 1] for i, a in enumerate(argv[:-1]) if a == "--set"]
    if cmd in ("train", "sweep") or (cmd == "reproduce" and "--table" not in argv
                                      and "--list-recipes" not in argv):
        more = tiny(sets)[len(sets):]
        if cmd == "reproduce":
            more += TINY_RECIPE
        if cmd == "sweep":
            argv = [a for a in argv if a not in ("--seeds", "3")] + ["--seeds", "1"]
        return argv + [a for o in more for a in ("--set", o)]
    if cmd == "evaluate":
        return argv + [a for o in TINY if o.startswith("eval.") for a in ("--set", o)]
    return argv + TINY_FLAGS.get(cmd, [])


@pytest.fixture
def docs_cwd(tmp_path, monkeypatch):
    """A folder holding the repository's configs and examples and two small data files."""
    import numpy as np

    for name in ("experiments", "examples"):
        (tmp_path / name).symlink_to(ROOT / name)
    rng = np.random.default_rng(0)
    features = rng.normal(50.0, 10.0, size=(120, 6))
    np.savetxt(tmp_path / "features.csv", features, delimiter=",", header="a,b,c,d,e,f",
               comments="")
    np.savetxt(tmp_path / "counts.csv", rng.poisson(5.0, size=(120, 10)), delimiter=",",
               fmt="%d")
    monkeypatch.chdir(tmp_path)
    return tmp_path


def _run_python(block: Block, monkeypatch) -> None:
    import vaelab
    import vaelab.resolve
    import vaelab.runs.run

    load, eval_config = vaelab.resolve.load_config, vaelab.runs.run.eval_config

    def tiny_load(path=None, overrides=None, **kw):
        return load(path, tiny(list(overrides or [])), **kw)

    def tiny_eval(cfg, overrides=()):
        return eval_config(cfg, [*overrides, *(o for o in TINY if o.startswith("eval."))])

    monkeypatch.setattr(vaelab.resolve, "load_config", tiny_load)
    monkeypatch.setattr(vaelab, "load_config", tiny_load, raising=False)
    monkeypatch.setattr(vaelab.runs.run, "eval_config", tiny_eval)
    exec(compile(block.text, str(block), "exec"), {"__name__": "__docs__"})


def _run_example(block: Block, monkeypatch, capsys) -> None:
    from vaelab.cli import main
    from vaelab.resolve import load_config

    if block.lang == "python":
        _run_python(block, monkeypatch)
    elif block.lang == "toml":
        path = Path(f"block{block.line}.toml")
        path.write_text(block.text)
        tomllib.loads(block.text)
        load_config(path, tiny([]))
    else:
        for words in shell_commands(block.text):
            assert words[0] == "vaelab", (
                f"{block}: a shell example runs vaelab commands only ({words[0]!r}); put other "
                "commands in a block marked <!-- docs-test: skip (reason) -->")
            argv = tiny_argv(words[1:])
            code = main(argv)
            assert code == 0, f"{block}: vaelab {shlex.join(argv)} → exit {code}\n" + \
                capsys.readouterr().err[-2000:]


def _page_id(page: Path) -> str:
    return str(page.relative_to(ROOT))


_FAST = {p: [b for b in _examples(slow=False) if b.page == p] for p in PAGES}
_SLOW = _examples(slow=True)


@pytest.mark.parametrize("page", [p for p in PAGES if _FAST[p]], ids=_page_id)
def test_every_example_of_a_page_runs_at_a_tiny_size(page, docs_cwd, monkeypatch, capsys):
    for block in _FAST[page]:
        _run_example(block, monkeypatch, capsys)


@pytest.mark.slow
@pytest.mark.parametrize("block", _SLOW, ids=str)
def test_every_slow_example_runs_at_a_tiny_size(block, docs_cwd, monkeypatch, capsys):
    _run_example(block, monkeypatch, capsys)


def test_every_block_is_an_example_or_says_why_not():
    blocks = [b for p in PAGES for b in code_blocks(p)]
    known = {*RUN, "text", ""}
    for b in blocks:
        assert b.lang in known or b.lang.startswith("{"), f"{b}: unknown block language {b.lang!r}"
        assert b.lang != "", f"{b}: say the block's language (python, sh, toml or text)"
        if b.mark in ("skip", "slow"):
            assert re.fullmatch(r"\(.+\)", b.why), f"{b}: a {b.mark} mark gives its reason"
    skips = [str(b) for b in blocks if b.mark == "skip"]
    assert len(skips) <= MAX_SKIPS, f"too many examples are skipped: {skips}"
    assert {p.name for p in PAGES} >= {"README.md", "index.md", "configuration.md"}
    # the README's own examples, the API and the prior swap, are run, not skipped
    readme = [b for b in code_blocks(ROOT / "README.md") if b.lang in RUN and b.mark is None]
    assert any("pyro.infer.SVI(vae.model, vae.guide" in b.text for b in readme)
    assert any("--set model.prior=vamp" in b.text for b in readme)


def test_every_mark_sits_above_a_block():
    for page in PAGES:
        lines = page.read_text(encoding="utf-8").splitlines()
        marked = {b.line for b in code_blocks(page) if b.mark}
        for i, line in enumerate(lines):
            if _MARK.match(line.strip()):
                below = next(j for j in range(i + 1, len(lines)) if lines[j].strip())
                assert below + 1 in marked, f"{page.name}:{i + 1}: a mark with no block below"


def test_every_excerpt_is_in_its_file():
    excerpts = [b for p in PAGES for b in code_blocks(p) if b.mark == "excerpt"]
    assert excerpts, "the README shows the model and the guide"
    for b in excerpts:
        source = (ROOT / b.why).read_text(encoding="utf-8")
        lines = [ln.strip() for ln in source.splitlines()]
        want = [ln.strip() for ln in textwrap.dedent(b.text).splitlines() if ln.strip()]
        start = lines.index(want[0]) if want[0] in lines else -1
        assert start >= 0 and lines[start:start + len(want)] == want, (
            f"{b}: the excerpt is no longer in {b.why}")


def test_the_readme_is_a_front_door():
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    assert len(text.splitlines()) <= 150
    for link in re.findall(r"\]\(([^)#]+)", text):
        if "://" not in link:
            assert (ROOT / link).exists(), f"README.md links to a missing file: {link}"
    # no Gumbel-softmax figure until the evidence issue has re-scored it: links only
    for line in text.splitlines():
        assert not ("umbel" in line and re.search(r"\d\.\d", line)), line


def test_the_configuration_reference_covers_the_schema_and_every_component():
    import vaelab.catalog as catalog
    from vaelab.config import SECTIONS, RunConfig

    conf = _load_conf()
    page = conf.config_reference()
    for section in SECTIONS:
        assert f"### `[{section}]`" in page
        for key in RunConfig.model_fields[section].annotation.model_fields:
            assert f"- `{key}` (" in page, f"{section}.{key}"
    for name in catalog.__all__:
        for component in getattr(catalog, name).names():
            assert f"**`{component}`**" in page, (name, component)
    # a field's `#:` comment, and a component option's description, reach the page
    assert "importance samples K per data point" in page
    assert "number of mixture components K" in page
    # a field without a comment still gets its name, type and default
    assert "- `split_seed` (int, default `0`, ≥ 0, ≤ 4294967295)" in page


def test_field_comments_are_read_from_the_source():
    class Example:
        #: first line
        #: second line
        a: int = 1
        b: int = 2  # not a doc comment

    # classes defined in a function body have a source too
    assert _load_conf().field_comments(Example) == {"a": "first line second line"}
