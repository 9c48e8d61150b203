r"""Sweeps: a grid of configs × seeds, every cell an ordinary, resumable run folder.

``vaelab sweep CONFIG --grid KEY=[V1, V2, ...] ... --seeds S --out DIR`` runs the cross product
of the grids, each point (a *cell*) with seeds ``train.seed + 0 .. S - 1``, as run folders
``DIR/<cell>/seed<N>`` written by ``vaelab train`` itself (one process per run, so a crash in one
cell leaves the others running). A grid value is a TOML array parsed like a ``--set`` value
(:func:`~vaelab.resolve.parse_value`), so a value may itself be a list or a table:
``--grid 'model.hidden_sizes=[[200], [400, 400]]'``,
``--grid 'model.prior=["standard_normal", {name = "mog", components = 10}]'``.

Before anything runs, every run's config is resolved and every folder that already holds a
commit is checked against it (:func:`vaelab.runs.train.check_resume`): a misspelled key, an
unknown component or a changed setting is one line naming the cell, and nothing starts. Then
each run is one of (:func:`plan`)

* **finished**: its commit reached ``train.epochs`` or stopped early (and, with ``--evaluate``,
  ``eval.json`` is there) — skipped, nothing is touched;
* **resume**: a commit short of that — ``vaelab train ... --resume`` continues it (a run killed
  mid-epoch continues from its last committed epoch, bit for bit);
* **new**: no commit — trained from scratch;
* **busy**: another live process holds the folder's lock — not started, reported.

``DIR/sweep.json`` lists the cells, their overrides and their run folders (written atomically);
each run's output is ``DIR/logs/<cell>/seed<N>.log``. Runs go to local processes, ``--jobs N``
at a time (each with ``train.num_threads = max(1, cores // N)`` unless the config or ``--set``
gives it), or through submitit (:func:`submitit_executor`): Slurm, or submitit's own local
executor. SIGINT/SIGTERM stop the sweep: running cells stop at a step boundary (their last
epoch is committed) and the same command continues them.

Example::

    vaelab sweep experiments/configs/gaussian_mnist.toml --out runs/sweep --seeds 3 --jobs 2 \
        --grid 'model.prior=["standard_normal", "vamp"]' \
        --grid 'objective.name=["trace", "iwae_dreg"]'
    vaelab compare runs/sweep --csv runs/sweep/table.csv --plots runs/sweep/plots
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = [
    "Cell",
    "Outcome",
    "RunSpec",
    "SlurmOptions",
    "cell_name",
    "execute",
    "expand",
    "parse_grid",
    "plan",
    "run_sweep",
    "toml_literal",
]

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


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - platforms without affinity
        return os.cpu_count() or 1


def _sets_threads(config: Path, overrides: list[str], grid: dict[str, list[Any]]) -> bool:
    """Whether the user gives ``train.num_threads`` (in the file, a ``--set`` or a grid)."""
    from vaelab.resolve import load_raw

    given = {o.split("=", 1)[0].strip() for o in overrides} | set(grid)
    return "train.num_threads" in given or "num_threads" in load_raw(config).get("train", {})


def _state(run: RunSpec, cfg, evaluate: bool) -> tuple[str, int, str]:
    """``(state, epochs committed, reason)`` of ``run``'s folder for the resolved ``cfg``."""
    from vaelab.runs.checkpoint import CorruptCheckpointError
    from vaelab.runs.folder import RunFolderBusy, RunLock, latest_commit
    from vaelab.runs.train import Progress, check_resume

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


# --------------------------------------------------------------------------------------------
# running


@dataclass
class Outcome:
    """How one run ended: its exit code (negative: killed by that signal; None: the job
    itself failed), the line that says why, and its wall time."""

    rc: int | None
    line: str
    seconds: float

    @property
    def ok(self) -> bool:
        return self.rc == 0


def _why(log: Path, rc: int | None) -> str:
    """The line of ``log`` that says how the run ended: ``vaelab train``'s one error line, else
    the last line (a traceback's exception), else the signal that killed it."""
    try:
        lines = [line.strip() for line in log.read_text(errors="replace").splitlines()
                 if line.strip()]
    except OSError:
        lines = []
    if rc == 0:
        done = [line for line in lines if line.startswith("best epoch")]
        return done[-1] if done else "done"
    if rc is not None and rc < 0:
        return f"killed by {signal.Signals(-rc).name}"
    ours = [line for line in lines if line.startswith("vaelab train")]
    return (ours or lines or [f"exit status {rc}"])[-1]


def execute(run: RunSpec) -> Outcome:
    """Run ``run`` to its end in a child process (what a submitit job calls), its output in
    ``run.log``."""
    child = _Process(run)
    child.proc.wait()
    return child.outcome()


#: torchrun's variables: a run of a sweep is one process, even when the sweep runs under torchrun
_TORCHRUN_ENV = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "GROUP_RANK",
                 "ROLE_RANK", "MASTER_ADDR", "MASTER_PORT")


