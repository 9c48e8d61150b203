r"""Data-parallel training under ``torchrun`` (gloo on CPU, NCCL on CUDA).

::

    torchrun --nproc_per_node=2 -m vaelab train CONFIG.toml --out DIR        # one machine
    torchrun --nproc_per_node=2 -m vaelab evaluate DIR
    # two machines of 4 processes each: the same line on both, NODE = 0 and 1
    torchrun --nnodes=2 --node_rank=NODE --nproc_per_node=4 --rdzv_backend=c10d \
        --rdzv_endpoint=HOST0:29500 --rdzv_id=JOB -m vaelab train CONFIG.toml --out DIR

A process learns its place from torchrun's environment (``WORLD_SIZE``, ``RANK``,
``LOCAL_RANK``: :class:`World`) and joins the process group (:func:`join`). With one process
nothing here runs unless asked (``train.per_point_noise = true``, ``eval.block_size``).

**Training** takes the Pyro-native route of Pyro's ``examples/svi_lightning.py``: the
objective's ``differentiable_loss`` is the forward of one module (:class:`ObjectiveModule`, in
the manner of :class:`pyro.infer.elbo.ELBOModule`) wrapped in
:class:`~torch.nn.parallel.DistributedDataParallel`, whose hooks all-reduce the VAE's gradients
during ``backward``; the loop's one torch optimizer (``train.optimizer``) steps them. The
VAE's networks are plain modules registered by
:func:`~vaelab.model.networks.register_module`, which never swaps a parameter object, so
DDP's parameters are the ones the model and guide use; Pyro's
global ``module_local_params`` setting (read by ``PyroModule`` only) is neither needed nor
touched. No JIT (a compiled graph under DDP
drifts out of sync silently). ``train.batch_size`` is the global batch :math:`\mathcal B` of
B points, the same seeded shuffle on every process; process r of W takes the **contiguous**
share :math:`\mathcal B_r` = positions :math:`\lfloor rB/W \rfloor` to
:math:`\lfloor (r+1)B/W \rfloor - 1` (:func:`share`) and back-propagates :math:`W L_r`, with
:math:`L_r = -\sum_{n \in \mathcal B_r} \mathcal L(x_n)` the objective's loss on its share. DDP
averages, so every process steps with

.. math:: \frac1W \sum_{r=0}^{W-1} \nabla (W L_r) = \nabla \sum_{r} L_r = \nabla L_{\mathcal B},

the gradient of the global batch's loss, what one process computes. The step's loss
:math:`\sum_r L_r` is all-reduced before it is checked or logged; the validation ELBO is scored
in blocks shared among the processes and gathered in order (:func:`score_blocks`).

**Randomness keyed by the data point** (``train.per_point_noise``, on with more than one
process): every random number of training point i in epoch e comes from generators seeded by
(seed, e, i), one stream for its preprocessing noise (dynamic binarization, dequantization) and
one for the guide's reparameterization noise ε (:class:`PointNoise`). A point gets the same
draws whatever its batch position, share or world size, so a 1-process and a W-process run
compute the same gradients up to float summation order, and a run resumes exactly on another
number of processes. The batch order is keyed by (seed, e) as in one process.

Only the process of rank 0 locks, reads and writes the run folder, logs and prints; the others
receive the commit to resume from by broadcast. The per-point draws are
:mod:`vaelab.inference.noise`'s; the process group is :mod:`vaelab.runs.world`'s.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from vaelab.config import ObjectiveConfig, RunConfig, TrainConfig
from vaelab.data import Preprocessor
from vaelab.data.batching import batch_indices
from vaelab.devices import to_device
from vaelab.inference.noise import DATA_STREAM, LATENT_STREAM, PointNoise, point_generators
from vaelab.inference.objectives.registry import objective_entry
from vaelab.notes import note
from vaelab.registry import ConfigError
from vaelab.runs.folder import Commit, Interrupted, StopSignals, fault_point
from vaelab.runs.world import World, collective, join, on_main, score_blocks, share
from vaelab.seed import derived_seed
from vaelab.vae import VAE

__all__ = ["DataParallel", "GlobalBatch", "ObjectiveModule", "SharedStop", "data_parallel"]

_VALID_STREAM = 0x7A11D  # the validation ELBO's blocks


@dataclass(frozen=True)
class GlobalBatch:
    """The global batch of a training step: its epoch and the indices ``idx (B,)`` of its
    points in the training split (every process holds all B; its ``x``, its share)."""

    epoch: int
    idx: torch.Tensor

    @property
    def size(self) -> int:
        """B, the points of the global batch."""
        return int(self.idx.shape[0])


class ObjectiveModule(nn.Module):
    """``forward(x, β, τ) = objective.differentiable_loss(vae.model, vae.guide, x, β, τ)``: the
    negative bound summed over ``x``, as one module that DDP can wrap (Pyro's
    :class:`~pyro.infer.elbo.ELBOModule` wants the model and guide to be modules; here they are
    the methods of ``vae``, the module's only child, so its parameters are the VAE's)."""

    def __init__(self, vae: VAE, objective):
        super().__init__()
        self.vae, self.objective = vae, objective

    def forward(self, x: torch.Tensor, beta, temperature) -> torch.Tensor:
        return self.objective.differentiable_loss(self.vae.model, self.vae.guide, x, beta,
                                                  temperature)


class SharedStop(StopSignals):
    """The :class:`~vaelab.runs.folder.StopSignals` ``stop`` of every process as one:
    a SIGINT or SIGTERM that any process had received by the last training step (reduced with
    the step's loss, :meth:`DataParallel.loss_and_grads`) stops them all at the same step
    boundary (``stop`` stays the one installed as handler)."""

    def __init__(self, stop: StopSignals):
        super().__init__()
        self.stop = stop
        self.seen = 0  #: the signal any process had received at the last reduction (0: none)

    def local(self) -> torch.Tensor:
        """This process's signals as counts (SIGINT, SIGTERM), to be summed over processes."""
        signum = self.stop.signum
        return torch.tensor([float(signum == s) for s in StopSignals.SIGNALS],
                            dtype=torch.float64)

    def update(self, counts: torch.Tensor) -> None:
        self.seen = next((int(s) for s, c in zip(StopSignals.SIGNALS, counts.tolist()) if c), 0)

    def check(self, epoch: int, step: int, committed_epoch: int) -> None:
        if self.seen:
            raise Interrupted(self.seen, epoch, step, committed_epoch)


class DataParallel:
    """What the training loop does differently with several processes (or per-point draws in
    one): batches (each process's share of the global batch), steps (DDP over
    :class:`ObjectiveModule`, the loss reduced), validation (blocks), the commit to resume from
    (broadcast from rank 0) and stop requests (:class:`SharedStop`).

    :param tc: the ``[train]`` section.
    :param world: this process's place (:func:`join`).
    :param device: where training runs (``cuda``: the current device, which :func:`join` set
        to this process's GPU).
    """

    def __init__(self, tc: TrainConfig, world: World, device: torch.device):
        self.tc, self.world, self.seed = tc, world, tc.seed
        self.device = device
        #: the CUDA device this process trains on (its index), none on CPU
        self.cuda = [torch.cuda.current_device()] if device.type == "cuda" else []
        self.module: nn.Module | None = None
        self.stop: SharedStop | None = None

    @property
    def is_main(self) -> bool:
        return self.world.is_main

    def objective_config(self, cfg: ObjectiveConfig) -> ObjectiveConfig:
        """``[objective]`` with the JIT off: a compiled graph would bake the per-point draws in
        as constants, and under DDP it drifts out of sync (``objective.jit = "auto"`` says so
        in one note: here in one process, :func:`~vaelab.inference.objectives.build_objective`
        with several)."""
        why = (f"{self.world.size} processes train (the JIT and DistributedDataParallel do not "
               "mix)" if self.world.size > 1 else "train.per_point_noise draws the guide's "
               "noise outside any compiled graph")
        if cfg.jit is True:
            raise ConfigError(f"objective.jit = true cannot be used here: {why}; set "
                              "objective.jit = 'auto' or false")
        has_jit = getattr(objective_entry(cfg).builder, "has_jit", False)
        if cfg.jit == "auto" and self.world.size == 1:
            if has_jit:
                note(f"objective.jit = 'auto': eager, {why}")
            return cfg.model_copy(update={"jit": False})
        return cfg

    def attach(self, vae: VAE, objective) -> None:
        """Wrap ``objective`` on ``vae`` as the module each step calls (DDP with several
        processes; created after the VAE's lazy parameters exist)."""
        if not callable(getattr(objective, "differentiable_loss", None)):
            raise ConfigError(
                f"{type(objective).__name__} has no differentiable_loss (only its own "
                "loss_and_grads), which data-parallel training and per-point draws need; use "
                "objective.name = 'trace' (or another objective than 'graph')")
        module: nn.Module = ObjectiveModule(vae, objective)
        if self.world.size > 1:
            ids = self.cuda or None
            # parameters without a gradient in some steps (a learned prior at β = 0 during the
            # warm-up; a discrete family's REINFORCE baseline under enumeration) keep none, as
            # in one process; finding them costs a graph traversal per step, so only then
            unused = self.tc.warmup_epochs > 0 or not vae.inference.posterior.reparameterized
            module = DistributedDataParallel(module, device_ids=ids,
                                             find_unused_parameters=unused)
        self.module = module

    def shared_stop(self, stop: StopSignals) -> StopSignals:
        """``stop`` shared by every process (itself in one process)."""
        if self.world.size == 1:
            return stop
        self.stop = SharedStop(stop)
        return self.stop

    def share_commit(self, saved: Commit | None) -> Commit | None:
        """The commit rank 0 resumes from, on every process (rank 0 alone reads the folder)."""
        return on_main(lambda: saved, self.world, "sharing the checkpoint")

    def barrier(self) -> None:
        """Wait for every process (e.g. for rank 0's last commit before reading it)."""
        if self.world.size > 1:
            with collective("waiting for the other processes"):
                dist.barrier()

    def _mine(self, idx: torch.Tensor) -> tuple[torch.Tensor, float]:
        """This process's share of a global batch and the weight of its loss (W; 0 for an
        empty share, which scores the batch's first point so as to join the all-reduce)."""
        mine = idx[share(idx.shape[0], self.world)]
        if mine.numel() == 0:
            return idx[:1], 0.0
        return mine, float(self.world.size)

    def batches(self, x_train: torch.Tensor, pre: Preprocessor, epoch: int,
                device: torch.device) -> Iterator[tuple[torch.Tensor, GlobalBatch]]:
        """Epoch ``epoch``'s batches: this process's share ``x (b, D)`` on ``device``, each
        point preprocessed with its own generator, and the :class:`GlobalBatch`."""
        tc = self.tc
        for idx in batch_indices(x_train.shape[0], tc.batch_size, shuffle=tc.shuffle,
                                 seed=tc.seed, epoch=epoch):
            mine, _ = self._mine(idx)
            x = x_train[to_device(mine, x_train.device)]  # (b, D)
            if not pre.is_identity:
                gens = point_generators(tc.seed, epoch, mine, DATA_STREAM)
                x = torch.cat([pre.train_batch(x[j : j + 1], g) for j, g in enumerate(gens)])
            yield to_device(x, device), GlobalBatch(epoch, idx)

    def loss_and_grads(self, x: torch.Tensor, beta, temperature, batch: GlobalBatch,
                       read: bool = True) -> float | torch.Tensor:
        r"""One step's loss and gradients: :math:`W L_r` back-propagated (DDP all-reduces the
        gradients, see the module docstring), with the guide's noise drawn per point; returns
        :math:`\sum_r L_r`, the global batch's loss. With ``read``, a float, reduced in one
        all-reduce with the stop requests; else a scalar tensor on the device, reduced alone,
        not read back (no host synchronisation: ``train.sync_every``)."""
        assert self.module is not None, "DataParallel.attach first"
        mine, weight = self._mine(batch.idx)
        noise = PointNoise(point_generators(self.seed, batch.epoch, mine, LATENT_STREAM))
        if self.world.size > 1:
            fault_point(f"rank{self.world.rank}-step")  # VAELAB_FAULT=rank1-step@N (tests)
        with collective("a training step"):
            with noise:
                loss = self.module(x, beta, temperature)  # () −bound summed over the share
            (loss * weight).backward()
            if self.world.size == 1:
                return float(loss.detach()) if read else loss.detach()
            mine_loss = loss.detach().double().reshape(1) * (weight > 0)
            if not read:
                dist.all_reduce(mine_loss)
                return mine_loss[0]
            signals = self.stop.local() if self.stop is not None else torch.zeros(2)
            t = torch.cat([mine_loss.cpu(), signals]).to(self.device)
            dist.all_reduce(t)
        t = t.cpu()
        if self.stop is not None:
            self.stop.update(t[1:])
        return float(t[0])

    def blockwise(self, score: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor,
                  block: int, epoch: int) -> torch.Tensor:
        """``score`` (points ``(b, D)`` → per-point values ``(b,)``) over ``x`` in blocks of
        ``block`` shared among the processes, block b's draws seeded by (seed, epoch, b) (the
        global RNG state is restored after each); every point's value, in order."""
        def one(b: int, points: slice) -> torch.Tensor:
            with torch.random.fork_rng(devices=self.cuda):
                torch.manual_seed(derived_seed(self.seed, epoch, b, _VALID_STREAM))
                return score(x[points]).cpu()

        return torch.cat(score_blocks(one, x.shape[0], block, self.world))


def data_parallel(cfg: RunConfig, device: torch.device) -> DataParallel | None:
    """The :class:`DataParallel` of this training process: under torchrun with more than one
    process (joining the group, :func:`join`), or with ``train.per_point_noise = true``; else
    None (the one-process loop, unchanged).

    :raises ConfigError: what data-parallel training cannot do: ``train.per_point_noise =
        false`` with several processes.
    """
    tc = cfg.train
    world = join(device)
    if world.size == 1 and tc.per_point_noise is not True:
        return None
    what = (f"{world.size} processes train" if world.size > 1
            else "train.per_point_noise = true")
    if world.size > 1 and tc.per_point_noise is False:
        raise ConfigError(f"train.per_point_noise = false: {what}, and each data point must get "
                          "the same draws on whichever process scores it; set it to 'auto'")
    return DataParallel(tc, world, device)
