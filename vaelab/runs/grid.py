r"""A sweep's plan: the grid, its cells and runs, and what each run's folder holds.

A grid (``--grid KEY=[V1, V2, ...]``, :func:`parse_grid`) is expanded into its cross product
(:func:`expand`), each point a *cell* named after its values (:func:`cell_name`), each cell one
run per seed (:class:`RunSpec`). :func:`plan` resolves every run's config and finds the state of
its folder (one of :data:`STATES`: finished, resume, new, busy), checking a folder that holds a
commit against the run's config (:func:`vaelab.runs.resume.check_resume`); :func:`refresh`
finds it again just before the run starts (another sweep may have trained it meanwhile).
:func:`write_manifest` writes ``DIR/sweep.json``. :mod:`vaelab.runs.executors` runs the plan,
:func:`vaelab.runs.sweep.sweep` is the command.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["FORBIDDEN_GRID_KEYS", "MANIFEST", "STATES", "Cell", "RunSpec", "cell_name", "expand",
           "parse_grid", "plan", "refresh", "toml_literal", "write_manifest"]

#: keys a grid may not vary (``--seeds`` sets the seeds; ``vaelab compare`` groups by the rest)
FORBIDDEN_GRID_KEYS = ("train.seed",)
MANIFEST = "sweep.json"
#: runs states of :func:`plan`
STATES = ("finished", "resume", "new", "busy")
_SAFE = re.compile(r"[^A-Za-z0-9._+-]")
_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")


def _config_error(message: str) -> Exception:
    from vaelab.registry import ConfigError

    return ConfigError(message)


# --------------------------------------------------------------------------------------------
# the grid


def toml_literal(value: Any) -> str:
    """``value`` written as a TOML value (inline tables for dicts), the right-hand side of a
    ``--set`` that :func:`~vaelab.resolve.parse_value` reads back to ``value``."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)  # inf, -inf and nan are TOML floats too
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(toml_literal(v) for v in value) + "]"
    if isinstance(value, dict):
        items = (f"{k if _BARE_KEY.fullmatch(k) else json.dumps(k)} = {toml_literal(v)}"
                 for k, v in value.items())
        return "{" + ", ".join(items) + "}"
    raise TypeError(f"cannot write {type(value).__name__} {value!r} as a TOML value")


def parse_grid(items: list[str]) -> dict[str, list[Any]]:
    """``KEY=[V1, V2, ...]`` strings as ``{KEY: [V1, V2, ...]}``, in the order given.

    :raises ConfigError: an item without ``=``, a value that is not a non-empty TOML array, a
        key given twice, a key outside a section, or a key :data:`FORBIDDEN_GRID_KEYS` names.
    """
    from vaelab.config import SECTIONS
    from vaelab.resolve import parse_value

    grid: dict[str, list[Any]] = {}
    for item in items:
        if "=" not in item:
            raise _config_error(f"--grid {item!r}: expected KEY=[V1, V2, ...], e.g. "
                                "--grid 'model.prior=[\"standard_normal\", \"vamp\"]'")
        key, text = (s.strip() for s in item.split("=", 1))
        values = parse_value(text)
        if not isinstance(values, list):
            raise _config_error(
                f"--grid {item!r}: the value must be a TOML array of the values to try, e.g. "
                f"{key}=[{toml_literal(values)}]" + (" (quote strings: [\"a\", \"b\"])"
                                                     if isinstance(values, str) else ""))
        if not values:
            raise _config_error(f"--grid {item!r}: the array is empty; give at least one value")
        if key.split(".")[0] not in SECTIONS or "." not in key:
            from vaelab.registry import suggest

            raise _config_error(f"--grid {item!r}: the key must start with a section"
                                f"{suggest(key.split('.')[0], SECTIONS)}; sections: "
                                f"{', '.join(SECTIONS)}")
        if key in FORBIDDEN_GRID_KEYS:
            raise _config_error(f"--grid {item!r}: seeds are set by --seeds N (train.seed, "
                                "train.seed + 1, ...), not by a grid")
        if key in grid:
            raise _config_error(f"--grid {key}: given twice; put every value in one array")
        grid[key] = values
    return grid


def _value_slug(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, tuple)):
        return "-".join(_value_slug(v) for v in value) or "empty"
    if isinstance(value, dict):
        rest = [f"{k}{_value_slug(v)}" for k, v in value.items() if k != "name"]
        return "-".join([str(value.get("name", "table")), *rest])
    return str(value)


