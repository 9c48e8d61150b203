r"""Gaussian vs discrete latents on statically binarized MNIST, with one budget for all.

Every run (configs ``experiments/configs/latents_*.toml``) has the same 784-512-256 encoder and
256-512-784 decoder (Jang et al. 2017's widths), Bernoulli likelihood, Adam 1e-3, batch 100 and
the same number of gradient steps, on the same data. Two suites:

``--suite jang`` (default; ``latents.md``): Jang et al.'s latent, N = 20 variables × K = 10 classes.

* ``gaussian``: z ∈ ℝ^20, Trace_ELBO;
* ``gumbel_relaxed``: Gumbel-softmax, relaxed KL (Maddison et al.);
* ``gumbel_categorical``: Gumbel-softmax, categorical KL (Jang et al.);
* ``straight_through``: straight-through Gumbel (one-hot decoder input), categorical KL;
* ``reinforce``: unrelaxed categorical posterior, TraceGraph_ELBO + learned baseline.

Capacity: the categorical code holds at most N log K = 20 log 10 ≈ 46 nats per image; the Gaussian
gets the same number of latent variables (20). Its KL is not capped, so it is the stronger model
at equal width; the question is how much of that gap each discrete estimator closes.

``--suite small`` (``latents_small.md``): N = 2 × K = 10, i.e. 100 joint states, small enough for
exact enumeration: the same runs plus ``enum`` (TraceEnum_ELBO, the exact ELBO gradient), a
Gaussian with z ∈ ℝ^2, and the *exact* test log p(x) of every discrete model.

**Seeds.** ``--seeds N`` trains every model with ``train.seed`` = 0 … N − 1 (default 3 for the jang
suite, 1 for ``--suite small`` and ``--smoke``), run folders ``RUNS/seedS/NAME``. Before
``--seeds`` a run folder was ``RUNS/NAME``; such a folder is seed 0: move it to ``RUNS/seed0/NAME``
to reuse it (the script says so when it sees one).

**Scoring.** The discrete models are always scored as discrete models, with hard one-hot latents
(:meth:`vaelab.vae.VAE.eval_pair`, ``hard=True``), the last checkpoint (equal steps):

* log p̂(x) by importance sampling with the guide's (categorical) posterior as proposal, K =
  ``eval.num_samples`` (5000), on **all** test images unless ``--is-limit N`` (N images spread
  evenly over the ordered test split, :func:`vaelab.data.subsets.spread_indices`); the ELBO beside
  it is the mean of the same K log-weights. The pass runs in resumable blocks
  (:func:`vaelab.runs.stages.evaluate_in_blocks`: ``eval.block_size`` or 500 images, block b seeded
  by ``eval.seed`` + b, saved to ``RUN/compare_latents/is/`` as it completes): after a kill,
  ``--reuse`` resumes training and scoring where they stopped, to the same numbers;
* the test ELBO with exact log p(z) − log q(z|x), ``--elbo-draws`` draws per point on the whole
  test set, and the exact log p(x) where the joint states can be summed (``--suite small``);
* category usage (:func:`vaelab.inference.diagnostics.category_usage`).

**Outputs.** Each finished run's small files go to ``--export`` (default ``OUT/<prefix>/``, i.e.
``experiments/results/latents/``), one folder ``NAME/seedS/`` in the format of ``vaelab
reproduce``'s exports (:mod:`vaelab.runs.export`, format
:data:`~vaelab.runs.export.EXPORT_FORMAT`): ``config.toml`` (resolved), ``metrics.jsonl``,
``result.json`` (``format_version``, seed, the budget reached, the IS summary, the all-image ELBO,
category usage; no machine path) and ``is_points.tsv`` (log p̂(x) and ELBO per test image, 4
decimals); no checkpoint. The results block of ``<prefix>.md`` (between :data:`BEGIN` and
:data:`END`) is built from those files alone (:func:`results_block`): per model the test −ELBO
and −log p̂(x) as mean ± sd over seeds, and each model's paired difference to the Gaussian,
image by image per seed, across seeds mean ± t(n−1)·sd/√n
(:func:`vaelab.runs.stats.t_interval`). ``--table-from DIR`` rebuilds that block from ``DIR``
alone. A page written by hand around the block (it holds the block but not the first line
:data:`GENERATED`, as ``latents.md`` does) keeps its text: only the block is rewritten. Any other
page is written whole (:func:`table`): the block, every run's details (``<prefix>.json``),
figures (reconstructions, prior samples, one-variable-at-a-time traversals of the first seed)
and the command.

::

    python experiments/compare_latents.py --reuse --seeds 3          # latents.md (hours, resumable)
    python experiments/compare_latents.py --table-from experiments/results/latents  # its block
    python experiments/compare_latents.py --suite small --reuse      # latents_small.md
    python experiments/compare_latents.py --smoke --out /tmp/l       # seconds, synthetic data

References:
  1. E. Jang, S. Gu, B. Poole. *Categorical Reparameterization with Gumbel-Softmax*. ICLR 2017.
  2. C. J. Maddison, A. Mnih, Y. W. Teh. *The Concrete Distribution*. ICLR 2017.
  3. A. Mnih, K. Gregor. *Neural Variational Inference and Learning in Belief Networks*. ICML 2014.
  4. Y. Burda, R. Grosse, R. Salakhutdinov. *Importance Weighted Autoencoders*. ICLR 2016.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _runner import ROOT, Experiment, parser  # noqa: E402

from vaelab.config import json_safe  # noqa: E402
from vaelab.runs.export import EXPORT_FORMAT, POINTS_FILE, read_points, write_export  # noqa: E402
from vaelab.runs.tables import _mean_sd, _paired_cell  # noqa: E402

HERE = Path(__file__).resolve().parent
SCRIPT = "experiments/compare_latents.py"
LABELS = {
    "gaussian": "Gaussian, z ∈ ℝ^{d} (Trace_ELBO)",
    "enum": "exact enumeration (TraceEnum_ELBO)",
    "gumbel_relaxed": "Gumbel-softmax, relaxed KL (Maddison)",
    "gumbel_categorical": "Gumbel-softmax, categorical KL (Jang)",
    "straight_through": "straight-through Gumbel, categorical KL",
    "reinforce": "REINFORCE + learned baseline (TraceGraph)",
}
#: the model every other one is paired with, image by image
REFERENCE = "gaussian"
SUITES = {
    # name: (file prefix, runs folder, variants, (N, K) override or None, Gaussian dim or None,
    #        default --seeds)
    "jang": ("latents", "compare_latents",
             ["gaussian", "gumbel_relaxed", "gumbel_categorical", "straight_through", "reinforce"],
             None, None, 3),
    "small": ("latents_small", "compare_latents_small",
              ["gaussian", "enum", "gumbel_relaxed", "gumbel_categorical", "straight_through",
               "reinforce"],
              (2, 10), 2, 1),
}
#: Jang et al. 2017, Table 2 (binarized MNIST, 784-512-256, 20 × 10 latents), fully trained:
#: test −ELBO. Recalled from the paper, not re-measured here.
JANG = {"gumbel_categorical": "≈ 101.5", "straight_through": "≈ 107.8"}
SMOKE = [
    "data.name=synthetic", "model.hidden_sizes=[32]", "guide.hidden_sizes=[32]",
    "train.valid_limit=50", "train.max_steps_per_epoch=4", "train.epochs=2",
]
SMOKE_LATENT = (4, 3)  # 81 states: every variant, enum included, and the exact log p(x)
#: the markers of the results block of ``<prefix>.md`` (:func:`results_block`)
BEGIN, END = "<!-- latents-table:begin -->", "<!-- latents-table:end -->"
#: the first line of a page this script writes whole (:func:`table`); a page with the block but
#: without this line is written by hand around the block, which alone is rewritten
GENERATED = "<!-- written whole by experiments/compare_latents.py -->"
#: the IS blocks of a run folder (:func:`vaelab.runs.stages.evaluate_in_blocks`)
IS_FOLDER = Path("compare_latents") / "is"


def parse_args(argv):
    p = parser(__doc__, runs="runs/compare_latents[_small]")
    p.add_argument("--suite", choices=list(SUITES), default="jang")
    p.add_argument("--variants", nargs="+", default=None, choices=list(LABELS))
    p.add_argument("--seeds", type=int, default=None,
                   help="train.seed = 0 .. N-1, runs in RUNS/seedS/NAME (default: 3 for the "
                   "jang suite, 1 for --suite small and --smoke)")
    p.add_argument("--is-limit", type=int, default=None, metavar="N",
                   help="IS on N test images spread evenly over the split (default: all; "
                   "--smoke: 20)")
    p.add_argument("--elbo-draws", type=int, default=10, help="draws per point of the test ELBO")
    p.add_argument("--export", default=None, metavar="DIR",
                   help="each finished run's small files, DIR/NAME/seedS/ (default: OUT/<prefix>)")
    p.add_argument("--table-from", default=None, metavar="DIR",
                   help="only rebuild the results block of OUT/<prefix>.md from the files "
                   "exported to DIR (no training, no scoring)")
    args = p.parse_args(argv)
    args.default_runs = f"runs/{SUITES[args.suite][1]}"
    if args.seeds is None:
        args.seeds = 1 if args.smoke else SUITES[args.suite][5]
    if args.seeds < 1:
        p.error(f"--seeds needs at least 1 seed, got {args.seeds}")
    if any(o.replace(" ", "").startswith("train.seed=") for o in args.overrides):
        p.error("the seeds are --seeds N (train.seed = 0 .. N-1), not --set train.seed=...")
    return args


# --------------------------------------------------------------------------------------------
# figures


def _traversal_images(vae, x0: torch.Tensor) -> torch.Tensor:
    """Decode the hard code of ``x0 (1, D)`` with one variable set to each class in turn:
    ``(N K, D)``, row n = variable n, column k = class k
    (:func:`vaelab.inference.latent_space.traverse`)."""
    from vaelab.inference.latent_space import traverse

    latent = vae.latent
    code = vae.inference.logits(x0)[0].argmax(-1)  # (N,)
    z = torch.nn.functional.one_hot(code, latent.num_classes).to(x0.dtype)  # (N, K)
    decoded, _ = traverse(vae, z, list(range(latent.num_variables)))  # (N, K, D)
    return decoded.flatten(0, 1)  # (N K, D)


@torch.no_grad()
def write_figures(runs: dict, x_show: torch.Tensor, shape, out: Path, prefix: str) -> list[str]:
    from vaelab.runs.report import save_grid

    files = []
    torch.manual_seed(0)
    rows = [x_show] + [run.vae.reconstruct(x_show) for run in runs.values()]
    grid = torch.stack(rows, 0).reshape(-1, x_show.shape[1])  # (1 + V) rows of n images
    f = f"{prefix}_reconstructions.png"
    save_grid(out / f, grid, shape, ncol=x_show.shape[0],
              title="rows: input, " + ", ".join(runs) + " (one hard draw z ~ q(z|x))")
    files.append(f)
    samples = torch.cat([run.vae.generative.sample(16) for run in runs.values()])
    f = f"{prefix}_samples.png"
    save_grid(out / f, samples, shape, ncol=16,
              title="prior samples (mean images), one row per run: " + ", ".join(runs))
    files.append(f)
    for name, run in runs.items():
        if run.vae.latent.continuous:
            continue
        # the first shown image that is not a zero, for a more telling traversal
        imgs = _traversal_images(run.vae, x_show[1:2])
        f = f"{prefix}_traversal_{name}.png"
        save_grid(out / f, imgs, shape, ncol=run.vae.latent.num_classes,
                  title=f"{name}: row n = variable n set to class 0..K−1")
        files.append(f)
    return files


# --------------------------------------------------------------------------------------------
# one run


def run_variant(exp: Experiment, name: str, data, seed: int) -> tuple[dict, object, dict]:
    """Train (or, with ``--reuse``, resume or reuse) ``RUNS/seedS/NAME`` and score its last
    checkpoint. :returns: the row of the details table, the trained run, and its ``result.json``
    (:func:`export_run`) with the IS pass's per-point values under ``"_points"``."""
    from vaelab.inference.diagnostics import category_usage
    from vaelab.runs.stages import evaluate_in_blocks

    _, _, _, latent_nk, gaussian_dim, _ = SUITES[exp.args.suite]
    overrides = [f"train.seed={seed}"]
    if exp.args.smoke:
        latent_nk, gaussian_dim = SMOKE_LATENT, 4
    if name == "gaussian" and gaussian_dim:
        overrides.append(f"model.latent_dim={gaussian_dim}")
    elif name != "gaussian" and latent_nk:
        overrides += [f"model.latent.num_variables={latent_nk[0]}",
                      f"model.latent.num_classes={latent_nk[1]}"]
    cfg = exp.config(HERE / "configs" / f"latents_{name}.toml", overrides, smoke=SMOKE)
    # equal steps: the last checkpoint, not the best
    run = exp.train(f"seed{seed}/{name}", cfg, data=data, checkpoint="last")
    history = exp.history(run)
    # the test ELBO of the whole split (and the exact log p(x) where the states can be summed)
    elbo_est = exp.score(run, exp.eval_config(run, [
        f"eval.num_samples={exp.args.elbo_draws}", "eval.limit=null", "eval.exact=true",
        "eval.diagnostics=false",
    ]))
    limit = [f"eval.limit={exp.args.is_limit}"] if exp.args.is_limit else []
    is_ec = exp.eval_config(run, ["eval.exact=false", *limit])
    tag = f"[{exp.name}/seed{seed}/{name}]"
    is_est = evaluate_in_blocks(run, is_ec, run.dir / IS_FOLDER,
                                say=lambda line: print(f"{tag} {line}", flush=True))
    elbo, is_ = elbo_est.summary(), is_est.summary()
    latent = run.vae.latent
    row = {
        "name": name,
        "seed": seed,
        "label": LABELS[name].format(d=cfg.model.latent_dim),
        "latent": "z ∈ ℝ^%d" % cfg.model.latent_dim if latent.continuous
        else f"N = {latent.num_variables} × K = {latent.num_classes}",
        "epochs": len(history),
        "steps": history[-1]["step"],
        "test_elbo": elbo["elbo"],
        "test_elbo_stderr": elbo["elbo_stderr"],
        "test_points_elbo": elbo_est.num_points,
        "exact_log_px": elbo.get("exact_log_likelihood"),
        "is_log_px": is_["log_likelihood"],
        "is_log_px_stderr": is_["log_likelihood_stderr"],
        "is_elbo": is_["elbo"],
        "is_mc_stderr": is_["mc_stderr_mean"],
        "is_points": is_est.num_points,
        "K": is_est.num_samples,
        "epoch_time": sum(r["epoch_time"] for r in history) / len(history),
        "final_train_loss": history[-1]["train_loss"],
        "final_temperature": history[-1]["temperature"],
        "eval_time": elbo_est.extra["eval_s"] + is_est.extra["compute_s"],
        "config": f"experiments/configs/latents_{name}.toml",
    }
    usage = {}
    if not latent.continuous:
        x_test = run.pre.eval_split(run.split("test"), run.cfg.eval.seed)
        usage = category_usage(run.vae, x_test).summary()
        row.update(usage)
    result = {
        "format_version": EXPORT_FORMAT, "script": SCRIPT, "suite": exp.args.suite,
        "name": name, "seed": seed, "label": row["label"], "latent": row["latent"],
        "config": row["config"], "checkpoint": "last",
        "budget": {"epochs": len(history), "epochs_planned": cfg.train.epochs,
                   "steps": history[-1]["step"], "finished": len(history) == cfg.train.epochs,
                   "batch_size": cfg.train.batch_size, "lr": cfg.train.lr,
                   "threads": cfg.train.num_threads,
                   "train_wall_s": sum(r["epoch_time"] for r in history)},
        "is": {**is_, "compute_s": is_est.extra["compute_s"],
               "blocks_untimed": is_est.extra["blocks_untimed"]},
        "is_points": {"file": POINTS_FILE, "split": is_ec.split, "limit": is_ec.limit,
                      "split_size": getattr(run.data, is_ec.split).shape[0],
                      "columns": ["point", "log_px", "elbo"]},
        "elbo_all": {"draws": elbo_est.num_samples, "num_points": elbo_est.num_points,
                     **{k: elbo[k] for k in ("elbo", "elbo_stderr", "exact_log_likelihood",
                                             "exact_log_likelihood_stderr") if k in elbo},
                     "compute_s": elbo_est.extra["eval_s"]},
        **({"category_usage": usage} if usage else {}),
        "_points": (is_est.log_px, is_est.elbo),
    }
    return row, run, result