def _child_env(run: RunSpec) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if k not in _TORCHRUN_ENV and not k.startswith("TORCHELASTIC_")}
    return {**env, **run.env}


class _Process:
    """A run in a local child process."""

    def __init__(self, run: RunSpec):
        run.log.parent.mkdir(parents=True, exist_ok=True)
        self.run, self.t0 = run, time.perf_counter()
        with open(run.log, "wb") as log:
            self.proc = subprocess.Popen(run.argv(), stdout=log, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, env=_child_env(run))

    def done(self) -> bool:
        return self.proc.poll() is not None

    def outcome(self) -> Outcome:
        rc = self.proc.returncode
        return Outcome(rc, _why(self.run.log, rc), time.perf_counter() - self.t0)

    def stop(self, signum: int) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signum)


class _Job:
    """A run submitted through submitit (its job calls :func:`execute`)."""

    def __init__(self, executor, run: RunSpec):
        self.run, self.t0 = run, time.perf_counter()
        self.job = executor.submit(execute, run)

    def done(self) -> bool:
        return self.job.done()

    def outcome(self) -> Outcome:
        try:
            return self.job.result()
        except Exception as err:  # noqa: BLE001 - the job itself failed: say how, go on
            last = [s for s in str(err).splitlines() if s.strip()] or [type(err).__name__]
            return Outcome(None, f"job {self.job.job_id} failed: {last[-1].strip()}",
                           time.perf_counter() - self.t0)

    def stop(self, signum: int) -> None:
        self.job.cancel(check=False)


@dataclass
class SlurmOptions:
    """What ``--executor slurm`` asks Slurm for, per run (submitit's parameters)."""

    partition: str | None = None
    time_min: int = 60
    cpus: int = 1
    gpus: int = 0
    mem_gb: float | None = None
    account: str | None = None
    qos: str | None = None
    #: shell lines run before each job (``module load ...``, ``source .venv/bin/activate``)
    setup: list[str] = field(default_factory=list)


def parse_minutes(text: str) -> int:
    """``90``, ``1:30`` (H:MM) or ``1:30:00`` (H:MM:SS) as whole minutes (at least 1)."""
    parts = text.strip().split(":")
    try:
        nums = [int(p) for p in parts]
    except ValueError:
        raise ValueError(f"--slurm-time: expected MINUTES, H:MM or H:MM:SS, got {text!r}") \
            from None
    if len(nums) == 1:
        minutes = nums[0]
    elif len(nums) in (2, 3):
        minutes = nums[0] * 60 + nums[1] + (1 if len(nums) == 3 and nums[2] else 0)
    else:
        raise ValueError(f"--slurm-time: expected MINUTES, H:MM or H:MM:SS, got {text!r}")
    if minutes < 1:
        raise ValueError(f"--slurm-time: must be at least a minute, got {text!r}")
    return minutes


def submitit_executor(out: Path, cluster: str, slurm: SlurmOptions, jobs: int):
    """A submitit executor writing under ``out/submitit``: ``cluster = "slurm"`` (sbatch) or
    ``"local"`` (submitit's LocalExecutor: its job processes on this machine).

    :raises ValueError: submitit is not installed, or ``slurm`` without ``sbatch``.
    """
    try:
        import submitit
    except ImportError:
        raise ValueError("the submitit executors need submitit: pip install "
                         "'vaelab[submitit]'") from None
    if cluster == "slurm" and shutil.which("sbatch") is None:
        raise ValueError("--executor slurm: sbatch is not on PATH (not a Slurm login node?); "
                         "use --executor local, or submitit-local to try the submitit path")
    executor = submitit.AutoExecutor(folder=out / "submitit", cluster=cluster)
    executor.update_parameters(
        name="vaelab-sweep", timeout_min=slurm.time_min, cpus_per_task=slurm.cpus,
        gpus_per_node=slurm.gpus or None, mem_gb=slurm.mem_gb, slurm_partition=slurm.partition,
        slurm_account=slurm.account, slurm_qos=slurm.qos, slurm_setup=slurm.setup or None,
        slurm_array_parallelism=jobs)
    return executor


def _say(text: str) -> None:
    print(text, flush=True)


