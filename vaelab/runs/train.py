r"""The training loop: SVI semantics, exact resume, a function that reads top to bottom.

Each step is what :meth:`pyro.infer.SVI.step` does — ``objective.loss_and_grads(model, guide,
x)`` then an optimizer step — on one torch optimizer over all parameters (``train.optimizer``)
(:class:`~vaelab.runs.stepper.Stepper`). Per epoch: the validation ELBO, ``metrics.jsonl``, an
atomic ``checkpoints/last.pt`` (networks, optimizer, RNG states, epoch, resolved config) and
``checkpoints/best.pt`` at the best validation ELBO; optional early stopping and KL warm-up
(β from 0 to ``objective.beta`` over ``train.warmup_epochs``, scaling the latent site of both the
model and the guide). ``resume=True`` continues from ``last.pt`` to the same result as an
uninterrupted run (:mod:`vaelab.runs.resume`): batch order and preprocessing noise come from
generators seeded by (seed, epoch), and the global RNG state is restored.
"""

from __future__ import annotations

import math
import sys
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyro
import torch
from tqdm.auto import tqdm

from vaelab.config import RunConfig, dump_toml, to_dict
from vaelab.data import DataSplits, Preprocessor, load_dataset
from vaelab.data.subsets import subset_indices
from vaelab.devices import deterministic, resolve_device, to_device
from vaelab.inference.marginal import estimate_marginal
from vaelab.inference.numerics import flush_denormals
from vaelab.inference.objectives import build_objective
from vaelab.inference.objectives._jit import TensorArgsMixin, compiled_matches_eager
from vaelab.notes import note
from vaelab.runs.checkpoint import atomic_write_text
from vaelab.runs.data_parallel import DataParallel, data_parallel
from vaelab.runs.folder import (
    Commit,
    Interrupted,
    StopSignals,
    best_state,
    commit,
    latest_commit,
)
from vaelab.runs.provenance import code_label
from vaelab.runs.resume import (
    Progress,
    check_folder,
    saved_best_model,
    valid_score,
    writing,
)
from vaelab.runs.run import Run
from vaelab.runs.stepper import NonFiniteLossError, StepLosses, Stepper, kl_weight
from vaelab.runs.tracking import Tracking
from vaelab.seed import derived_generator, get_rng_state, seed_all, set_rng_state
from vaelab.vae import VAE, build_vae

# NonFiniteLossError, Progress, Stepper and kl_weight live in vaelab.runs.stepper and
# vaelab.runs.resume; they are named here too, where they were before
__all__ = [
    "NonFiniteLossError",
    "Progress",
    "Stepper",
    "TrainResult",
    "kl_weight",
    "train",
]


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


# --------------------------------------------------------------------------------------------
# the pieces of train(), in the order it calls them


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
               disable=not (tc.progress and stepper.is_main and sys.stderr.isatty()),
               unit="step")
    vae.train()
    t0 = time.perf_counter()
    losses = StepLosses(cfg, progress, tracking, bar, stepper.sync_every)
    try:
        for i, (x, batch) in enumerate(bar):
            if i >= n_batches:
                break
            stop.check(epoch + 1, step, progress.epoch)
            beta = kl_weight(epoch, i, n_batches, tc.warmup_epochs, cfg.objective.beta,
                             tc.warmup_per)
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
        "beta": float(kl_weight(epoch + 1, 0, 1, tc.warmup_epochs, cfg.objective.beta)
                      if tc.warmup_per == "step" else
                      kl_weight(epoch, 0, 1, tc.warmup_epochs, cfg.objective.beta, "epoch")),
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
            f"non-finite parameters after epoch {progress.epoch}; {progress.last_good()}. "
            "Try a lower train.lr or train.clip_norm > 0")
    state = {"config": to_dict(cfg), "model": model, "optimizer": stepper.state_dict(),
             "rng": get_rng_state(), **progress.state_dict(), "best_model": best_model}
    commit(out, state, is_best)


