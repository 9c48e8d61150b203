r"""One training step: :meth:`pyro.infer.SVI.step`'s semantics on one torch optimizer.

A step is what :meth:`pyro.infer.SVI.step` does — ``objective.loss_and_grads(model, guide, x)``
then an optimizer step — with one torch optimizer over all parameters (one fused update
instead of ``pyro.optim``'s optimizer per tensor, which costs a third of Pyro's per-step
overhead): :class:`Stepper`, its optimizer chosen by ``train.optimizer`` in one place
(:func:`make_optimizer`: Adam, or SGD with momentum). Around it, what a step needs: the
learning rate (:func:`learning_rate`, ``train.lr_schedule``), the KL weight β of warm-up
(:func:`kl_weight`), and the step losses read back to the host in batches and checked for
divergence (:class:`StepLosses`, :class:`NonFiniteLossError`).
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import torch

from vaelab.config import RunConfig, TrainConfig
from vaelab.data import Preprocessor
from vaelab.data.batching import batch_indices
from vaelab.devices import to_device
from vaelab.runs.burda_adam import BurdaAdam
from vaelab.runs.data_parallel import DataParallel, GlobalBatch
from vaelab.runs.resume import Progress
from vaelab.runs.tracking import Tracking
from vaelab.seed import derived_generator
from vaelab.vae import VAE

__all__ = ["NonFiniteLossError", "StepLosses", "Stepper", "iwae_stage", "kl_weight",
           "learning_rate", "make_optimizer"]


class NonFiniteLossError(FloatingPointError):
    """The loss or the gradient norm became NaN/inf; the last good checkpoint is left intact."""


def make_optimizer(tc: TrainConfig, params: list[torch.nn.Parameter]) -> torch.optim.Optimizer:
    """The one torch optimizer of ``train.optimizer`` over ``params``, fused:

    * ``adam`` and ``adam_normgrad`` (the gradients normalized first, by :class:`Stepper`):
      ``torch.optim.Adam`` with ``train.adam_betas`` and ``train.adam_eps``;
    * ``adam_burda``: :class:`~vaelab.runs.burda_adam.BurdaAdam`, Adam as Burda et al.'s IWAE
      code runs it (second moments start at one, a one-step lag), with the same betas and ε;
    * ``sgd``: ``torch.optim.SGD`` with ``train.momentum`` μ (v ← μ v + g, θ ← θ − lr · v; the
      first step's v is g). Its momentum buffers start at zero (μ · 0 + g = g, torch's first
      step), so that a step skipped on the device (``found_inf``, :meth:`Stepper.step`) leaves
      them defined: torch's fused SGD fills them from uninitialized memory on a skipped first
      step.
    """
    if tc.optimizer == "sgd":
        sgd = torch.optim.SGD(params, lr=tc.lr, momentum=tc.momentum, fused=True)
        if tc.momentum:
            for p in params:
                sgd.state[p]["momentum_buffer"] = torch.zeros_like(p)
        return sgd
    betas = (tc.adam_betas[0], tc.adam_betas[1])
    if tc.optimizer == "adam_burda":
        return BurdaAdam(params, lr=tc.lr, betas=betas, eps=tc.adam_eps)
    return torch.optim.Adam(params, lr=tc.lr, betas=betas, eps=tc.adam_eps, fused=True)


class Stepper:
    """One SVI step: the objective's loss and gradients, then one fused torch optimizer
    (:func:`make_optimizer`) over every parameter; with ``parallel``
    (:mod:`vaelab.runs.data_parallel`), the loss and gradients over the processes of a torchrun
    job, with per-point draws. There is one driver:
    the second, ``train.driver = "svi"``, is gone (an old config's is dropped when it is read)."""

    optimizer: torch.optim.Optimizer

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
        self.tc, self.normalize_grads = tc, tc.optimizer == "adam_normgrad"
        device = next(vae.parameters()).device
        #: steps between read-backs of the losses (``train.sync_every``); above 1 the loss stays
        #: on the device and a non-finite step is skipped there (Adam's ``found_inf``)
        self.sync_every = tc.sync_every or (50 if device.type == "cuda" else 1)
        self.steps = 0  #: steps taken by this stepper (since it was made)
        self.optimizer = make_optimizer(tc, self.params)

    def set_lr(self, epoch: int, step: int) -> float:
        """Set the learning rate of the step about to be taken (:func:`learning_rate`)."""
        lr = learning_rate(self.tc, epoch, step)
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
        for idx in batch_indices(x_train.shape[0], tc.batch_size, shuffle=tc.shuffle,
                                 seed=tc.seed, epoch=epoch):
            x = x_train[to_device(idx, x_train.device)]  # (B, D)
            yield to_device(pre.train_batch(x, noise), device), GlobalBatch(epoch, idx)

    def step(self, x: torch.Tensor, beta, temperature, batch: GlobalBatch | None = None
             ) -> tuple[float | torch.Tensor, float | torch.Tensor | None]:
        """Gradient step on ``x (B, D)`` (with ``parallel``: this process's share of
        ``batch``); returns (loss, gradient norm or None), the loss of the whole batch: floats,
        or with :attr:`sync_every` > 1 scalar tensors still on the device where the objective
        can leave them there (``loss_and_grads_deferred``). Nothing is updated when either is
        non-finite."""
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
            try:
                loss = objective.loss_and_grads(self.vae.model, self.vae.guide, x, beta,
                                                temperature)
            except (RuntimeError, ValueError) as err:
                if all(bool(torch.isfinite(p).all()) for p in self.params):
                    raise
                # the parameters went non-finite (sampling a categorical guide then raises
                # before any loss exists): the run has diverged, as a non-finite loss says
                raise NonFiniteLossError(f"step {self.steps}: {err}".split("\n")[0]) from err
        norm: torch.Tensor | None = None
        if self.normalize_grads:
            grads = [p.grad for p in self.params if p.grad is not None]
            norms = torch._foreach_norm(grads)
            torch._foreach_div_(grads, torch._foreach_add(norms, 1e-7))
        if self.clip_norm > 0:
            norm = torch.nn.utils.clip_grad_norm_(self.params, self.clip_norm, foreach=True)
        # without clipping only the loss is checked: a NaN gradient makes the next loss NaN
        if isinstance(loss, torch.Tensor):  # on the device: the fused optimizer skips a bad step
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
        return self.optimizer.state_dict()

    def load_state_dict(self, state: dict) -> None:
        """Load the optimizer state of a checkpoint.

        :raises ValueError: a state written by the removed ``train.driver = "svi"``
            (``pyro.optim``'s per-parameter states, keyed by parameter name)."""
        if "param_groups" not in state:
            raise ValueError(
                "the checkpoint's optimizer state was written by train.driver = 'svi' "
                "(pyro.optim), which vaelab no longer has; the run cannot be resumed: train it "
                "again, or evaluate its checkpoints as they are")
        self.optimizer.load_state_dict(state)


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
              beta: float, per: str = "step") -> float:
    r"""β at a step of 0-based ``epoch``: linear from 0 to ``beta`` over ``warmup_epochs``
    epochs, then constant (``train.warmup_per``):

    * ``step``: :math:`eta \min(1, (e + i / n) / W)` at step i of n in epoch e;
    * ``epoch``: :math:`eta \min(1, (e + 1) / W)` for the whole epoch (the VampPrior code,
      ``utils/training.py``: β = epoch / warmup with epochs counted from 1).
    """
    if warmup_epochs <= 0:
        return beta
    if per == "epoch":
        t = (epoch + 1) / warmup_epochs
    else:
        t = (epoch + step_in_epoch / max(1, steps_per_epoch)) / warmup_epochs
    return beta if t >= 1.0 else beta * t


# --------------------------------------------------------------------------------------------
# the step losses


def _diverged(loss: float, scale: float, grad_norm: float | None, batch: int, tc: TrainConfig,
              epoch: int, step: int, progress: Progress) -> str | None:
    """Why the run must stop after this step's loss, or None."""
    if not (math.isfinite(loss) and (grad_norm is None or math.isfinite(grad_norm))):
        what = "loss" if not math.isfinite(loss) else "gradient"
        return (f"non-finite {what} (loss={loss}, grad norm={grad_norm}) at epoch {epoch + 1}, "
                f"step {step}; {progress.last_good()}. Try a lower train.lr, "
                "train.clip_norm > 0, or a likelihood scale floor")
    per_point = abs(loss) / batch
    if tc.divergence > 0 and per_point > tc.divergence * max(scale, 1.0):
        return (f"training diverged at epoch {epoch + 1}, step {step}: the loss per point "
                f"{per_point:.4g} is over {tc.divergence:g}x its running scale {scale:.4g} "
                f"(train.divergence); {progress.last_good()}. Try a lower train.lr or "
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