# --------------------------------------------------------------------------------------------
# exported files


def export_run(dest: Path, run, result: dict) -> Path:
    """Write one scored run's small files to ``dest/NAME/seedS/``: ``config.toml``,
    ``metrics.jsonl``, ``result.json`` and ``is_points.tsv`` (4 decimals), as
    :func:`vaelab.runs.tables.export_runs` writes a reproduce run's.

    :raises ValueError: a file would carry a machine path (named, in one line)."""
    log_px, elbo = result["_points"]
    out = json_safe({k: v for k, v in result.items() if not k.startswith("_")})
    return write_export(dest / result["name"] / f"seed{result['seed']}", run.dir, out, log_px,
                        elbo)


def read_exported(dest: Path) -> list[dict]:
    """The runs exported to ``dest`` (``NAME/seedS/result.json``), in the order of
    :data:`LABELS` then seed, each with ``"_points"``: (the points scored, log p̂(x) and the
    ELBO per point as the TSV holds them, ``(N,)`` float64 each). A run without its TSV is left
    out. :raises ValueError: a file of another format version."""
    found = []
    for path in sorted(Path(dest).glob("*/seed*/result.json")):
        r = {**json.loads(path.read_text()), "_dir": str(path.parent)}
        if r.get("format_version") != EXPORT_FORMAT:
            raise ValueError(f"{path}: format_version {r.get('format_version')!r}, this script "
                             f"reads {EXPORT_FORMAT}")
        points = read_points(r)
        if points is not None:
            found.append({**r, "_points": points})
    order = list(LABELS)
    return sorted(found, key=lambda r: (order.index(r["name"]) if r["name"] in order else 99,
                                        r["seed"]))


