"""Resuming a run folder: where a run stands, and whether (and how) training may write it.

:class:`Progress` is what a checkpoint restores besides parameters, optimizer and RNG states
(the next epoch, the step, the metrics rows, the best validation score and early stopping's
count). :func:`check_resume` refuses a fresh run into a folder that holds one, and a resumed run
whose config differs from the saved one outside :data:`RESUMABLE_KEYS` and ``[eval]``;
:func:`writing` holds the folder's lock while training writes it, repairs what a killed writer
left, and yields the commit to resume from (:mod:`vaelab.runs.folder`).
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vaelab.config import RunConfig, to_dict
from vaelab.notes import note
from vaelab.resolve import resolve
from vaelab.runs.checkpoint import load_checkpoint
from vaelab.runs.folder import (
    Commit,
    RunLock,
    latest_commit,
    remove_temporaries,
    repair,
)

__all__ = ["RESUMABLE_KEYS", "Progress", "check_folder", "check_resume", "saved_best_model",
           "settings_digest", "trained_settings", "valid_score", "writing"]

#: settings that may change when a run is resumed (extend it, watch it, run it elsewhere, log
#: it); ``section.*`` stands for every key of a section
RESUMABLE_KEYS = ("train.epochs", "train.patience", "train.progress", "train.num_threads",
                  "train.device", "train.sync_every", "train.resident", "log.*")


def valid_score(row: dict) -> float:
    """The validation score of a metrics row that picks the best epoch and drives early
    stopping: ``valid_bound`` where the run has one (``train.valid_particles`` > 1), else
    ``valid_elbo``."""
    return row.get("valid_bound", row["valid_elbo"])


@dataclass
class Progress:
    """Where a run stands: what a checkpoint restores besides parameters and RNG states."""

    epoch: int = 0  #: the next epoch to run (0-based)
    step: int = 0
    history: list[dict] = field(default_factory=list)
    #: the best :func:`valid_score` so far (the checkpoints' key name, kept from when the
    #: score was always the ELBO)
    best_valid_elbo: float = -math.inf
    best_epoch: int | None = None  #: 1-based
    stale_epochs: int = 0

    def should_stop(self, patience: int) -> bool:
        """Early stopping: ``patience`` epochs without a better validation score."""
        return self.best_epoch is not None and patience > 0 and self.stale_epochs >= patience

    def record(self, row: dict, count_stale: bool = True) -> bool:
        """Append an epoch's metrics; returns whether it is the new best epoch.

        :param count_stale: ``False`` restarts the patience count at this epoch even when it is
            not an improvement (warm-up epochs, ``train.patience_counts_warmup = false``).
        """
        self.history.append(row)
        self.epoch, self.step = row["epoch"], row["step"]
        valid = valid_score(row)
        improved = math.isfinite(valid) and valid > self.best_valid_elbo
        if improved or self.best_epoch is None:
            self.best_valid_elbo = valid if improved else self.best_valid_elbo
            self.best_epoch, self.stale_epochs = row["epoch"], 0
            return True
        self.stale_epochs = self.stale_epochs + 1 if count_stale else 0
        return False

    def last_good(self) -> str:
        """Where the last good checkpoint is, for the message of a run that must stop."""
        if self.epoch == 0:
            return "no epoch was committed, so nothing is saved"
        return f"the last good checkpoint is checkpoints/last.pt (epoch {self.epoch})"

    def state_dict(self) -> dict:
        # the keys of checkpoints written by vaelab 0.1.0, so that old runs resume
        return {"epoch": self.epoch - 1, "step": self.step, "history": self.history,
                "best_valid_elbo": self.best_valid_elbo, "best_epoch": self.best_epoch,
                "stale_epochs": self.stale_epochs}

    @classmethod
    def from_state_dict(cls, state: dict) -> Progress:
        return cls(state["epoch"] + 1, state["step"], state["history"], state["best_valid_elbo"],
                   state["best_epoch"], state["stale_epochs"])


def trained_settings(cfg: dict) -> dict[str, Any]:
    """The settings of a config (:func:`~vaelab.config.to_dict`) that decide what its training
    computes, as dotted key → value: every key but :data:`RESUMABLE_KEYS` and the [eval]
    section, i.e. what a resumed run may not change."""
    return {f"{section}.{key}": value
            for section, table in cfg.items() if section not in ("eval", "version", "plugins")
            for key, value in table.items() if not _resumable(f"{section}.{key}")}


def settings_digest(cfg: RunConfig) -> str:
    """SHA-256 of :func:`trained_settings`: equal for two configs that train the same run (a
    grid member recorded in one session is recognised in another)."""
    text = json.dumps(trained_settings(to_dict(cfg)), sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def _config_changes(saved: dict, new: dict) -> list[str]:
    """Dotted keys whose values differ, ignoring :data:`RESUMABLE_KEYS` and the [eval] section."""
    a, b = trained_settings(saved), trained_settings(new)
    return sorted(k for k in a.keys() | b.keys() if a.get(k) != b.get(k))


def _resumable(name: str) -> bool:
    """Whether dotted key ``name`` is one of :data:`RESUMABLE_KEYS` (or in a ``section.*``)."""
    return any(name == k or (k.endswith(".*") and name.startswith(k[:-1]))
               for k in RESUMABLE_KEYS)


def check_resume(cfg: RunConfig, c: Commit | None, out: Path, resume: bool) -> None:
    """Whether ``out`` may be written: a fresh run needs a folder without a commit; a resumed
    one, a commit whose config (read at its saved version) equals ``cfg`` up to
    :data:`RESUMABLE_KEYS` and ``[eval]``."""
    if not resume:
        if c is not None:
            raise FileExistsError(
                f"{str(out)!r} already holds a run; pass --resume to continue it or choose "
                "another --out"
            )
        return
    if c is None:
        raise FileNotFoundError(f"--resume: no checkpoint in {str(out / 'checkpoints')!r}")
    changed = _config_changes(to_dict(resolve(c.state["config"], saved=True)), to_dict(cfg))
    if changed:
        raise ValueError(
            f"--resume: the config differs from the one saved in {str(c.path)!r} in "
            f"{', '.join(changed)} (only {', '.join(RESUMABLE_KEYS)} and [eval] may change); "
            "resume with the saved config: vaelab train DIR/config.toml --out DIR --resume"
        )


def check_folder(out: Path, cfg: RunConfig, resume: bool) -> None:
    """Refuse, reading only, a run folder another process holds (:class:`RunLock`) or one that
    :func:`check_resume` refuses."""
    RunLock.check_free(out)
    check_resume(cfg, latest_commit(out), out, resume)


@contextmanager
def writing(out: Path, cfg: RunConfig, resume: bool) -> Iterator[Commit | None]:
    """Hold ``out``'s lock while training writes it; yield the commit to resume from.

    Under the lock: temporary files a killed writer left are removed, the newest intact commit
    is found (a damaged ``last.pt`` falls back to ``prev.pt``, saying so) and the views are
    repaired from it. A fresh run that fails or is interrupted before its first commit leaves
    nothing behind: what it created is removed.
    """
    created = not out.exists()
    out.mkdir(parents=True, exist_ok=True)
    lock = RunLock(out).acquire()
    start = None
    try:
        if lock.stale_owner:
            note(f"took over the lock of {lock.stale_owner} (no longer running)")
        for p in remove_temporaries(out):
            note(f"removed {p.name}, a partial write of a killed run")
        start = latest_commit(out)
        check_resume(cfg, start, out, resume)
        for message in repair(out, start) if start is not None else []:
            note(message)
        yield start
    except BaseException:
        if start is None and _safe_latest(out) is None:  # nothing was ever committed here
            _remove_fresh_run(out, created)
        raise
    finally:
        lock.release()


def _safe_latest(out: Path) -> Commit | None | bool:
    try:
        return latest_commit(out)
    except ValueError:
        return True  # damaged commits: not ours to remove


def _remove_fresh_run(out: Path, created: bool) -> None:
    """Remove what a fresh run wrote before its first commit."""
    for name in ("config.toml", "metrics.jsonl", ".lock"):
        (out / name).unlink(missing_ok=True)
    for folder in ([out / "checkpoints"] + ([out] if created else [])):
        try:
            folder.rmdir()
        except OSError:
            pass  # not empty (or gone): leave it


def saved_best_model(saved: Commit, out: Path) -> dict | None:
    """The best epoch's parameters of the commit resumed from (a checkpoint of vaelab 0.1.0
    keeps them only in ``best.pt``)."""
    if "best_model" in saved.state:
        return saved.state["best_model"]
    try:
        best = load_checkpoint(out / "checkpoints" / "best.pt")
    except (FileNotFoundError, ValueError):
        return None
    return best["model"] if best["epoch"] == saved.state["best_epoch"] - 1 else None

