r"""The training loop: SVI semantics, exact resume, a function that reads top to bottom.

Each step is what :meth:`pyro.infer.SVI.step` does — ``objective.loss_and_grads(model, guide,
x)`` then an optimizer step — with two drivers (``train.driver``, see :class:`Stepper`):

* ``torch`` (default): one ``torch.optim.Adam`` over all parameters (one fused update instead of
  ``pyro.optim``'s optimizer per tensor, which costs a third of Pyro's per-step overhead);
* ``svi``: literally ``pyro.infer.SVI(model, guide, pyro.optim.Adam, loss=objective)``.

Both give the same parameters (tested). Per epoch: the validation ELBO, ``metrics.jsonl``, an
atomic ``checkpoints/last.pt`` (networks, optimizer, RNG states, epoch, resolved config) and
``checkpoints/best.pt`` at the best validation ELBO; optional early stopping and KL warm-up
(β from 0 to ``objective.beta`` over ``train.warmup_epochs``, scaling the latent site of both the
model and the guide). ``resume=True`` continues from ``last.pt`` to the same result as an
uninterrupted run: batch order and preprocessing noise come from generators seeded by
(seed, epoch), and the global RNG state is restored.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyro
import torch
from tqdm.auto import tqdm

from vaelab.config import ConfigError, RunConfig, TrainConfig, dump_toml, to_dict
from vaelab.data import DataSplits, Preprocessor, load_dataset
from vaelab.data.batching import batch_indices
from vaelab.data.subsets import subset_indices
from vaelab.devices import deterministic, resolve_device, to_device
from vaelab.runs.checkpoint import atomic_write_text, load_checkpoint
from vaelab.runs.data_parallel import DataParallel, GlobalBatch, data_parallel
from vaelab.inference.marginal import estimate_marginal
from vaelab.inference.numerics import flush_denormals
from vaelab.inference.objectives import build_objective
from vaelab.inference.objectives._jit import TensorArgsMixin, compiled_matches_eager
from vaelab.runs.folder import (
    Commit,
    RunLock,
    StopSignals,
    best_state,
    commit,
    latest_commit,
    remove_temporaries,
    repair,
)
from vaelab.notes import note
from vaelab.resolve import resolve
from vaelab.runs.run import Run
from vaelab.seed import derived_generator, get_rng_state, seed_all, set_rng_state
from vaelab.runs.tracking import Tracking
from vaelab.vae import VAE, build_vae

__all__ = [
    "NonFiniteLossError",
    "Progress",
    "Stepper",
    "TrainResult",
    "kl_weight",
    "train",
]


class NonFiniteLossError(FloatingPointError):
    """The loss or the gradient norm became NaN/inf; the last good checkpoint is left intact."""


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

    def state_dict(self) -> dict:
        # the keys of checkpoints written by vaelab 0.1.0, so that old runs resume
        return {"epoch": self.epoch - 1, "step": self.step, "history": self.history,
                "best_valid_elbo": self.best_valid_elbo, "best_epoch": self.best_epoch,
                "stale_epochs": self.stale_epochs}

    @classmethod
    def from_state_dict(cls, state: dict) -> Progress:
        return cls(state["epoch"] + 1, state["step"], state["history"], state["best_valid_elbo"],
                   state["best_epoch"], state["stale_epochs"])


class Stepper:
    """One SVI step with either driver: ``torch`` (objective + one fused Adam) or ``svi``;
    with ``parallel`` (:mod:`vaelab.runs.data_parallel`), the ``torch`` driver's loss and
    gradients over the processes of a torchrun job, with per-point draws."""

    svi: pyro.infer.SVI | None
    optimizer: torch.optim.Adam | None

    def __init__(self, tc: TrainConfig, vae: VAE, objective, eager=None,
                 parallel: DataParallel | None = None):
        self.vae, self.objective, self.clip_norm = vae, objective, tc.clip_norm
        self.parallel = parallel
        if parallel is not None:
            assert eager is None, "no compiled objective with DataParallel"
            parallel.attach(vae, objective)
        #: a compiled objective's eager twin, for steps at β = 0 (there the eager model drops
        #: the latent site: no gradient at all for the prior, so Adam skips it, which a
        #: compiled graph, scaling by a tensor β, cannot do) and for a last batch smaller than
        #: ``train.batch_size`` (a compiled graph has one batch size)
        self.eager = eager
        self.batch_size = tc.batch_size
        self.params = list(vae.parameters())
        self.svi, self.optimizer = None, None
        self.tc, self.normalize_grads = tc, tc.optimizer == "adam_normgrad"
        device = next(vae.parameters()).device
        #: steps between read-backs of the losses (``train.sync_every``); above 1 the loss stays
        #: on the device and a non-finite step is skipped there (Adam's ``found_inf``)
        self.sync_every = tc.sync_every or (50 if device.type == "cuda" else 1)
        self.steps = 0  #: steps taken by this stepper (since it was made)
        betas = (tc.adam_betas[0], tc.adam_betas[1])
        adam = {"lr": tc.lr, "betas": betas, "eps": tc.adam_eps}
        if tc.driver == "svi":
            if tc.optimizer != "adam" or tc.lr_schedule != "constant":
                raise ConfigError(
                    f"train.driver = 'svi' steps pyro.optim.Adam at a constant rate; "
                    f"train.optimizer = {tc.optimizer!r} and train.lr_schedule = "
                    f"{tc.lr_schedule!r} need train.driver = 'torch'")
            # pyro.optim's wrappers are made at import time, invisible to mypy
            optim = pyro.optim.Adam(adam)  # type: ignore[attr-defined]
            self.svi = pyro.infer.SVI(vae.model, vae.guide, optim, loss=objective)
        else:
            self.optimizer = torch.optim.Adam(self.params, lr=tc.lr, betas=betas, eps=tc.adam_eps,
                                              fused=True)

    def set_lr(self, epoch: int, step: int) -> float:
        """Set the learning rate of the step about to be taken (:func:`learning_rate`)."""
        lr = learning_rate(self.tc, epoch, step)
        if self.optimizer is not None:
            for group in self.optimizer.param_groups:
                group["lr"] = lr
        return lr

    @property
    def is_main(self) -> bool:
        """Whether this process writes, logs and prints (one process, or rank 0)."""
        return self.parallel is None or self.parallel.is_main

    def batches(self, x_train: torch.Tensor, pre: Preprocessor, epoch: int,
                device: torch.device) -> Iterator[tuple[torch.Tensor, GlobalBatch]]:
        """Epoch ``epoch``'s batches, shuffled by (seed, epoch): ``x (B, D)`` on ``device``,
        preprocessed (one generator per epoch), and its :class:`GlobalBatch`; with
        ``parallel``, this process's share of each (:meth:`DataParallel.batches`)."""
        if self.parallel is not None:
            yield from self.parallel.batches(x_train, pre, epoch, device)
            return
        tc = self.tc
        noise = derived_generator(tc.seed, epoch, 1)
        for idx in batch_indices(x_train.shape[0], tc.batch_size, shuffle=True, seed=tc.seed,
                                 epoch=epoch):
            x = x_train[to_device(idx, x_train.device)]  # (B, D)
            yield to_device(pre.train_batch(x, noise), device), GlobalBatch(epoch, idx)

    def step(self, x: torch.Tensor, beta, temperature, batch: GlobalBatch | None = None
             ) -> tuple[float | torch.Tensor, float | torch.Tensor | None]:
        """Gradient step on ``x (B, D)`` (with ``parallel``: this process's share of
        ``batch``); returns (loss, gradient norm or None), the loss of the whole batch: floats,
        or with :attr:`sync_every` > 1 scalar tensors still on the device where the objective
        can leave them there (``loss_and_grads_deferred``). Nothing is updated when either is
        non-finite."""
        if self.optimizer is None:
            assert self.svi is not None
            return self.svi.step(x, beta, temperature), None
        objective = self.objective
        if self.eager is not None and (isinstance(beta, (int, float)) and beta == 0.0
                                       or x.shape[0] != self.batch_size):
            objective = self.eager
        deferred = getattr(objective, "loss_and_grads_deferred", None)
        loss: float | torch.Tensor
        self.steps += 1
        if self.parallel is not None:
            assert batch is not None, "a data-parallel step needs its GlobalBatch"
            # the same steps on every process read back (and share their stop requests)
            loss = self.parallel.loss_and_grads(x, beta, temperature, batch,
                                                read=self.steps % self.sync_every == 0)
        elif deferred is not None and self.sync_every > 1:
            loss = deferred(self.vae.model, self.vae.guide, x, beta, temperature)
        else:
            loss = objective.loss_and_grads(self.vae.model, self.vae.guide, x, beta,
                                            temperature)
        norm: torch.Tensor | None = None
        if self.normalize_grads:
            grads = [p.grad for p in self.params if p.grad is not None]
            norms = torch._foreach_norm(grads)
            torch._foreach_div_(grads, torch._foreach_add(norms, 1e-7))
        if self.clip_norm > 0:
            norm = torch.nn.utils.clip_grad_norm_(self.params, self.clip_norm, foreach=True)
        # without clipping only the loss is checked: a NaN gradient makes the next loss NaN
        if isinstance(loss, torch.Tensor):  # on the device: the fused Adam skips a bad step
            bad = ~torch.isfinite(loss)
            if norm is not None:
                bad = bad | ~torch.isfinite(norm)
            self.optimizer.found_inf = bad.float()  # type: ignore[attr-defined]
            self.optimizer.step()
            self.optimizer.found_inf = None  # type: ignore[attr-defined]
            self.optimizer.zero_grad(set_to_none=True)
            return loss, norm
        grad_norm = None if norm is None else float(norm)
        if math.isfinite(loss) and (grad_norm is None or math.isfinite(grad_norm)):
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return loss, grad_norm

    def state_dict(self) -> dict:
        if self.optimizer is not None:
            return self.optimizer.state_dict()
        assert self.svi is not None
        return self.svi.optim.get_state()

    def load_state_dict(self, state: dict) -> None:
        if self.optimizer is not None:
            self.optimizer.load_state_dict(state)
        else:
            assert self.svi is not None
            self.svi.optim.set_state(state)


