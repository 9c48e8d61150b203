"""Running a sweep's runs: local child processes, or jobs through submitit (Slurm, or
submitit's own local executor).

Each run is ``python -m vaelab train ...`` (:meth:`~vaelab.runs.grid.RunSpec.argv`), its output
in ``DIR/logs/<cell>/seed<N>.log``; :func:`run_sweep` starts them ``jobs`` at a time, reports
each as it ends (:class:`Outcome`, the line of its log that says why), and on SIGINT/SIGTERM
forwards the signal, so that the running cells stop at a step boundary with their last epoch
committed. :func:`submitit_executor` builds the submitit executor from :class:`SlurmOptions`;
a submitit job calls :func:`execute`.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vaelab.runs.grid import Cell, RunSpec

__all__ = ["Outcome", "SlurmOptions", "execute", "parse_minutes", "run_sweep",
           "submitit_executor"]

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


def say(text: str) -> None:
    """A line of the sweep's report, printed at once."""
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
        say(f"  {r.label}: finished ({r.epochs_done} epochs), skipped")
    for r in busy:
        say(f"  {r.label}: not started: {r.reason}")
    total, started = len(todo), 0
    running: list[Any] = []
    outcomes: dict[str, Outcome] = {}
    forwarded = False
    with StopSignals() as stop:
        while todo or running:
            if stop.signum is not None and not forwarded:
                forwarded = True
                say(f"stopping: {signal.Signals(stop.signum).name}; the running cells stop at "
                     "a step boundary, their last epoch committed")
                for handle in running:
                    handle.stop(stop.signum)
            while todo and len(running) < jobs and stop.signum is None:
                run = todo.popleft()
                started += 1
                how = f"resuming from epoch {run.epochs_done}" if run.state == "resume" \
                    else "training"
                say(f"[{started}/{total}] {run.label}: {how}")
                running.append(_Process(run) if executor is None else _Job(executor, run))
            for handle in [h for h in running if h.done()]:
                running.remove(handle)
                o = outcomes[handle.run.label] = handle.outcome()
                stopped = stop.signum is not None and o.rc in (128 + stop.signum, -stop.signum)
                status = "done" if o.ok else "stopped" if stopped else f"FAILED (exit {o.rc})"
                say(f"  {handle.run.label}: {status} in {o.seconds:.0f}s: {o.line}")
            time.sleep(0.1 if running else 0)
    return {"outcomes": outcomes, "skipped": skipped, "busy": busy,
            "not_started": list(todo), "signum": stop.signum}
