r"""Data-parallel training and sharded evaluation under ``torchrun`` (gloo on CPU, NCCL on CUDA).

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
during ``backward``; the loop's plain ``torch.optim.Adam`` steps them;
``pyro.settings.set(module_local_params=True)`` and ``pyro.module`` without
``update_module_params`` never swap a parameter object; no JIT (a compiled graph under DDP
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

**Sharded evaluation** (:func:`evaluate_sharded`, IS and AIS; :func:`bdmc_sharded`): the
points are cut into fixed blocks, block b scored by :func:`vaelab.run.evaluate` with the seed
(``eval.seed``, b); process r scores a contiguous range of blocks; the per-point results are
all-gathered and concatenated in block order: no padding, no duplicate, the numbers of one
process scoring the same blocks.

Only the process of rank 0 locks, reads and writes the run folder, logs and prints; the others
receive the commit to resume from by broadcast.
"""

from __future__ import annotations

import gc
import math
import os
import re
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import pyro
import torch
import torch.distributed as dist
from pyro.distributions.torch_distribution import MaskedDistribution
from pyro.poutine.messenger import Messenger
from torch import nn
from torch.distributions import Independent, Normal, TransformedDistribution
from torch.distributions.relaxed_categorical import ExpRelaxedCategorical
from torch.distributions.utils import clamp_probs
from torch.nn.parallel import DistributedDataParallel
from tqdm.auto import tqdm

from vaelab.config import EvalConfig, ObjectiveConfig, RunConfig, TrainConfig
from vaelab.data import Preprocessor
from vaelab.data.batching import batch_indices
from vaelab.devices import to_device
from vaelab.inference.bdmc import BDMCResult, bdmc
from vaelab.inference.importance import DATA_PLATE
from vaelab.inference.marginal import MarginalEstimate
from vaelab.inference.objectives.registry import OBJECTIVES
from vaelab.inference.runfolder import Commit, Interrupted, StopSignals, fault_point
from vaelab.notes import note
from vaelab.registry import ConfigError
from vaelab.run import Run, evaluate
from vaelab.seed import derived_generator, derived_seed, seed_all
from vaelab.vae import VAE

__all__ = [
    "DataParallel",
    "GlobalBatch",
    "ObjectiveModule",
    "PeerLost",
    "PointNoise",
    "SharedStop",
    "World",
    "bdmc_sharded",
    "block_seed",
    "data_parallel",
    "evaluate_sharded",
    "join",
    "leave",
    "on_main",
    "point_generators",
    "reparameterized_sample",
    "score_blocks",
    "score_rounds",
    "share",
]

# streams of a data point's generators, unrelated to each other and to other draws
_DATA_STREAM = 0xDA7A  # preprocessing noise
_LATENT_STREAM = 0x1A7E  # the guide's reparameterization noise
_VALID_STREAM = 0x7A11D  # the validation ELBO's blocks


class PeerLost(RuntimeError):
    """A collective operation failed: another process of the torchrun job stopped."""


@dataclass(frozen=True)
class World:
    """This process's place in a torchrun job: ``rank`` of ``size`` processes, ``local_rank``
    on its machine (one process: 0 of 1)."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @classmethod
    def from_env(cls) -> World:
        """From torchrun's ``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK`` (absent: one process)."""
        env = os.environ
        return cls(int(env.get("RANK", 0)), int(env.get("WORLD_SIZE", 1)),
                   int(env.get("LOCAL_RANK", 0)))

    @property
    def is_main(self) -> bool:
        """Rank 0: the process that writes, logs and prints."""
        return self.rank == 0


def join(device: torch.device) -> World:
    """torchrun's :class:`World`, its process group joined (once) when it has more than one
    process: NCCL when ``device`` is a CUDA device (each process on GPU ``LOCAL_RANK``), gloo
    otherwise; the rendezvous is torchrun's (``MASTER_ADDR``, ``MASTER_PORT``)."""
    world = World.from_env()
    if world.size > 1 and not dist.is_initialized():
        if device.type == "cuda":
            torch.cuda.set_device(world.local_rank)
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return world


def leave(synchronize: bool = False) -> None:
    """Leave the process group, if this process joined one.

    :param synchronize: first wait for the other processes at a barrier (for gloo
        ``monitored_barrier``, 60 s at most), so that none tears its connections down while
        another still uses them; for a process whose command succeeded. A barrier that fails
        (a peer gone) is passed over: leaving goes on.

    The garbage is collected first, so that no
    :class:`~torch.nn.parallel.DistributedDataParallel` module left in a reference cycle
    outlives the group into the interpreter's finalization.
    """
    if not (dist.is_available() and dist.is_initialized()):
        return
    gc.collect()
    if synchronize:
        try:
            if dist.get_backend() == "gloo":
                dist.monitored_barrier(timeout=timedelta(seconds=60))
            else:
                dist.barrier()
        except RuntimeError:  # a peer failed or is gone: nothing to wait for
            pass
    dist.destroy_process_group()


