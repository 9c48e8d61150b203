"""Paper recipes, run end to end: ``vaelab reproduce NAME --out DIR [--seeds N]``.

A recipe is a config shipped in ``vaelab/recipes/NAME.toml`` (so an installed wheel has it) that
follows a published protocol, each setting naming its source (``../shared/PROTOCOLS.md``), plus a
``[recipe]`` table: the paper, its budget, the published numbers per variant, the variants (lists
of ``--set`` overrides), the AIS / BDMC settings of the evaluation, and optionally the pairs of
variants whose differences :func:`paired_table` takes image by image (``paired``; a reference
``RECIPE/VARIANT`` names another recipe's variant, e.g. the VampPrior against the standard prior).

:func:`reproduce` trains every variant × seed into ``DIR/VARIANT/seedS`` (an ordinary run folder,
resumed where it stopped, skipped when finished), then evaluates the best-validation checkpoint:

* IS with the recipe's K (5000) on the whole test split, which also gives the test ELBO (the
  mean log weight over the K draws);
* AIS on ``ais.points`` test points spread evenly over the split (continuous latents);
* BDMC bounds on ``bdmc.points`` points simulated from the model (continuous latents);
* for a relaxed categorical guide, Jang et al.'s test metric
  (:func:`~vaelab.inference.relaxed_bound.jang_bound`, 1000 draws per test image) beside the
  discrete model's ELBO and log p(x).

Every evaluation is resumable: it runs in blocks of points, each block seeded by its index and
written to ``DIR/VARIANT/seedS/reproduce/`` as it completes, so a restart skips what is done and
reaches the numbers an uninterrupted pass gives. Under torchrun
(``torchrun --nproc_per_node=W -m vaelab reproduce NAME --out DIR``) training is data-parallel
(:mod:`vaelab.runs.data_parallel`) and every stage is sharded: the IS and AIS blocks still to
do go one per process per round, with the numbers one process gives (a block's seed is its
index); BDMC and Jang's metric share their blocks as ``vaelab bdmc`` does. Every process reads
the run folder; rank 0 alone writes. :func:`table` gathers the results of any set of
recipe folders into the Markdown table of ``experiments/results/reproduce.md``.

Example::

    from vaelab.runs.reproduce import reproduce
    rows = reproduce("gumbel_softmax", "runs/gumbel", variants=["gumbel"])
"""

from __future__ import annotations

import copy
import json
import math
import platform
import time
import tomllib
from dataclasses import dataclass
from functools import partial
from importlib import resources
from pathlib import Path
from typing import Any

import torch

from vaelab.config import ConfigError, RunConfig, json_safe
from vaelab.runs.checkpoint import atomic_write_text, read_metrics
from vaelab.resolve import apply_overrides, parse_value, resolve

__all__ = ["Recipe", "ais_minus_is", "chart_rows", "evaluate_in_blocks", "load_recipe",
           "paired_table", "recipe_names", "reproduce", "table"]

#: points per block of a resumable evaluation: IS, and AIS (slower per point), unless
#: ``eval.block_size`` says
BLOCK = 500
AIS_BLOCK = 100
#: the ``[eval]`` keys that define what a block estimates (its stamp)
ESTIMAND_KEYS = {"split", "num_samples", "limit", "seed", "method", "proposal", "ais_steps",
                 "ais_chains", "ais_leapfrog", "ais_base"}
#: the schema of a recipe's ``[recipe]`` table
_META_KEYS = {"paper", "source", "budget", "published", "pythae", "ais", "bdmc", "variants",
              "metric", "paired"}


@dataclass(frozen=True)
class Recipe:
    """A shipped recipe: its ``[recipe]`` table and the config it extends."""

    name: str
    meta: dict[str, Any]
    raw: dict[str, Any]  #: the config tables, as written

    @property
    def variants(self) -> dict[str, list[str]]:
        return dict(self.meta.get("variants", {"default": []}))

    def published(self, variant: str) -> float | None:
        return self.meta.get("published", {}).get(variant)

    def pythae(self, variant: str) -> float | None:
        return self.meta.get("pythae", {}).get(variant)

    def config(self, variant: str, seed_offset: int = 0,
               overrides: list[str] | tuple[str, ...] = ()) -> RunConfig:
        """The resolved config of ``variant`` at seed ``train.seed + seed_offset``, with
        ``overrides`` (``KEY=VALUE``) last."""
        if variant not in self.variants:
            raise ConfigError(f"recipe {self.name!r} has no variant {variant!r}; variants: "
                              f"{', '.join(self.variants)}")
        raw = apply_overrides(self.raw, list(self.variants[variant]))
        seed = raw.get("train", {}).get("seed", 0) + seed_offset
        return resolve(apply_overrides(raw, [f"train.seed={seed}", *overrides]))