# --------------------------------------------------------------------------------------------
# the results block, from exported files alone


def _budget(rs: list[dict]) -> str:
    """The budget every run reached, stated once when they share it, else run by run."""
    def one(b: dict) -> str:
        return (f"{b['epochs']} epochs = {b['steps']} Adam steps (batch {b['batch_size']}, "
                f"lr {b['lr']:g})")

    kinds = {one(r["budget"]) for r in rs}
    text = (f"{kinds.pop()} for every run" if len(kinds) == 1 else
            "; ".join(f"{r['name']} seed {r['seed']}: {one(r['budget'])}" for r in rs))
    unfinished = [f"{r['name']} seed {r['seed']}" for r in rs if not r["budget"]["finished"]]
    planned = sorted({r["budget"]["epochs_planned"] for r in rs})
    return (text + f" (of {', '.join(map(str, planned))} planned)"
            + (f"; **unfinished**: {', '.join(unfinished)}" if unfinished else ""))


def _points_text(rs: list[dict]) -> str:
    """Which test images the IS pass scored (every run the same, or say each)."""
    def one(r: dict) -> str:
        spec, n = r["is_points"], r["_points"][1].numel()
        if spec["limit"] is None or n == spec["split_size"]:
            return f"all {n} {spec['split']} images"
        return (f"{n} of the {spec['split_size']} {spec['split']} images, spread evenly over "
                f"the split (`eval.limit` = {spec['limit']}: `--is-limit {spec['limit']}`)")

    kinds = {one(r) for r in rs}
    return kinds.pop() if len(kinds) == 1 else "; ".join(
        f"{r['name']} seed {r['seed']}: {one(r)}" for r in rs)