def share(n: int, world: World) -> slice:
    r"""The contiguous share of ``n`` items of process ``world.rank``:
    :math:`[\lfloor r n / W \rfloor, \lfloor (r + 1) n / W \rfloor)`. The shares of the W
    processes cover 0..n−1 once each (no padding, no duplicate); their sizes differ by at most
    one (a share is empty when n < W)."""
    return slice(world.rank * n // world.size, (world.rank + 1) * n // world.size)


@contextmanager
def _collective(what: str) -> Iterator[None]:
    """Turn the failure of a collective (a peer killed or failed) into :class:`PeerLost`."""
    try:
        yield
    except RuntimeError as err:
        text = str(err)
        if isinstance(err, PeerLost) or not (isinstance(err, dist.DistError)
                                             or "peer" in text.lower()):
            raise
        # gloo's "[.../pair.cc:537] Read error [HOST]:PORT: Connection reset by peer. This is
        # typically caused by ...": its first sentence, without the source location
        detail = re.sub(r"^\[[^\]]*\]\s*", "", text.strip()).split(". ")[0].splitlines()
        raise PeerLost(f"{what} failed: another process of this torchrun job stopped "
                       f"({detail[0][:160] if detail else type(err).__name__})") from err


def gather(items: list, world: World) -> list:
    """Every process's ``items`` (picklable), concatenated in rank order, on every process."""
    if world.size == 1:
        return list(items)
    out: list[Any] = [None] * world.size
    with _collective("gathering results"):
        dist.all_gather_object(out, items)
    return [x for part in out for x in part]


def on_main(read: Callable[[], Any], world: World, what: str = "sharing rank 0's state") -> Any:
    """``read()`` run by rank 0 alone (it reads the folders) and its result, or the exception it
    raised, on every process (picklable): every process returns it, or raises it, alike (one
    process: ``read()``)."""
    if world.size == 1:
        return read()
    box: list[Any] = [None]
    if world.is_main:
        try:
            box[0] = (True, read())
        except Exception as err:  # noqa: BLE001 - handed to every process, raised there
            box[0] = (False, err)
    with _collective(what):
        dist.broadcast_object_list(box, src=0)
    ok, value = box[0]
    if not ok:
        raise value
    return value


def score_rounds(score: Callable[[int], Any], todo: Sequence[int], world: World,
                 keep: Callable[[int, Any], None], progress: bool = False) -> None:
    """``score(b)`` of every block b of ``todo`` (the same list on every process), in rounds of
    one block per process; each round's results are gathered on every process and handed to
    ``keep(b, result)`` in block order before the next round starts, so a crash loses only the
    round in flight (a resumable evaluation saves each block in ``keep`` on rank 0). The work
    goes to whichever blocks remain, however many a restart found done.

    :param score: ``b -> result`` (picklable).
    :param progress: a progress bar over the blocks, on rank 0.
    """
    todo = list(todo)
    bar = tqdm(total=len(todo), disable=not (progress and world.is_main), leave=False,
               unit="block", desc="blocks")
    for start in range(0, len(todo), world.size):
        round_ = todo[start : start + world.size]
        mine = [(round_[world.rank], score(round_[world.rank]))] if world.rank < len(round_) \
            else []
        for b, result in sorted(gather(mine, world), key=lambda item: item[0]):
            keep(b, result)
        bar.update(len(round_))
    bar.close()


def score_blocks(score: Callable[[int, slice], Any], n: int, block: int, world: World,
                 progress: bool = False) -> list:
    """``score(b, points)`` of every block b of ``block`` consecutive points of ``n`` (the last
    one shorter), each process scoring its contiguous share of the blocks (:func:`share`);
    every block's result, in block order, on every process.

    :param score: ``(b, slice of the points) -> result`` (picklable).
    :param progress: a progress bar over this process's blocks.
    """
    blocks = [slice(start, min(start + block, n)) for start in range(0, n, block)]
    mine = range(len(blocks))[share(len(blocks), world)]
    bar = tqdm(mine, disable=not progress, leave=False, unit="block", desc="blocks")
    return gather([score(b, blocks[b]) for b in bar], world)


def block_seed(seed: int, block: int) -> int:
    """The seed of block ``block`` of an evaluation seeded by ``seed``: mixed from both
    (:func:`vaelab.seed.derived_seed`), below 2^32 as NumPy wants."""
    return derived_seed(seed, block) % 2**32


# --------------------------------------------------------------------------------------------
# randomness keyed by the data point


def point_generators(seed: int, epoch: int, idx: torch.Tensor, stream: int) -> list:
    """One CPU generator per data point, seeded by (seed, epoch, index, stream)."""
    return [derived_generator(seed, epoch, i, stream) for i in idx.tolist()]


def reparameterized_sample(fn, noise: Callable[[str, torch.Size], torch.Tensor]) -> torch.Tensor:
    r"""``fn.rsample()`` with its standard noise taken from ``noise(kind, shape)`` (``kind``
    ``"normal"`` or ``"uniform"``, ``shape`` the full batch + event shape) instead of the global
    generator; the same formulas as torch's ``rsample``:

    * ``Normal``: :math:`z = μ + ε σ`, ε standard normal;
    * ``TransformedDistribution`` (the IAF guide): the base sample pushed through the transforms;
    * ``ExpRelaxedCategorical``: :math:`y = \mathrm{log\_softmax}((\ell + g) / τ)`,
      :math:`g = -\log(-\log u)`, u uniform;
    * ``Independent`` and Pyro's masked wrapper: their base distribution's.

    :raises ConfigError: any other distribution (its noise cannot be keyed by data point).
    """
    if isinstance(fn, (Independent, MaskedDistribution)):
        return reparameterized_sample(fn.base_dist, noise)
    if isinstance(fn, TransformedDistribution):
        z = reparameterized_sample(fn.base_dist, noise)
        for t in fn.transforms:
            z = t(z)
        return z
    shape = fn.batch_shape + fn.event_shape
    if isinstance(fn, Normal):
        eps = noise("normal", shape).to(fn.loc)  # (..., B, d)
        return fn.loc + eps * fn.scale
    if isinstance(fn, ExpRelaxedCategorical):
        u = clamp_probs(noise("uniform", shape).to(fn.logits))  # (..., B, N, K)
        scores = (fn.logits - (-u.log()).log()) / fn.temperature
        return scores - scores.logsumexp(dim=-1, keepdim=True)
    raise ConfigError(
        f"train.per_point_noise: the guide's latent site draws from {type(fn).__name__}, whose "
        "noise vaelab cannot key by data point (it can for the guide families normal, iaf and "
        "relaxed); train it in one process with train.per_point_noise = 'auto' or false")


class PointNoise(Messenger):
    r"""Draw the guide's latent sites from one generator per data point.

    For the site ``"z"`` in ``pyro.plate("data")`` (its distribution broadcast by every
    enclosing plate, e.g. to ``(K, B, d)`` under a particle plate), row n of the data dimension
    gets its standard noise from ``generators[n]``
    (:func:`reparameterized_sample`): point n's draws do not depend on the other points of the
    batch. Enter it *outside* the objective's call so that it sees the site after every plate;
    model sites replayed from the guide and enumerated sites are left alone. Successive guide
    runs within one use (several particles in a loop) continue each point's stream.

    :param generators: one per point of the batch, in batch order (:func:`point_generators`).
    :param sites: the names of the latent sites to draw.
    """

    def __init__(self, generators: Sequence[torch.Generator],
                 sites: frozenset[str] = frozenset({"z"})):
        super().__init__()
        self.generators, self.sites = list(generators), sites

    def _pyro_sample(self, msg) -> None:
        if (msg["name"] not in self.sites or msg["is_observed"] or msg["value"] is not None
                or msg["infer"].get("enumerate")):
            return
        frame = next((f for f in msg["cond_indep_stack"] if f.name == DATA_PLATE), None)
        if frame is None:
            raise ConfigError(f"train.per_point_noise: site {msg['name']!r} is outside "
                              f"pyro.plate({DATA_PLATE!r}): its draw belongs to no data point")
        fn = msg["fn"]
        axis = len(fn.batch_shape) + frame.dim  # the data dimension of batch + event shape
        msg["value"] = reparameterized_sample(fn, lambda kind, shape: self.noise(kind, shape,
                                                                                 axis))

    def noise(self, kind: str, shape: torch.Size, axis: int) -> torch.Tensor:
        """Standard ``kind`` noise of ``shape``, slice n along ``axis`` from point n's stream."""
        if axis >= len(shape) or shape[axis] != len(self.generators):
            raise ValueError(f"PointNoise: {len(self.generators)} generators for a draw of shape "
                             f"{tuple(shape)} (data dimension {axis})")
        rest = shape[:axis] + shape[axis + 1:]
        draw = torch.randn if kind == "normal" else torch.rand
        return torch.stack([draw(rest, generator=g) for g in self.generators], dim=axis)


# --------------------------------------------------------------------------------------------
# training


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
    """The :class:`~vaelab.inference.runfolder.StopSignals` ``stop`` of every process as one:
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
        has_jit = getattr(OBJECTIVES.entry(cfg.name, key="objective.name").builder, "has_jit",
                          False)
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
            pyro.settings.set(module_local_params=True)
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
            with _collective("waiting for the other processes"):
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
        for idx in batch_indices(x_train.shape[0], tc.batch_size, shuffle=True, seed=tc.seed,
                                 epoch=epoch):
            mine, _ = self._mine(idx)
            x = x_train[to_device(mine, x_train.device)]  # (b, D)
            if not pre.is_identity:
                gens = point_generators(tc.seed, epoch, mine, _DATA_STREAM)
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
        noise = PointNoise(point_generators(self.seed, batch.epoch, mine, _LATENT_STREAM))
        if self.world.size > 1:
            fault_point(f"rank{self.world.rank}-step")  # VAELAB_FAULT=rank1-step@N (tests)
        with _collective("a training step"):
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

    :raises ConfigError: what data-parallel training cannot do: ``train.driver = "svi"``
        (pyro.optim steps each parameter itself), ``train.per_point_noise = false`` with several
        processes.
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
    if tc.driver != "torch":
        raise ConfigError(f"train.driver = {tc.driver!r}: {what}, which steps one torch "
                          "optimizer on the objective's differentiable_loss (under "
                          "DistributedDataParallel with several processes); set "
                          "train.driver = 'torch'")
    return DataParallel(tc, world, device)


# --------------------------------------------------------------------------------------------
# evaluation


def evaluate_sharded(run: Run, ec: EvalConfig | None = None, *, progress: bool = False,
                     curve_ks: list[int] | None = None) -> MarginalEstimate:
    """:func:`vaelab.run.evaluate` over the processes of a torchrun job: the points in blocks of
    ``eval.block_size`` (default under torchrun: ``eval.batch_size``), block b seeded by
    :func:`block_seed` (``eval.seed``, b), each process scoring its share of the blocks
    (:func:`score_blocks`); IS and AIS alike. In one process without ``eval.block_size``: one
    pass, exactly :func:`vaelab.run.evaluate`.

    :returns: the estimate over all the points in their order, the same on every process and
        the same as one process scoring the same blocks.

    Example::

        # torchrun --nproc_per_node=2 script.py
        est = evaluate_sharded(load_run("runs/demo"))  # every process: all the points
    """
    ec = ec if ec is not None else run.cfg.eval
    world = join(next(run.vae.parameters()).device)
    block = ec.block_size or (ec.batch_size if world.size > 1 else None)
    n = run.split(ec.split, ec.limit).shape[0]
    if block is None or n == 0:  # n == 0: evaluate says so in one line
        return evaluate(run, ec, progress=progress, curve_ks=curve_ks)

    def one(b: int, points: slice) -> MarginalEstimate:
        return evaluate(run, ec, points=points, seed=block_seed(ec.seed, b), curve_ks=curve_ks)

    est = MarginalEstimate.concat(score_blocks(one, n, block, world,
                                               progress=progress and world.is_main))
    est.extra["block_size"] = block
    est.extra["blocks"] = math.ceil(n / block)
    return est


def bdmc_sharded(model, guide, x_like: torch.Tensor, *, seed: int, block: int | None = None,
                 progress: bool = False, **bdmc_kwargs) -> BDMCResult:
    """:func:`vaelab.inference.bdmc.bdmc` over the processes of a torchrun job: the
    ``len(x_like)`` simulated points in blocks of ``block`` (default under torchrun: the
    ``batch_size``), block b simulated and bracketed with the seed :func:`block_seed` (``seed``,
    b), each process its share of the blocks, the per-point bounds gathered in block order. In
    one process without ``block``: one pass seeded by ``seed``, exactly ``bdmc``.

    :param bdmc_kwargs: ``num_steps``, ``num_chains``, ``batch_size``, ... of ``bdmc``.
    """
    world = join(x_like.device)
    block = block or (bdmc_kwargs.get("batch_size", 100) if world.size > 1 else None)
    if block is None:
        seed_all(seed)
        return bdmc(model, guide, x_like, progress=progress, **bdmc_kwargs)

    def one(b: int, points: slice) -> BDMCResult:
        seed_all(block_seed(seed, b))
        return bdmc(model, guide, x_like[points], **bdmc_kwargs)

    parts = score_blocks(one, x_like.shape[0], block, world, progress=progress and world.is_main)
    sizes = [p.lower.numel() for p in parts]
    extra = dict(parts[0].extra, block_size=block, blocks=len(parts))
    for key in ("acceptance_forward", "acceptance_reverse"):  # means over points
        extra[key] = sum(n * p.extra[key] for n, p in zip(sizes, parts)) / sum(sizes)
    fields = ("lower", "upper", "lower_stderr", "upper_stderr", "x", "z")
    return BDMCResult(**{f: torch.cat([getattr(p, f) for p in parts]) for f in fields},
                      extra=extra)
