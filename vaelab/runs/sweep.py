r"""Sweeps: a grid of configs × seeds, every cell an ordinary, resumable run folder.

``vaelab sweep CONFIG --grid KEY=[V1, V2, ...] ... --seeds S --out DIR`` runs the cross product
of the grids, each point (a *cell*) with seeds ``train.seed + 0 .. S - 1``, as run folders
``DIR/<cell>/seed<N>`` written by ``vaelab train`` itself (one process per run, so a crash in one
cell leaves the others running). A grid value is a TOML array parsed like a ``--set`` value
(:func:`~vaelab.resolve.parse_value`), so a value may itself be a list or a table:
``--grid 'model.hidden_sizes=[[200], [400, 400]]'``,
``--grid 'model.prior=["standard_normal", {name = "mog", components = 10}]'``.

Before anything runs, every run's config is resolved and every folder that already holds a
commit is checked against it (:func:`vaelab.runs.resume.check_resume`): a misspelled key, an
unknown component or a changed setting is one line naming the cell, and nothing starts. Then
each run is one of (:func:`vaelab.runs.grid.plan`)

* **finished**: its commit reached ``train.epochs`` or stopped early (and, with ``--evaluate``,
  ``eval.json`` is there) — skipped, nothing is touched;
* **resume**: a commit short of that — ``vaelab train ... --resume`` continues it (a run killed
  mid-epoch continues from its last committed epoch, bit for bit);
* **new**: no commit — trained from scratch;
* **busy**: another live process holds the folder's lock — not started, reported.

Each run's state is found again just before it starts: two sweeps on one folder share the work
(:mod:`vaelab.runs.executors`). A run another sweep is running is waited for, then reported
"done by another process" (or resumed, if that sweep stopped short), never FAILED; only the
sweep that runs a run writes its log.

``DIR/sweep.json`` lists the cells, their overrides and their run folders (written atomically);
each run's output is ``DIR/logs/<cell>/seed<N>.log``. Runs go to local processes, ``--jobs N``
at a time (each with ``train.num_threads = max(1, cores // N)`` unless the config or ``--set``
gives it), or through submitit (:func:`~vaelab.runs.executors.submitit_executor`): Slurm, or
submitit's own local executor. SIGINT/SIGTERM stop the sweep: running cells stop at a step
boundary (their last epoch is committed) and the same command continues them.

This module is the command, :func:`sweep`; the plan is :mod:`vaelab.runs.grid`, the running
:mod:`vaelab.runs.executors`.

Example::

    vaelab sweep experiments/configs/gaussian_mnist.toml --out runs/sweep --seeds 3 --jobs 2 \
        --grid 'model.prior=["standard_normal", "vamp"]' \
        --grid 'objective.name=["trace", "iwae_dreg"]'
    vaelab compare runs/sweep --csv runs/sweep/table.csv --plots runs/sweep/plots
"""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

from vaelab.runs.executors import (
    Outcome,
    SlurmOptions,
    execute,
    parse_minutes,
    run_sweep,
    say,
    submitit_executor,
)
from vaelab.runs.grid import (
    STATES,
    Cell,
    RunSpec,
    cell_name,
    expand,
    parse_grid,
    plan,
    toml_literal,
    write_manifest,
)

# the plan (vaelab.runs.grid) and its executors (vaelab.runs.executors) are named here too
__all__ = [
    "Cell",
    "Outcome",
    "RunSpec",
    "SlurmOptions",
    "cell_name",
    "execute",
    "expand",
    "parse_grid",
    "parse_minutes",
    "plan",
    "run_sweep",
    "sweep",
    "toml_literal",
]


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - platforms without affinity
        return os.cpu_count() or 1


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
    say(f"sweep {out}: {len(cells)} cell(s) x {seeds} seed(s) = {len(runs)} run(s): "
         + ", ".join(f"{n} {s}" for s, n in counts.items() if n)
         + (f"; {jobs} at a time ({executor})" if not dry_run else ""))
    if dry_run:
        for r in runs:
            say(f"  {r.label}: {r.state}" + (f" ({r.epochs_done} epochs)" if r.epochs_done
                                               else ""))
        return 0
    out.mkdir(parents=True, exist_ok=True)
    write_manifest(out, Path(config).absolute(), grid, seeds, list(overrides), cells)
    return _report(out, run_sweep(cells, jobs=jobs, executor=sub))


def _report(out: Path, result: dict) -> int:
    """The sweep's last lines (and a line per failed run on stderr); its exit status."""
    signum = result["signum"]
    stopped = {128 + signum, -signum} if signum is not None else set()
    failed = [(label, o) for label, o in result["outcomes"].items()
              if not o.ok and o.rc not in stopped]
    done = sum(o.ok for o in result["outcomes"].values())
    elsewhere = len(result["elsewhere"])
    say(f"sweep {out}: {done} run(s) trained, {len(result['skipped'])} already finished, "
         + (f"{elsewhere} trained by another process, " if elsewhere else "")
         + f"{len(failed)} failed, {len(result['busy'])} busy"
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
    say(f"table: vaelab compare {out}")
    return 0