@dataclass
class TrainResult:
    """What :func:`train` built and reached; :meth:`run` hands it to evaluation unrebuilt."""

    out_dir: Path
    cfg: RunConfig
    vae: VAE
    data: DataSplits
    pre: Preprocessor
    history: list[dict] = field(default_factory=list)
    best_epoch: int | None = None
    best_valid_elbo: float = -math.inf

    def run(self, checkpoint: str = "best"):
        """The trained run as a :class:`vaelab.runs.run.Run`, its ``checkpoint`` loaded into this
        VAE in place (no second build, no second data load)."""
        if checkpoint == "best":
            state = best_state(self.out_dir)
        else:
            last = latest_commit(self.out_dir)
            if last is None:
                raise FileNotFoundError(f"no checkpoint in {str(self.out_dir)!r}")
            state = last.state
        self.vae.load_state_dict(state["model"])
        self.vae.eval()
        return Run(self.out_dir, self.cfg, self.vae, self.data, self.pre, state["epoch"])


def learning_rate(tc: TrainConfig, epoch: int, step: int) -> float:
    r"""The learning rate at global step ``step`` of 0-based ``epoch`` (``train.lr_schedule``).

    * ``constant``: :math:`\eta`;
    * ``exponential``: :math:`\eta \, d^{\lfloor t / M \rfloor}` with d = ``lr_decay``, M =
      ``lr_every`` (Jang et al. 2017's notebook: d = 0.9, M = 1000);
    * ``iwae``: stage :math:`i = 1, 2, \ldots` covers epochs :math:`[\sum_{j<i} 3^{j-1},
      \sum_{j \le i} 3^{j-1})` at :math:`\eta \cdot \mathrm{round}(10^{1-(i-1)/7}, 1) / 10`
      (Burda et al. 2016, Sec. 5: 1e-3 · 10^{-(i-1)/7} over 3^{i-1} passes, i = 1..8).
    """
    if tc.lr_schedule == "exponential":
        return tc.lr * tc.lr_decay ** (step // tc.lr_every)
    if tc.lr_schedule == "iwae":
        i = iwae_stage(epoch)
        return tc.lr * round(10 ** (1 - (i - 1) / 7), 1) / 10
    return tc.lr


def iwae_stage(epoch: int) -> int:
    """The 1-based stage of Burda et al.'s schedule that 0-based ``epoch`` falls in (stage i
    lasts 3^(i−1) epochs; stages past 8 stay at the last rate)."""
    i, end = 1, 1
    while epoch >= end and i < 8:
        i += 1
        end += 3 ** (i - 1)
    return i


def kl_weight(epoch: int, step_in_epoch: int, steps_per_epoch: int, warmup_epochs: int,
              beta: float) -> float:
    """β at a step: linear from 0 to ``beta`` over ``warmup_epochs`` epochs, then constant."""
    if warmup_epochs <= 0:
        return beta
    t = (epoch + step_in_epoch / max(1, steps_per_epoch)) / warmup_epochs
    return beta if t >= 1.0 else beta * t


# --------------------------------------------------------------------------------------------
# the pieces of train(), in the order it calls them


def _config_changes(saved: dict, new: dict) -> list[str]:
    """Dotted keys whose values differ, ignoring :data:`RESUMABLE_KEYS` and the [eval] section."""
    out = []
    for section in saved.keys() | new.keys():
        if section in ("eval", "version", "plugins"):
            continue
        a, b = saved.get(section, {}), new.get(section, {})
        for key in a.keys() | b.keys():
            name = f"{section}.{key}"
            if not _resumable(name) and a.get(key) != b.get(key):
                out.append(name)
    return sorted(out)


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


def _best_model(saved: Commit, out: Path) -> dict | None:
    """The best epoch's parameters of the commit resumed from (a checkpoint of vaelab 0.1.0
    keeps them only in ``best.pt``)."""
    if "best_model" in saved.state:
        return saved.state["best_model"]
    try:
        best = load_checkpoint(out / "checkpoints" / "best.pt")
    except (FileNotFoundError, ValueError):
        return None
    return best["model"] if best["epoch"] == saved.state["best_epoch"] - 1 else None


def choose_objective(cfg: RunConfig, vae: VAE, data: DataSplits, pre: Preprocessor,
                     parallel: DataParallel | None = None) -> tuple[Any, Any]:
    """The objective to train with and, when it is compiled, its eager twin: ``objective.jit =
    "auto"`` compiles where allowed, then checks the compiled loss against the eager one on a
    fixed first batch (else eager, noted); with ``parallel``, eager
    (:meth:`DataParallel.objective_config`: never the JIT with DDP or per-point draws)."""
    if parallel is not None:
        cfg = cfg.model_copy(update={"objective": parallel.objective_config(cfg.objective)})
    objective = build_objective(cfg.objective, vae, 1 if parallel is None else parallel.world.size)
    if cfg.objective.jit is False or not isinstance(objective, TensorArgsMixin):
        return objective, None
    tc = cfg.train
    eager = build_objective(cfg.objective.model_copy(update={"jit": False}), vae)
    x = pre.eval_batch(data.train[: tc.batch_size], derived_generator(tc.seed, 2))
    x = x.to(next(vae.parameters()).device)  # (B, D)
    tau = vae.latent.temperature_at(0)
    argsets = [(x, 1.0, tau)] if tau is not None else [(x,), (x, 0.5)]
    if compiled_matches_eager(objective, eager, vae, argsets) or cfg.objective.jit is True:
        return objective, eager
    note("objective.jit = 'auto': eager, the compiled loss differs from the eager one on the "
         "first batch")
    return eager, None


def check_splits(vae: VAE, pre: Preprocessor, data: DataSplits, x_valid: torch.Tensor) -> None:
    """Refuse, before anything is written, empty splits and data the likelihood cannot score:
    a sample of the training split and every validation point that will be scored."""
    for name, n in (("training", data.train.shape[0]), ("validation", x_valid.shape[0])):
        if n == 0:
            raise ValueError(
                f"data: the {name} split is empty; training needs both (set "
                "data.valid_fraction > 0 for a data set without a validation split)"
            )
    likelihood = vae.generative.likelihood
    likelihood.check_data(pre.eval_batch(data.train[:2000], derived_generator(0)))
    likelihood.check_data(x_valid, key="model.likelihood (on the validation split)")


def validation_points(data: DataSplits, pre: Preprocessor, cfg: RunConfig) -> torch.Tensor:
    """``train.valid_limit`` points of the validation split (``data.subset`` rule), with one
    fixed draw of preprocessing noise for every epoch."""
    idx = subset_indices(data.valid.shape[0], cfg.train.valid_limit, cfg.data.subset)
    return pre.eval_split(data.valid[idx], cfg.train.seed)


def _last_good(progress: Progress) -> str:
    if progress.epoch == 0:
        return "no epoch was committed, so nothing is saved"
    return f"the last good checkpoint is checkpoints/last.pt (epoch {progress.epoch})"


def _diverged(loss: float, scale: float, grad_norm: float | None, batch: int, tc: TrainConfig,
              epoch: int, step: int, progress: Progress) -> str | None:
    """Why the run must stop after this step's loss, or None."""
    if not (math.isfinite(loss) and (grad_norm is None or math.isfinite(grad_norm))):
        what = "loss" if not math.isfinite(loss) else "gradient"
        return (f"non-finite {what} (loss={loss}, grad norm={grad_norm}) at epoch {epoch + 1}, "
                f"step {step}; {_last_good(progress)}. Try a lower train.lr, "
                "train.clip_norm > 0, or a likelihood scale floor")
    per_point = abs(loss) / batch
    if tc.divergence > 0 and per_point > tc.divergence * max(scale, 1.0):
        return (f"training diverged at epoch {epoch + 1}, step {step}: the loss per point "
                f"{per_point:.4g} is over {tc.divergence:g}x its running scale {scale:.4g} "
                f"(train.divergence); {_last_good(progress)}. Try a lower train.lr or "
                "train.clip_norm > 0")
    return None


class StepLosses:
    """An epoch's step losses, read back to the host every ``sync_every`` steps (one
    synchronisation for all of them) and then checked, summed, shown and handed to the trackers
    in step order.

    :raises NonFiniteLossError: from :meth:`add` and :meth:`settle`, at the first step whose
        loss or gradient is non-finite or whose loss explodes (``train.divergence``).
    """

    def __init__(self, cfg: RunConfig, progress: Progress, tracking: Tracking, bar, every: int):
        self.tc, self.progress, self.tracking, self.bar = cfg.train, progress, tracking, bar
        self.every = every
        #: steps not yet read back: (step, loss, grad norm, points, β, τ, learning rate)
        self.pending: list[tuple] = []
        self.scale: float | None = None  # running loss per point
        self.total, self.count, self.shown = 0.0, 0, 0

    def add(self, step: int, loss, grad_norm, points: int, beta, tau, lr: float) -> None:
        self.pending.append((step, loss, grad_norm, points, beta, tau, lr))
        if len(self.pending) >= self.every:
            self.settle()

    def settle(self) -> None:
        """Read the pending losses back and account for them."""
        if not self.pending:
            return
        values = _on_host([v for p in self.pending for v in p[1:3]])
        tc, epoch = self.tc, self.progress.epoch
        for j, (step, _, _, n, beta, tau, lr) in enumerate(self.pending):
            loss, grad_norm = values[2 * j], values[2 * j + 1]
            scale = abs(loss) / n if self.scale is None else self.scale
            why = _diverged(loss, scale, grad_norm, n, tc, epoch, step - 1, self.progress)
            if why is not None:
                self.pending = []
                raise NonFiniteLossError(why)
            self.scale = 0.9 * scale + 0.1 * abs(loss) / n
            self.total, self.count = self.total + loss, self.count + n
            self.tracking.step(step, loss, n, beta, tau, lr)
            if step - self.shown >= 20 or self.shown == 0:
                self.bar.set_postfix(loss=f"{loss / n:.2f}", beta=f"{float(beta):.2f}",
                                     lr=f"{lr:.2g}")
                self.shown = step
        self.pending = []


def _on_host(values: list) -> list:
    """``values`` (floats, ``None`` and scalar tensors) with the tensors read back as floats,
    all in one transfer."""
    tensors = [v.double().reshape(()) for v in values if isinstance(v, torch.Tensor)]
    if not tensors:
        return values
    read = iter(torch.stack(tensors).tolist())
    return [next(read) if isinstance(v, torch.Tensor) else v for v in values]


def train_epoch(vae: VAE, stepper: Stepper, x_train: torch.Tensor, pre: Preprocessor,
                cfg: RunConfig, progress: Progress, device: torch.device, stop: StopSignals,
                tracking: Tracking) -> dict:
    """One pass over the (seeded, shuffled) training split ``x_train (N, D)``; returns the
    epoch's metrics row. The step losses are read back every ``stepper.sync_every`` steps
    (:class:`StepLosses`), and handed to ``tracking`` (:meth:`~vaelab.runs.tracking.Tracking.step`).

    :raises NonFiniteLossError: a non-finite loss or gradient, or a loss that explodes against
        its running scale (``train.divergence``).
    :raises Interrupted: SIGINT/SIGTERM arrived (checked between steps).
    """
    tc, epoch, step = cfg.train, progress.epoch, progress.step
    n_batches = math.ceil(x_train.shape[0] / tc.batch_size)
    if tc.max_steps_per_epoch:
        n_batches = min(n_batches, tc.max_steps_per_epoch)
    batches = stepper.batches(x_train, pre, epoch, device)
    bar = tqdm(batches, total=n_batches, desc=f"epoch {epoch + 1}/{tc.epochs}", leave=False,
               disable=not (tc.progress and stepper.is_main), unit="step")
    vae.train()
    t0 = time.perf_counter()
    losses = StepLosses(cfg, progress, tracking, bar, stepper.sync_every)
    try:
        for i, (x, batch) in enumerate(bar):
            if i >= n_batches:
                break
            stop.check(epoch + 1, step, progress.epoch)
            beta = kl_weight(epoch, i, n_batches, tc.warmup_epochs, cfg.objective.beta)
            lr = stepper.set_lr(epoch, step)
            tau = vae.latent.temperature_at(step)
            loss, grad_norm = stepper.step(x, beta, tau, batch)
            step += 1
            # batch.size: the points of the (global) batch; x holds this process's share
            losses.add(step, loss, grad_norm, batch.size, beta, tau, lr)
        losses.settle()
    finally:
        bar.close()
    temperature = vae.latent.temperature_at(step)
    return {
        "epoch": epoch + 1,
        "step": step,
        "train_loss": losses.total / max(1, losses.count),
        "beta": float(kl_weight(epoch + 1, 0, 1, tc.warmup_epochs, cfg.objective.beta)),
        "temperature": None if temperature is None else float(temperature),
        "epoch_time": time.perf_counter() - t0,
    }


@torch.no_grad()
def validate(vae: VAE, x_valid: torch.Tensor, cfg: RunConfig, device: torch.device,
             parallel: DataParallel | None = None, epoch: int = 0) -> dict[str, float]:
    r"""The validation scores of an epoch, means over the validation points (hard latents for
    discrete models), from K = ``train.valid_particles`` draws
    :math:`z_k \sim q_\phi(z \mid x)` per point with log weights
    :math:`\log w_k = \log p_\theta(x, z_k) - \log q_\phi(z_k \mid x)`:

    * ``valid_elbo``: :math:`\frac1K \sum_k \log w_k`, an unbiased ELBO estimate (K = 1: the
      single-draw ELBO);
    * with K > 1, ``valid_bound``: :math:`\log \frac1K \sum_k w_k`, the K-sample
      importance-weighted bound (Burda et al. 2016, eq. 8).

    With ``parallel``, in blocks shared among the processes, block b seeded by (seed,
    ``epoch``, b) (:meth:`DataParallel.blockwise`: the same numbers whatever the world size).
    """
    if x_valid.shape[0] == 0:
        return {"valid_elbo": float("nan")}
    vae.eval()
    model, guide = vae.eval_pair()
    batch_size = max(cfg.train.batch_size, 500)
    K = cfg.train.valid_particles

    def scores(x: torch.Tensor) -> torch.Tensor:  # (b, D) -> (b, 2): ELBO, K-sample bound
        est = estimate_marginal(model, guide, x, num_samples=K, batch_size=batch_size,
                                device=device, diagnostics=False)
        return torch.stack([est.elbo, est.log_px], dim=1)

    values = (scores(x_valid) if parallel is None
              else parallel.blockwise(scores, x_valid, batch_size, epoch)).mean(0)
    row = {"valid_elbo": float(values[0])}
    if K > 1:
        row["valid_bound"] = float(values[1])
    return row


def save_epoch(out: Path, cfg: RunConfig, vae: VAE, stepper: Stepper, progress: Progress,
               best_model: dict, is_best: bool) -> None:
    """Commit the epoch (:func:`vaelab.runs.folder.commit`): ``last.pt`` holds
    everything resume, ``best.pt`` and ``metrics.jsonl`` need, the best parameters included."""
    model = vae.state_dict()
    if not all(bool(t.isfinite().all()) for t in model.values() if t.is_floating_point()):
        raise NonFiniteLossError(
            f"non-finite parameters after epoch {progress.epoch}; {_last_good(progress)}. "
            "Try a lower train.lr or train.clip_norm > 0")
    state = {"config": to_dict(cfg), "model": model, "optimizer": stepper.state_dict(),
             "rng": get_rng_state(), **progress.state_dict(), "best_model": best_model}
    commit(out, state, is_best)


# --------------------------------------------------------------------------------------------


def train(
    cfg: RunConfig,
    out_dir: str | Path,
    *,
    resume: bool = False,
    data: DataSplits | None = None,
) -> TrainResult:
    """Train the VAE described by ``cfg``, writing everything into ``out_dir``.

    :param cfg: a resolved :class:`~vaelab.config.RunConfig` (see :func:`vaelab.load_config`).
    :param out_dir: the run folder: ``config.toml``, ``metrics.jsonl``, ``checkpoints/``.
    :param resume: continue from ``out_dir/checkpoints/last.pt``.
    :param data: preloaded :class:`~vaelab.data.DataSplits` (else ``cfg.data`` is loaded).
    :returns: :class:`TrainResult` with the trained VAE (last epoch's parameters) and its data.

    Example::

        cfg = load_config("experiments/configs/gaussian_mnist.toml", ["train.epochs=2"])
        result = train(cfg, "runs/demo")
    """
    out, tc = Path(out_dir), cfg.train
    device = resolve_device(tc.device)
    # torchrun (or train.per_point_noise): data-parallel; rank 0 alone reads, writes and logs
    parallel = data_parallel(cfg, device)
    main = parallel is None or parallel.is_main
    if main:
        check_folder(out, cfg, resume)  # early and read-only: fail before loading anything
    tracking = Tracking.for_run(cfg, out) if main else Tracking(cfg.log, out, cfg, [])
    torch.set_num_threads(tc.num_threads or torch.get_num_threads())
    pyro.clear_param_store()
    seed_all(tc.seed)

    data = data if data is not None else load_dataset(cfg.data)
    pre = Preprocessor(cfg.data, data)
    vae = build_vae(cfg, data.train.shape[1], data.shape).to(device)
    if cfg.model.output_bias == "data_mean":
        vae.init_output_bias(data.train)
    x_valid = validation_points(data, pre, cfg)
    check_splits(vae, pre, data, x_valid)
    x_train, x_valid = (to_device(t, device) if tc.resident else t for t in (data.train, x_valid))
    # the tracker is opened here only: by the process that holds the run folder's lock
    with writing(out, cfg, resume) if main else nullcontext() as saved, StopSignals() as stop, \
            pyro.validation_enabled(tc.pyro_validation), flush_denormals(tc.flush_denormal), \
            deterministic(tc.deterministic), tracking.training(saved):
        if parallel is not None:  # rank 0's commit and the stop requests, on every process
            saved, stop = parallel.share_commit(saved), parallel.shared_stop(stop)
        stepper = Stepper(tc, vae, *choose_objective(cfg, vae, data, pre, parallel), parallel)
        progress, best_model = Progress(), None
        if saved is not None:
            vae.load_state_dict(saved.state["model"])
            stepper.load_state_dict(saved.state["optimizer"])
            progress = Progress.from_state_dict(saved.state)
            best_model = _best_model(saved, out)
            set_rng_state(saved.state["rng"])
        if main:
            atomic_write_text(out / "config.toml", dump_toml(cfg))

        while progress.epoch < tc.epochs and not progress.should_stop(tc.patience):
            row = train_epoch(vae, stepper, x_train, pre, cfg, progress, device, stop, tracking)
            row |= validate(vae, x_valid, cfg, device, parallel, progress.epoch)
            if not math.isfinite(valid_score(row)):
                raise NonFiniteLossError(
                    f"non-finite validation score ({valid_score(row)}) after epoch "
                    f"{row['epoch']}; {_last_good(progress)}")
            stop.check(row["epoch"], row["step"], progress.epoch)
            in_warmup = row["epoch"] < tc.warmup_epochs
            is_best = progress.record(_ordered(row), tc.patience_counts_warmup or not in_warmup)
            if is_best or best_model is None:
                best_model = {k: v.detach().clone() for k, v in vae.state_dict().items()}
            if main:
                save_epoch(out, cfg, vae, stepper, progress, best_model, is_best)
            tracking.epoch(row)
            if tc.progress and main:
                tqdm.write(_epoch_line(row))
    if parallel is not None:
        parallel.barrier()  # rank 0's last commit is on disk before any process reads it
    return TrainResult(out, cfg, vae, data, pre, progress.history, progress.best_epoch,
                       progress.best_valid_elbo)


_ROW_KEYS = ("epoch", "step", "train_loss", "valid_elbo", "valid_bound", "beta", "temperature",
             "epoch_time")


def _ordered(row: dict[str, Any]) -> dict[str, Any]:
    """The metrics row in the column order of ``metrics.jsonl`` (``valid_bound`` only where
    ``train.valid_particles`` > 1)."""
    return {k: row[k] for k in _ROW_KEYS if k in row}


def _epoch_line(row: dict[str, Any]) -> str:
    """The progress line of a finished epoch."""
    bound = f", valid bound {row['valid_bound']:.2f}" if "valid_bound" in row else ""
    return (f"epoch {row['epoch']}: train -ELBO {row['train_loss']:.2f}, valid ELBO "
            f"{row['valid_elbo']:.2f}{bound}, {row['epoch_time']:.1f}s")
