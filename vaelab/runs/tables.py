"""The reproducibility table and chart (``vaelab reproduce --table`` and ``--plot``).

:func:`table` gathers the results (``RUN/reproduce/result.json``) of any set of recipe folders,
or of their exported files (:func:`export_runs`), into the Markdown table of
``experiments/results/reproduce.md``, one row per (recipe, variant) over its seeds;
:func:`paired_table` the paired differences between variants, image by image on the test
images both scored; :func:`chart_rows` the table's rows as numbers for
:func:`vaelab.runs.plots.save_reproduce_chart`. A figure over seeds follows one rule
(:func:`vaelab.runs.stats.across_seeds`): one seed, its value ± its standard error over the
test images; several, the mean ± the sample standard deviation of the seeds' values. A paired
comparison across seeds is the mean of the per-seed paired differences ± t(n−1)·sd/√n, its
95 % t-interval (:func:`vaelab.runs.stats.t_interval`).

A row's headline is the published figure's quantity on the model that was evaluated: IS
log p(x) with K = 5000, or, for a discrete latent (``metric = "elbo"``), the bounds on the
*discrete* model from the first m = 1000 one-hot draws of the IS pass (the mean single-sample
ELBO, which the chart plots, and the m-sample importance-weighted bound beside it). The
relaxed-sample figure of :mod:`vaelab.inference.relaxed_bound` bounds neither model: it is
never a headline, and where the table shows it, it says so.

**Regenerable.** :func:`export_runs` writes a run's small results (resolved config,
``metrics.jsonl``, ``result.json`` without machine paths, and IS log p̂ and ELBO per test point
as TSV with 4 decimals; :mod:`vaelab.runs.export`) under ``DEST/RECIPE/VARIANT/seedS/``;
:func:`table` reads those folders as it reads run folders, and gives the same table, paired cells
included (the per-point values are rounded to 4 decimals in both). :func:`update_block`
rewrites the marked block of a Markdown file; ``python -m vaelab.runs.tables`` does both
(``make results``).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import torch

from vaelab.runs.convergence import CONVERGENCE_FILE, convergence_table
from vaelab.runs.export import (
    EXPORT_FORMAT,
    POINTS_FILE,
    machine_paths,
    read_points,
    write_export,
)
from vaelab.runs.recipes import SELECTION_SUFFIX, Recipe, load_recipe
from vaelab.runs.stats import across_seeds, stat, t_interval

__all__ = ["BEGIN", "END", "EXPORT_FORMAT", "chart_rows", "export_runs", "missing_figures",
           "paired_table", "table", "update_block"]

#: the markers of the regenerated block in a Markdown file
BEGIN, END = "<!-- table:begin -->", "<!-- table:end -->"


def _result_paths(folder: Path) -> list[tuple[Path, Path]]:
    """(result.json, the run's folder) under ``folder``: a recipe folder of run folders
    (``VARIANT/seedS/reproduce/result.json``), an exported recipe folder
    (``VARIANT/seedS/result.json``) or a folder of exported recipes
    (``RECIPE/VARIANT/seedS/result.json``)."""
    runs = [(p, p.parent.parent) for p in sorted(folder.glob("*/seed*/reproduce/result.json"))]
    exported = [(p, p.parent) for p in sorted(folder.glob("*/seed*/result.json"))
                + sorted(folder.glob("*/*/seed*/result.json"))]
    return runs + exported


def _results(folders: list[Path]) -> list[dict]:
    """Every ``result.json`` under the recipe folders, each with ``"_dir"``, the run folder (or
    exported folder) it is in now (``run_dir`` says where it was run)."""
    found: list[dict] = []
    where: dict[tuple, str] = {}
    for folder in folders:
        for path, run in _result_paths(Path(folder)):
            r = {**json.loads(path.read_text()), "_dir": str(run)}
            key = (r["recipe"], r["variant"], r["seed"])
            if key in where and where[key] != r["_dir"]:  # not a second seed: refuse to mix
                raise ValueError(
                    f"two runs of {key[0]} / {key[1]}, seed {key[2]}: {where[key]!r} and "
                    f"{r['_dir']!r}; table the folders of one of them")
            where[key] = r["_dir"]
            found.append(r)
    return found


def _rounded(v: torch.Tensor) -> torch.Tensor:
    """``v`` as its 4-decimal text reads back (what an exported file holds), float64."""
    return torch.tensor([float(f"{x:.4f}") for x in v.tolist()], dtype=torch.float64)


def _is_points(result: dict) -> tuple[dict, torch.Tensor, torch.Tensor] | None:
    """A run's IS stage per point, read from its blocks or its exported TSV: (the points scored,
    ``split`` and ``limit``; log p̂(x) and the ELBO, each ``(N,)``, rounded to 4 decimals as
    exported); None where the stage is not complete."""
    if "format_version" in result:  # exported
        return read_points(result)
    raw = _block_points(result)
    return None if raw is None else (raw[0], _rounded(raw[1]), _rounded(raw[2]))


def _block_points(result: dict) -> tuple[dict, torch.Tensor, torch.Tensor] | None:
    """:func:`_is_points` of a run folder, read from its blocks, as computed."""
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
    images both scored (:func:`_common_points`: a row on all test images pairs with one on a
    spread subset, over the subset's images): for each (variant, reference) of the recipe's
    ``paired`` list (default: every variant against the first evaluated one, in the recipe's
    order), seed by seed, the
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
        pairs = recipe.table.paired or [(v, present[0]) for v in present[1:]]
        for variant, ref in pairs:
            ref_recipe, ref_variant = ref.split("/") if "/" in ref else (name, ref)
            per_seed = []
            for (v, seed), r in runs.items():
                a = _is_points(r) if v == variant else None
                other = every.get((ref_recipe, ref_variant, seed))
                b = _is_points(other) if a and other else None
                at = _common_points(a, b) if a and b else None
                if a and b and at is not None:
                    pa, pb = at
                    per_seed.append([a[1][pa] - b[1][pb], a[2][pa] - b[2][pb]])  # (m,) each
            if not per_seed:
                continue
            cells = [_paired_cell([d[i] for d in per_seed]) for i in (0, 1)]
            lines.append(f"| {name} | {variant} − {ref} | {cells[0]} | {cells[1]} | "
                         f"{per_seed[0][0].numel()} |")
    return "\n".join(lines) + "\n" if len(lines) > 2 else ""


def _common_points(a: tuple, b: tuple) -> tuple[torch.Tensor, torch.Tensor] | None:
    """Where two runs' IS points (:func:`_is_points`) hold the same test images, their
    positions in each (:func:`~vaelab.data.subsets.common_positions`): every point when both
    scored the same subset, the smaller subset's images when one scored the whole split (its
    size is then that run's number of points: a row rescored on all 10,000 test images pairs
    with one scored on 2000); None for another split, or two different partial subsets."""
    from vaelab.data.subsets import common_positions

    (sa, va, _), (sb, vb, _) = a, b
    if sa["split"] != sb["split"]:
        return None
    if sa["limit"] == sb["limit"]:
        every = torch.arange(va.numel())
        return (every, every) if va.numel() == vb.numel() else None
    whole = [r.numel() for s, r in ((sa, va), (sb, vb)) if s["limit"] is None]
    if not whole:
        return None
    pa, pb = common_positions(whole[0], sa["limit"], sb["limit"])
    return (pa, pb) if pa.numel() == min(va.numel(), vb.numel()) else None


def _paired_cell(diffs: list[torch.Tensor]) -> str:
    """One seed: mean ± standard error over the images; several: the mean of the seeds' paired
    means ± t(n−1)·sd/√n, their 95 % t-interval (:func:`~vaelab.runs.stats.t_interval`)."""
    if len(diffs) == 1:
        d = diffs[0]
        return f"{float(d.mean()):+.2f} ± {float(d.std() / math.sqrt(d.numel())):.2f} (se)"
    m, half, n = t_interval([float(d.mean()) for d in diffs])
    return f"{m:+.2f} ± {half:.2f} (95 % t-interval, n = {n} seeds)"


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
    s = stat(values)
    if s.n == 1:
        return f"{s.mean:.2f} (1 seed)"
    return f"{s.mean:.2f} ± {s.sd:.2f} ({s.n} seeds)"


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
    """A row's headline metric, the published figure's quantity: its name, and per seed its
    value and standard error over the test images. IS log p(x) (K = 5000) unless the recipe's
    ``metric`` is ``elbo``: then a bound on the discrete model with one-hot samples, the mean
    single-sample ELBO of the first m draws of the IS pass (``is.first_draws``; a run evaluated
    before those were kept: the mean over all K draws). Never the relaxed-sample figure
    (``paper_metric``), which bounds neither model."""
    runs = [r["is"] for r in rs if "is" in r]
    if recipe.table.metric != "elbo":
        return "", [s["log_likelihood"] for s in runs], [s["log_likelihood_stderr"] for s in runs]
    first = [s["first_draws"] for s in runs if "first_draws" in s]
    if first and len(first) == len(runs):
        return (f"one-hot ELBO, first {first[0]['m']} draws ", [f["elbo"] for f in first],
                [f["elbo_stderr"] for f in first])
    return (f"one-hot ELBO, K = {runs[0]['num_samples']} draws " if runs else "",
            [s["elbo"] for s in runs], [s["elbo_stderr"] for s in runs])


def _discrete_cells(rs: list[dict], label: str, main: str) -> tuple[str, str]:
    """The headline and second cells of a discrete row: the one-hot ELBO and the m-sample IW
    bound of the same draws; then IS log p(x) and the ELBO over all K draws, and the
    relaxed-sample figure, where computed, said to bound neither model."""
    first = [r["is"]["first_draws"] for r in rs if "first_draws" in r.get("is", {})]
    cell = label + main
    if first:
        cell += f"; IW bound, m = {first[0]['m']}: {_mean_sd([f['iw_bound'] for f in first])}"
    k = rs[0].get("is", {}).get("num_samples")
    other = (f"IS (K = {k}) {_mean_sd([r.get('is', {}).get('log_likelihood') for r in rs])}; "
             f"one-hot ELBO, K = {k} draws {_mean_sd([r.get('is', {}).get('elbo') for r in rs])}")
    jang = [r["paper_metric"]["jang_bound"] for r in rs if "paper_metric" in r]
    if jang:
        other += f"; relaxed-sample figure {_mean_sd(jang)}, bounds neither model"
    return cell, other


def _ais_cell(rs: list[dict]) -> str:
    """AIS over seeds, and AIS − IS on the same points."""
    ais = [r["ais"]["log_likelihood"] for r in rs if "ais" in r]
    if not ais:
        return "n/a"
    a = next(r["ais"] for r in rs if "ais" in r)
    cell = f"{_mean_sd(ais)} on {a['num_points']} points, T = {a['steps']}, {a['chains']} chains"
    paired = [r["ais_vs_is"] for r in rs if r.get("ais_vs_is", {}).get("num_points")]
    if len(paired) == 1:
        p = paired[0]
        cell += (f"; AIS − IS on the same {p['num_points']} points {p['mean']:+.2f} ± "
                 f"{p['stderr']:.2f} (se)")
    elif paired:
        cell += f"; AIS − IS on the same points {_mean_sd([p['mean'] for p in paired])}"
    return cell


def _row(name: str, variant: str, rs: list[dict]) -> str:
    """One row of :func:`table`: (recipe, variant) over its seeds ``rs``."""
    recipe = load_recipe(name)
    label, values, _ = _headline(recipe, rs)
    main = _mean_sd(values)
    k = rs[0].get("is", {}).get("num_samples")
    if recipe.table.metric == "elbo":
        cell, other = _discrete_cells(rs, label, main)
    else:
        n = sorted({r["is"]["num_points"] for r in rs if "num_points" in r.get("is", {})})
        cell = (main + (f", K = {k}" if k not in (None, 5000) else "")  # the header's K
                + (f", on {'/'.join(map(str, n))} test images" if n and n != [10000] else ""))
        other = _mean_sd([r.get("is", {}).get("elbo") for r in rs])
    gaps = [r["bdmc"]["gap"] for r in rs if "bdmc" in r]
    gap_s = (f"{_mean_sd(gaps)} ({rs[0]['bdmc']['num_points']} sim. pts)" if gaps else "n/a")
    wall = sum(r["budget"]["train_wall_s"] + sum(_stage_seconds(r.get(k, {})) for k in
                                                 ("is", "paper_metric", "ais", "bdmc"))
               for r in rs) / 3600
    return (f"| {name} | {variant} | {_fmt(recipe.published(variant))} | "
            f"{_fmt(recipe.pythae(variant))} | {cell} | {other} | {_ais_cell(rs)} | {gap_s} | "
            f"{rs[0]['budget_paper']} / {_reached(rs)} | {wall:.1f} h, {rs[0]['machine']} | "
            f"`{_command(name, variant, rs)}` |")


def _per_seed(rs: list[dict], values: list) -> str:
    """One value if every seed has it, else each seed's in order: ``117, 113 (seeds 0, 1)``."""
    if len(set(map(str, values))) == 1:
        return str(values[0])
    return (", ".join(map(str, values))
            + f" (seeds {', '.join(str(r.get('seed', '?')) for r in rs)})")


