"""The reproducibility table (issue 24 items 1 and 6): a discrete row's headline is a bound on
the discrete model, never the relaxed-sample figure; exported runs give the table their run
folders give, paired cells included; the committed block of ``experiments/results/reproduce.md``
is the one regenerated from the committed files, and the README quotes only its figures."""

import json
import os
from pathlib import Path

import pytest
from test_reproduce import TINY

from vaelab.runs.recipes import load_recipe
from vaelab.runs.reproduce import reproduce
from vaelab.runs.tables import (
    block_of,
    export_runs,
    main,
    missing_figures,
    paired_table,
    table,
    update_block,
)

ROOT = Path(__file__).resolve().parents[2]
COMMITTED = ROOT / "experiments" / "results" / "reproduce"


def _discrete_result(seed: int, jang: float, first: bool = True) -> dict:
    """A result.json of the gumbel row, its relaxed-sample figure ``jang`` above every bound."""
    stage = {"log_likelihood": -95.0 - seed, "log_likelihood_stderr": 0.3, "elbo": -107.0 - seed,
             "elbo_stderr": 0.3, "num_samples": 5000, "num_points": 10000}
    if first:
        stage["first_draws"] = {"m": 1000, "iw_bound": -97.0 - seed, "iw_bound_stderr": 0.3,
                                "elbo": -106.9 - seed, "elbo_stderr": 0.3, "num_points": 10000}
    return {"recipe": "gumbel_softmax", "variant": "gumbel", "seed": seed, "overrides": [],
            "budget_paper": "b", "machine": "m", "is": stage,
            "paper_metric": {"jang_bound": jang, "jang_bound_stderr": 0.3},
            "budget": {"epochs": 1, "steps": 1, "epochs_planned": 1, "best_epoch": 1,
                       "early_stopped": False, "finished": True, "train_wall_s": 0.0}}


@pytest.mark.parametrize("first", [True, False], ids=["first_draws", "before_first_draws"])
def test_the_headline_of_a_discrete_row_is_never_the_relaxed_sample_figure(tmp_path, first):
    """With the relaxed-sample figure the highest number of the row (−50, far above any bound),
    the headline and the chart are the one-hot ELBO (of the first 1000 draws, or of all K for a
    result from before), the IW bound of the same draws beside it; the relaxed figure appears
    once, labelled as bounding neither model."""
    from vaelab.runs.tables import _headline, chart_rows

    for seed in (0, 1):
        run = tmp_path / "gumbel" / f"seed{seed}"
        run.mkdir(parents=True)
        (run / "result.json").write_text(json.dumps({**_discrete_result(seed, -50.0, first),
                                                     "format_version": 1}))
    rows = [json.loads(p.read_text()) for p in sorted(tmp_path.glob("*/*/result.json"))]
    label, values, _ = _headline(load_recipe("gumbel_softmax"), rows)
    assert values == ([-106.9, -107.9] if first else [-107.0, -108.0]) and -50.0 not in values
    assert label.startswith("one-hot ELBO")
    [chart] = chart_rows([tmp_path])
    assert chart["value"] == pytest.approx(sum(values) / 2) and chart["metric"] == label.strip()
    text = table([tmp_path])
    assert "-50.00 ± 0.00 (2 seeds), bounds neither model" in text
    assert text.count("-50.00") == 1
    assert ("IW bound, m = 1000: -97.50 ± 0.71 (2 seeds)" in text) == first


