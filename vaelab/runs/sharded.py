"""Sharded evaluation under ``torchrun`` (IS and AIS: :func:`evaluate_sharded`; BDMC:
:func:`bdmc_sharded`).

**Sharded evaluation** (:func:`evaluate_sharded`, IS and AIS; :func:`bdmc_sharded`): the
points are cut into fixed blocks, block b scored by :func:`vaelab.runs.run.evaluate` with the seed
(``eval.seed``, b); process r scores a contiguous range of blocks; the per-point results are
all-gathered and concatenated in block order: no padding, no duplicate, the numbers of one
process scoring the same blocks. :func:`evaluate_sharded` cuts the same blocks on any number
of processes (``eval.block_size``, default ``eval.batch_size``), so ``vaelab evaluate`` and
``torchrun --nproc_per_node=W -m vaelab evaluate`` give the same numbers (issue 28, item 7).

::

    torchrun --nproc_per_node=2 -m vaelab evaluate DIR
"""

from __future__ import annotations

import math

import torch

from vaelab.config import EvalConfig
from vaelab.inference.bdmc import BDMCResult, bdmc
from vaelab.inference.marginal import MarginalEstimate
from vaelab.inference.noise import block_seed
from vaelab.runs.run import Run, evaluate
from vaelab.runs.world import join, score_blocks
from vaelab.seed import seed_all

__all__ = ["bdmc_sharded", "evaluate_sharded"]


def evaluate_sharded(run: Run, ec: EvalConfig | None = None, *, progress: bool = False,
                     curve_ks: list[int] | None = None) -> MarginalEstimate:
    """:func:`vaelab.runs.run.evaluate` over the processes of a torchrun job: the points in
    blocks of ``eval.block_size`` (default: ``eval.batch_size``), block b seeded by
    :func:`block_seed` (``eval.seed``, b), each process scoring its share of the blocks
    (:func:`score_blocks`); IS and AIS alike. The blocks do not depend on the number of
    processes: one process cuts the same blocks and gets the same per-point numbers.

    :returns: the estimate over all the points in their order, the same on every process and
        the same on any number of processes.

    Example::

        # torchrun --nproc_per_node=2 script.py
        est = evaluate_sharded(load_run("runs/demo"))  # every process: all the points
    """
    ec = ec if ec is not None else run.cfg.eval
    world = join(next(run.vae.parameters()).device)
    block = ec.block_size or ec.batch_size  # never the number of processes: same numbers
    n = run.split(ec.split, ec.limit).shape[0]
    if n == 0:  # evaluate says so in one line
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
