"""The shape of the package: no import cycles, one build per command, short top-level functions."""

from __future__ import annotations

import ast
import dataclasses
from pathlib import Path

import pytest

import vaelab

PACKAGE = Path(vaelab.__file__).parent


def _module_name(path: Path, package: Path = PACKAGE) -> str:
    rel = path.relative_to(package.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _import_graph(package: Path = PACKAGE) -> dict[str, set[str]]:
    """Edges module → vaelab module for every import statement anywhere in a file: module
    level, inside functions and under ``if TYPE_CHECKING``. ``from pkg import name`` points at
    ``pkg.name`` when that is a module, else at ``pkg``."""
    modules = {_module_name(p, package): p for p in package.rglob("*.py")}
    graph: dict[str, set[str]] = {m: set() for m in modules}
    for name, path in modules.items():
        is_pkg = path.name == "__init__.py"
        for node in ast.walk(ast.parse(path.read_text())):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:  # relative import
                    pkg = name.split(".") if is_pkg else name.split(".")[:-1]
                    pkg = pkg[: len(pkg) - node.level + 1]
                    base = ".".join(pkg + ([base] if base else []))
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base
                           for a in node.names]
            for t in targets:
                while t and t not in modules:  # `import vaelab.x.y` of a module below
                    t = t.rpartition(".")[0]
                if t and t.startswith("vaelab") and t != name:
                    graph[name].add(t)
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_the_import_graph_has_no_cycles():
    graph = _import_graph()
    assert len(graph) > 40 and graph["vaelab.runs.train"]  # the scan sees the package
    assert _cycles(graph) == []


def test_the_cycle_check_finds_a_cycle():
    # the checker itself: a → b → c → a is one component, d is alone
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a", "d"}, "d": set()}
    assert _cycles(graph) == [["a", "b", "c"]]


#: the library: the mathematics and what it stands on; it imports nothing else of vaelab
LIBRARY = ("vaelab.model", "vaelab.guide", "vaelab.data", "vaelab.inference", "vaelab.registry",
           "vaelab.config", "vaelab.devices", "vaelab.seed", "vaelab.notes", "vaelab.vae",
           "vaelab._version")
#: the lab: everything that writes a run folder
LAB = ("vaelab.runs",)
#: the edge: configs turned into objects (resolve, with the catalog of every component, and the
#: upgrade of saved configs by version). The lab loads saved run folders through it, so it stands
#: above the library and below the lab.
EDGE = ("vaelab.resolve", "vaelab.catalog", "vaelab.versions")


def _within(module: str, prefixes: tuple[str, ...]) -> bool:
    return any(module == p or module.startswith(p + ".") for p in prefixes)


def _crossings(graph: dict[str, set[str]], wing: tuple[str, ...],
               allowed: tuple[str, ...]) -> set[tuple[str, str]]:
    """The imports (module, target) from a module of ``wing`` to one outside ``allowed``."""
    return {(m, t) for m, targets in graph.items() if _within(m, wing)
            for t in targets if not _within(t, allowed)}


def test_the_library_imports_nothing_of_the_lab_or_the_edge():
    graph = _import_graph()
    assert {m for m in graph if _within(m, LAB)} >= {"vaelab.runs.train", "vaelab.runs.run"}
    assert _crossings(graph, LIBRARY, LIBRARY) == set()


def test_the_edge_and_the_lab_import_nothing_above_them():
    graph = _import_graph()
    assert _crossings(graph, EDGE, LIBRARY + EDGE) == set()
    assert _crossings(graph, LAB, LIBRARY + EDGE + LAB) == set()


def test_the_wing_check_finds_an_import_inside_a_function(tmp_path):
    """The checker itself: a library module that imports the lab inside a function body."""
    pkg = tmp_path / "vaelab"
    (pkg / "inference").mkdir(parents=True)
    (pkg / "runs").mkdir()
    for init in (pkg, pkg / "inference", pkg / "runs"):
        (init / "__init__.py").write_text("")
    (pkg / "runs" / "train.py").write_text("")
    (pkg / "inference" / "x.py").write_text(
        "def f():\n    from vaelab.runs.train import train\n    return train\n")
    assert _crossings(_import_graph(pkg), LIBRARY, LIBRARY) == {
        ("vaelab.inference.x", "vaelab.runs.train")}


def test_config_is_a_pure_schema():
    assert {m for m in _import_graph()["vaelab.config"]} <= {"vaelab.registry"}