def _paired(rs: list[dict], ref: list[dict], column: int) -> str:
    """The paired cell of a model against the reference: per seed both scored on the same
    images, the mean of the per-image differences (column 1: log p̂(x), 2: ELBO);
    :func:`vaelab.runs.tables._paired_cell` over the seeds."""
    by_seed = {r["seed"]: r for r in ref}
    diffs = []
    for r in rs:
        other = by_seed.get(r["seed"])
        if other is not None and r["_points"][0] == other["_points"][0] and (
                r["_points"][1].numel() == other["_points"][1].numel()):
            diffs.append(r["_points"][column] - other["_points"][column])  # (N,)
    return _paired_cell(diffs) if diffs else "—"


def results_block(runs: list[dict], suite: str, export: str) -> str:
    """The results block of ``<prefix>.md``, its markers included, from the exported runs
    ``runs`` (:func:`read_exported`) alone. ``export``: where they are, as the page names it."""
    command = ("python experiments/compare_latents.py"
               + (f" --suite {suite}" if suite != "jang" else "") + f" --table-from {export}")
    if not runs:
        many = f" --seeds {SUITES[suite][5]}" if SUITES[suite][5] > 1 else ""
        return "\n".join([
            BEGIN,
            f"No run exported to `{export}` yet: no "
            f"{f'{SUITES[suite][5]}-seed ' if SUITES[suite][5] > 1 else ''}run yet. "
            f"`python experiments/compare_latents.py{'' if suite == 'jang' else ' --suite small'}"
            f" --reuse{many}` trains and scores every model and writes its files there; "
            f"`{command}` rebuilds this block from those files alone.",
            END])
    groups: dict[str, list[dict]] = {}
    for r in runs:
        groups.setdefault(r["name"], []).append(r)
    ref = groups.get(REFERENCE, [])
    seeds = sorted({r["seed"] for r in runs})
    k = sorted({r["is"]["num_samples"] for r in runs})
    exact = any("exact_log_likelihood" in r["elbo_all"] for r in runs)
    train_h = sum(r["budget"]["train_wall_s"] for r in runs) / 3600
    is_h = sum(r["is"]["compute_s"] for r in runs) / 3600
    threads = sorted({r["budget"]["threads"] for r in runs})
    lines = [
        BEGIN,
        f"Budget: {_budget(runs)}; seed{'s' if len(seeds) > 1 else ''} "
        f"{', '.join(map(str, seeds))} (`train.seed`); the last "
        "checkpoint is scored (equal steps). Every discrete model is scored as the discrete "
        "model, with hard one-hot latents: IS log p̂(x) with "
        f"K = {', '.join(map(str, k))} draws from the guide's posterior on {_points_text(runs)}; "
        "the test ELBO is the mean of the same K log-weights. Compute, as measured: "
        f"{train_h:.2f} h of training and {is_h:.2f} h of IS over {len(runs)} "
        f"run{'' if len(runs) == 1 else 's'} ({'/'.join(map(str, threads))} thread(s) each).",
        "",
        "| run | latent | seeds | test −ELBO | −log p̂(x), IS | "
        + ("exact −log p(x), all images | " if exact else "")
        + f"Δ log p̂(x), run − {REFERENCE} (paired) | Δ ELBO, run − {REFERENCE} (paired) |",
        "|---|---|---|---:|---:|" + ("---:|" if exact else "") + "---:|---:|",
    ]
    for name, rs in groups.items():
        means = [[float(r["_points"][c].mean()) for r in rs] for c in (1, 2)]  # per seed
        ex = [r["elbo_all"].get("exact_log_likelihood") for r in rs]
        pair = (["—", "—"] if name == REFERENCE else
                [_paired(rs, ref, c) for c in (1, 2)])
        lines.append(
            f"| {rs[0]['label']} | {rs[0]['latent']} | {', '.join(str(r['seed']) for r in rs)} "
            f"| {_mean_sd([-v for v in means[1]])} | {_mean_sd([-v for v in means[0]])} | "
            + (f"{_mean_sd([-v for v in ex if v is not None])} | " if exact else "")
            + f"{pair[0]} | {pair[1]} |")
    lines += [
        "",
        "Each run's figure is its mean over the scored test images; a cell is the mean ± sd of "
        "the seeds' figures (n seeds). *Paired*: per seed, the mean over the same test images "
        f"of the run's log p̂(x) (or ELBO) minus the {REFERENCE} run's of that seed; across n "
        "seeds the mean ± t(n−1)·sd/√n, its 95 % t-interval (one seed: ± its standard error "
        "over the images). Negative: the run is below the Gaussian. Per run, "
        f"`{export}/NAME/seedS/`: `is_points.tsv` (log p̂(x) and ELBO per test image, 4 "
        "decimals), `result.json`, `config.toml`, `metrics.jsonl`. This block, from those files "
        f"alone: `{command}`.",
        END,
    ]
    return "\n".join(lines)


