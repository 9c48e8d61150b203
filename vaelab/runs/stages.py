"""A recipe's evaluation in resumable stages, each written to ``RUN/reproduce/`` as it completes.

:func:`evaluate_run` evaluates the best-validation checkpoint of a trained run folder:

* IS with the recipe's K (5000) on the whole test split, which also gives the test ELBO (the
  mean log weight over the K draws);
* AIS on ``ais.points`` test points spread evenly over the split (continuous latents), and AIS
  minus IS on the points both scored (:func:`ais_minus_is`);
* BDMC bounds on ``bdmc.points`` points simulated from the model (continuous latents);
* for a discrete latent, from the first ``bound_draws`` (1000) one-hot draws of the same IS
  pass, the two bounds on the *discrete* model that Jang et al. (2017, §4) may mean by "a
  multi-sample bound for evaluation with m = 1000": the m-sample importance-weighted bound and
  the single-sample ELBO averaged over the m draws (``is.json``'s ``first_draws``);
* for a relaxed categorical guide, also the relaxed-sample figure
  (:func:`~vaelab.inference.relaxed_bound.jang_bound`, 1000 draws per test image), which
  bounds neither model (unless the guide is straight-through) and is no headline.

Every stage result records what it estimated (:func:`block_estimand`: the evaluated
parameters' SHA-256 and epoch, the ``[eval]`` keys that define the estimate — K, T, points,
seed — and the block size), in its file and in ``evaluate_run``'s ``estimands``; a stage (or a
block) whose record differs from what would be estimated now is recomputed, and its old files
are set aside under ``reproduce/set_aside/`` (never mixed with the new ones). A block written
before blocks recorded the digest is matched on the rest, the epoch included. The ``[eval]``
settings are the run folder's ``config.toml`` (those of the last ``vaelab reproduce``, its
``--set eval.*`` included), not the checkpoint's.

Every stage is resumable: IS and AIS run in blocks of points (:func:`evaluate_in_blocks`), each
block seeded by its index and saved as it completes, each stage's summary is written once
(``is.json``, ``ais.json``, ...), so a restart skips what is done and reaches the numbers an
uninterrupted pass gives. Under torchrun every stage is sharded: the IS and AIS blocks still to
do go one per process per round, with the numbers one process gives (a block's seed is its
index); BDMC and the relaxed-sample figure share their blocks as ``vaelab bdmc`` does. Every
process reads the run folder; rank 0 alone writes.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from vaelab.config import json_safe
from vaelab.runs.checkpoint import atomic_write_text
from vaelab.runs.recipes import ChainSettings, Recipe

__all__ = ["AIS_BLOCK", "BLOCK", "ESTIMAND_KEYS", "ais_minus_is", "block_estimand",
           "evaluate_in_blocks", "evaluate_run", "model_digest"]

#: points per block of a resumable evaluation: IS, and AIS (slower per point), unless
#: ``eval.block_size`` says
BLOCK = 500
AIS_BLOCK = 100
#: the ``[eval]`` keys that define what a block estimates (its stamp)
ESTIMAND_KEYS = {"split", "num_samples", "limit", "seed", "method", "proposal", "ais_steps",
                 "ais_chains", "ais_leapfrog", "ais_base"}
#: the keys of :data:`ESTIMAND_KEYS` each method does not read
_UNREAD = {"is": {"ais_steps", "ais_chains", "ais_leapfrog", "ais_base"},
           "ais": {"num_samples", "proposal"}}


def _eval_estimand(raw: dict) -> dict:
    """The keys of :data:`ESTIMAND_KEYS` that the method of ``raw`` (an ``[eval]`` dump or a
    saved stamp's) reads, in order."""
    unread = _UNREAD.get(raw.get("method", "is"), set())
    return {k: raw.get(k) for k in sorted(ESTIMAND_KEYS - unread)}


def model_digest(run) -> str:
    """SHA-256 of the evaluated parameters (:func:`~vaelab.runs.checkpoint.content_digest` of
    the VAE's state dict): what a stage's numbers are numbers of."""
    from vaelab.runs.checkpoint import content_digest

    return content_digest(run.vae.state_dict())


def block_estimand(run, ec, block: int, curve_ks: list[int] | None = None) -> dict:
    """What a block of an evaluation estimates (its stamp): the ``[eval]`` keys of
    :data:`ESTIMAND_KEYS` (K, T, points, seed, ...), the block size (block b is seeded by
    ``seed + b``), the checkpoint's epoch and parameters' digest, and the K of the curve kept
    (the first-m bounds). Batching, the memory budget and the fused path change only the speed,
    so a restart under other settings keeps the blocks."""
    return {"eval": _eval_estimand(ec.model_dump(mode="json", include=ESTIMAND_KEYS)),
            "block": block, "epoch": run.epoch, "model_sha256": model_digest(run),
            "curve_ks": None if curve_ks is None else list(curve_ks)}


def evaluate_in_blocks(run, ec, folder: Path, *, block: int | None = None,
                       progress: bool = False, curve_ks: list[int] | None = None,
                       say: Callable[[str], None] | None = None, label: str = "IS"):
    """:func:`vaelab.runs.run.evaluate` over the ``ec.limit`` points in blocks of ``block``
    (default: ``ec.block_size``, else :data:`BLOCK`), block b
    seeded with ``ec.seed + b`` and saved to ``folder/block_BBBB.pt`` as it completes; blocks
    already there are read, not recomputed, when they estimate what would be estimated now
    (:func:`block_estimand`); else the folder is set aside (:func:`_set_aside`) and every block
    computed again. ``curve_ks``: also the bounds of the first k draws of each point
    (:meth:`~vaelab.inference.marginal.MarginalEstimate.first_draws`). ``say``: called on rank
    0 with one line per block saved ("``label``: block 3 of 20 (41 s)"). Under torchrun the
    blocks still to do are scored one per process per round
    (:func:`~vaelab.runs.world.score_rounds`) and rank 0 saves them: the same numbers whatever
    the number of processes or restarts.

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
    stamp = block_estimand(run, ec, block, curve_ks)

    def path(b: int) -> Path:
        return folder / f"block_{b:04d}.pt"

    def read_saved() -> dict[int, tuple[dict, float | None]]:
        folder.mkdir(parents=True, exist_ok=True)
        saved = {}
        for p in sorted(folder.glob("block_*.pt")):
            got = load_checkpoint(p)
            if not _same_estimand(got["stamp"], stamp):  # another checkpoint, K, T, points...
                _set_aside(folder, f"{p.name} estimated something else")
                folder.mkdir()
                return {}
            b = int(p.stem.split("_")[1])
            if b < num_blocks:
                saved[b] = (got["estimate"], got.get("wall_s"))  # None: before blocks were timed
        return saved

    def score(b: int) -> tuple[dict, float]:
        t0 = time.perf_counter()
        est = evaluate(run, ec, progress=progress and world.size == 1, curve_ks=curve_ks,
                       points=slice(b * block, (b + 1) * block), seed=ec.seed + b)
        return vars(est), time.perf_counter() - t0

    def keep(b: int, result: tuple[dict, float]) -> None:
        if world.is_main:
            save_checkpoint(path(b), {"stamp": stamp, "estimate": result[0],
                                      "wall_s": result[1]})
        done[b] = result
        if world.is_main and say is not None:
            say(f"{label}: block {len(done)} of {num_blocks} ({result[1]:.0f} s)")

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
    """A block's stamp restricted to what its numbers estimate (:func:`block_estimand`; the keys
    a block written by an older vaelab lacks are None)."""
    return {"eval": _eval_estimand(stamp["eval"]), "block": stamp["block"], "epoch": stamp["epoch"],
            "model_sha256": stamp.get("model_sha256"), "curve_ks": stamp.get("curve_ks")}


def _same_estimand(saved: dict, now: dict) -> bool:
    """Whether a saved block estimates what ``now`` does; a block written before blocks
    recorded the parameters' digest is matched on the rest (the checkpoint's epoch included)."""
    a, b = _estimand(saved), _estimand(now)
    if a["model_sha256"] is None:
        b["model_sha256"] = None
    return a == b


def _set_aside(path: Path, why: str) -> Path:
    """Move a stale stage file or block folder to ``reproduce/set_aside/NAME-N`` (N: the first
    free number), saying so in one note."""
    from vaelab.notes import note

    root = path.parent / "set_aside"
    root.mkdir(exist_ok=True)
    n = 1
    while (root / f"{path.name}-{n}").exists():
        n += 1
    dest = root / f"{path.name}-{n}"
    path.rename(dest)
    note(f"{path} set aside to {dest}: {why}; computing it again")
    return dest


def _stage(path: Path, compute, world, estimand: dict) -> dict:
    """A result computed once: read from ``path`` (by rank 0) when it records ``estimand``
    (else the file is set aside), else computed (by every process, when it is sharded) and
    written by rank 0 with ``estimand``; the same on every process, without ``estimand``."""
    from vaelab.runs.world import on_main

    estimand = json.loads(json.dumps(json_safe(estimand)))  # as it reads back

    def read() -> dict | None:
        if not path.is_file():
            return None
        saved = json.loads(path.read_text())
        if saved.pop("estimand", None) == estimand:
            return saved
        _set_aside(path, "it was computed for another estimand (checkpoint, K, T, points, "
                         "seed) or before stages recorded theirs")
        return None

    saved = on_main(read, world, f"reading {path.name}")
    if saved is not None:
        return saved
    t0 = time.perf_counter()
    out = compute()
    out["wall_s"] = time.perf_counter() - t0
    if world.is_main:
        atomic_write_text(path, json.dumps(json_safe({**out, "estimand": estimand}), indent=1))
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
    from vaelab.data.subsets import common_positions

    n = getattr(run.data, ec_is.split).shape[0]
    is_est = evaluate_in_blocks(run, ec_is, folder / "is")
    ais_est = evaluate_in_blocks(run, ec_ais, ais_folder or folder / "ais",
                                 block=ec_ais.block_size or AIS_BLOCK)
    at_is, at_ais = common_positions(n, ec_is.limit, ec_ais.limit)
    if not at_is.numel():
        return {"num_points": 0}
    d = ais_est.log_px[at_ais].double() - is_est.log_px[at_is].double()  # (m,)
    return {"mean": float(d.mean()), "stderr": float(d.std() / math.sqrt(d.numel())),
            "frac_ais_higher": float((d > 0).double().mean()), "num_points": d.numel()}


def _bdmc(run, spec: ChainSettings, seed: int, fused: bool = True) -> dict:
    """BDMC bounds on ``spec.points`` points simulated from the model: one pass seeded by
    ``seed`` in one process; under torchrun blocks shared among the processes
    (:func:`~vaelab.runs.sharded.bdmc_sharded`). ``fused`` (``eval.fused``): both directions'
    AIS with the untraced log joint where it applies (the same values and draws)."""
    import pyro

    from vaelab.runs.run import fused_log_joint
    from vaelab.runs.sharded import bdmc_sharded

    model, guide = run.vae.eval_pair()
    x_like = next(run.vae.parameters()).new_zeros(spec.points, run.data.train.shape[1])
    ec = run.cfg.eval.model_copy(update={"fused": fused, "ais_chains": spec.chains,
                                         "ais_base": "prior"})
    with pyro.validation_enabled(False):
        r = bdmc_sharded(model, guide, x_like, seed=seed, num_steps=spec.steps,
                         num_chains=spec.chains, num_leapfrog=spec.leapfrog, base="prior",
                         log_joint_for=fused_log_joint(run, ec))
    return r.summary()


def _jang(run, ec, history: list[dict], progress: bool, num_draws: int = 1000) -> dict:
    """The relaxed-sample figure (:func:`~vaelab.inference.relaxed_bound.jang_bound`, 1000
    draws per test image) at the temperature of the evaluated checkpoint. It bounds neither the
    discrete nor the relaxed model (unless the guide is straight-through, where it is the
    discrete ELBO), so it is never a headline. In one process
    without ``ec.block_size``, one pass seeded by ``ec.seed``; else in blocks of
    ``ec.block_size`` images (default under torchrun: 100) shared among the processes, block
    b seeded by :func:`~vaelab.inference.noise.block_seed` (as
    :func:`~vaelab.runs.sharded.evaluate_sharded` does)."""
    from tqdm.auto import tqdm

    from vaelab.inference.noise import block_seed
    from vaelab.inference.relaxed_bound import jang_bound
    from vaelab.runs.world import score_blocks
    from vaelab.seed import seed_all

    world, seed = _world(run), ec.seed
    step = next(r["step"] for r in history if r["epoch"] == run.epoch + 1)  # rows count from 1
    tau = run.vae.latent.temperature_at(step)
    x = run.pre.eval_split(run.split(ec.split, ec.limit), seed)
    block = ec.block_size or (100 if world.size > 1 else None)
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
            "num_draws": num_draws, "temperature": float(tau), "num_points": values.numel(),
            "bounds": "neither model: relaxed samples fed to the decoder (straight-through: "
                      "one-hot, the discrete model's ELBO)"}


def _eval_settings(run, run_dir: Path):
    """The ``[eval]`` settings to evaluate with: the run folder's ``config.toml`` (written by
    the last ``train`` call, so ``vaelab reproduce --set eval.KEY=...`` counts), else the
    checkpoint's."""
    from vaelab.resolve import load_config

    path = run_dir / "config.toml"
    return load_config(path, saved=True).eval if path.is_file() else run.cfg.eval