def with_recipe_overrides(recipe: Recipe, overrides) -> tuple[Recipe, list[str]]:
    """Apply the ``recipe.KEY=VALUE`` overrides (e.g. ``recipe.ais.points=100``, a smaller
    evaluation) to the recipe's table; returns it and the remaining config overrides."""
    mine = [o for o in overrides if o.strip().startswith("recipe.")]
    if not mine:
        return recipe, list(overrides)
    meta = copy.deepcopy(recipe.meta)
    for item in mine:
        key, text = item.split("=", 1)
        *path, last = key.strip().split(".")[1:]
        node = meta
        for k in path:
            node = node.setdefault(k, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {item!r}: recipe.{k} is not a table")
        node[last] = parse_value(text)
    unknown = set(meta) - _META_KEYS
    if unknown:
        raise ConfigError(f"recipe {recipe.name!r}: unknown [recipe] keys {sorted(unknown)}")
    return Recipe(recipe.name, meta, recipe.raw), [o for o in overrides if o not in mine]


def recipe_names() -> list[str]:
    """The recipes shipped with vaelab."""
    folder = resources.files("vaelab") / "recipes"
    return sorted(p.name[:-5] for p in folder.iterdir() if p.name.endswith(".toml"))


def load_recipe(name: str) -> Recipe:
    """:raises ConfigError: no such recipe, or a malformed ``[recipe]`` table."""
    if name not in recipe_names():
        raise ConfigError(f"unknown recipe {name!r}; recipes: {', '.join(recipe_names())}")
    raw = _read_recipe(name)
    meta = raw.pop("recipe", {})
    unknown = set(meta) - _META_KEYS
    if unknown:
        raise ConfigError(f"recipe {name!r}: unknown [recipe] keys {sorted(unknown)}")
    recipe = Recipe(name, meta, raw)
    strays = {v for pair in meta.get("paired", []) for v in pair
              if v not in recipe.variants and not _other_variant(v)}
    if strays:
        raise ConfigError(f"recipe {name!r}: [recipe] paired names no variant: {sorted(strays)}")
    return recipe


def _other_variant(ref: str) -> bool:
    """Whether ``ref`` is ``RECIPE/VARIANT``, a variant of a shipped recipe."""
    other, _, variant = ref.partition("/")
    if not variant or other not in recipe_names():
        return False
    return variant in _read_recipe(other).get("recipe", {}).get("variants", {"default": []})


def _read_recipe(name: str) -> dict[str, Any]:
    """The TOML of shipped recipe ``name``, as written."""
    return tomllib.loads((resources.files("vaelab") / "recipes" / f"{name}.toml").read_text())


# --------------------------------------------------------------------------------------------
# resumable evaluation


def evaluate_in_blocks(run, ec, folder: Path, *, block: int | None = None,
                       progress: bool = False):
    """:func:`vaelab.runs.run.evaluate` over the ``ec.limit`` points in blocks of ``block`` (default:
    ``ec.block_size``, else :data:`BLOCK`), block b
    seeded with ``ec.seed + b`` and saved to ``folder/block_BBBB.pt`` as it completes; blocks
    already there are read, not recomputed. Under torchrun the blocks still to do are scored one
    per process per round (:func:`~vaelab.runs.world.score_rounds`) and rank 0 saves
    them: the same numbers whatever the number of processes or restarts.

    :returns: the :class:`~vaelab.inference.marginal.MarginalEstimate` over all the points (on
        every process).
    """
    from vaelab.runs.checkpoint import load_checkpoint, save_checkpoint
    from vaelab.runs.world import on_main, score_rounds
    from vaelab.inference.marginal import MarginalEstimate
    from vaelab.runs.run import evaluate

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

    from vaelab.runs.world import score_blocks
    from vaelab.inference.relaxed_bound import jang_bound
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


# --------------------------------------------------------------------------------------------


def _budget_reached(cfg: RunConfig, history: list[dict]) -> dict:
    from vaelab.runs.train import valid_score

    last = history[-1] if history else {"epoch": 0, "step": 0}
    best = max(history, key=valid_score) if history else None
    stopped = (cfg.train.patience > 0 and len(history) < cfg.train.epochs and best is not None
               and last["epoch"] - best["epoch"] >= cfg.train.patience)
    return {"epochs": last["epoch"], "steps": last["step"], "epochs_planned": cfg.train.epochs,
            "best_epoch": None if best is None else best["epoch"],
            "valid_particles": cfg.train.valid_particles,
            "early_stopped": stopped, "finished": stopped or last["epoch"] >= cfg.train.epochs,
            "train_wall_s": sum(r.get("epoch_time", 0.0) for r in history)}


def reproduce(
    name: str,
    out: str | Path,
    *,
    seeds: int = 1,
    variants: list[str] | None = None,
    overrides: list[str] | tuple[str, ...] = (),
    evaluate: bool = True,
    progress: bool = False,
) -> list[dict]:
    """Train (resuming) and evaluate every variant × seed of recipe ``name`` under ``out``;
    write ``out/reproduce.md`` and each run's ``reproduce/result.json``.

    :param seeds: seeds per variant: ``train.seed``, ``train.seed + 1``, ...
    :param variants: the variants to run (default: all of the recipe's).
    :param overrides: ``KEY=VALUE`` applied last (e.g. a smaller budget, stated in the table as
        the budget reached).
    :param evaluate: also evaluate (else train only).
    :returns: one result dict per run.
    """
    from vaelab.runs.world import World, on_main
    from vaelab.runs.folder import latest_commit
    from vaelab.runs.train import train

    recipe, out = load_recipe(name), Path(out)
    given = list(overrides)
    recipe, overrides = with_recipe_overrides(recipe, given)
    variants = variants or list(recipe.variants)
    results = []
    for variant in variants:
        for s in range(seeds):
            cfg = recipe.config(variant, s, overrides)
            run_dir = out / variant / f"seed{cfg.train.seed}"
            # under torchrun train joins the process group, which the stages below then use
            train(cfg, run_dir, resume=latest_commit(run_dir) is not None)
            world = World.from_env()
            history = on_main(partial(read_metrics, run_dir), world, "reading the metrics")
            result = {"recipe": name, "variant": variant, "seed": cfg.train.seed,
                      "run_dir": str(run_dir), "overrides": given,
                      "published": recipe.published(variant), "pythae": recipe.pythae(variant),
                      "budget_paper": recipe.meta.get("budget", ""),
                      "budget": _budget_reached(cfg, history),
                      "machine": _machine(world)}
            if evaluate:
                result.update(evaluate_run(recipe, run_dir, history, progress=progress))
            if world.is_main:
                (run_dir / "reproduce").mkdir(exist_ok=True)
                atomic_write_text(run_dir / "reproduce" / "result.json",
                                  json.dumps(json_safe(result), indent=1))
            results.append(result)
    if World.from_env().is_main:
        atomic_write_text(out / "reproduce.md", table([out]))
    return results


def _machine(world) -> str:
    """The machine a row ran on, as the table states it."""
    procs = f" × {world.size} processes" if world.size > 1 else ""
    return f"{platform.machine()}, {torch.get_num_threads()} thread(s){procs}"


# --------------------------------------------------------------------------------------------
# the table


def _results(folders: list[Path]) -> list[dict]:
    """Every ``result.json`` under the recipe folders, each with ``"_dir"``, the run folder it
    is in now (``run_dir`` says where it was run)."""
    found, where = [], {}
    for folder in folders:
        for path in sorted(Path(folder).glob("*/seed*/reproduce/result.json")):
            r = {**json.loads(path.read_text()), "_dir": str(path.parent.parent)}
            key = (r["recipe"], r["variant"], r["seed"])
            if key in where and where[key] != r["_dir"]:  # not a second seed: refuse to mix
                raise ValueError(
                    f"two runs of {key[0]} / {key[1]}, seed {key[2]}: {where[key]!r} and "
                    f"{r['_dir']!r}; table the folders of one of them")
            where[key] = r["_dir"]
            found.append(r)
    return found


def _is_points(result: dict) -> tuple[dict, torch.Tensor, torch.Tensor] | None:
    """A run's IS stage per point, read from its blocks: (the stamp's estimand, log p̂(x) and
    the ELBO, each ``(N,)``); None where the stage is not complete."""
    from vaelab.runs.checkpoint import load_checkpoint

    paths = sorted((Path(result["_dir"]) / "reproduce" / "is").glob("block_*.pt"))
    if not paths or "is" not in result:
        return None
    blocks = [load_checkpoint(p) for p in paths]
    log_px = torch.cat([b["estimate"]["log_px"] for b in blocks]).double()
    if log_px.numel() != result["is"]["num_points"]:
        return None
    elbo = torch.cat([b["estimate"]["elbo"] for b in blocks]).double()
    stamp = blocks[0]["stamp"]
    return {"split": stamp["eval"].get("split"), "limit": stamp["eval"].get("limit")}, log_px, elbo


def paired_table(folders: list[str | Path]) -> str:
    r"""Paired differences between the variants of each recipe, image by image on the test
    images both scored: for each (variant, reference) of the recipe's ``paired`` list (default:
    every variant against the first evaluated one, in the recipe's order), seed by seed, the
    mean of :math:`\log \hat p_v(x_n) - \log \hat p_{ref}(x_n)`
    (IS) and of the ELBO difference with their standard errors over the images (with several
    seeds: the mean ± sd of the per-seed means). Much tighter than the difference of two rows:
    the images' own spread cancels. Empty when no recipe has two evaluated variants."""
    rows = [r for r in _results([Path(f) for f in folders]) if "is" in r]
    lines = ["| recipe | variant − reference | Δ IS log p(x) (paired) | Δ test ELBO (paired) | "
             "test images |", "|---|---|---:|---:|---:|"]
    every = {(r["recipe"], r["variant"], r["seed"]): r for r in rows}
    for name in dict.fromkeys(r["recipe"] for r in rows):
        recipe = load_recipe(name)
        order = list(recipe.variants)
        runs = {(r["variant"], r["seed"]): r for r in rows if r["recipe"] == name}
        present = sorted({v for v, _ in runs}, key=lambda v: order.index(v) if v in order else 99)
        pairs = recipe.meta.get("paired") or [(v, present[0]) for v in present[1:]]
        for variant, ref in pairs:
            ref_recipe, ref_variant = ref.split("/") if "/" in ref else (name, ref)
            per_seed = []
            for (v, seed), r in runs.items():
                a = _is_points(r) if v == variant else None
                other = every.get((ref_recipe, ref_variant, seed))
                b = _is_points(other) if a and other else None
                if a and b and a[0] == b[0]:
                    per_seed.append([a[1] - b[1], a[2] - b[2]])  # (N,) each
            if not per_seed:
                continue
            cells = [_paired_cell([d[i] for d in per_seed]) for i in (0, 1)]
            lines.append(f"| {name} | {variant} − {ref} | {cells[0]} | {cells[1]} | "
                         f"{per_seed[0][0].numel()} |")
    return "\n".join(lines) + "\n" if len(lines) > 2 else ""


def _across_seeds(values: list[float], stderrs: list[float]) -> tuple[float, float]:
    """A figure over seeds: with one seed, its value ± its own standard error (over the
    images); with several, the mean of the seeds' values ± their sample standard deviation."""
    m = sum(values) / len(values)
    if len(values) == 1:
        return m, stderrs[0]
    return m, math.sqrt(sum((v - m) ** 2 for v in values) / (len(values) - 1))


def _paired_cell(diffs: list[torch.Tensor]) -> str:
    """One seed: mean ± standard error over the images; several: mean ± sd of the seeds' means."""
    m, err = _across_seeds([float(d.mean()) for d in diffs],
                           [float(d.std() / math.sqrt(d.numel())) for d in diffs])
    return f"{m:+.2f} ± {err:.2f} " + ("(se)" if len(diffs) == 1 else f"({len(diffs)} seeds)")


def _picked_by(K: int) -> str:
    """How the best epoch was picked, where it was not by the single-draw ELBO."""
    return f" by the {K}-sample validation bound" if K > 1 else ""


def _stage_seconds(stage: dict) -> float:
    """A stage's compute time: its blocks' own (over every restart) where all were timed, else
    the wall time of the process that finished it (a lower bound after a restart)."""
    if "compute_s" in stage and not stage.get("blocks_untimed"):
        return stage["compute_s"]
    return stage.get("wall_s", 0.0)


def _mean_sd(values: list[float]) -> str:
    values = [v for v in values if v is not None and math.isfinite(v)]
    if not values:
        return "n/a"
    if len(values) == 1:
        return f"{values[0]:.2f} (1 seed)"
    m, sd = _across_seeds(values, [])
    return f"{m:.2f} ± {sd:.2f} ({len(values)} seeds)"


def _fmt(v: float | None) -> str:
    return "—" if v is None else f"{v:.2f}"


def _grouped(folders: list[str | Path]) -> dict[tuple[str, str], list[dict]]:
    """The evaluated runs under ``folders`` by (recipe, variant), one entry per seed: recipes in
    the order the folders give them, then each recipe's variant order."""
    groups: dict[tuple[str, str], list[dict]] = {}
    for r in _results([Path(f) for f in folders]):
        groups.setdefault((r["recipe"], r["variant"]), []).append(r)
    recipes = list(dict.fromkeys(name for name, _ in groups))

    def order(key: tuple[str, str]) -> tuple[int, int]:
        variants = list(load_recipe(key[0]).variants)
        return recipes.index(key[0]), variants.index(key[1]) if key[1] in variants else 99

    return dict(sorted(groups.items(), key=lambda item: order(item[0])))


def _headline(recipe: Recipe, rs: list[dict]) -> tuple[str, list[float], list[float]]:
    """A row's headline metric, the one its published figure is: its name, and per seed its
    value and standard error over the test images. IS log p(x) (K = 5000) unless the recipe's
    ``metric`` is ``elbo``: then Jang et al.'s bound where it was computed (the relaxed Gumbel
    rows), else the test ELBO."""
    if recipe.meta.get("metric", "log_likelihood") != "elbo":
        runs = [r["is"] for r in rs if "is" in r]
        return "", [s["log_likelihood"] for s in runs], [s["log_likelihood_stderr"] for s in runs]
    jang = [r["paper_metric"] for r in rs if "paper_metric" in r]
    if jang:
        return "Jang bound ", [s["jang_bound"] for s in jang], [s["jang_bound_stderr"]
                                                                  for s in jang]
    runs = [r["is"] for r in rs if "is" in r]
    return "test ELBO ", [s["elbo"] for s in runs], [s["elbo_stderr"] for s in runs]


def table(folders: list[str | Path]) -> str:
    """The reproducibility table over the recipe folders ``folders`` (Markdown)."""
    groups = _grouped(folders)
    lines = [
        "| recipe | variant | published | pythae | vaelab (IS log p(x), K = 5000) | test ELBO | "
        "AIS | BDMC gap | budget paper / reached | wall | command |",
        "|---|---|---:|---:|---:|---:|---:|---:|---|---:|---|",
    ]
    for (name, variant), rs in groups.items():
        recipe = load_recipe(name)
        metric = recipe.meta.get("metric", "log_likelihood")
        is_vals = [r.get("is", {}).get("log_likelihood") for r in rs]
        elbo = [r.get("is", {}).get("elbo") for r in rs]
        label, values, _ = _headline(recipe, rs)
        main = _mean_sd(values)
        k = rs[0].get("is", {}).get("num_samples")
        main += f", K = {k}" if k not in (None, 5000) else ""  # the header's K, else says so
        other = _mean_sd(elbo)
        if metric == "elbo":
            other = f"discrete ELBO {_mean_sd(elbo)}, IS {_mean_sd(is_vals)}"
        ais = [r["ais"]["log_likelihood"] for r in rs if "ais" in r]
        ais_s = (f"{_mean_sd(ais)} on {rs[0]['ais']['num_points']} points, T = "
                 f"{rs[0]['ais']['steps']}, {rs[0]['ais']['chains']} chains" if ais else "n/a")
        paired = [r["ais_vs_is"] for r in rs if r.get("ais_vs_is", {}).get("num_points")]
        if len(paired) == 1:
            p = paired[0]
            ais_s += (f"; AIS − IS on the same {p['num_points']} points {p['mean']:+.2f} ± "
                      f"{p['stderr']:.2f} (se)")
        elif paired:
            ais_s += f"; AIS − IS on the same points {_mean_sd([p['mean'] for p in paired])}"
        gaps = [r["bdmc"]["gap"] for r in rs if "bdmc" in r]
        gap_s = (f"{_mean_sd(gaps)} ({rs[0]['bdmc']['num_points']} sim. pts)" if gaps else "n/a")
        b = rs[0]["budget"]
        reached = (f"{b['epochs']} / {b['epochs_planned']} epochs ({b['steps']} steps), best "
                   f"{b['best_epoch']}" + _picked_by(b.get("valid_particles", 1))
                   + (", early-stopped" if b["early_stopped"] else "")
                   + ("" if b["finished"] else ", **unfinished**"))
        wall = sum(r["budget"]["train_wall_s"] + sum(_stage_seconds(r.get(k, {})) for k in
                                                     ("is", "paper_metric", "ais", "bdmc"))
                   for r in rs) / 3600
        cols = label + main
        extra = other
        sets = "".join(f" --set '{o}'" for o in rs[0].get("overrides", []))
        lines.append(
            f"| {name} | {variant} | {_fmt(recipe.published(variant))} | "
            f"{_fmt(recipe.pythae(variant))} | {cols} | {extra} | {ais_s} | {gap_s} | "
            f"{rs[0]['budget_paper']} / {reached} | {wall:.1f} h, {rs[0]['machine']} | "
            f"`vaelab reproduce {name} --out DIR --variant {variant}{sets}` |")
    paired = paired_table(folders)
    return "\n".join(lines) + "\n" + (f"\nPaired, on the same test images:\n\n{paired}"
                                      if paired else "")


def parse_overrides(values: list[str]) -> list[str]:
    """``KEY=VALUE`` strings, each checked to parse (the CLI's ``--set``)."""
    for v in values:
        if "=" not in v:
            raise ConfigError(f"--set expects KEY=VALUE, got {v!r}")
        parse_value(v.split("=", 1)[1])
    return list(values)


def chart_rows(folders: list[str | Path]) -> list[dict]:
    """The table's rows as numbers, for :func:`vaelab.runs.plots.save_reproduce_chart`: per (recipe,
    variant), ``label``, ``metric`` (the headline's name), ``value`` and ``err`` (its mean over
    seeds, ± the sd of the seeds' values; with one seed, ± its standard error over the test
    images), ``seeds``, ``reached`` (the epochs trained), ``published`` and ``pythae`` (None
    where there is none), ``ais_minus_is`` and ``bdmc_gap`` (over seeds the same way, or None
    where not run)."""
    out = []
    for (name, variant), rs in _grouped(folders).items():
        recipe = load_recipe(name)
        label, values, stderrs = _headline(recipe, rs)
        if not values:
            continue
        paired = [r["ais_vs_is"] for r in rs if r.get("ais_vs_is", {}).get("num_points")]
        bdmc = [r["bdmc"] for r in rs if "bdmc" in r]
        b = rs[0]["budget"]
        out.append({
            "label": f"{name} / {variant}", "metric": label.strip() or "IS log p(x)",
            **dict(zip(("value", "err"), _across_seeds(values, stderrs))), "seeds": len(values),
            "reached": f"{b['epochs']} epochs" + (", early-stopped" if b["early_stopped"] else ""),
            "published": recipe.published(variant), "pythae": recipe.pythae(variant),
            "ais_minus_is": (_across_seeds([p["mean"] for p in paired],
                                           [p["stderr"] for p in paired]) if paired else None),
            "bdmc_gap": (_across_seeds([g["gap"] for g in bdmc], [g["gap_stderr"] for g in bdmc])
                         if bdmc else None)})
    return out
