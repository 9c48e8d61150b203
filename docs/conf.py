"""Sphinx configuration of vaelab's documentation site (``make docs`` → ``docs/_build/html``).

The API pages are autodoc of every module (``sphinx.ext.autosummary``, recursive, stubs in
``docs/_autosummary``), from docstrings written as Sphinx field lists with ``.. math::`` blocks
(rendered by MathJax). Markdown pages are read by MyST. The hand-written pages are ``docs/*.md``;
``docs/index.md`` is the home. Four kinds of pages are copied or generated into
``docs/_generated`` when the build starts, so that each source stays the one copy of its text:

- ``CONTRIBUTING.md`` and ``CHANGELOG.md``, their links to ``docs/`` pages rewritten to the
  site's pages (the site does not embed the README, the repository's front door);
- ``benchmarks/results.md`` and ``experiments/results/*.md`` with their pictures, at the same
  relative places;
- ``examples/tutorial.py``, a jupytext percent-format script, as a MyST page: its markdown cells
  as text, its code cells as Python blocks (the test suite runs the script itself);
- ``configuration_reference.md``, included by ``docs/configuration.md``: every key of the config
  schema (:mod:`vaelab.config`) with its type, default, bounds and ``#:`` comment, and every
  registered component (:mod:`vaelab.catalog`) with its options, written by
  :func:`config_reference` from the code itself, so that it cannot drift.
"""

from __future__ import annotations

import ast
import inspect
import json
import re
import textwrap
import typing
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
#: included by configuration.md, not a page of its own
exclude_patterns = ["_build", "_generated/configuration_reference.md"]
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



# ---- the configuration reference, generated from the schema and the registries -----------------

#: the config keys that name a component, and the registry (in :mod:`vaelab.catalog`) of each;
#: :func:`config_reference` refuses a schema field or a registry missing here
COMPONENT_KEYS = {
    "model.latent": "LATENTS",
    "model.prior": "PRIORS",
    "model.likelihood": "LIKELIHOODS",
    "guide.family": "FAMILIES",
    "model.decoder": "NETWORKS",
    "guide.encoder": "NETWORKS",
    "objective.name": "OBJECTIVES",
    "eval.proposal": "PROPOSALS",
    "data.name": "DATASETS",
}

_ROLE = re.compile(r":(?:\w+:)?\w+:`(~?)([^`]+)`")


def _md(text: str) -> str:
    """reStructuredText of a docstring or comment as one line of Markdown: ``x`` and roles such
    as :mod:`x` become code spans."""

    def role(m: re.Match) -> str:
        target = m[2].split(".")[-1] if m[1] else m[2]
        return f"`{target}`"

    text = _ROLE.sub(role, text).replace("``", "`")
    return " ".join(text.split())


def field_comments(cls: type) -> dict[str, str]:
    """The ``#:`` comments above the fields of ``cls`` and its bases, by field name (the nearest
    class first)."""
    out: dict[str, str] = {}
    for klass in cls.__mro__:
        try:
            source = textwrap.dedent(inspect.getsource(klass))
        except (OSError, TypeError):  # built at run time (a registry's per-entry subclass), or C
            continue
        lines = source.splitlines()
        tree = ast.parse(source)
        body = tree.body[0].body if tree.body and isinstance(tree.body[0], ast.ClassDef) else []
        for node in body:
            if not (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)):
                continue
            comment: list[str] = []
            i = node.lineno - 2
            while i >= 0 and lines[i].strip().startswith("#:"):
                comment.insert(0, lines[i].strip()[2:].strip())
                i -= 1
            if comment and node.target.id not in out:
                out[node.target.id] = " ".join(comment)
    return out


def _type_name(ann: object) -> str:
    origin, args = typing.get_origin(ann), typing.get_args(ann)
    if origin is typing.Literal:
        return " | ".join(json.dumps(a) for a in args)
    if origin is typing.Annotated:
        return _type_name(args[0])
    if origin is typing.Union or type(ann).__name__ == "UnionType":
        return " | ".join(_type_name(a) for a in args)
    if origin is not None:
        name = getattr(origin, "__name__", str(origin))
        return f"{name}[{', '.join(_type_name(a) for a in args)}]"
    if ann is type(None):
        return "None"
    if isinstance(ann, type):
        return ann.__name__
    return str(ann).replace("typing.", "")


def _toml(value: object) -> str:
    """A default as it is written in a TOML file."""
    if value is None:
        return "unset"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k} = {_toml(v)}" for k, v in value.items()) + "}"
    return repr(value)


_BOUNDS = (("gt", ">"), ("ge", "≥"), ("lt", "<"), ("le", "≤"), ("min_length", "length ≥"))


def _field_line(key: str, field, comment: str | None, see: str = "") -> str:
    """One bullet: name, type, default, bounds, comment (or description)."""
    facts = ["component" if see else _type_name(field.annotation)]
    if not field.is_required():
        facts.append(f"default `{_toml(field.get_default(call_default_factory=True))}`")
    facts += [f"{sign} {getattr(m, attr)}" for m in field.metadata for attr, sign in _BOUNDS
              if getattr(m, attr, None) is not None]
    text = _md(field.description or comment or "")
    return f"- `{key}` ({', '.join(facts)}){': ' + text if text else ''}{see}"