def evaluate_run(recipe: Recipe, run_dir: Path, history: list[dict], *,
                 progress: bool = False, eval_cfg=None,
                 say: Callable[[str], None] | None = None) -> dict:
    """IS (all test points), AIS and BDMC of a trained run folder (its metrics ``history``),
    each stage resumable; under torchrun sharded among the processes, every process reading
    the run folder (one machine, or a shared file system, as ``vaelab evaluate``) and rank 0
    alone writing. ``eval_cfg``: the ``[eval]`` settings (default :func:`_eval_settings`).
    ``say``: called on rank 0 with one line per stage ("stage 2/4: AIS") and per block.

    :returns: each stage's result by name, and ``estimands``: what each estimated."""
    from vaelab.runs.run import load_run

    run = load_run(run_dir)
    world = _world(run)
    folder = run_dir / "reproduce"
    if world.is_main:
        folder.mkdir(exist_ok=True)
    ec = eval_cfg if eval_cfg is not None else _eval_settings(run, run_dir)
    table = recipe.table
    discrete = not run.vae.latent.continuous
    m = min(table.bound_draws, ec.num_samples)
    curve = [m] if discrete and ec.method == "is" else None
    estimands: dict[str, Any] = {"is": block_estimand(run, ec, ec.block_size or BLOCK, curve)}
    # the relaxed-sample figure: a Gumbel-softmax guide's own (a straight-through estimator's
    # surrogate decodes one-hot samples: its figure would be the one-hot ELBO of the IS stage)
    relaxed = bool(discrete and run.vae.latent.relaxed
                   and getattr(run.vae.inference.posterior, "surrogate", None) is None)
    ais = table.ais if not discrete and table.ais and table.ais.points else None
    bdmc = table.bdmc if not discrete and table.bdmc and table.bdmc.points else None
    stage = _announcer(say, 1 + relaxed + 2 * (ais is not None) + (bdmc is not None), world,
                      folder)

    def is_stage() -> dict:
        est = evaluate_in_blocks(run, ec, folder / "is", progress=progress, curve_ks=curve,
                                 say=say)
        return {**_with_time(est), **({"first_draws": est.first_draws(m)} if curve else {})}

    stage("IS", "is.json")
    out: dict[str, Any] = {"is": _stage(folder / "is.json", is_stage, world, estimands["is"])}
    if relaxed:
        stage("relaxed-sample figure", "paper_metric.json")
        estimands["paper_metric"] = {
            "eval": ec.model_dump(mode="json", include={"split", "limit", "seed", "block_size"}),
            "epoch": run.epoch, "model_sha256": model_digest(run), "num_draws": 1000}
        out["paper_metric"] = _stage(folder / "paper_metric.json",
                                     lambda: _jang(run, ec, history, progress), world,
                                     estimands["paper_metric"])
    if ais is not None:
        out.update(_ais_stages(run, ec, ais, folder, estimands, progress, stage, say))
    if bdmc is not None:
        stage("BDMC", "bdmc.json")
        bd = bdmc
        estimands["bdmc"] = {**bd.model_dump(), "seed": ec.seed, "epoch": run.epoch,
                             "model_sha256": model_digest(run)}
        out["bdmc"] = _stage(folder / "bdmc.json",
                             lambda: _bdmc(run, bd, ec.seed, ec.fused), world,
                             estimands["bdmc"])
    out["estimands"] = estimands
    return out


