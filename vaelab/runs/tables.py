"""The reproducibility table and chart (``vaelab reproduce --table`` and ``--plot``).

:func:`table` gathers the results (``RUN/reproduce/result.json``) of any set of recipe folders
into the Markdown table of ``experiments/results/reproduce.md``, one row per (recipe, variant)
over its seeds; :func:`paired_table` the paired differences between variants, image by image on
the test images both scored; :func:`chart_rows` the table's rows as numbers for
:func:`vaelab.runs.plots.save_reproduce_chart`. A figure over seeds follows one rule
(:func:`vaelab.runs.stats.across_seeds`): one seed, its value ± its standard error over the
test images; several, the mean ± the sample standard deviation of the seeds' values.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch

from vaelab.runs.recipes import Recipe, load_recipe
from vaelab.runs.stats import across_seeds, stat

__all__ = ["chart_rows", "paired_table", "table"]

def _results(folders: list[Path]) -> list[dict]:
    """Every ``result.json`` under the recipe folders, each with ``"_dir"``, the run folder it
    is in now (``run_dir`` says where it was run)."""
    found: list[dict] = []
    where: dict[tuple, str] = {}
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


def _paired_cell(diffs: list[torch.Tensor]) -> str:
    """One seed: mean ± standard error over the images; several: mean ± sd of the seeds' means."""
    m, err = across_seeds([float(d.mean()) for d in diffs],
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
    paired_md = paired_table(folders)
    return "\n".join(lines) + "\n" + (f"\nPaired, on the same test images:\n\n{paired_md}"
                                      if paired_md else "")


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