def _has_block(text: str) -> bool:
    return BEGIN in text and END in text


def put_block(page: Path, block: str) -> bool:
    """Replace the results block of ``page`` (from :data:`BEGIN` to :data:`END`) by ``block``,
    the rest of the page as it is. :returns: whether the file changed.
    :raises ValueError: the page has no block."""
    text = page.read_text() if page.is_file() else ""
    if not _has_block(text):
        raise ValueError(f"{page}: no {BEGIN} ... {END} block to rewrite")
    head, rest = text.split(BEGIN, 1)
    new = head + block + rest.split(END, 1)[1]
    if new != text:
        page.write_text(new)
    return new != text


def block_of(page: Path) -> str:
    """The results block of ``page``, its markers included."""
    text = page.read_text()
    return BEGIN + text.split(BEGIN, 1)[1].split(END, 1)[0] + END


def _relative(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(ROOT))
    except ValueError:
        return str(path)


def rebuild_block(page: Path, export: Path, suite: str) -> int:
    """``--table-from``: the results block of ``page`` from the files in ``export`` alone."""
    try:
        changed = put_block(page, results_block(read_exported(export), suite, _relative(export)))
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"{page}: results block {'rewritten' if changed else 'unchanged'}")
    return 0


# --------------------------------------------------------------------------------------------
# a new page: the block, then every run's details


