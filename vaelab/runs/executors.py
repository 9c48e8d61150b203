"""Running a sweep's runs: local child processes, or jobs through submitit (Slurm, or
submitit's own local executor).

Each run is ``python -m vaelab train ...`` (:meth:`~vaelab.runs.grid.RunSpec.argv`), its output
in ``DIR/logs/<cell>/seed<N>.log``; :func:`run_sweep` starts them ``jobs`` at a time, reports
each as it ends (:class:`Outcome`, the line of its log that says why), and on SIGINT/SIGTERM
forwards the signal, so that the running cells stop at a step boundary with their last epoch
committed.

**Two sweeps on one folder.** A sweep claims a run before it starts it: an exclusive ``flock``
on the run's log, held until the run ends (its process holds it too). Only the holder truncates
and writes the log; a run another sweep holds is waited for, and its state is found again once
the claim is free (:func:`~vaelab.runs.grid.refresh`): a run the other sweep finished is
reported done by another process and skipped, one it left short is resumed.

:func:`submitit_executor` builds the submitit executor from :class:`SlurmOptions`; a submitit
job calls :func:`execute`.
"""

from __future__ import annotations

import fcntl
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


def _claim(log: Path) -> int | None:
    """This sweep's claim on a run: ``log`` opened (created, nothing truncated) under an
    exclusive ``flock``, or None when another sweep holds it (it is running the run)."""
    log.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    return fd


class _Process:
    """A run in a local child process, its output in the log ``claim`` holds (truncated here;
    None: a submitit job's, whose sweep holds the claim)."""

    def __init__(self, run: RunSpec, claim: int | None = None):
        self.run, self.t0, self.claim = run, time.perf_counter(), claim
        if claim is not None:
            os.ftruncate(claim, 0)
            self.proc = self._start(claim)
        else:
            run.log.parent.mkdir(parents=True, exist_ok=True)
            with open(run.log, "wb") as log:
                self.proc = self._start(log)

    def _start(self, log) -> subprocess.Popen:
        return subprocess.Popen(self.run.argv(), stdout=log, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, env=_child_env(self.run))

    def release(self) -> None:
        """Give up the claim on the run (once it has ended)."""
        if self.claim is not None:
            os.close(self.claim)
            self.claim = None

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

    def __init__(self, executor, run: RunSpec, claim: int):
        self.run, self.t0, self.claim = run, time.perf_counter(), claim
        os.ftruncate(claim, 0)
        self.job = executor.submit(execute, run)

    release = _Process.release

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


@dataclass
class _Book:
    """What became of the runs of :func:`run_sweep` that were not finished when planned."""

    todo: deque[RunSpec]
    #: runs another sweep holds (their log's claim), waited for
    waiting: list[RunSpec] = field(default_factory=list)
    #: runs another process finished while this sweep ran
    elsewhere: list[RunSpec] = field(default_factory=list)
    #: runs whose folder another process (not a sweep) holds
    busy: list[RunSpec] = field(default_factory=list)
    outcomes: dict[str, Outcome] = field(default_factory=dict)


def _ready(run: RunSpec, claim: int, book: _Book) -> bool:
    """Find the claimed ``run``'s state again (:func:`~vaelab.runs.grid.refresh`); False, the
    claim given up and the run reported, when there is nothing for this sweep to do."""
    from vaelab.registry import ConfigError
    from vaelab.runs.grid import refresh

    try:
        refresh(run)
    except ConfigError as err:
        book.outcomes[run.label] = Outcome(2, f"vaelab sweep: error: {err}", 0.0)
        say(f"  {run.label}: FAILED: {err}")
        run.state = "failed"
    if run.state in ("new", "resume"):
        return True
    os.close(claim)
    if run.state == "finished":
        book.elsewhere.append(run)
        say(f"  {run.label}: done by another process ({run.epochs_done} epochs), skipped")
    elif run.state == "busy":
        book.busy.append(run)
        say(f"  {run.label}: not started: {run.reason}")
    return False


def _next_run(book: _Book) -> tuple[RunSpec, int] | None:
    """The next run to start and this sweep's claim on it: runs waited for first, then those
    not tried yet, in the order planned; a run another sweep holds is set aside to wait."""
    for run in [*book.waiting, *book.todo]:
        claim = _claim(run.log)
        if claim is None:
            if run not in book.waiting:
                book.todo.remove(run)
                book.waiting.append(run)
                say(f"  {run.label}: another sweep is running it; waiting for it")
            continue
        (book.waiting if run in book.waiting else book.todo).remove(run)
        if _ready(run, claim, book):
            return run, claim
    return None


def run_sweep(cells: list[Cell], *, jobs: int = 1, executor=None) -> dict[str, Any]:
    """Run every run of ``cells`` that is not finished, ``jobs`` at a time; a run another
    sweep is running is waited for, one another process holds is not started.

    :param executor: a submitit executor (:func:`submitit_executor`); None: local processes.
    :returns: ``{"outcomes": {run label: Outcome}, "skipped": [...], "elsewhere": [...],
        "busy": [...], "not_started": [...], "signum": the stopping signal or None}``
        (``elsewhere``: runs another process finished while this sweep ran).
    """
    from vaelab.runs.folder import StopSignals

    runs = [r for c in cells for r in c.runs]
    book = _Book(deque(r for r in runs if r.state != "finished"))
    skipped = [r for r in runs if r.state == "finished"]
    for r in skipped:
        say(f"  {r.label}: finished ({r.epochs_done} epochs), skipped")
    total, started = len(book.todo), 0
    running: list[Any] = []
    forwarded = False
    with StopSignals() as stop:
        while book.todo or book.waiting or running:
            if stop.signum is not None and not running:
                break  # the runs not started stay so
            if stop.signum is not None and not forwarded:
                forwarded = True
                say(f"stopping: {signal.Signals(stop.signum).name}; the running cells stop at "
                    "a step boundary, their last epoch committed")
                for handle in running:
                    handle.stop(stop.signum)
            while len(running) < jobs and stop.signum is None and (nxt := _next_run(book)):
                run, claim = nxt
                started += 1
                how = f"resuming from epoch {run.epochs_done}" if run.state == "resume" \
                    else "training"
                say(f"[{started}/{total}] {run.label}: {how}")
                running.append(_Process(run, claim) if executor is None
                               else _Job(executor, run, claim))
            for handle in [h for h in running if h.done()]:
                running.remove(handle)
                handle.release()
                o = book.outcomes[handle.run.label] = handle.outcome()
                stopped = stop.signum is not None and o.rc in (128 + stop.signum, -stop.signum)
                status = "done" if o.ok else "stopped" if stopped else f"FAILED (exit {o.rc})"
                say(f"  {handle.run.label}: {status} in {o.seconds:.0f}s: {o.line}")
            time.sleep(0.1 if running or book.waiting else 0)
    return {"outcomes": book.outcomes, "skipped": skipped, "elsewhere": book.elsewhere,
            "busy": book.busy, "not_started": [*book.waiting, *book.todo],
            "signum": stop.signum}