def _labels(keys: list[str]) -> dict[str, str]:
    """A short label per grid key: the key without its section and a trailing ``name``
    (``model.prior`` → ``prior``, ``objective.name`` → ``objective``), the full key where two
    would clash."""
    def short(key: str) -> str:
        parts = key.split(".")
        parts = parts[:-1] if parts[-1] == "name" and len(parts) > 1 else parts
        return ".".join(parts[1:]) or parts[0]

    counts: dict[str, int] = {}
    for k in keys:
        counts[short(k)] = counts.get(short(k), 0) + 1
    return {k: short(k) if counts[short(k)] == 1 else k for k in keys}


def cell_name(values: dict[str, Any], labels: dict[str, str] | None = None) -> str:
    """A readable, filesystem-safe folder name for one grid point, e.g.
    ``prior=vamp,objective=iwae_dreg`` or ``hidden_sizes=400-400``; characters outside
    ``[A-Za-z0-9._+-]`` become ``_``, and a name over 100 characters is cut and ends with a hash
    of the whole. ``base`` when the grid is empty."""
    if not values:
        return "base"
    labels = labels or _labels(list(values))
    name = ",".join(f"{_SAFE.sub('_', labels[k])}={_SAFE.sub('_', _value_slug(v))}"
                    for k, v in values.items())
    if len(name) > 100:
        name = f"{name[:91]}-{hashlib.sha1(name.encode()).hexdigest()[:8]}"
    return name


@dataclass
class RunSpec:
    """One run of a sweep: a cell at one seed. Picklable (submitit sends it to the job)."""

    cell: str
    seed: int
    dir: Path
    #: every ``--set`` of the run: the sweep's, the cell's, ``train.seed`` and maybe threads
    overrides: list[str]
    config: Path
    log: Path
    evaluate: bool = False
    #: what :func:`plan` found: one of :data:`STATES`
    state: str = "new"
    #: the epochs committed in the folder, when it holds a commit
    epochs_done: int = 0
    #: environment variables set for the run's process
    env: dict[str, str] = field(default_factory=dict)
    #: why a busy run was not started
    reason: str = ""

    @property
    def label(self) -> str:
        return f"{self.cell}/seed{self.seed}"

    def argv(self) -> list[str]:
        """``python -m vaelab train CONFIG --out DIR --set ... [--resume] [--evaluate]``."""
        sets = [a for o in self.overrides for a in ("--set", o)]
        return [sys.executable, "-m", "vaelab", "train", str(self.config), "--out",
                str(self.dir), "--no-progress", *sets,
                *(["--resume"] if self.state == "resume" else []),
                *(["--evaluate"] if self.evaluate else [])]


@dataclass
class Cell:
    """One point of the grid: its values, its ``--set`` overrides and its runs (one per seed)."""

    name: str
    values: dict[str, Any]
    overrides: list[str]
    runs: list[RunSpec] = field(default_factory=list)


def expand(grid: dict[str, list[Any]]) -> list[tuple[str, dict[str, Any], list[str]]]:
    """The cross product of ``grid`` as ``(cell name, values, overrides)``, the first key
    varying slowest. Names made equal by the folder-name rules get a hash of their values."""
    keys = list(grid)
    labels = _labels(keys)
    cells = []
    for combo in itertools.product(*(grid[k] for k in keys)):
        values = dict(zip(keys, combo))
        cells.append((cell_name(values, labels), values,
                      [f"{k}={toml_literal(v)}" for k, v in values.items()]))
    names = [c[0] for c in cells]
    return [(n if names.count(n) == 1 else
             f"{n}-{hashlib.sha1(json.dumps(ov).encode()).hexdigest()[:8]}", v, ov)
            for n, v, ov in cells]



# --------------------------------------------------------------------------------------------
# the plan


def _sets_threads(config: Path, overrides: list[str], grid: dict[str, list[Any]]) -> bool:
    """Whether the user gives ``train.num_threads`` (in the file, a ``--set`` or a grid)."""
    from vaelab.resolve import load_raw

    given = {o.split("=", 1)[0].strip() for o in overrides} | set(grid)
    return "train.num_threads" in given or "num_threads" in load_raw(config).get("train", {})


