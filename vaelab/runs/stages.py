"""A recipe's evaluation in resumable stages, each written to ``RUN/reproduce/`` as it completes.

:func:`evaluate_run` evaluates the best-validation checkpoint of a trained run folder:

* IS with the recipe's K (5000) on the whole test split, which also gives the test ELBO (the
  mean log weight over the K draws);
* AIS on ``ais.points`` test points spread evenly over the split (continuous latents), and AIS
  minus IS on the points both scored (:func:`ais_minus_is`);
* BDMC bounds on ``bdmc.points`` points simulated from the model (continuous latents);
* for a relaxed categorical guide, Jang et al.'s test metric
  (:func:`~vaelab.inference.relaxed_bound.jang_bound`, 1000 draws per test image) beside the
  discrete model's ELBO and log p(x).

Every stage is resumable: IS and AIS run in blocks of points (:func:`evaluate_in_blocks`), each
block seeded by its index and saved as it completes, each stage's summary is written once
(``is.json``, ``ais.json``, ...), so a restart skips what is done and reaches the numbers an
uninterrupted pass gives. Under torchrun every stage is sharded: the IS and AIS blocks still to
do go one per process per round, with the numbers one process gives (a block's seed is its
index); BDMC and Jang's metric share their blocks as ``vaelab bdmc`` does. Every process reads
the run folder; rank 0 alone writes.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

import torch

from vaelab.config import json_safe
from vaelab.runs.checkpoint import atomic_write_text
from vaelab.runs.recipes import Recipe

__all__ = ["AIS_BLOCK", "BLOCK", "ESTIMAND_KEYS", "ais_minus_is", "evaluate_in_blocks",
           "evaluate_run"]

#: points per block of a resumable evaluation: IS, and AIS (slower per point), unless
#: ``eval.block_size`` says
BLOCK = 500
AIS_BLOCK = 100
#: the ``[eval]`` keys that define what a block estimates (its stamp)
ESTIMAND_KEYS = {"split", "num_samples", "limit", "seed", "method", "proposal", "ais_steps",
                 "ais_chains", "ais_leapfrog", "ais_base"}


def evaluate_in_blocks(run, ec, folder: Path, *, block: int | None = None,
                       progress: bool = False):
    """:func:`vaelab.runs.run.evaluate` over the ``ec.limit`` points in blocks of ``block``
    (default: ``ec.block_size``, else :data:`BLOCK`), block b
    seeded with ``ec.seed + b`` and saved to ``folder/block_BBBB.pt`` as it completes; blocks
    already there are read, not recomputed. Under torchrun the blocks still to do are scored one
    per process per round (:func:`~vaelab.runs.world.score_rounds`) and rank 0 saves
    them: the same numbers whatever the number of processes or restarts.

    :returns: the :class:`~vaelab.inference.marginal.MarginalEstimate` over all the points (on
        every process).
    """
    from vaelab.inference.marginal import MarginalEstimate
    from vaelab.runs.checkpoint import load_checkpoint, save_checkpoint
    from vaelab.runs.run import evaluate
    from vaelab.runs.world import on_main, score_rounds

    world = _world(run)
    block = block or ec.block_size or BLOCK
    n = run.split(ec.split, ec.limit).shape[0]
    num_blocks = math.ceil(n / block)
    # what the numbers estimate; batching, memory budget and the fused path change only the
    # speed (and which draws a block makes), so a restart under other settings keeps the blocks
    stamp = {"eval": ec.model_dump(mode="json", include=ESTIMAND_KEYS), "block": block,
             "epoch": run.epoch}

    def path(b: int) -> Path:
        return folder / f"block_{b:04d}.pt"

    def read_saved() -> dict[int, tuple[dict, float | None]]:
        folder.mkdir(parents=True, exist_ok=True)
        saved = {}
        for b in range(num_blocks):
            if path(b).is_file():
                got = load_checkpoint(path(b))
                if _estimand(got["stamp"]) != _estimand(stamp):
                    raise ValueError(f"{path(b)} was written by another evaluation; remove "
                                     f"{folder}")
                saved[b] = (got["estimate"], got.get("wall_s"))  # None: before blocks were timed
        return saved

    def score(b: int) -> tuple[dict, float]:
        t0 = time.perf_counter()
        est = evaluate(run, ec, progress=progress and world.size == 1,
                       points=slice(b * block, (b + 1) * block), seed=ec.seed + b)
        return vars(est), time.perf_counter() - t0

    def keep(b: int, result: tuple[dict, float]) -> None:
        if world.is_main:
            save_checkpoint(path(b), {"stamp": stamp, "estimate": result[0],
                                      "wall_s": result[1]})
        done[b] = result

    done = on_main(read_saved, world, "reading the saved blocks")
    score_rounds(score, [b for b in range(num_blocks) if b not in done], world, keep,
                 progress=progress and world.size > 1)
    whole = MarginalEstimate.concat([MarginalEstimate(**done[b][0]) for b in range(num_blocks)])
    # the compute time of every block, whichever process (and restart) computed it
    seconds = [done[b][1] for b in range(num_blocks)]
    whole.extra["compute_s"] = sum(t for t in seconds if t is not None)
    whole.extra["blocks_untimed"] = sum(t is None for t in seconds)
    return whole


def _world(run):
    """This process's :class:`~vaelab.runs.world.World`, its group joined (torchrun),
    on the device of ``run``'s VAE."""
    from vaelab.runs.world import join

    return join(next(run.vae.parameters()).device)