def _reached(rs: list[dict]) -> str:
    """The budget a row's seeds reached: epochs, steps and the best epoch of every seed (they
    differ between seeds), early stopping and any seed left unfinished."""
    bs = [r["budget"] for r in rs]

    def flagged(text: str, which: list[bool]) -> str:
        seeds = [str(r.get("seed", "?")) for r, w in zip(rs, which) if w]
        return (text + (f" (seeds {', '.join(seeds)})" if len(rs) > 1 else "")) if seeds else ""

    return (f"{_per_seed(rs, [x['epochs'] for x in bs])} / {bs[0]['epochs_planned']} epochs "
            f"({_per_seed(rs, [x['steps'] for x in bs])} steps), best "
            f"{_per_seed(rs, [x['best_epoch'] for x in bs])}"
            + _picked_by(bs[0].get("valid_particles", 1))
            + flagged(", early-stopped", [x["early_stopped"] for x in bs])
            + flagged(", **unfinished**", [not x["finished"] for x in bs]))


def _command(name: str, variant: str, rs: list[dict]) -> str:
    """The command that trains and scores a row's seeds: the runs' overrides but their seed,
    which ``--seeds`` (from ``train.seed``) gives when the seeds are consecutive; for a grid's
    selected member, the grid (which screens, selects and trains it)."""
    grid = rs[0].get("selection", {}).get("grid")  # a grid's member: the grid's command
    variant = grid or variant
    seeds = sorted(int(r.get("seed", 0)) for r in rs)
    sets = "".join(f" --set '{o}'" for o in rs[0].get("overrides", [])
                   if not o.replace(" ", "").startswith("train.seed="))
    if seeds == list(range(seeds[0], seeds[0] + len(seeds))):
        first = f" --set 'train.seed={seeds[0]}'" if seeds[0] else ""
        many = f" --seeds {len(seeds)}" if len(seeds) > 1 else ""
        return f"vaelab reproduce {name} --out DIR --variant {variant}{sets}{first}{many}"
    each = "; ".join(f"--set 'train.seed={s}'" for s in seeds)
    return (f"vaelab reproduce {name} --out DIR --variant {variant}{sets} --seeds 1, "
            f"once per seed: {each}")