def _state(run: RunSpec, cfg, evaluate: bool) -> tuple[str, int, str]:
    """``(state, epochs committed, reason)`` of ``run``'s folder for the resolved ``cfg``."""
    from vaelab.runs.checkpoint import CorruptCheckpointError
    from vaelab.runs.folder import RunFolderBusy, RunLock, latest_commit
    from vaelab.runs.resume import Progress, check_resume

    try:
        RunLock.check_free(run.dir)
    except RunFolderBusy as err:
        return "busy", 0, str(err)
    try:
        commit = latest_commit(run.dir)
    except CorruptCheckpointError:
        return "resume", 0, ""  # the run's own --resume names what is damaged
    if commit is None:
        return "new", 0, ""
    try:
        check_resume(cfg, commit, run.dir, True)
    except ValueError as err:
        raise _config_error(f"cell {run.label}: {err}; or choose another --out") from None
    progress = Progress.from_state_dict(commit.state)
    done = progress.epoch >= cfg.train.epochs or progress.should_stop(cfg.train.patience)
    if done and (not evaluate or (run.dir / "eval.json").is_file()):
        return "finished", progress.epoch, ""
    return "resume", progress.epoch, ""


def refresh(run: RunSpec) -> RunSpec:
    """Find ``run``'s state again, now (:func:`plan` found it when the sweep began; another
    sweep on the same folder may have trained the run since, or be training it).

    :raises ConfigError: the folder now holds a run of another config.
    """
    from vaelab.resolve import load_config

    run.state, run.epochs_done, run.reason = _state(run, load_config(run.config, run.overrides),
                                                    run.evaluate)
    return run


def plan(
    config: str | Path,
    out: str | Path,
    grid: dict[str, list[Any]],
    *,
    seeds: int = 1,
    overrides: list[str] | tuple[str, ...] = (),
    threads: int | None = None,
    evaluate: bool = False,
) -> list[Cell]:
    """Every cell and run of a sweep, each run's config resolved and its folder's state found.

    :param config: the TOML file every run starts from.
    :param out: the sweep folder (``out/<cell>/seed<N>``, ``out/sweep.json``, ``out/logs``).
    :param grid: :func:`parse_grid`'s result.
    :param seeds: runs per cell: ``train.seed + 0 .. seeds - 1``.
    :param overrides: ``--set`` overrides for every run (applied before the cell's).
    :param threads: ``train.num_threads`` of every run, unless the user gives it.
    :param evaluate: each run is evaluated after training (``vaelab train --evaluate``).
    :raises ConfigError: a cell whose config does not resolve, or whose folder holds a run of
        another config (one line naming the cell); nothing has been written.
    """
    from vaelab.registry import ConfigError
    from vaelab.resolve import load_config

    if seeds < 1:
        raise _config_error(f"--seeds must be at least 1, got {seeds}")
    config, out = Path(config).absolute(), Path(out)
    overrides = list(overrides)
    extra = ([f"train.num_threads={threads}"]
             if threads and not _sets_threads(config, overrides, grid) else [])
    env = {"OMP_NUM_THREADS": str(threads)} if extra and "OMP_NUM_THREADS" not in os.environ \
        else {}
    cells = []
    for name, values, cell_ov in expand(grid):
        cell = Cell(name, values, cell_ov)
        try:
            base = load_config(config, [*overrides, *cell_ov]).train.seed
        except ConfigError as err:
            raise _config_error(f"cell {name}: {err}") from None
        for s in range(seeds):
            run_ov = [*overrides, *cell_ov, f"train.seed={base + s}", *extra]
            run = RunSpec(name, base + s, out / name / f"seed{base + s}", run_ov, config,
                          out / "logs" / name / f"seed{base + s}.log", evaluate, env=env)
            run.state, run.epochs_done, run.reason = _state(run, load_config(config, run_ov),
                                                            evaluate)
            cell.runs.append(run)
        cells.append(cell)
    return cells


def write_manifest(out: Path, config: Path, grid: dict[str, list[Any]], seeds: int,
                   overrides: list[str], cells: list[Cell]) -> Path:
    """``out/sweep.json``: the config, grid and seeds, and each cell's overrides and run
    folders (relative to ``out``), written atomically."""
    from vaelab.runs.checkpoint import atomic_write_text

    manifest = {
        "config": str(config), "grid": grid, "seeds": seeds, "overrides": overrides,
        "cells": [{"name": c.name, "values": c.values, "overrides": c.overrides,
                   "runs": [{"seed": r.seed, "dir": str(r.dir.relative_to(out)),
                             "overrides": r.overrides} for r in c.runs]} for c in cells],
    }
    path = out / MANIFEST
    atomic_write_text(path, json.dumps(manifest, indent=1) + "\n")
    return path