def _announcer(say: Callable[[str], None] | None, n: int, world,
               folder: Path) -> Callable[[str, str], None]:
    """``stage(name, file)``: says "stage i/n: name" on rank 0 (and that its result is read
    back when ``folder/file`` holds one), counting the stages; a no-op without ``say``."""
    count = [0]

    def stage(name: str, file: str) -> None:
        count[0] += 1
        if say is not None and world.is_main:
            done = " (done before: read back if it estimated the same)" if (
                folder / file).is_file() else ""
            say(f"stage {count[0]}/{n}: {name}{done}")

    return stage


def _ais_stages(run, ec, ais: ChainSettings, folder: Path, estimands: dict,
                progress: bool, stage: Callable[[str, str], None] = lambda *_: None,
                say: Callable[[str], None] | None = None) -> dict:
    """AIS on ``ais.points`` spread test points, and AIS − IS on the points both scored; each
    stage's estimand added to ``estimands``."""
    ec_ais = ec.model_copy(update={"method": "ais", "limit": ais.points, "ais_steps": ais.steps,
                                   "ais_chains": ais.chains, "ais_leapfrog": ais.leapfrog,
                                   "exact": False})
    block = ec_ais.block_size or AIS_BLOCK
    estimands["ais"] = block_estimand(run, ec_ais, block)
    estimands["ais_vs_is"] = {"is": estimands["is"], "ais": estimands["ais"]}
    world = _world(run)

    def ais_stage() -> dict:
        est = evaluate_in_blocks(run, ec_ais, folder / "ais", block=block, progress=progress,
                                 say=say, label="AIS")
        return {**_with_time(est), "steps": ais.steps, "chains": ais.chains,
                "leapfrog": ais.leapfrog}

    stage("AIS", "ais.json")
    out = {"ais": _stage(folder / "ais.json", ais_stage, world, estimands["ais"])}
    stage("AIS − IS on the same points", "ais_vs_is.json")
    return {**out, "ais_vs_is": _stage(folder / "ais_vs_is.json",
                                lambda: ais_minus_is(run, ec, ec_ais, folder), world,
                                estimands["ais_vs_is"])}