def table(folders: list[str | Path]) -> str:
    """The reproducibility table over the recipe folders ``folders`` (run folders or exported
    ones, :func:`export_runs`), Markdown, with the paired differences under it."""
    lines = [
        "| recipe | variant | published | pythae | vaelab (IS log p(x), K = 5000; discrete: "
        "one-hot bounds of the first m draws) | test ELBO (discrete: IS and ELBO over K) | "
        "AIS | BDMC gap | budget paper / reached | wall | command |",
        "|---|---|---:|---:|---:|---:|---:|---:|---|---:|---|",
    ]
    groups = _grouped(folders)
    lines += [_row(name, variant, rs) for (name, variant), rs in groups.items()]
    paired_md = paired_table(folders)
    conv_md = convergence_table(groups)
    return ("\n".join(lines) + "\n"
            + (f"\nPaired, on the same test images:\n\n{paired_md}" if paired_md else "")
            + (f"\nHow converged (`experiments/convergence.py`: IS with more draws, AIS with "
               f"longer schedules, paired on the same spread test images):\n\n{conv_md}"
               if conv_md else ""))


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
            **dict(zip(("value", "err"), across_seeds(values, stderrs))), "seeds": len(values),
            "reached": f"{b['epochs']} epochs" + (", early-stopped" if b["early_stopped"] else ""),
            "published": recipe.published(variant), "pythae": recipe.pythae(variant),
            "ais_minus_is": (across_seeds([p["mean"] for p in paired],
                                          [p["stderr"] for p in paired]) if paired else None),
            "bdmc_gap": (across_seeds([g["gap"] for g in bdmc], [g["gap_stderr"] for g in bdmc])
                         if bdmc else None)})
    return out