def run_sweep(cells: list[Cell], *, jobs: int = 1, executor=None) -> dict[str, Any]:
    """Run every run of ``cells`` that is not finished or busy, ``jobs`` at a time.

    :param executor: a submitit executor (:func:`submitit_executor`); None: local processes.
    :returns: ``{"outcomes": {run label: Outcome}, "skipped": [...], "busy": [...],
        "not_started": [...], "signum": the stopping signal or None}``.
    """
    from vaelab.runs.folder import StopSignals

    runs = [r for c in cells for r in c.runs]
    todo = deque(r for r in runs if r.state in ("new", "resume"))
    skipped = [r for r in runs if r.state == "finished"]
    busy = [r for r in runs if r.state == "busy"]
    for r in skipped:
        _say(f"  {r.label}: finished ({r.epochs_done} epochs), skipped")
    for r in busy:
        _say(f"  {r.label}: not started: {r.reason}")
    total, started = len(todo), 0
    running: list[Any] = []
    outcomes: dict[str, Outcome] = {}
    forwarded = False
    with StopSignals() as stop:
        while todo or running:
            if stop.signum is not None and not forwarded:
                forwarded = True
                _say(f"stopping: {signal.Signals(stop.signum).name}; the running cells stop at "
                     "a step boundary, their last epoch committed")
                for handle in running:
                    handle.stop(stop.signum)
            while todo and len(running) < jobs and stop.signum is None:
                run = todo.popleft()
                started += 1
                how = f"resuming from epoch {run.epochs_done}" if run.state == "resume" \
                    else "training"
                _say(f"[{started}/{total}] {run.label}: {how}")
                running.append(_Process(run) if executor is None else _Job(executor, run))
            for handle in [h for h in running if h.done()]:
                running.remove(handle)
                o = outcomes[handle.run.label] = handle.outcome()
                stopped = stop.signum is not None and o.rc in (128 + stop.signum, -stop.signum)
                status = "done" if o.ok else "stopped" if stopped else f"FAILED (exit {o.rc})"
                _say(f"  {handle.run.label}: {status} in {o.seconds:.0f}s: {o.line}")
            time.sleep(0.1 if running else 0)
    return {"outcomes": outcomes, "skipped": skipped, "busy": busy,
            "not_started": list(todo), "signum": stop.signum}


def sweep(
    config: str | Path,
    out: str | Path,
    grid_items: list[str],
    *,
    seeds: int = 1,
    overrides: list[str] | tuple[str, ...] = (),
    jobs: int | None = None,
    executor: str = "local",
    evaluate: bool = False,
    slurm: SlurmOptions | None = None,
    dry_run: bool = False,
) -> int:
    """``vaelab sweep``: plan, write the manifest, run, report; returns the exit status (0: every
    run finished; 1: some failed or were busy; 128 + N: stopped by signal N).

    :param grid_items: the ``--grid KEY=[...]`` strings (:func:`parse_grid`).
    :param jobs: runs at a time (default: 1 locally, every run through Slurm).
    :param executor: ``local`` (child processes), ``slurm`` or ``submitit-local`` (submitit).
    :param dry_run: print the plan and write nothing.
    :raises ConfigError: a bad grid or cell config (nothing has run).
    :raises ValueError: submitit is missing for a submitit executor.
    """
    grid, out = parse_grid(grid_items), Path(out)
    slurm = slurm or SlurmOptions()
    if jobs is not None and jobs < 1:
        raise ValueError(f"--jobs must be at least 1, got {jobs}")
    if executor == "slurm":
        threads = slurm.cpus
    else:
        jobs = jobs or 1
        threads = max(1, _cores() // jobs)
    cells = plan(config, out, grid, seeds=seeds, overrides=overrides, threads=threads,
                 evaluate=evaluate)
    runs = [r for c in cells for r in c.runs]
    jobs = jobs or len(runs)
    sub = None if executor == "local" or dry_run else submitit_executor(
        out, "slurm" if executor == "slurm" else "local", slurm, jobs)
    counts = {s: sum(r.state == s for r in runs) for s in STATES}
    _say(f"sweep {out}: {len(cells)} cell(s) x {seeds} seed(s) = {len(runs)} run(s): "
         + ", ".join(f"{n} {s}" for s, n in counts.items() if n)
         + (f"; {jobs} at a time ({executor})" if not dry_run else ""))
    if dry_run:
        for r in runs:
            _say(f"  {r.label}: {r.state}" + (f" ({r.epochs_done} epochs)" if r.epochs_done
                                               else ""))
        return 0
    out.mkdir(parents=True, exist_ok=True)
    write_manifest(out, Path(config).absolute(), grid, seeds, list(overrides), cells)
    result = run_sweep(cells, jobs=jobs, executor=sub)
    signum = result["signum"]
    stopped = {128 + signum, -signum} if signum is not None else set()
    failed = [(label, o) for label, o in result["outcomes"].items()
              if not o.ok and o.rc not in stopped]
    done = sum(o.ok for o in result["outcomes"].values())
    _say(f"sweep {out}: {done} run(s) trained, {len(result['skipped'])} already finished, "
         f"{len(failed)} failed, {len(result['busy'])} busy"
         + (f", {len(result['not_started'])} not started" if result["not_started"] else "")
         + (f", {len(result['outcomes']) - done - len(failed)} stopped" if stopped else ""))
    for label, o in failed:
        print(f"vaelab sweep: failed: {label}: {o.line} (log: {out / 'logs' / label}.log)",
              file=sys.stderr)
    if signum is not None:
        print(f"vaelab sweep: stopped by {signal.Signals(signum).name}; run the same command "
              "again to continue", file=sys.stderr)
        return 128 + signum
    if failed or result["busy"]:
        return 1
    _say(f"table: vaelab compare {out}")
    return 0