@pytest.mark.slow
def test_exported_runs_give_the_table_of_their_run_folders(tmp_path):
    """Two tiny iwae_static variants and a gumbel row, run and exported: the table (paired cells
    included) rebuilt from the exported files alone equals the one from the run folders; the
    files carry no machine path and no checkpoint; ``--into`` rewrites a marked block."""
    runs = tmp_path / "runs"
    sets = [*TINY, "recipe.ais.points=0", "recipe.bdmc.points=0"]
    reproduce("iwae_static", runs / "iwae_static", variants=["iwae_k1", "iwae_k5"],
              overrides=sets)
    reproduce("gumbel_softmax", runs / "gumbel_softmax", variants=["gumbel"],
              overrides=[*TINY, "eval.limit=20"])
    folders = [runs / "iwae_static", runs / "gumbel_softmax"]
    dest = tmp_path / "export"
    written = export_runs(dest, folders)
    assert len(written) == 3
    want = table(folders)
    assert "| iwae_static | iwae_k5 − iwae_k1 |" in paired_table(folders)
    assert table([dest / "iwae_static", dest / "gumbel_softmax"]) == want
    assert table([dest]) == table([runs / "gumbel_softmax", runs / "iwae_static"])  # by name
    for path in dest.rglob("*"):
        assert path.suffix != ".pt"
        if path.is_file():
            assert str(tmp_path) not in path.read_text() and os.sep + "root" not in path.read_text()
    points = (written[0] / "is_points.tsv").read_text().splitlines()
    assert points[0].startswith("# vaelab reproduce export, format 1")
    assert points[1] == "point\tlog_px\telbo" and len(points) == 2 + 30
    assert all(len(v.split(".")[1]) == 4 for v in points[2].split("\t")[1:])
    md = tmp_path / "r.md"
    md.write_text("text\n<!-- table:begin -->\nold\n<!-- table:end -->\nmore\n")
    assert main(["--into", str(md), str(dest / "iwae_static"), str(dest / "gumbel_softmax")]) == 0
    assert block_of(md) == want and md.read_text().endswith("<!-- table:end -->\nmore\n")
    assert not update_block(md, [dest / "iwae_static", dest / "gumbel_softmax"])


def _conv() -> dict:
    """A convergence.json as ``experiments/convergence.py`` writes it (format 1)."""
    gain = {"mean": 0.31, "stderr": 0.04, "frac_positive": 0.9, "num_points": 100}
    return {"format_version": 1, "points": 100,
            "is": {"num_samples": {"5000": {"log_likelihood": -91.0, "gain_to_100000": gain},
                                   "100000": {"log_likelihood": -90.69}}},
            "ais": {"base": "prior", "chains": 4, "leapfrog": 5,
                    "steps": {"500": {"log_likelihood": -90.2, "ess": 3.0},
                              "2000": {"log_likelihood": -90.0, "ess": 3.2,
                                       "gain_from_T500": {**gain, "mean": 0.2}}}},
            "ais_minus_is": {**gain, "mean": 0.69}}


def test_a_run_with_convergence_checks_gets_its_line_and_seeds_get_a_t_interval(tmp_path):
    """A convergence.json beside an exported result adds its line under the table (IS gain,
    AIS per T with its paired gain, AIS − IS); a pair over 3 seeds is the mean of the per-seed
    paired means ± t(2)·sd/√3 (4.303 · sd / √3), with n said."""
    from vaelab.runs.convergence import convergence_table

    for variant, shift in (("iwae_k1", 0.0), ("iwae_k5", 1.0)):
        for seed in (0, 1, 2):
            run = tmp_path / variant / f"seed{seed}"
            run.mkdir(parents=True)
            r = {**_discrete_result(seed, -50.0), "recipe": "iwae_static", "variant": variant,
                 "format_version": 1}
            r["is"]["log_likelihood"] += shift
            (run / "result.json").write_text(json.dumps(r))
            d = shift + 0.1 * seed  # the per-image differences: shift + 0.1 seed, 4 images
            (run / "is_points.tsv").write_text(
                "# h\npoint\tlog_px\telbo\n" + "".join(
                    f"{i}\t{(d if variant == 'iwae_k5' else 0.0) + i:.4f}\t0.0000\n"
                    for i in range(4)))
            r["is_points"] = {"file": "is_points.tsv", "split": "test", "limit": 4,
                              "columns": ["point", "log_px", "elbo"]}
            (run / "result.json").write_text(json.dumps(r))
    (tmp_path / "iwae_k1" / "seed0" / "convergence.json").write_text(json.dumps(_conv()))
    text = table([tmp_path])
    assert "| iwae_static | iwae_k1 | 0 | 100 | K = 5000 → 100000: +0.31 ± 0.04 | from the " \
           "prior, 4 chains: T = 500: -90.20; T = 2000: -90.00 (+0.20 ± 0.04) | +0.69 ± 0.04 |" \
           in text
    assert convergence_table({}) == ""
    half = 4.303 * 0.1 / 3 ** 0.5  # per-seed means 1.0, 1.1, 1.2: sd 0.1
    assert f"+1.10 ± {half:.2f} (95 % t-interval, n = 3 seeds)" in text