def export_runs(dest: str | Path, folders: list[str | Path]) -> list[Path]:
    """Write the small results of every evaluated run under the recipe folders ``folders`` to
    ``dest/RECIPE/VARIANT/seedS/``: ``config.toml`` (the resolved config), ``metrics.jsonl``,
    ``result.json`` (without ``run_dir``, with ``format_version`` and ``is_points``) and
    :data:`POINTS_FILE`; no checkpoints. A run whose IS stage is incomplete is left out. Each
    grid's selection record (``GRID.selection.json``, complete or still growing) goes to
    ``dest/RECIPE/``, whence ``--members-from`` reads the members it holds.

    :returns: the folders (and selection records) written.
    :raises ValueError: a file would carry a machine path (named, in one line)."""
    written = []
    for folder in folders:
        for path in sorted(Path(folder).glob(f"*{SELECTION_SUFFIX}")):
            sel = json.loads(path.read_text())
            if "recipe" not in sel:  # a record from before it named its recipe
                continue
            found = machine_paths(sel, path.name)
            if found:
                raise ValueError(f"{path}: would export a machine path, {found[0]}")
            target = Path(dest) / sel["recipe"] / path.name
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(json.dumps(sel, indent=1) + "\n")
            written.append(target)
    for r in _results([Path(f) for f in folders]):
        points = None if "format_version" in r else _block_points(r)
        if points is None:
            continue
        run = Path(r["_dir"])
        result = {k: v for k, v in r.items() if not k.startswith("_") and k != "run_dir"}
        result.update(format_version=EXPORT_FORMAT, is_points={
            "file": POINTS_FILE, **points[0], "columns": ["point", "log_px", "elbo"]})
        target = write_export(Path(dest) / r["recipe"] / r["variant"] / f"seed{r['seed']}",
                              run, result, points[1], points[2])
        conv = run / "reproduce" / CONVERGENCE_FILE
        if conv.is_file():
            (target / CONVERGENCE_FILE).write_text(conv.read_text())
        written.append(target)
    return written


