r"""The run folder as a small database: one commit per epoch, a lock, repair after a crash.

Layout::

    DIR/.lock                   owner (pid, host, start time) of the exclusive flock
    DIR/config.toml             the resolved config (a view of the checkpoint's)
    DIR/checkpoints/last.pt     THE commit record: parameters, optimizer, RNG states, progress,
                                history and the best epoch's parameters, with a SHA-256
    DIR/checkpoints/prev.pt     the commit before it (fallback when last.pt is damaged)
    DIR/checkpoints/best.pt     view: the best epoch's parameters
    DIR/metrics.jsonl           view: one row per epoch
    DIR/report.md, *.png        view: written when a command finishes

**Commit.** An epoch is committed by one atomic rename of a fully written, fsynced
``last.pt``; before it, the old ``last.pt`` is hard-linked to ``prev.pt``, so at every instant
``last.pt`` is a complete commit and ``prev.pt`` the one before. ``best.pt`` and ``metrics.jsonl``
are written after the commit and are derived from it: a crash between the renames leaves them
one epoch behind, and :func:`repair` (run on every resume) rewrites them from the commit, and
removes temporary files a killed writer left behind. Readers (``vaelab evaluate`` while a run
trains) take no lock: they read whole files that are only ever replaced by rename, and
:func:`best_state` prefers the commit's own copy of the best parameters when ``best.pt`` lags.

**Lock.** A writer holds ``fcntl.flock(DIR/.lock, LOCK_EX)`` for its lifetime; the kernel drops it
when the process dies, so a lock file left by a killed process is stale by construction and is
taken over (its previous owner is reported). A second writer is refused with one line.
"""

from __future__ import annotations

import errno
import fcntl
import os
import signal
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vaelab.notes import note
from vaelab.runs.checkpoint import (
    TMP_SUFFIX,
    CorruptCheckpointError,
    fsync_dir,
    load_checkpoint,
    save_checkpoint,
    write_jsonl,
)

__all__ = [
    "Interrupted",
    "LinkInRunFolder",
    "RunFolderBusy",
    "RunLock",
    "StopSignals",
    "best_state",
    "commit",
    "fault_point",
    "latest_commit",
    "refuse_link",
    "remove_temporaries",
    "repair",
]

LOCK_NAME = ".lock"
#: ``VAELAB_FAULT=NAME`` or ``NAME@N`` makes the process SIGKILL itself at the first (N-th)
#: time it reaches the fault point NAME (fault-injection tests; a no-op otherwise);
#: ``NAME@N:SIGTERM`` (any signal's name) sends itself that signal instead, and goes on
FAULT_ENV = "VAELAB_FAULT"
_fault_hits: dict[str, int] = {}


class RunFolderBusy(RuntimeError):
    """Another process holds the run folder's lock."""


class Interrupted(Exception):
    """Training stopped on SIGINT/SIGTERM at a step boundary; the folder holds the last commit."""

    def __init__(self, signum: int, epoch: int, step: int, committed_epoch: int):
        self.signum, self.epoch, self.step = signum, epoch, step
        self.committed_epoch = committed_epoch
        name = signal.Signals(signum).name
        super().__init__(f"interrupted by {name} at epoch {epoch}, step {step}")

    @property
    def exit_code(self) -> int:
        return 128 + self.signum  # 130 for SIGINT, 143 for SIGTERM


def fault_point(name: str) -> None:
    """SIGKILL this process here when ``$VAELAB_FAULT`` names this point (fault-injection tests
    kill a real process at the exact dangerous moment; a no-op otherwise). With a signal's name
    after a colon (``after-commit@2:SIGTERM``), that signal is sent instead: the handler that
    runs is the process's own, as for a signal from outside arriving at this moment."""
    spec = os.environ.get(FAULT_ENV)
    if not spec:
        return
    spec, _, signame = spec.partition(":")
    target, _, nth = spec.partition("@")
    if target != name:
        return
    _fault_hits[name] = _fault_hits.get(name, 0) + 1
    if _fault_hits[name] == int(nth or 1):
        os.kill(os.getpid(), signal.Signals[signame] if signame else signal.SIGKILL)


# --------------------------------------------------------------------------------------------
# the lock