def _exported(folder: Path, variant: str, limit: int | None, log_px: list[float]) -> None:
    """An exported iwae_static run, seed 0, scored on ``len(log_px)`` test points (``limit``)."""
    run = folder / variant / "seed0"
    run.mkdir(parents=True)
    r = {**_discrete_result(0, -50.0), "recipe": "iwae_static", "variant": variant,
         "format_version": 1, "is_points": {"file": "is_points.tsv", "split": "test",
                                            "limit": limit, "columns": ["point", "log_px", "elbo"]}}
    (run / "result.json").write_text(json.dumps(r))
    (run / "is_points.tsv").write_text("# h\npoint\tlog_px\telbo\n" + "".join(
        f"{i}\t{v:.4f}\t{2 * v:.4f}\n" for i, v in enumerate(log_px)))


def test_a_row_on_every_test_image_pairs_with_one_on_a_spread_subset(tmp_path):
    """The bake-off rescores its best rows on all test images and keeps the rest on 2000: a row
    on all 10 points (log p̂ = image index) pairs with one on 4 spread points (images 0, 3, 6,
    9; log p̂ = image index + 1) over those 4 images, +1.00 exactly (pairing by position would
    give +4.00); two different partial subsets do not pair."""
    _exported(tmp_path / "a", "iwae_k1", None, [float(i) for i in range(10)])
    _exported(tmp_path / "a", "iwae_k5", 4, [i + 1.0 for i in (0, 3, 6, 9)])
    text = paired_table([tmp_path / "a"])
    assert "| iwae_static | iwae_k5 − iwae_k1 | +1.00 ± 0.00 (se) | +2.00 ± 0.00 (se) | 4 |" \
        in text
    _exported(tmp_path / "b", "iwae_k1", 5, [0.0] * 5)
    _exported(tmp_path / "b", "iwae_k5", 4, [0.0] * 4)
    assert paired_table([tmp_path / "b"]) == ""


def test_export_refuses_a_machine_path(tmp_path):
    """A run whose result names a place on the machine (an override with an absolute path) is
    not exported: one line naming the value."""
    from vaelab.runs.export import machine_paths as _machine_paths

    assert _machine_paths({"overrides": ["data.path=/home/me/x"], "ok": "a/b"}, "r") == [
        "r.overrides: 'data.path=/home/me/x'"]
    assert _machine_paths({"run_dir": "~/runs"}, "r") == ["r.run_dir: '~/runs'"]


def test_the_committed_table_block_is_the_regenerated_one():
    """``experiments/results/reproduce.md``'s block is byte-identical to the table of whatever
    ``experiments/results/reproduce/`` holds (today: no exported run, the table of zero runs),
    and every figure the README quotes is in it."""
    block = block_of(ROOT / "experiments" / "results" / "reproduce.md")
    assert block == table([COMMITTED])
    assert missing_figures((ROOT / "README.md").read_text(), block) == []


def test_a_readme_figure_absent_from_the_table_is_found():
    """:func:`missing_figures` is real: a README figure that the table lacks is reported, one it
    holds (in either sign convention) is not."""
    block = "| x | -88.32 (1 seed) | +0.45 ± 0.03 (se) |"
    assert missing_figures("scores −88.32, DReG +0.45 nats", block) == []
    assert missing_figures("scores −99.68 on the paper's metric, and −88.32", block) == ["-99.68"]
    assert missing_figures("no figure, 2 seeds, 10,000 images", block) == []