#: the lines of code a function may hold (docstring, comments and blank lines excluded)
MAX_FUNCTION_LINES = 60
#: the modules allowed over 500 lines, each one topic (its docstring says why)
LONG_MODULES = {
    "vaelab.model.likelihoods": "one registry of likelihoods, each a few lines on a shared base",
    "vaelab.model.priors": "one registry of priors, each a few lines on a shared base",
    "vaelab.model.networks": "one registry of networks (MLP, conv, gated) and their shapes",
    "vaelab.data.datasets": "one registry of data sets, each its download, checksum and split",
    "vaelab.cli": "one command line: a parser and a short function per command",
    "vaelab.config": "one schema: the seven sections of a run configuration, each a short model",
}


def _code_lines(node: ast.FunctionDef | ast.AsyncFunctionDef, lines: list[str]) -> int:
    """Lines of code of a function: its lines less its docstring, comments and blank lines."""
    doc: set[int] = set()
    first = node.body[0]
    if (isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant)
            and isinstance(first.value.value, str)):
        doc = set(range(first.lineno, (first.end_lineno or first.lineno) + 1))
    return sum(1 for i in range(node.lineno, (node.end_lineno or node.lineno) + 1)
               if i not in doc and lines[i - 1].strip()
               and not lines[i - 1].strip().startswith("#"))


def test_every_function_holds_at_most_60_lines_of_code():
    long = []
    for path in PACKAGE.rglob("*.py"):
        source = path.read_text()
        lines = source.splitlines()
        for node in ast.walk(ast.parse(source)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                n = _code_lines(node, lines)
                if n > MAX_FUNCTION_LINES:
                    long.append(f"{_module_name(path)}.{node.name}: {n}")
    assert long == []


def test_the_line_counter_skips_the_docstring_comments_and_blank_lines():
    source = 'def f():\n    """doc\n    more"""\n    # note\n\n    return 1\n'
    node = ast.parse(source).body[0]
    assert isinstance(node, ast.FunctionDef)
    assert _code_lines(node, source.splitlines()) == 2  # the def line and the return


def test_only_the_named_modules_exceed_500_lines_and_each_says_why():
    long = {_module_name(p) for p in PACKAGE.rglob("*.py")
            if len(p.read_text().splitlines()) > 500}
    assert long <= set(LONG_MODULES), sorted(long - set(LONG_MODULES))
    for name in long:
        path = (PACKAGE.parent / name.replace(".", "/")).with_suffix(".py")
        doc = ast.get_docstring(ast.parse(path.read_text())) or ""
        assert "one topic" in doc.lower(), f"{name}: its docstring says why it is one topic"


def test_train_command_builds_the_data_set_and_the_vae_once(tmp_path, monkeypatch,
                                                            tiny_cfg_overrides):
    from vaelab.cli import main
    from vaelab.data.datasets import DATASETS
    from vaelab.vae import VAE

    counts = {"vae": 0, "data": 0}
    init = VAE.__init__

    def counting_init(self, *args, **kwargs):
        counts["vae"] += 1
        init(self, *args, **kwargs)

    entry = DATASETS.entry("synthetic")

    def counting_builder(cfg):
        counts["data"] += 1
        return entry.builder(cfg)

    monkeypatch.setattr(VAE, "__init__", counting_init)
    monkeypatch.setitem(DATASETS._entries, "synthetic",
                        dataclasses.replace(entry, builder=counting_builder))
    cfg = tmp_path / "c.toml"
    cfg.write_text("")
    sets = [a for o in tiny_cfg_overrides for a in ("--set", o)]
    assert main(["train", str(cfg), "--out", str(tmp_path / "run"), *sets, "--evaluate"]) == 0
    assert counts == {"vae": 1, "data": 1}


@pytest.mark.parametrize("module", ["vaelab.config", "vaelab.resolve"])
def test_modules_named_in_the_layout_exist(module):
    __import__(module)


def test_help_and_import_pay_for_nothing_heavy():
    """``import vaelab`` and ``vaelab --help`` import neither torch nor Pyro, matplotlib, scipy
    or numpy (issue 12: start-up); they come when a command needs them."""
    import subprocess
    import sys

    probe = ("import sys, vaelab, vaelab.cli as c; c.build_parser()\n"
             "try:\n    c.main(['--help'])\nexcept SystemExit:\n    pass\n"
             "print(sorted(m for m in ('torch', 'pyro', 'matplotlib', 'scipy', 'numpy')"
             " if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                         check=True).stdout
    assert out.strip().splitlines()[-1] == "[]", out