class RunLock:
    """Exclusive ``flock`` on ``DIR/.lock`` holding the owner's pid, host and start time.

    :raises RunFolderBusy: another live process holds it.
    """

    def __init__(self, run_dir: Path):
        self.path = Path(run_dir) / LOCK_NAME
        self._fd: int | None = None
        self.stale_owner: str | None = None

    def acquire(self) -> RunLock:
        refuse_link(self.path)
        try:  # never through a link: one placed here would truncate its target
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o644)
        except OSError as err:
            if err.errno == errno.ELOOP:
                refuse_link(self.path, force=True)
            raise
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            owner = _read_owner(fd)
            os.close(fd)
            raise _busy(self.path, owner) from None
        self.stale_owner = _read_owner(fd) or None  # a dead owner's record
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()} on host {socket.gethostname()} since "
                      f"{time.strftime('%Y-%m-%d %H:%M:%S')}\n".encode(), 0)
        self._fd = fd
        return self

    @staticmethod
    def check_free(run_dir: Path) -> None:
        """Raise :class:`RunFolderBusy` now if a live process holds ``run_dir``'s lock (a
        read-only look: nothing is created)."""
        path = Path(run_dir) / LOCK_NAME
        try:
            fd = os.open(path, os.O_RDONLY)
        except OSError:
            return
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            fcntl.flock(fd, fcntl.LOCK_UN)
        except BlockingIOError:
            raise _busy(path, _read_owner(fd)) from None
        finally:
            os.close(fd)

    def release(self) -> None:
        if self._fd is not None:
            os.ftruncate(self._fd, 0)
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


class LinkInRunFolder(ValueError):
    """A file vaelab would write inside a run folder is a symbolic link: writing through it
    would change a file outside the folder (an archive unpacked from elsewhere can hold one)."""


def refuse_link(path: Path, force: bool = False) -> None:
    """Raise :class:`LinkInRunFolder` if ``path`` is a symbolic link (``force``: it was one
    when it was opened), naming the link and its target."""
    path = Path(path)
    if force or path.is_symlink():
        try:
            target = os.readlink(path)
        except OSError:
            target = "?"
        raise LinkInRunFolder(
            f"{str(path)!r} is a symbolic link (to {target!r}); vaelab never writes through a "
            "link inside a run folder: remove the link, or copy the folder without links")


def _busy(lock_path: Path, owner: str) -> RunFolderBusy:
    return RunFolderBusy(
        f"run folder {str(lock_path.parent)!r} is in use by {owner or 'another process'}; "
        "wait for it to finish, or choose another --out"
    )


def _read_owner(fd: int) -> str:
    return os.pread(fd, 512, 0).decode(errors="replace").strip()


# --------------------------------------------------------------------------------------------
# signals