def _with_time(est) -> dict:
    """A blockwise estimate's summary with its blocks' compute time (``compute_s``; the blocks
    written before blocks were timed are counted in ``blocks_untimed``)."""
    return {**est.summary(), "compute_s": est.extra["compute_s"],
            "blocks_untimed": est.extra["blocks_untimed"]}


def _estimand(stamp: dict) -> dict:
    """A block's stamp restricted to what its numbers estimate (:data:`ESTIMAND_KEYS`)."""
    return {"eval": {k: stamp["eval"].get(k) for k in sorted(ESTIMAND_KEYS)},
            "block": stamp["block"], "epoch": stamp["epoch"]}


def _stage(path: Path, compute, world) -> dict:
    """A result computed once: read from ``path`` (by rank 0) when there, else computed (by
    every process, when it is sharded) and written by rank 0; the same on every process."""
    from vaelab.runs.world import on_main

    saved = on_main(lambda: json.loads(path.read_text()) if path.is_file() else None, world,
                    f"reading {path.name}")
    if saved is not None:
        return saved
    t0 = time.perf_counter()
    out = compute()
    out["wall_s"] = time.perf_counter() - t0
    if world.is_main:
        atomic_write_text(path, json.dumps(json_safe(out), indent=1))
    return out


def ais_minus_is(run, ec_is, ec_ais, folder: Path, ais_folder: Path | None = None) -> dict:
    r"""AIS minus IS log p̂(x), point by point on the test points both scored (read from their
    blocks, ``folder/is`` and ``ais_folder``, by default ``folder/ais``):

    .. math:: d_i = \log \hat p_{\mathrm{AIS}}(x_i) - \log \hat p_{\mathrm{IS},K}(x_i),
              \qquad \bar d \pm \mathrm{sd}(d) / \sqrt{m}

    over the m points both scored. Both are stochastic lower bounds (in expectation), so a
    positive mean says by how much IS with K draws understates log p(x) on these points, at
    least (Wu et al. 2017, *On the quantitative analysis of decoder-based generative models*).

    :returns: ``mean``, ``stderr``, ``frac_ais_higher`` and ``num_points`` (only
        ``num_points = 0`` when no point was scored by both)."""
    from vaelab.data.subsets import spread_indices

    n = getattr(run.data, ec_is.split).shape[0]
    is_est = evaluate_in_blocks(run, ec_is, folder / "is")
    ais_est = evaluate_in_blocks(run, ec_ais, ais_folder or folder / "ais",
                                 block=ec_ais.block_size or AIS_BLOCK)
    at = {j: i for i, j in enumerate(spread_indices(n, ec_is.limit).tolist())}
    pairs = [(at[j], i) for i, j in enumerate(spread_indices(n, ec_ais.limit).tolist())
             if j in at]
    if not pairs:
        return {"num_points": 0}
    d = (ais_est.log_px[[i for _, i in pairs]].double()
         - is_est.log_px[[i for i, _ in pairs]].double())  # (m,)
    return {"mean": float(d.mean()), "stderr": float(d.std() / math.sqrt(d.numel())),
            "frac_ais_higher": float((d > 0).double().mean()), "num_points": d.numel()}


def _bdmc(run, spec: dict, seed: int) -> dict:
    """BDMC bounds on ``spec["points"]`` points simulated from the model: one pass seeded by
    ``seed`` in one process; under torchrun blocks shared among the processes
    (:func:`~vaelab.runs.sharded.bdmc_sharded`)."""
    import pyro

    from vaelab.runs.sharded import bdmc_sharded

    model, guide = run.vae.eval_pair()
    x_like = next(run.vae.parameters()).new_zeros(spec["points"], run.data.train.shape[1])
    with pyro.validation_enabled(False):
        r = bdmc_sharded(model, guide, x_like, seed=seed, num_steps=spec["steps"],
                         num_chains=spec["chains"], num_leapfrog=spec["leapfrog"], base="prior")
    return r.summary()


