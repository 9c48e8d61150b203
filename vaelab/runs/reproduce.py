"""Paper recipes, run end to end: ``vaelab reproduce NAME --out DIR [--seeds N]``.

A recipe (:mod:`vaelab.runs.recipes`) is a config shipped in ``vaelab/recipes/NAME.toml`` that
follows a published protocol, plus a ``[recipe]`` table: the paper, its budget, the published
numbers per variant, the variants, the AIS / BDMC settings of the evaluation.

:func:`reproduce` trains every variant × seed into ``DIR/VARIANT/seedS`` (an ordinary run folder,
resumed where it stopped, skipped when finished), then evaluates the best-validation checkpoint
in resumable stages (:mod:`vaelab.runs.stages`: IS with K = 5000 on the whole test split, AIS,
BDMC, Jang et al.'s metric for relaxed categorical guides), each written to
``DIR/VARIANT/seedS/reproduce/`` as it completes, so a restart skips what is done and reaches the
numbers an uninterrupted pass gives. Under torchrun
(``torchrun --nproc_per_node=W -m vaelab reproduce NAME --out DIR``) training is data-parallel
(:mod:`vaelab.runs.data_parallel`) and every stage is sharded; every process reads the run
folder, rank 0 alone writes. Last it writes ``DIR/reproduce.md``, the table of
:func:`vaelab.runs.tables.table` (which gathers any set of recipe folders into the Markdown table
of ``experiments/results/reproduce.md``).

Example::

    from vaelab.runs.reproduce import reproduce
    rows = reproduce("gumbel_softmax", "runs/gumbel", variants=["gumbel"])
"""

from __future__ import annotations

import json
import platform
from functools import partial
from pathlib import Path

import torch

from vaelab.config import RunConfig, json_safe
from vaelab.runs.checkpoint import atomic_write_text, read_metrics
from vaelab.runs.recipes import (
    Recipe,
    load_recipe,
    parse_overrides,
    recipe_names,
    with_recipe_overrides,
)
from vaelab.runs.stages import ais_minus_is, evaluate_in_blocks, evaluate_run
from vaelab.runs.tables import chart_rows, paired_table, table

# the names of the recipes, stages and tables modules that ``vaelab reproduce`` uses, here too
__all__ = ["Recipe", "ais_minus_is", "chart_rows", "evaluate_in_blocks", "load_recipe",
           "paired_table", "parse_overrides", "recipe_names", "reproduce", "table"]



def _budget_reached(cfg: RunConfig, history: list[dict]) -> dict:
    from vaelab.runs.resume import valid_score

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
    from vaelab.runs.folder import latest_commit
    from vaelab.runs.train import train
    from vaelab.runs.world import World, on_main

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

