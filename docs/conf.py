"""Sphinx configuration of vaelab's documentation site (``make docs`` → ``docs/_build/html``).

The API pages are autodoc of every module (``sphinx.ext.autosummary``, recursive, stubs in
``docs/_autosummary``), from docstrings written as Sphinx field lists with ``.. math::`` blocks
(rendered by MathJax). Markdown pages are read by MyST. Three kinds of pages are copied or
generated into ``docs/_generated`` when the build starts, so that each source file stays the one
copy of its text:

- ``README.md``, ``benchmarks/results.md``, and ``experiments/results/*.md`` with their
  pictures, at the same relative
  places, so that the README's links to the result pages and pictures resolve as they do on a
  code host (its link to the tutorial script goes to the tutorial page);
- ``examples/tutorial.py``, a jupytext percent-format script, as a MyST page: its markdown cells
  as text, its code cells as Python blocks (the test suite runs the script itself).
"""

from __future__ import annotations

import re
from pathlib import Path

import vaelab

DOCS = Path(__file__).resolve().parent
ROOT = DOCS.parent
GENERATED = DOCS / "_generated"

project = "vaelab"
author = "the vaelab authors"
copyright = "the vaelab authors"
release = version = vaelab.__version__

extensions = [
    "myst_parser",
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.mathjax",
    "sphinx-mathjax-offline",  # MathJax 3 served from _static: the site renders offline
    "sphinx.ext.viewcode",
]
source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
root_doc = "index"
exclude_patterns = ["_build"]
templates_path = ["_templates"]

autosummary_generate = True
autodoc_default_options = {"ignore-module-all": True}  # members defined in each module
autodoc_member_order = "bysource"
autodoc_typehints = "description"
autodoc_preserve_defaults = True
autoclass_content = "both"  # a class's docstring and its __init__'s
autodoc_inherit_docstrings = False  # overrides of torch methods: not torch's docstrings

myst_heading_anchors = 3  # links to sections: [text](#section-title)
myst_enable_extensions = ["dollarmath"]

html_theme = "alabaster"
html_title = f"vaelab {release}"
html_static_path: list[str] = []
html_theme_options = {
    "description": "VAEs as Pyro models and guides",
    "fixed_sidebar": True,
    "page_width": "1240px",  # room for 100-column code
    "body_max_width": "none",
}


def _write_if_changed(path: Path, data: bytes) -> None:
    """Write ``data`` unless ``path`` holds it already (unchanged sources are not rebuilt)."""
    if not path.is_file() or path.read_bytes() != data:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)


#: a cell marker of the percent format: ``# %%``, optionally a title and ``[markdown]``
_CELL = re.compile(r"^# %%(?P<rest>.*)$")


def percent_to_myst(script: str, source: str) -> str:
    """A jupytext percent-format script as a MyST page.

    Markdown cells (``# %% [markdown]``) lose their comment prefix; code cells become ``python``
    blocks; the YAML header and blank lines around cells are dropped.

    :param script: the text of the script.
    :param source: its path in the repository, named in a note under the title.
    """
    cells: list[tuple[str, list[str]]] = []  # (kind, lines)
    for line in script.splitlines():
        marker = _CELL.match(line)
        if marker:
            cells.append(("markdown" if "[markdown]" in marker["rest"] else "code", []))
        elif cells:
            cells[-1][1].append(line)
    parts = []
    for kind, lines in cells:
        text = "\n".join(lines).strip("\n")
        if kind == "markdown":
            text = "\n".join(re.sub(r"^# ?", "", line) for line in text.splitlines())
        elif text:
            text = f"```python\n{text}\n```"
        if text:
            parts.append(text)
    if not parts or not parts[0].startswith("# "):
        raise ValueError(f"{source}: the first cell must be a markdown cell with a '# ' title")
    title, _, rest = parts[0].partition("\n")
    note = f"*Generated from `{source}`.*"
    return "\n\n".join([title, note, rest.strip("\n"), *parts[1:]]) + "\n"


#: links of the README to files that are pages of the site under another name
_README_LINKS = {"](examples/tutorial.py)": "](tutorial.md)"}


def generate_pages(app=None, config=None) -> None:
    """Copy the README and the result pages, and convert the tutorial, into ``_generated``."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    for link, page in _README_LINKS.items():
        readme = readme.replace(link, page)
    _write_if_changed(GENERATED / "README.md", readme.encode())
    results = ROOT / "experiments" / "results"
    for path in sorted(results.glob("*.md")) + sorted(results.glob("*.png")):
        _write_if_changed(GENERATED / "experiments" / "results" / path.name, path.read_bytes())
    bench = ROOT / "benchmarks" / "results.md"  # written by `make bench`, linked from the README
    if bench.is_file():
        _write_if_changed(GENERATED / "benchmarks" / "results.md", bench.read_bytes())
    tutorial = "examples/tutorial.py"
    page = percent_to_myst((ROOT / tutorial).read_text(encoding="utf-8"), tutorial)
    _write_if_changed(GENERATED / "tutorial.md", page.encode())
    # a result file removed from the repository leaves the site too
    for stale in (GENERATED / "experiments" / "results").iterdir():
        if not (results / stale.name).is_file():
            stale.unlink()


def setup(app):
    app.connect("config-inited", generate_pages)
    return {"parallel_read_safe": True}