def update_block(path: str | Path, folders: list[str | Path]) -> bool:
    """Rewrite the block between :data:`BEGIN` and :data:`END` of the Markdown file ``path``
    with :func:`table` of ``folders``; :returns: whether the file changed.
    :raises ValueError: the file has no such block."""
    path = Path(path)
    text = path.read_text()
    if BEGIN not in text or END not in text:
        raise ValueError(f"{path}: no {BEGIN} ... {END} block to rewrite")
    head, rest = text.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    new = f"{head}{BEGIN}\n{table(folders)}{END}{tail}"
    if new != text:
        path.write_text(new)
    return new != text


def block_of(path: str | Path) -> str:
    """The block between :data:`BEGIN` and :data:`END` of a Markdown file, as :func:`table`
    wrote it."""
    text = Path(path).read_text()
    return text.split(BEGIN, 1)[1].split(END, 1)[0].removeprefix("\n")


def missing_figures(text: str, block: str) -> list[str]:
    """The figures of ``text`` (numbers with two decimals, e.g. −88.32 or +0.45, the way the
    table prints them) that are not in ``block``: a README must quote only figures the
    regenerated table holds."""
    import re

    def figures(t: str) -> list[str]:
        return [m.replace("−", "-") for m in re.findall(r"[−+-]?\d+\.\d\d(?!\d)", t)]

    held = {f.lstrip("+-") for f in figures(block)}
    return [f for f in figures(text) if f.lstrip("+-") not in held]


def main(argv: list[str] | None = None) -> int:
    """``python -m vaelab.runs.tables``: ``--export DEST RUNS...`` writes the runs' small
    results; ``--into FILE FOLDERS...`` rewrites FILE's table block (and ``--plot PATH`` the
    chart, when there is a row)."""
    p = argparse.ArgumentParser(prog="python -m vaelab.runs.tables", description=main.__doc__)
    p.add_argument("folders", nargs="+", metavar="DIR")
    p.add_argument("--export", metavar="DEST", help="export the runs of DIR... to DEST")
    p.add_argument("--into", metavar="FILE", help="rewrite FILE's table block from DIR...")
    p.add_argument("--plot", metavar="PATH", help="with --into: the chart, as PNG")
    args = p.parse_args(argv)
    if args.export:
        for target in export_runs(args.export, args.folders):
            print(f"exported: {target}")
    if args.into:
        changed = update_block(args.into, args.folders)
        print(f"{args.into}: table {'rewritten' if changed else 'unchanged'}")
        rows = chart_rows(args.folders)
        if args.plot and rows:
            from vaelab.runs.plots import save_reproduce_chart

            print(f"chart: {save_reproduce_chart(args.plot, rows)}")
        elif args.plot:
            print("no evaluated row: no chart drawn", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