def test_export_of_a_folder_without_evaluated_runs_is_one_line(tmp_path, capsys):
    """A run folder named instead of its recipe folder (or nothing evaluated) exports nothing:
    one line, exit 2, not a silent success."""
    from vaelab.cli import main

    (tmp_path / "run").mkdir()
    assert main(["reproduce", "--export", str(tmp_path / "out"), str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "no evaluated run" in err
    assert not (tmp_path / "out").exists()


def test_a_row_over_seeds_states_every_seeds_best_epoch_and_the_command_that_trains_them():
    """Three seeds whose best epochs differ (7, 5, 9) and whose seed 2 stopped early: the budget
    cell lists every seed's best epoch, not the first seed's, and names the seed that stopped;
    the command drops the per-seed ``train.seed`` override for ``--seeds 3``. Seeds 1 and 3
    alone are not consecutive: the command is said once per seed."""
    from vaelab.runs.tables import _command, _reached

    def result(seed: int, best: int, stopped: bool) -> dict:
        return {"seed": seed, "overrides": ["train.epochs=9", f"train.seed={seed}"],
                "budget": {"epochs": 9, "steps": 90, "epochs_planned": 9, "best_epoch": best,
                           "early_stopped": stopped, "finished": True, "train_wall_s": 0.0}}

    rs = [result(0, 7, False), result(1, 5, False), result(2, 9, True)]
    assert _reached(rs) == ("9 / 9 epochs (90 steps), best 7, 5, 9 (seeds 0, 1, 2), "
                            "early-stopped (seeds 2)")
    assert _reached(rs[:1]) == "9 / 9 epochs (90 steps), best 7"
    assert _command("iwae_static", "iwae_k1", rs) == (
        "vaelab reproduce iwae_static --out DIR --variant iwae_k1 --set 'train.epochs=9' "
        "--seeds 3")
    assert _command("iwae_static", "iwae_k1", rs[1:2]) == (
        "vaelab reproduce iwae_static --out DIR --variant iwae_k1 --set 'train.epochs=9' "
        "--set 'train.seed=1'")
    assert _command("iwae_static", "iwae_k1", [rs[1], result(3, 5, False)]).endswith(
        "--seeds 1, once per seed: --set 'train.seed=1'; --set 'train.seed=3'")


def test_a_row_scored_on_part_of_the_test_set_says_so_and_a_grid_member_gives_its_grids_command():
    """A paulus2021 member scored on 2000 test images (``eval.limit``): the headline cell says
    "on 2000 test images"; its command is the grid's (which screens, selects and trains it),
    not the member's name."""
    from vaelab.runs.tables import _command, _row

    r = {"recipe": "paulus2021", "variant": "gumbel_softmax_lr@lr=1e-05", "seed": 0,
         "overrides": [], "budget_paper": "b", "machine": "m",
         "selection": {"grid": "gumbel_softmax_lr", "selected": "gumbel_softmax_lr@lr=1e-05"},
         "is": {"log_likelihood": -98.7, "log_likelihood_stderr": 0.6, "elbo": -112.5,
                "num_samples": 5000, "num_points": 2000},
         "budget": {"epochs": 200, "steps": 50000, "epochs_planned": 200, "best_epoch": 139,
                    "early_stopped": False, "finished": True, "train_wall_s": 0.0}}
    row = _row("paulus2021", r["variant"], [r])
    assert "-98.70 (1 seed), on 2000 test images |" in row
    assert _command("paulus2021", r["variant"], [r]) == (
        "vaelab reproduce paulus2021 --out DIR --variant gumbel_softmax_lr")
    full = {**r, "is": {**r["is"], "num_points": 10000}}
    assert "test images" not in _row("paulus2021", r["variant"], [full]).split("|")[5]
