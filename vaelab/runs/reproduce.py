"""Paper recipes, run end to end: ``vaelab reproduce NAME --out DIR [--seeds N]``.

A recipe (:mod:`vaelab.runs.recipes`) is a config shipped in ``vaelab/recipes/NAME.toml`` that
follows a published protocol, plus a ``[recipe]`` table: the paper, its budget, the published
numbers per variant, the variants, the AIS / BDMC settings of the evaluation.

:func:`reproduce` trains every variant × seed into ``DIR/VARIANT/seedS`` (an ordinary run folder,
resumed where it stopped, skipped when finished), then evaluates the best-validation checkpoint
in resumable stages (:mod:`vaelab.runs.stages`: IS with K = 5000 on the whole test split, AIS,
BDMC, the relaxed-sample figure for relaxed categorical guides, which bounds neither model),
each written to ``DIR/VARIANT/seedS/reproduce/`` as it completes, so a restart skips what is done
and reaches the numbers an uninterrupted pass gives. Under torchrun
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

import inspect
import json
import platform
import shlex
from collections.abc import Callable
from functools import partial
from pathlib import Path

import torch

from vaelab.config import RunConfig, json_safe
from vaelab.runs.checkpoint import atomic_write_text, read_metrics
from vaelab.runs.provenance import code_identity
from vaelab.runs.recipes import (
    Recipe,
    load_recipe,
    parse_overrides,
    recipe_names,
    selection_file,
    with_recipe_overrides,
)
from vaelab.runs.stages import ais_minus_is, evaluate_in_blocks, evaluate_run
from vaelab.runs.tables import chart_rows, paired_table, table

# the names of the recipes, stages and tables modules that ``vaelab reproduce`` uses, here too
__all__ = ["Recipe", "ais_minus_is", "chart_rows", "cost_estimate", "evaluate_in_blocks",
           "faster_command", "load_recipe", "paired_table", "parse_overrides", "recipe_names",
           "reproduce", "table"]



# 1-minute load average under which ``vaelab reproduce`` counts itself the machine's only job
ALONE_BELOW = 0.5


def faster_command(name: str, out: str | Path, variants: list[str], overrides: list[str],
                   seeds: int, *, cores: int, load: float, world_size: int = 1,
                   first_seed: int = 0) -> str | None:
    """The faster way to score a recipe when this command is the machine's only job, or None.

    ``vaelab reproduce`` keeps one thread (a recipe's ``train.num_threads = 1``) so that two long
    runs can share a 2-core machine. Alone on ``cores`` ≥ 2 cores (1-minute ``load`` below
    :data:`ALONE_BELOW`, one process), the evaluation stages are faster as ``cores`` processes of
    one thread each (sharded evaluation; ``docs/scaling.md``: 0.90× the time of one process with
    two threads, quiet, and 0.49× under load, ``benchmarks/shards.py``), and give the same
    numbers point by point (``tests/runs/test_data_parallel.py``). Training stays one process:
    data parallelism did not pay on 2 cores (``benchmarks/ddp.py``). The advice: train with
    ``--train-only``, then score with the same command under ``torchrun``.
    """
    if world_size > 1 or cores < 2 or load >= ALONE_BELOW:
        return None
    args = f"{name} --out {shlex.quote(str(out))}" + "".join(f" --variant {v}" for v in variants)
    args += "".join(f" --set {shlex.quote(o)}" for o in overrides)
    args += f" --seeds {seeds}" if seeds != 1 else ""
    args += f" --first-seed {first_seed}" if first_seed else ""
    return (f"this is the only job on {cores} cores (load {load:.2f}): the evaluation stages run "
            f"faster as {cores} processes of one thread (docs/scaling.md): "
            f"`vaelab reproduce {args} --train-only`, then "
            f"`torchrun --nproc_per_node={cores} -m vaelab reproduce {args}` (the same numbers, "
            "point by point); this command keeps one thread so that two long runs can share "
            "the machine")


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
    first_seed: int = 0,
    variants: list[str] | None = None,
    members_from: str | Path | None = None,
    overrides: list[str] | tuple[str, ...] = (),
    evaluate: bool = True,
    progress: bool = False,
    say: Callable[[str], None] | None = None,
) -> list[dict]:
    """Train (resuming) and evaluate every variant × seed of recipe ``name`` under ``out``;
    write ``out/reproduce.md`` and each run's ``reproduce/result.json``.

    :param seeds: seeds per variant: ``train.seed``, ``train.seed + 1``, ...
    :param first_seed: skip the first ``first_seed`` of them: seeds ``train.seed + first_seed``
        … ``train.seed + first_seed + seeds − 1`` (more seeds beside runs that exist elsewhere,
        e.g. exported to the repository).
    :param variants: the variants to run (default: all of the recipe's).
    :param members_from: a folder of exported runs (``--export``'s ``DEST``) whose grid
        selection records name members already trained, elsewhere or in an earlier session
        (:func:`recorded_members`): those are not trained again.
    :param overrides: ``KEY=VALUE`` applied last (e.g. a smaller budget, stated in the table as
        the budget reached).
    :param evaluate: also evaluate (else train only).
    :param progress: progress bars (training and evaluation).
    :param say: called with one line per run, stage and block (``vaelab reproduce`` prints
        them); ``None``: quiet.
    :returns: one result dict per run.
    """
    from vaelab.runs.folder import latest_commit
    from vaelab.runs.train import train
    from vaelab.runs.world import World, on_main

    recipe, out = load_recipe(name), Path(out)
    given = list(overrides)
    recipe, overrides = with_recipe_overrides(recipe, given)
    variants = variants or list(recipe.table.variants)
    results = []
    tell = _teller(say)
    # bars as asked, unless an override says otherwise (train.progress is a resumable key)
    overrides = [f"train.progress={str(progress).lower()}", *overrides]
    selections = {}
    for v in [v for v in variants if v in recipe.table.grids]:
        sel = select_on_validation(recipe, v, out, overrides, tell,
                                   recorded_members(members_from, name, v))
        selections[sel["selected"]] = sel
    variants = [selections_of(selections, v) for v in variants]
    offsets = range(first_seed, first_seed + seeds)
    for i, (variant, s) in enumerate((v, s) for v in variants for s in offsets):
        cfg = recipe.config(variant, s, overrides)
        run_dir = out / variant / f"seed{cfg.train.seed}"
        resume = latest_commit(run_dir) is not None
        tell(f"run {i + 1}/{len(variants) * seeds}: {name} {variant}, seed {cfg.train.seed} "
             f"({run_dir}): training, {_epochs(cfg.train.epochs)}"
             + (" (resumed from its last committed epoch)" if resume else ""))
        # under torchrun train joins the process group, which the stages below then use
        train(cfg, run_dir, resume=resume)
        world = World.from_env()
        history = on_main(partial(read_metrics, run_dir), world, "reading the metrics")
        result = {"recipe": name, "variant": variant, "seed": cfg.train.seed,
                  "run_dir": str(run_dir), "overrides": given,
                  "published": recipe.published(variant), "pythae": recipe.pythae(variant),
                  "budget_paper": recipe.meta.get("budget", ""),
                  "budget": _budget_reached(cfg, history),
                  "machine": _machine(world),
                  # the code that trained each epoch is in metrics.jsonl; this one scored it
                  "code": code_identity()}
        if variant in selections:
            result["selection"] = selections[variant]
        if evaluate:
            result.update(_evaluate(recipe, run_dir, history, progress, tell))
        if world.is_main:
            (run_dir / "reproduce").mkdir(exist_ok=True)
            atomic_write_text(run_dir / "reproduce" / "result.json",
                              json.dumps(json_safe(result), indent=1))
        results.append(result)
    if World.from_env().is_main:
        atomic_write_text(out / "reproduce.md", table([out]))
    return results


def selections_of(selections: dict[str, dict], variant: str) -> str:
    """``variant``, or the member selected for it where it names a grid."""
    return next((m for m, sel in selections.items() if sel["grid"] == variant), variant)


def recorded_members(folder: str | Path | None, recipe: str, grid: str) -> dict[str, dict]:
    """The members of ``grid`` that a selection record holds: ``folder/RECIPE/GRID.selection.json``
    (what ``--export`` writes beside the runs; ``{}`` without one). A member recorded with its
    settings' digest (:func:`~vaelab.runs.resume.settings_digest`) and ``finished`` is not
    trained again by :func:`select_on_validation` when its settings are unchanged."""
    path = None if folder is None else Path(folder) / recipe / selection_file(grid)
    if path is None or not path.is_file():
        return {}
    got = json.loads(path.read_text())
    return dict(got.get("members") or {}) if got.get("grid") == grid else {}


def select_on_validation(recipe: Recipe, grid: str, out: Path, overrides: list[str],
                         tell: Callable[[str], None],
                         recorded: dict[str, dict] | None = None) -> dict:
    """Train (resuming) every member of ``grid`` at the recipe's first seed, and select the
    one with the best validation score (:func:`~vaelab.runs.resume.valid_score`: the K-sample
    bound where ``train.valid_particles`` > 1, else the ELBO) over its epochs; no test point
    is read. With the grid's ``screen`` overrides, the members are screening runs under
    ``out/screen/`` and the selected one is then trained at the full budget by the caller.
    Writes ``out/GRID.selection.json`` after every member (``selected`` is null until the
    last), so that a grid's members can be trained over several sessions or machines.

    :param recorded: members from an earlier record (:func:`recorded_members`): one whose
        digest equals its settings' now and that ``finished`` its budget is taken from the
        record, not trained again (the caller trains the selected one if its folder is gone).
    :returns: ``recipe``, ``grid``, ``note``, ``score`` (the validation score's name),
        ``members`` (name → its best validation score and epoch, whether it finished, the
        digest of its settings) and ``selected``."""
    from vaelab.runs.folder import latest_commit
    from vaelab.runs.resume import settings_digest, valid_score
    from vaelab.runs.stepper import NonFiniteLossError
    from vaelab.runs.train import train

    members: dict[str, dict] = {}
    names = recipe.grid_members(grid)
    screen = recipe.table.grids[grid].screen
    score = "valid_bound" if recipe.config(names[0], 0, overrides).train.valid_particles > 1 \
        else "valid_elbo"
    sel = {"recipe": recipe.name, "grid": grid, "note": recipe.table.grids[grid].note,
           "score": score, "screen": screen, "members": members, "selected": None}
    for j, member in enumerate(names):
        cfg = recipe.config(member, 0, [*overrides, *screen])
        digest = settings_digest(cfg)
        run_dir = (out / "screen" if screen else out) / member / f"seed{cfg.train.seed}"
        known = (recorded or {}).get(member) or {}
        if known.get("settings_sha256") == digest and (known.get("finished")
                                                       or "diverged" in known):
            members[member] = known
            tell(f"grid {grid}, member {j + 1}/{len(names)}: {member}: taken from the record "
                 + ("(diverged)" if "diverged" in known else
                    f"({score} {known['valid_score']:.2f}, epoch {known['best_epoch']})")
                 + ", not trained again")
            continue
        tell(f"grid {grid}, member {j + 1}/{len(names)}: {member} ({run_dir}): training, "
             f"{_epochs(cfg.train.epochs)}, for the selection on validation")
        try:
            train(cfg, run_dir, resume=latest_commit(run_dir) is not None)
        except NonFiniteLossError as err:  # a diverged member is recorded, never selected
            members[member] = {"diverged": str(err).split("\n")[0], "settings_sha256": digest}
            tell(f"grid {grid}: {member} diverged ({members[member]['diverged']}); left out")
        else:
            history = read_metrics(run_dir)
            best = max(history, key=valid_score)
            members[member] = {"valid_score": valid_score(best), "best_epoch": best["epoch"],
                               "finished": _budget_reached(cfg, history)["finished"],
                               "settings_sha256": digest}
        atomic_write_text(out / selection_file(grid), json.dumps(json_safe(sel), indent=1))
    finite = [m for m in members if "valid_score" in members[m]]
    if not finite:
        raise NonFiniteLossError(f"grid {grid}: every member diverged; see {out}")
    selected = max(finite, key=lambda m: members[m]["valid_score"])
    sel["selected"] = selected
    out.mkdir(parents=True, exist_ok=True)  # every member may have come from the record
    tell(f"grid {grid}: selected {selected} (best {score} "
         f"{members[selected]['valid_score']:.2f} of {len(finite)} finite members of "
         f"{len(members)})")
    atomic_write_text(out / selection_file(grid), json.dumps(json_safe(sel), indent=1))
    return sel


def _epochs(n: int) -> str:
    return f"{n} epoch" + ("" if n == 1 else "s")


def _teller(say: Callable[[str], None] | None) -> Callable[[str], None]:
    """``say`` on rank 0 (the other processes of a torchrun job say nothing); a no-op for
    ``None``."""
    from vaelab.runs.world import World

    def tell(line: str) -> None:
        if say is not None and World.from_env().is_main:
            say(line)

    return tell


def _evaluate(recipe: Recipe, run_dir: Path, history: list[dict], progress: bool,
              tell: Callable[[str], None]) -> dict:
    """:func:`~vaelab.runs.stages.evaluate_run` with a line before and after (and its own
    stage and block lines where it takes ``say``)."""
    tell(f"evaluating {run_dir}: IS, then AIS and BDMC where the recipe has them; each "
         "block is saved as it completes")
    hook = {"say": tell} if "say" in inspect.signature(evaluate_run).parameters else {}
    got = evaluate_run(recipe, run_dir, history, progress=progress, **hook)
    done = [f"IS {got['is']['log_likelihood']:.2f}"]
    if "ais" in got:
        done.append(f"AIS {got['ais']['log_likelihood']:.2f}")
    if "bdmc" in got:
        done.append(f"BDMC [{got['bdmc']['lower_bound']:.2f}, {got['bdmc']['upper_bound']:.2f}] "
                    "on simulated points")
    first = got["is"].get("first_draws")
    if first:
        done.append(f"one-hot ELBO {first['elbo']:.2f} and IW bound {first['iw_bound']:.2f} "
                    f"(first {first['m']} draws)")
    if "paper_metric" in got:
        done.append(f"relaxed-sample figure {got['paper_metric']['jang_bound']:.2f} "
                    "(bounds neither model)")
    tell(f"evaluated {run_dir}: " + ", ".join(done) + " (nats per point)")
    return got


def _machine(world) -> str:
    """The machine a row ran on, as the table states it."""
    procs = f" × {world.size} processes" if world.size > 1 else ""
    return f"{platform.machine()}, {torch.get_num_threads()} thread(s){procs}"



#: the stages of a run's ``reproduce/result.json`` whose ``wall_s`` an estimate adds up
_TIMED_STAGES = ("is", "paper_metric", "ais", "ais_vs_is", "bdmc")


def cost_estimate(name: str, folder: str | Path | None = None) -> str:
    """What one run (variant × seed) of recipe ``name`` costs at the recipe's own budget, from
    the runs measured under ``folder``: a recipe folder ``DIR/VARIANT/seedS``, a folder of
    recipe folders, or the runs exported from them (``--export``, e.g. the repository's
    ``experiments/results/reproduce``, whose ``result.json`` keep the times and the machine):
    the training time per epoch times the recipe's epochs (an upper bound where early stopping
    applies; for a grid's member, its grid's screening runs too), plus the evaluation stages as
    measured (a run that shrank them with ``--set`` is
    measured at its own size). "not measured here" when no run of the recipe is there."""
    recipe = load_recipe(name)
    found = []
    if folder is not None:
        for pattern, exported in (("*/seed*/reproduce/result.json", False),
                                  ("*/*/seed*/reproduce/result.json", False),
                                  ("*/seed*/result.json", True),
                                  ("*/*/seed*/result.json", True)):
            for path in sorted(Path(folder).glob(pattern)):
                try:
                    got = json.loads(path.read_text())
                except (OSError, ValueError):
                    continue
                if (isinstance(got, dict) and got.get("recipe") == name
                        and ("format_version" in got) == exported):
                    found.append(got)
    hours = []
    for got in found:
        budget = got.get("budget") or {}
        epochs = budget.get("epochs") or 0
        if not epochs or budget.get("train_wall_s") is None:
            continue
        per_epoch = budget["train_wall_s"] / epochs
        seconds = per_epoch * recipe.config(got["variant"]).train.epochs
        grid = recipe.grid_of(got["variant"])
        if grid is not None and grid.screen:  # a grid's selected member: its screens too
            screen = recipe.config(got["variant"], 0, grid.screen).train.epochs
            seconds += per_epoch * screen * len(grid.members)
        seconds += sum((got.get(k) or {}).get("wall_s") or 0.0 for k in _TIMED_STAGES)
        hours.append((seconds / 3600, got.get("machine", "?"), got.get("overrides") or []))
    if not hours:
        return "cost: not measured here"
    mean = sum(h for h, _, _ in hours) / len(hours)
    shrunk = " (evaluation measured at a size shrunk by --set)" if any(
        str(o).startswith(("eval.", "recipe.")) for _, _, ov in hours for o in ov) else ""
    return (f"cost: about {mean:.1f} h per run (variant x seed) on {hours[0][1]}, from "
            f"{len(hours)} measured run(s) in {folder}: training per epoch x the recipe's "
            f"epochs (and a grid's screens), plus the evaluation stages{shrunk}")