def _jang(run, history: list[dict], progress: bool, num_draws: int = 1000) -> dict:
    """Jang et al.'s test metric (:func:`~vaelab.inference.relaxed_bound.jang_bound`, 1000
    draws per test image) at the temperature of the evaluated checkpoint: in one process
    without ``eval.block_size``, one pass seeded by ``eval.seed``; else in blocks of
    ``eval.block_size`` images (default under torchrun: 100) shared among the processes, block
    b seeded by :func:`~vaelab.inference.noise.block_seed` (as
    :func:`~vaelab.runs.sharded.evaluate_sharded` does)."""
    from tqdm.auto import tqdm

    from vaelab.inference.noise import block_seed
    from vaelab.inference.relaxed_bound import jang_bound
    from vaelab.runs.world import score_blocks
    from vaelab.seed import seed_all

    world, seed = _world(run), run.cfg.eval.seed
    step = next(r["step"] for r in history if r["epoch"] == run.epoch + 1)  # rows count from 1
    tau = run.vae.latent.temperature_at(step)
    x = run.pre.eval_split(run.split(run.cfg.eval.split, run.cfg.eval.limit), seed)
    block = run.cfg.eval.block_size or (100 if world.size > 1 else None)
    if block is None:
        seed_all(seed)
        parts = [jang_bound(run.vae, x[i : i + 100], tau, num_draws)
                 for i in tqdm(range(0, x.shape[0], 100), disable=not progress, leave=False,
                               desc="Jang bound")]
    else:
        def one(b: int, points: slice) -> torch.Tensor:
            seed_all(block_seed(seed, b))
            return jang_bound(run.vae, x[points], tau, num_draws).cpu()

        parts = score_blocks(one, x.shape[0], block, world, progress=progress and world.is_main)
    values = torch.cat(parts)
    return {"jang_bound": float(values.mean()),
            "jang_bound_stderr": float(values.std() / math.sqrt(values.numel())),
            "num_draws": num_draws, "temperature": float(tau), "num_points": values.numel()}


def evaluate_run(recipe: Recipe, run_dir: Path, history: list[dict], *,
                 progress: bool = False) -> dict:
    """IS (all test points), AIS and BDMC of a trained run folder (its metrics ``history``),
    each stage resumable; under torchrun sharded among the processes, every process reading
    the run folder (one machine, or a shared file system, as ``vaelab evaluate``) and rank 0
    alone writing."""
    from vaelab.runs.run import eval_config, load_run

    run = load_run(run_dir)
    world = _world(run)
    folder = run_dir / "reproduce"
    if world.is_main:
        folder.mkdir(exist_ok=True)
    ec = run.cfg.eval

    def is_stage() -> dict:
        return _with_time(evaluate_in_blocks(run, ec, folder / "is", progress=progress))

    out: dict[str, Any] = {"is": _stage(folder / "is.json", is_stage, world)}
    if not run.vae.latent.continuous and run.vae.latent.relaxed:
        out["paper_metric"] = _stage(folder / "paper_metric.json",
                                     lambda: _jang(run, history, progress), world)
    ais, bd = recipe.meta.get("ais"), recipe.meta.get("bdmc")
    if run.vae.latent.continuous and ais and ais.get("points"):
        ec_ais = eval_config(run.cfg, [
            "eval.method=ais", f"eval.limit={ais['points']}", f"eval.ais_steps={ais['steps']}",
            f"eval.ais_chains={ais['chains']}", f"eval.ais_leapfrog={ais['leapfrog']}",
            "eval.exact=false"])

        def ais_stage() -> dict:
            est = evaluate_in_blocks(run, ec_ais, folder / "ais",
                                     block=ec_ais.block_size or AIS_BLOCK, progress=progress)
            return {**_with_time(est), "steps": ais["steps"], "chains": ais["chains"],
                    "leapfrog": ais["leapfrog"]}

        out["ais"] = _stage(folder / "ais.json", ais_stage, world)
        out["ais_vs_is"] = _stage(folder / "ais_vs_is.json",
                                  lambda: ais_minus_is(run, ec, ec_ais, folder), world)
    if run.vae.latent.continuous and bd and bd.get("points"):
        out["bdmc"] = _stage(folder / "bdmc.json", lambda: _bdmc(run, bd, ec.seed), world)
    return out

