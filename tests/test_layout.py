"""The shape of the package: no import cycles, one build per command, short top-level functions."""

from __future__ import annotations

import ast
import dataclasses
import inspect
from pathlib import Path

import pytest

import vaelab

PACKAGE = Path(vaelab.__file__).parent


def _module_name(path: Path) -> str:
    rel = path.relative_to(PACKAGE.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _import_graph() -> dict[str, set[str]]:
    """Edges module → vaelab module for every import statement anywhere in a file: module
    level, inside functions and under ``if TYPE_CHECKING``. ``from pkg import name`` points at
    ``pkg.name`` when that is a module, else at ``pkg``."""
    modules = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
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
    assert len(graph) > 40 and graph["vaelab.inference.train"]  # the scan sees the package
    assert _cycles(graph) == []


def test_the_cycle_check_finds_a_cycle():
    # the checker itself: a → b → c → a is one component, d is alone
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a", "d"}, "d": set()}
    assert _cycles(graph) == [["a", "b", "c"]]


def test_config_is_a_pure_schema():
    assert {m for m in _import_graph()["vaelab.config"]} <= {"vaelab.registry"}


def test_train_and_evaluate_read_top_to_bottom_in_under_80_lines():
    from vaelab.inference.train import train
    from vaelab.run import evaluate

    for fn in (train, evaluate):
        assert len(inspect.getsource(fn).splitlines()) < 80, fn.__name__


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