def _f(v, digits=2):
    return "—" if v is None else f"{v:.{digits}f}"


def _is_points(r: dict) -> str:
    """Which test images a details row's IS columns scored."""
    if r["is_points"] == r["test_points_elbo"]:
        return f"all {r['is_points']} test images"
    return (f"{r['is_points']} test images spread evenly over the test split "
            "(`vaelab.data.subsets.spread_indices`; the split is ordered by digit)")


def table(rows: list[dict], meta: dict) -> list[str]:
    """The Markdown of a new page: the results ``meta["block"]``, then ``rows`` (one per run and
    seed); ``meta``: suite, smoke, threads, elbo_draws, runs, figures, block."""
    r0 = rows[0]
    has_exact = any(r.get("exact_log_px") is not None for r in rows)
    discrete = next((r["latent"] for r in rows if r["latent"].startswith("N")), "—")
    gaussian = next((r["latent"] for r in rows if r["latent"].startswith("z")), "—")
    jang = meta["suite"] == "jang"
    seeds = sorted({r.get("seed", 0) for r in rows})
    points = sorted({_is_points(r) for r in rows})
    lines = [
        GENERATED,
        f"# Gaussian vs discrete latents on binarized MNIST ({discrete})"
        + (" — SMOKE RUN" if meta["smoke"] else ""),
        "",
        *(
            ["**Smoke run**: synthetic 8×8 data, hidden [32], a few steps; the numbers only "
             "check that everything runs.", ""]
            if meta["smoke"] else []
        ),
        meta["block"],
        "",
        "## Every run",
        "",
        f"Budget, identical for every run: {r0['epochs']} epochs = {r0['steps']} Adam steps "
        "(lr 1e-3, batch 100) on the 50,000 training images of statically binarized MNIST "
        "(Larochelle), one latent sample per step (all states for enumeration), seed"
        f"{'s' if len(seeds) > 1 else ''} {', '.join(map(str, seeds))}; encoder "
        "784-512-256, decoder 256-512-784 (Jang et al. 2017's widths); Bernoulli likelihood. "
        f"Discrete runs: {discrete}, uniform prior; Gumbel runs anneal "
        "τ = max(0.5, exp(−10⁻⁴ t)) every 500 steps (Jang et al.'s schedule, recalled) and the "
        f"relaxed-KL run uses a relaxed prior at temperature 0.5. Gaussian: {gaussian}. "
        f"Threads: {meta['threads']}; the 2 CPU cores were shared with other jobs, so times are "
        "noisy.",
        "",
        "Scoring, always of the **discrete** model (hard one-hot latents, the categorical "
        "posterior of the guide's logits, whatever relaxation trained it): test ELBO with exact "
        f"log p(z) − log q(z|x), {meta['elbo_draws']} draws per point on all "
        f"{r0['test_points_elbo']} test images"
        + (", and the exact log p(x) by summing over all joint states" if has_exact else "")
        + f"; log p̂(x) by importance sampling (K = {r0['K']}, the posterior as proposal) on "
        f"{'; '.join(points)}, with the mean of the same K log-weights as the ELBO beside it. "
        "Last checkpoint (equal steps), not the best.",
        "",
        "| run | seed | test −ELBO (all) | "
        + ("exact −log p(x) (all) | " if has_exact else "")
        + "−ELBO (IS points) | −log p̂(x), IS | training loss (last epoch) | s / epoch | "
        "classes used / K | "
        "aggregate perplexity | posterior perplexity | final τ |"
        + (" Jang et al. −ELBO (recalled) |" if jang else ""),
        "|---|---:|---:|" + ("---:|" if has_exact else "")
        + "---:|---:|---:|---:|---:|---:|---:|---:|" + ("---:|" if jang else ""),
    ]
    for r in rows:
        usage = (
            f"{r['classes_used_mean']:.1f} (min {r['classes_used_min']})"
            if "classes_used_mean" in r else "—"
        )
        ex = r.get("exact_log_px")
        lines.append(
            f"| {r['label']} | {r.get('seed', 0)} | "
            f"{-r['test_elbo']:.2f} ± {r['test_elbo_stderr']:.2f} | "
            + (f"{_f(None if ex is None else -ex)} | " if has_exact else "")
            + f"{-r['is_elbo']:.2f} | {-r['is_log_px']:.2f} ± {r['is_log_px_stderr']:.2f} | "
            f"{r['final_train_loss']:.2f} | {r['epoch_time']:.1f} | {usage} | "
            f"{_f(r.get('aggregate_perplexity_mean'))} | "
            f"{_f(r.get('posterior_perplexity_mean'))} | {_f(r['final_temperature'], 3)} |"
            + (f" {JANG.get(r['name'], '—')} |" if jang else "")
        )
    lines += [
        "",
        "± is the standard error across test points, not the Monte Carlo error (the mean "
        f"delta-method MC standard error of the IS column is at most "
        f"{max(r['is_mc_stderr'] for r in rows):.2f} nats per point). Category usage over the "
        "test set: *classes used* = classes that are the argmax of q(z_n|x) for at least one "
        "image (mean over the N variables); *aggregate perplexity* = exp H of the average "
        "posterior (effective number of classes the data use); *posterior perplexity* = mean "
        "exp H(q(z_n|x)) (1 = a deterministic code, K = the prior). *Training loss* = the "
        "training objective averaged over the last epoch (nats per image): the negative of the "
        "relaxed-model ELBO, of the Jang surrogate, or of the discrete ELBO, so it is comparable "
        "with the test −ELBO only for REINFORCE, enumeration and the Gaussian.",
        "",
        "What each training objective bounds (the table scores all of them as the discrete "
        "model): relaxed KL — a true ELBO of the *relaxed* model (decoder fed simplex points); "
        "categorical KL — a surrogate mixing the relaxed reconstruction term with the discrete "
        "KL, a bound of neither model; straight-through — the discrete model's ELBO with a "
        "biased gradient; REINFORCE and enumeration — the discrete model's ELBO, with an "
        "unbiased but noisy gradient and with the exact gradient; Gaussian — its own ELBO.",
        "",
    ]
    if jang:
        lines += [
            "Reference (not re-measured): Jang et al. 2017 report a test −ELBO ≈ 101.5 "
            "(Gumbel-softmax) and ≈ 107.8 (straight-through) for this architecture after full "
            "training (recalled from the paper's Table 2; their protocol may differ). This "
            "budget is far shorter.",
            "",
        ]
    return lines + [*[f"![{f}]({f})" for f in meta["figures"]], "",
                    f"Runs: `{meta['runs']}/seedS/NAME` (`--reuse` resumes or reuses them); "
                    f"figures: seed {seeds[0]}."]