def stop_if_requested(stop: StopSignals, progress: Progress) -> None:
    """After the last epoch's commit: a SIGINT/SIGTERM that arrived since the last step check
    (while the epoch was validated and committed) is a stop request all the same, so
    :class:`~vaelab.runs.folder.Interrupted` is raised and what follows training (the report,
    ``--evaluate``) does not run; the folder holds every epoch (``vaelab report`` makes the
    report later). Under torchrun (:class:`~vaelab.runs.data_parallel.SharedStop`, whose own
    ``signum`` stays None) this is a no-op on every process alike: a signal that arrives after
    the last step's shared check is not seen."""
    if stop.signum is not None:
        raise Interrupted(stop.signum, progress.epoch, progress.step, progress.epoch)


def restore(saved: Commit | None, out: Path, vae: VAE, stepper: Stepper
            ) -> tuple[Progress, dict | None]:
    """Load the commit resumed from (None: a fresh run) into ``vae`` and ``stepper``, and set
    the RNG states it saved; returns its :class:`~vaelab.runs.resume.Progress` and the best
    epoch's parameters (:func:`~vaelab.runs.resume.saved_best_model`)."""
    if saved is None:
        return Progress(), None
    vae.load_state_dict(saved.state["model"])
    stepper.load_state_dict(saved.state["optimizer"])
    progress = Progress.from_state_dict(saved.state)
    best_model = saved_best_model(saved, out)
    set_rng_state(saved.state["rng"])
    return progress, best_model


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
        progress, best_model = restore(saved, out, vae, stepper)
        if main:
            atomic_write_text(out / "config.toml", dump_toml(cfg))

        while progress.epoch < tc.epochs and not progress.should_stop(tc.patience):
            row = train_epoch(vae, stepper, x_train, pre, cfg, progress, device, stop, tracking)
            row |= validate(vae, x_valid, cfg, device, parallel, progress.epoch)
            if not math.isfinite(valid_score(row)):
                raise NonFiniteLossError(
                    f"non-finite validation score ({valid_score(row)}) after epoch "
                    f"{row['epoch']}; {progress.last_good()}")
            stop.check(row["epoch"], row["step"], progress.epoch)
            in_warmup = row["epoch"] < tc.warmup_epochs
            row["code"] = code_label()  # which code trained this epoch (a resume may change it)
            is_best = progress.record(_ordered(row), tc.patience_counts_warmup or not in_warmup)
            if is_best or best_model is None:
                best_model = {k: v.detach().clone() for k, v in vae.state_dict().items()}
            if main:
                save_epoch(out, cfg, vae, stepper, progress, best_model, is_best)
            tracking.epoch(row)
            if main:  # one line per epoch, bars or not
                tqdm.write(_epoch_line(row))
        stop_if_requested(stop, progress)  # a SIGTERM during the last commit stops the job
    stop_if_requested(stop, progress)  # ... and one while the trackers closed
    if parallel is not None:
        parallel.barrier()  # rank 0's last commit is on disk before any process reads it
    return TrainResult(out, cfg, vae, data, pre, progress.history, progress.best_epoch,
                       progress.best_valid_elbo)


_ROW_KEYS = ("epoch", "step", "train_loss", "valid_elbo", "valid_bound", "beta", "temperature",
             "epoch_time", "code")


def _ordered(row: dict[str, Any]) -> dict[str, Any]:
    """The metrics row in the column order of ``metrics.jsonl`` (``valid_bound`` only where
    ``train.valid_particles`` > 1)."""
    return {k: row[k] for k in _ROW_KEYS if k in row}


def _epoch_line(row: dict[str, Any]) -> str:
    """The progress line of a finished epoch."""
    bound = f", valid bound {row['valid_bound']:.2f}" if "valid_bound" in row else ""
    return (f"epoch {row['epoch']}: train -ELBO {row['train_loss']:.2f}, valid ELBO "
            f"{row['valid_elbo']:.2f}{bound}, {row['epoch_time']:.1f}s")