def _title(kind: str) -> str:
    """``guide family`` → ``Guide families``."""
    plural = kind[:-1] + "ies" if kind.endswith("y") else kind + "s"
    return plural[0].upper() + plural[1:]


def _anchor(title: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", title.lower()).strip("-")


def _section_lines(name: str, model: type, registries: dict) -> list[str]:
    doc = _md((inspect.getdoc(model) or "").split("\n\n")[0]) if model.__doc__ else ""
    lines = [f"### `[{name}]`", ""] + ([doc, ""] if doc else [])
    comments = field_comments(model)
    for key, field in model.model_fields.items():
        dotted = f"{name}.{key}"
        see = ""
        if dotted in COMPONENT_KEYS:
            title = _title(registries[COMPONENT_KEYS[dotted]].kind)
            see = f"; see [{title}](#{_anchor(title)})"
        elif "Options" in repr(field.annotation):
            raise ValueError(f"{dotted} names a component: add it to COMPONENT_KEYS")
        lines.append(_field_line(key, field, comments.get(key), see))
    return lines + [""]


def _component_lines(registry, keys: list[str]) -> list[str]:
    title = _title(registry.kind)
    lines = [f"### {title}", "", f"Set by {', '.join(f'`{k}`' for k in keys)}.", ""]
    for name in registry.names():
        entry = registry.entry(name)
        doc = _md((entry.doc or "").split("\n\n")[0])
        lines.append(f"**`{name}`**" + (f": {doc}" if doc else ""))
        lines.append("")
        comments = field_comments(entry.options)
        fields = [(k, f) for k, f in entry.options.model_fields.items() if k != "name"]
        lines += [_field_line(k, f, comments.get(k)) for k, f in fields]
        if fields:
            lines.append("")
    return lines


def config_reference() -> str:
    """The reference of every config key and every registered component, as Markdown."""
    import vaelab.catalog as catalog
    from vaelab.config import SECTIONS, RunConfig

    registries = {name: getattr(catalog, name) for name in catalog.__all__}
    unknown = set(registries) - set(COMPONENT_KEYS.values())
    if unknown:
        raise ValueError(f"registries {sorted(unknown)} are not in COMPONENT_KEYS")
    lines = [
        "### Top-level keys", "",
        *[_field_line(k, RunConfig.model_fields[k], field_comments(RunConfig).get(k))
          for k in RunConfig.model_fields if k not in SECTIONS], "",
    ]
    for section in SECTIONS:
        lines += _section_lines(section, RunConfig.model_fields[section].annotation, registries)
    lines += ["## Components", "",
              "Each component is a name, or a table with `name` and the options listed under it "
              "(`prior = {name = \"mog\", components = 10}`); `--set model.prior.components=10` "
              "sets one option.", ""]
    for reg in dict.fromkeys(COMPONENT_KEYS.values()):
        keys = [k for k, v in COMPONENT_KEYS.items() if v == reg]
        lines += _component_lines(registries[reg], keys)
    return "\n".join(lines).rstrip("\n") + "\n"


#: pages of the repository copied into the site, and their links rewritten for it
_COPIED = {"CONTRIBUTING.md": {"](docs/": "](../"}, "CHANGELOG.md": {"](docs/": "](../"}}


def generate_pages(app=None, config=None) -> None:
    """Copy the repository's pages and the result pages, convert the tutorial, and write the
    configuration reference, into ``_generated``."""
    for name, links in _COPIED.items():
        text = (ROOT / name).read_text(encoding="utf-8")
        for old, new in links.items():
            text = text.replace(old, new)
        _write_if_changed(GENERATED / name, text.encode())
    results = ROOT / "experiments" / "results"
    for path in sorted(results.glob("*.md")) + sorted(results.glob("*.png")):
        _write_if_changed(GENERATED / "experiments" / "results" / path.name, path.read_bytes())
    bench = ROOT / "benchmarks" / "results.md"  # written by `make bench`
    if bench.is_file():
        _write_if_changed(GENERATED / "benchmarks" / "results.md", bench.read_bytes())
    tutorial = "examples/tutorial.py"
    page = percent_to_myst((ROOT / tutorial).read_text(encoding="utf-8"), tutorial)
    _write_if_changed(GENERATED / "tutorial.md", page.encode())
    _write_if_changed(GENERATED / "configuration_reference.md", config_reference().encode())
    # a result file removed from the repository leaves the site too, and so does the old README
    for stale in (GENERATED / "experiments" / "results").iterdir():
        if not (results / stale.name).is_file():
            stale.unlink()
    (GENERATED / "README.md").unlink(missing_ok=True)


def setup(app):
    app.connect("config-inited", generate_pages)
    return {"parallel_read_safe": True}