def main(argv: list[str] | None = None) -> int:
    from vaelab.data import load_dataset

    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    prefix, _, variants, _, _, _ = SUITES[args.suite]
    with Experiment(prefix, args, argv, SCRIPT) as exp:
        page = exp.out / f"{prefix}.md"
        export = Path(args.export) if args.export else exp.out / prefix
        # a page written by hand around the block keeps its text: only the block is rewritten
        text = page.read_text() if page.is_file() else ""
        kept = _has_block(text) and GENERATED not in text
        if args.table_from is not None:
            return rebuild_block(page, Path(args.table_from), args.suite)
        if args.table_only and kept:  # no details table on the page: only its block
            return rebuild_block(page, export, args.suite)
        meta = {"suite": args.suite, "smoke": args.smoke, "threads": args.threads,
                "elbo_draws": args.elbo_draws, "runs": _relative(exp.runs)}
        if args.table_only:
            figures = sorted(p.name for p in exp.out.glob(f"{prefix}_*.png")
                             if prefix != "latents" or not p.name.startswith("latents_small"))
            block = results_block(read_exported(export), args.suite, _relative(export))
            return exp.rewrite(lambda rows, saved: table(rows, {**meta, "figures": figures,
                                                                **saved, "block": block}))
        if args.smoke:
            variants = ["gaussian", "enum", "gumbel_relaxed", "gumbel_categorical",
                        "straight_through", "reinforce"]
        variants = args.variants or variants
        for name in variants:  # the single-seed layout, before --seeds
            if (exp.runs / name / "checkpoints").is_dir() and not (
                    exp.runs / "seed0" / name).exists():
                print(f"[{prefix}] {exp.runs / name} is a run folder of the single-seed layout: "
                      f"move it to {exp.runs / 'seed0' / name} to reuse it as seed 0",
                      flush=True)
        first = exp.config(HERE / "configs" / f"latents_{variants[0]}.toml", [], smoke=SMOKE)
        data = load_dataset(first.data)  # one data set for every variant and seed
        rows, runs = [], {}
        for seed in range(args.seeds):
            for name in variants:
                row, run, result = run_variant(exp, name, data, seed)
                print(f"[{prefix}/seed{seed}/{name}] exported: "
                      f"{_relative(export_run(export, run, result))}", flush=True)
                rows.append(row)
                if seed == 0:  # the figures' runs
                    runs[name] = run
        block = results_block(read_exported(export), args.suite, _relative(export))
        if kept:
            put_block(page, block)
            print(f"{page}: results block rewritten; the rest of the page is kept as it is "
                  f"(a new page, with every run's details and figures: --reuse --out NEW_DIR)")
            return 0
        first_run = runs[variants[0]]
        x_show = first_run.pre.eval_split(exp.images(first_run, 12), 0)
        meta["figures"] = write_figures(runs, x_show, data.image_shape, exp.out, prefix)
        path = exp.write(table(rows, {**meta, "block": block}), rows, **meta)
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