class StopSignals:
    """Turn SIGINT/SIGTERM into a request to stop at the next step boundary.

    The handler only records the signal, so a checkpoint being written is finished (it is
    atomic anyway); :meth:`check` raises :class:`Interrupted` between steps. A second SIGINT
    stops at once (the folder still holds the last commit). Installed only in the main thread.
    """

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self):
        self.signum: int | None = None
        self._old: dict[int, Any] = {}

    def _handle(self, signum, frame) -> None:
        if self.signum is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.signum = signum

    def __enter__(self) -> StopSignals:
        import threading

        if threading.current_thread() is threading.main_thread():
            for s in self.SIGNALS:
                self._old[s] = signal.signal(s, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for s, old in self._old.items():
            signal.signal(s, old)
        self._old.clear()

    def check(self, epoch: int, step: int, committed_epoch: int) -> None:
        if self.signum is not None:
            raise Interrupted(self.signum, epoch, step, committed_epoch)


# --------------------------------------------------------------------------------------------
# commit, read, repair


def _paths(run_dir: Path) -> tuple[Path, Path, Path]:
    ck = Path(run_dir) / "checkpoints"
    return ck / "last.pt", ck / "prev.pt", ck / "best.pt"


#: the name of a commit written in full but not yet renamed into place as ``last.pt``
PENDING_NAME = f".last.pt.commit{TMP_SUFFIX}"


def commit(run_dir: Path, state: dict, best_changed: bool) -> None:
    """Commit one epoch: ``state`` (everything resume needs, ``best_model`` included) is written
    in full as :data:`PENDING_NAME`, the commit before it is renamed ``prev.pt``, and the new one
    ``last.pt``; then the views. ``prev.pt`` and ``last.pt`` are always two files (never two
    names of one), so damage to one leaves the other; a crash between the two renames leaves
    ``prev.pt`` and the complete pending commit."""
    last, prev, best = _paths(run_dir)
    pending = last.with_name(PENDING_NAME)
    save_checkpoint(pending, state)
    fault_point("before-commit")
    if last.exists():
        os.replace(last, prev)
        fault_point("between-renames")
    os.replace(pending, last)
    fsync_dir(last.parent)
    fault_point("after-commit")
    write_views(run_dir, state, best_changed)


def write_views(run_dir: Path, state: dict, write_best: bool = True) -> None:
    """``best.pt`` and ``metrics.jsonl`` from a commit record."""
    _, _, best = _paths(run_dir)
    if write_best and "best_model" in state and state.get("best_epoch") is not None:
        save_checkpoint(best, {"config": state["config"], "model": state["best_model"],
                               "epoch": state["best_epoch"] - 1})
        fault_point("after-best")
    write_jsonl(Path(run_dir) / "metrics.jsonl", state["history"])


@dataclass
class Commit:
    path: Path
    state: dict
    #: damaged newer files passed over to reach this one, as messages
    skipped: list[str]


def latest_commit(run_dir: Path) -> Commit | None:
    """The newest intact commit (``last.pt``, else ``prev.pt``), or None when there is none.

    :raises CorruptCheckpointError: every commit file present is damaged.
    """
    last, prev, _ = _paths(run_dir)
    skipped: list[str] = []
    for path in (last, prev):
        if not path.is_file():
            continue
        try:
            return Commit(path, load_checkpoint(path), skipped)
        except CorruptCheckpointError as err:
            skipped.append(str(err))
    pending = last.with_name(PENDING_NAME)
    if skipped and pending.is_file():  # every commit file is damaged: a complete, checksummed
        try:                           # commit that was never renamed into place is the newest
            return Commit(pending, load_checkpoint(pending), skipped)
        except CorruptCheckpointError as err:
            skipped.append(str(err))
    if skipped:
        raise CorruptCheckpointError("; ".join(skipped) + "; no intact checkpoint is left")
    return None


def _recover_pending(run_dir: Path) -> None:
    """Rename an intact pending commit into place as ``last.pt`` when it is the only intact
    commit left (call it holding the lock, before temporaries are deleted)."""
    last, _, _ = _paths(run_dir)
    pending = last.with_name(PENDING_NAME)
    if not pending.is_file():
        return
    try:
        c = latest_commit(run_dir)
    except CorruptCheckpointError:
        return
    if c is not None and c.path == pending:
        os.replace(pending, last)
        fsync_dir(last.parent)
        note(f"{'; '.join(c.skipped)}; recovered last.pt (epoch {c.state['epoch'] + 1}) from "
             f"{PENDING_NAME}, a complete commit a crash left before its rename")


def remove_temporaries(run_dir: Path) -> list[Path]:
    """Delete ``.*.tmp`` files a killed writer left in the folder (call it holding the lock),
    after recovering a complete pending commit when it is the only intact one
    (:func:`latest_commit`)."""
    _recover_pending(run_dir)
    removed = []
    for folder in (Path(run_dir), Path(run_dir) / "checkpoints"):
        if folder.is_dir():
            for p in folder.glob(f".*{TMP_SUFFIX}"):
                p.unlink(missing_ok=True)
                removed.append(p)
    return removed


def repair(run_dir: Path, c: Commit) -> list[str]:
    """Make the views agree with commit ``c`` (call it holding the lock); returns what it did."""
    done = [f"{m}; resuming from {c.path.name} (epoch {c.state['epoch'] + 1})" for m in c.skipped]
    last, _, best = _paths(run_dir)
    if c.path != last:
        save_checkpoint(last, c.state)
        done.append(f"restored {last.name} from {c.path.name}")
    s = c.state
    best_ok = True
    if "best_model" in s and s.get("best_epoch") is not None:
        try:
            b = load_checkpoint(best)
            best_ok = b["epoch"] == s["best_epoch"] - 1
        except (FileNotFoundError, CorruptCheckpointError):
            best_ok = False
    history_ok = _read_history(run_dir) == s["history"]
    if not (best_ok and history_ok):
        write_views(run_dir, s, write_best=not best_ok)
        done.append("rewrote " + " and ".join(
            n for n, ok in (("best.pt", best_ok), ("metrics.jsonl", history_ok)) if not ok)
            + f" from {c.path.name}")
    return done


def _read_history(run_dir: Path) -> list[dict] | None:
    from vaelab.runs.checkpoint import read_metrics

    try:
        return read_metrics(run_dir)
    except ValueError:  # a damaged metrics.jsonl
        return None


def best_state(run_dir: Path) -> dict[str, Any]:
    """The best epoch's ``{config, model, epoch}`` for readers: ``best.pt`` when it agrees with
    the newest commit, else the commit's own copy (a crash or a running writer left ``best.pt``
    behind), with a note on stderr."""
    _, _, best = _paths(run_dir)
    try:
        c = latest_commit(run_dir)
    except CorruptCheckpointError:
        c = None
    try:
        b = load_checkpoint(best)
    except (FileNotFoundError, CorruptCheckpointError) as err:
        if c is None or "best_model" not in c.state:
            raise
        b = None
        reason = str(err)
    if c is not None and "best_model" in c.state and c.state.get("best_epoch") is not None:
        want = c.state["best_epoch"] - 1
        if b is None or b["epoch"] != want:
            if b is not None:
                reason = f"best.pt holds epoch {b['epoch'] + 1}, the run's best is {want + 1}"
            note(f"{reason}; using the best parameters stored in {c.path.name} "
                 "(vaelab train ... --resume repairs the folder)")
            return {"config": c.state["config"], "model": c.state["best_model"], "epoch": want}
    if b is None:  # unreachable: a missing best.pt without a commit's copy raised above
        raise FileNotFoundError(f"no best checkpoint in {str(run_dir)!r}")
    return b
