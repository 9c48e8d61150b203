"""The ``vaelab`` command line, eleven commands: train, evaluate, sample, report, list, config
show, diagnose, bdmc, reproduce, sweep, compare.

::

    vaelab train experiments/configs/gaussian_mnist.toml --out runs/g --set train.epochs=5
    vaelab evaluate runs/g --num-samples 5000 --json
    vaelab evaluate runs/g --method ais --steps 1000 --chains 16 --limit 100
    vaelab sample runs/g -n 64 --out samples.png
    vaelab report runs/g --html
    vaelab list priors
    vaelab config show experiments/configs/gaussian_mnist.toml --set model.prior=vamp
    vaelab diagnose runs/g --objectives iwae:5,iwae:50,iwae_dreg:50 --draws 100
    vaelab bdmc runs/g --num-points 100 --steps 1000 --json
    vaelab reproduce --list-recipes
    vaelab sweep experiments/configs/gaussian_mnist.toml --out runs/s --grid 'train.lr=[1e-3, 3e-4]'
    vaelab compare runs/s --metric best_valid_elbo

The command-line page of the documentation site (``docs/cli.md``) says what each one prints.

One topic: the command line, a parser and a short function per command, kept in one module
so that every command and its options are read in one place.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

__all__ = ["main", "build_parser"]


def _positive_int(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if n <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {n}")
    return n


def _add_set(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
        help="override a config value, e.g. --set train.epochs=5 --set model.likelihood.scale=0.1",
    )


#: evaluate's flags and the [eval] keys they set (defaults come from the run's [eval] section)
EVAL_FLAGS = {
    "split": "split", "num_samples": "num_samples", "limit": "limit", "batch_size": "batch_size",
    "max_memory": "max_memory_mb", "seed": "seed", "method": "method", "proposal": "proposal",
    "steps": "ais_steps", "chains": "ais_chains", "leapfrog": "ais_leapfrog",
    "ais_base": "ais_base",
}


def _add_marginal_args(p: argparse.ArgumentParser) -> None:
    """Options of ``evaluate``'s estimators: IS proposal and diagnostics, AIS, exact. Each sets
    the [eval] key named in its help; unset, the run's saved [eval] value applies."""
    p.add_argument("--method", choices=["is", "ais"], default=None,
                   help="eval.method: importance sampling (default) or annealed IS")
    p.add_argument("--proposal", default=None, metavar="SPEC",
                   help="eval.proposal: guide (default), inflated:FACTOR, student_t:DF, prior")
    p.add_argument("--no-diagnostics", action="store_true",
                   help="eval.diagnostics = false: skip the per-point Pareto k-hat")
    p.add_argument("--curve", default=None, metavar="PNG",
                   help="plot mean log p(x) against K = 1..K (prefixes of the same draws)")
    p.add_argument("--steps", "-T", type=int, default=None,
                   help="eval.ais_steps: AIS intermediate distributions; default: the run's [eval]")
    p.add_argument("--chains", "-C", type=int, default=None,
                   help="eval.ais_chains: AIS chains per data point; default: the run's [eval]")
    p.add_argument("--leapfrog", type=int, default=None,
                   help="eval.ais_leapfrog: leapfrog steps per HMC move; default: the run's [eval]")
    p.add_argument("--ais-base", choices=["prior", "guide"], default=None,
                   help="eval.ais_base: the distribution the AIS chains start from")
    p.add_argument("--no-exact", action="store_true",
                   help="eval.exact = false: skip the exact log p(x) where known")


def _eval_overrides(args, flags: tuple[str, ...] = tuple(EVAL_FLAGS)) -> list[str]:
    """``eval.KEY=VALUE`` for each of ``flags`` given on the command line, then ``--set``."""
    given = {EVAL_FLAGS[f]: getattr(args, f) for f in flags if getattr(args, f, None) is not None}
    out = [f"eval.{k}={v!r}" if isinstance(v, str) else f"eval.{k}={v}" for k, v in given.items()]
    if getattr(args, "no_diagnostics", False):
        out.append("eval.diagnostics=false")
    if getattr(args, "no_exact", False):
        out.append("eval.exact=false")
    return out + list(getattr(args, "overrides", []))


def plain(text: str) -> str:
    """Docstring markup as plain text for the terminal: ``x`` → x, :class:`~a.B` → B,
    :math:`x` → x."""
    import re

    text = re.sub(r":[a-z]+:`~?([^`<]*?)(?: <[^>]*>)?`", lambda m: m.group(1).split(".")[-1]
                  if m.group(0).startswith((":class:", ":func:", ":meth:", ":mod:", ":data:"))
                  else m.group(1), text)
    return text.replace("``", "").replace("`", "")


#: every command, in the order of ``vaelab --help``
COMMAND_NAMES = ("train", "evaluate", "sample", "report", "list", "config show", "diagnose",
                 "bdmc", "reproduce", "sweep", "compare")

#: the help of ``--no-progress``: what it hides, and what it does not
NO_PROGRESS_HELP = ("no progress bars (drawn only on a terminal anyway); the plain lines, one "
                    "per epoch and per evaluation stage, are still printed")


def build_parser() -> argparse.ArgumentParser:
    from vaelab import __version__

    parser = argparse.ArgumentParser(
        prog="vaelab", description="vaelab: variational autoencoders as Pyro models and guides "
        f"({', '.join(COMMAND_NAMES)}). Progress bars are drawn on a terminal only; off one (a "
        "pipe, a log file) or with --no-progress, each command prints plain lines instead.")
    parser.add_argument("--version", action="version", version=f"vaelab {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    for add in (_add_train, _add_evaluate, _add_sample_report, _add_list_config,
                _add_diagnose, _add_bdmc, _add_reproduce, _add_sweep_compare):
        add(sub)  # in this order: the order of ``vaelab --help``
    return parser


def _add_train(sub) -> None:
    """The ``train`` subcommand (:mod:`vaelab.runs.train`)."""
    p = sub.add_parser(
        "train", help="train a VAE from a TOML config (or from the defaults and --set)",
        description="Train a VAE into the run folder OUT. The config file is optional: without "
        "it every key takes its default (vaelab config show prints them) and --set changes "
        "any, e.g. vaelab train --out runs/t --set data.name=digits --set train.epochs=5")
    p.add_argument("config", nargs="?", default=None,
                   help="TOML config file (optional: omitted, every key takes its default)")
    p.add_argument("--out", required=True, help="run folder (config, metrics, checkpoints, report)")
    _add_set(p)
    p.add_argument("--resume", action="store_true", help="continue from OUT/checkpoints/last.pt")
    p.add_argument("--no-progress", action="store_true", help=NO_PROGRESS_HELP)
    p.add_argument("--evaluate", action="store_true",
                   help="evaluate (IS, the run's [eval]) after training and print log p(x); a "
                   "current OUT/eval.json (same checkpoint, same settings) is reused")
    p.add_argument("--recompute", action="store_true",
                   help="with --evaluate: estimate again even if OUT/eval.json is current")


def _add_evaluate(sub) -> None:
    """The ``evaluate`` subcommand: ELBO and log p(x) of a trained run."""
    p = sub.add_parser(
        "evaluate", help="ELBO and log p(x) (IS with diagnostics, or AIS) of a trained run"
    )
    p.add_argument("run_dir")
    p.add_argument("--split", choices=["train", "valid", "test"], default=None,
                   help="eval.split")
    p.add_argument("--num-samples", "-K", type=int, default=None,
                   help="eval.num_samples: importance samples K")
    p.add_argument("--limit", type=int, default=None,
                   help="eval.limit: N points spread evenly over the split")
    p.add_argument("--batch-size", type=int, default=None, help="eval.batch_size")
    p.add_argument("--max-memory", type=float, default=None,
                   help="eval.max_memory_mb: particle-chunk budget, MiB")
    p.add_argument("--checkpoint", choices=["best", "last"], default="best")
    p.add_argument("--seed", type=int, default=None, help="eval.seed")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="eval.KEY=VALUE",
                   help="set any [eval] key, e.g. --set eval.ais_base=guide")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--report", action="store_true",
                   help="(re)write RUN_DIR/report.md with the result")
    p.add_argument("--no-progress", action="store_true", help=NO_PROGRESS_HELP)
    _add_marginal_args(p)


def _add_sample_report(sub) -> None:
    """The ``sample`` and ``report`` subcommands: pictures of a trained run."""
    p = sub.add_parser("sample", help="decode prior samples: an image grid, or numbers (.csv, "
                       ".npy) in the data's own units")
    p.add_argument("run_dir")
    p.add_argument("-n", type=_positive_int, default=64, help="number of samples")
    p.add_argument("--out", default=None,
                   help="an image (.png, .pdf, ...; default RUN_DIR/samples.png), or .csv / .npy: "
                   "the samples as numbers, one row each, in the data's original units "
                   "(data.standardize undone)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--checkpoint", choices=["best", "last"], default="best")

    p = sub.add_parser("report", help="(re)build a run folder's report.md, its PNGs and the "
                       "latent-space pictures; --html: a self-contained report.html")
    p.add_argument("run_dir")
    p.add_argument("--html", action="store_true",
                   help="also write RUN_DIR/report.html (images inlined, no external files)")
    p.add_argument("--checkpoint", choices=["best", "last"], default="best")


def _add_list_config(sub) -> None:
    """The ``list`` and ``config show`` subcommands: components and configs."""
    p = sub.add_parser("list", help="registered components (plugins included) and their options")
    p.add_argument("kind", nargs="?", default=None,
                   help="priors, likelihoods, latents, families, networks, objectives, datasets, "
                        "proposals (default: all)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="plugins=[...]",
                   help="e.g. --set plugins=['my_module'] to list a module's components too")

    p = sub.add_parser("config", help="configuration tools")
    csub = p.add_subparsers(dest="config_command", required=True)
    cs = csub.add_parser("show", help="print the resolved config")
    cs.add_argument("config", nargs="?", default=None, help="TOML file (default: all defaults)")
    _add_set(cs)


def _add_diagnose(sub) -> None:
    """The ``diagnose`` subcommand: gradient statistics of objectives at a run."""
    p = sub.add_parser(
        "diagnose", help="gradient variance / SNR, bound, time and memory of objectives at a run"
    )
    p.add_argument("run_dir")
    p.add_argument(
        "--objectives", default="iwae:5,iwae:50,iwae_dreg:50",
        help="comma-separated NAME[:K][:key=value] specs (default: iwae:5,iwae:50,iwae_dreg:50)",
    )
    p.add_argument("--batch-size", type=int, default=100, help="points in the fixed batch")
    p.add_argument("--draws", "-M", type=int, default=100, help="gradient draws per objective")
    p.add_argument("--split", choices=["train", "valid", "test"], default="train")
    p.add_argument("--checkpoint", choices=["best", "last"], default="best")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--json", nargs="?", const="-", default=None, metavar="PATH",
        help="write the results as JSON to PATH (bare --json: print JSON instead of the table)",
    )
    p.add_argument("--exact", action="store_true",
                   help="bias and cosine of each mean gradient against the exact gradient of the "
                        "discrete ELBO (enumerable categorical latents only)")
    p.add_argument("--bias", action="store_true",
                   help="bias and cosine against a many-draw unbiased Monte Carlo ELBO gradient")
    p.add_argument("--reference-draws", type=int, default=10_000,
                   help="draws of the Monte Carlo reference (--bias; default 10000)")
    p.add_argument("--plot", default=None, metavar="PNG",
                   help="with --exact or --bias: a chart of relative bias and cosine per group")


def _add_bdmc(sub) -> None:
    """The ``bdmc`` subcommand: bidirectional Monte Carlo on simulated data."""
    p = sub.add_parser(
        "bdmc", help="bidirectional Monte Carlo: bounds on log p(x) of data simulated from a run"
    )
    p.add_argument("run_dir")
    p.add_argument("--num-points", "-n", type=int, default=100, help="points to simulate")
    p.add_argument("--steps", "-T", type=int, default=None,
                   help="eval.ais_steps: AIS steps, each direction; default: the run's [eval]")
    p.add_argument("--chains", "-C", type=int, default=None,
                   help="eval.ais_chains: chains per point and direction; default: the run's "
                        "[eval]")
    p.add_argument("--leapfrog", type=int, default=None,
                   help="eval.ais_leapfrog: leapfrog steps per HMC move; default: the run's [eval]")
    p.add_argument("--base", dest="ais_base", choices=["prior", "guide"], default=None,
                   help="eval.ais_base: the normalized end of the annealing path")
    p.add_argument("--num-samples", "-K", type=int, default=0,
                   help="also IS with the guide on the simulated data, K draws (0: skip)")
    p.add_argument("--batch-size", type=int, default=100)
    p.add_argument("--block-size", type=_positive_int, default=None,
                   help="simulate and bracket blocks of this many points, block b seeded by "
                        "(--seed, b) (default: one pass; under torchrun, blocks of --batch-size "
                        "shared among the processes)")
    p.add_argument("--checkpoint", choices=["best", "last"], default="best")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--no-progress", action="store_true", help=NO_PROGRESS_HELP)


#: ``vaelab reproduce --help``: what the stages cost and how to make them small
REPRODUCE_EPILOG = """\
stages, for each variant x seed: training, then IS (eval.num_samples = 5000 draws on the whole
test split, or eval.limit points), AIS on recipe.ais.points test points, BDMC on
recipe.bdmc.points simulated points (continuous latents), the relaxed-sample figure (relaxed
categorical guides; it bounds neither model). Each prints a line per block; each block is saved
when done, so an interrupted run continues where it stopped when the same command is run again.

make it smaller with --set (eval.limit does not shrink AIS or BDMC):
  --set train.epochs=N             fewer epochs (the table states the budget reached)
  --set eval.limit=N               IS on N test points spread over the split
  --set eval.num_samples=K         IS with K draws per point
  --set recipe.ais.points=N        AIS on N test points (0: no AIS stage); also
                                   recipe.ais.steps, recipe.ais.chains, recipe.ais.leapfrog
  --set recipe.bdmc.points=N       BDMC on N simulated points (0: no BDMC stage); also
                                   recipe.bdmc.steps, recipe.bdmc.chains, recipe.bdmc.leapfrog

a smoke run, every stage at a tiny size (about a minute on 2 cores):
  vaelab reproduce vampprior_standard --out runs/smoke --set train.epochs=1 \\
    --set train.max_steps_per_epoch=20 --set eval.limit=50 --set eval.num_samples=50 \\
    --set recipe.ais.points=10 --set recipe.ais.steps=10 \\
    --set recipe.bdmc.points=10 --set recipe.bdmc.steps=10

the full recipes take hours to days: --list-recipes --out DIR estimates them from the runs
under DIR.
"""


def _add_reproduce(sub) -> None:
    """The ``reproduce`` subcommand: a paper recipe end to end."""
    p = sub.add_parser(
        "reproduce", help="run a paper recipe end to end (train, evaluate, its table row); "
        "resumable", epilog=REPRODUCE_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("recipe", nargs="?", default=None,
                   help="recipe name (omit with --list-recipes)")
    p.add_argument("--out", help="folder of the recipe's runs (OUT/VARIANT/seedS)")
    p.add_argument("--seeds", type=int, default=1, help="seeds per variant")
    p.add_argument("--first-seed", type=int, default=0, metavar="S",
                   help="skip the first S seeds: train seeds S .. S+N-1 (of --seeds N), e.g. "
                        "--first-seed 1 --seeds 2 beside a seed 0 exported to the repository")
    p.add_argument("--members-from", default=None, metavar="DIR",
                   help="exported runs (--export's DEST, e.g. experiments/results/reproduce): "
                        "grid members its selection records hold, trained elsewhere with the "
                        "same settings, are not trained again")
    p.add_argument("--variant", action="append", default=[],
                   help="variant to run (repeatable; default: all); a grid's name trains its "
                        "members and evaluates the one the validation set selects")
    _add_set(p)
    p.add_argument("--train-only", action="store_true", help="train, do not evaluate")
    p.add_argument("--table", nargs="+", metavar="DIR", default=None,
                   help="print the table gathered from recipe folders DIR... and exit")
    p.add_argument("--plot", default=None, metavar="PATH",
                   help="with --table: also draw it as a chart (PNG) at PATH")
    p.add_argument("--export", nargs="+", metavar="DIR", default=None,
                   help="--export DEST RUNS...: write the runs' small results (config, metrics, "
                        "result, per-point TSV; no checkpoints, no machine paths) to "
                        "DEST/RECIPE/VARIANT/seedS/, the files --table rebuilds the table from")
    p.add_argument("--list-recipes", action="store_true",
                   help="list the shipped recipes and their cost in hours, measured on this "
                   "machine from the recipe folders under --out DIR if given")
    p.add_argument("--no-progress", action="store_true", help=NO_PROGRESS_HELP)


def _add_sweep_compare(sub) -> None:
    """The ``sweep`` and ``compare`` subcommands (:mod:`vaelab.runs.sweep`,
    :mod:`vaelab.runs.compare`)."""
    p = sub.add_parser("sweep", help="a grid of configs x seeds, each cell an ordinary run "
                       "folder OUT/CELL/seedS, run in parallel processes or through "
                       "submitit/Slurm; resumable")
    p.add_argument("config", help="TOML config file every run starts from")
    p.add_argument("--grid", action="append", default=[], metavar="KEY=[V1, V2, ...]",
                   help="a key and the TOML array of its values, parsed like --set values, "
                   "e.g. --grid 'model.prior=[\"standard_normal\", \"vamp\"]' "
                   "(repeatable: the cross product)")
    p.add_argument("--seeds", type=_positive_int, default=1,
                   help="runs per cell: train.seed + 0, 1, ... (default 1)")
    p.add_argument("--out", required=True, help="sweep folder (cells, sweep.json, logs/)")
    _add_set(p)
    p.add_argument("--jobs", "-j", type=_positive_int, default=None, metavar="N",
                   help="runs at a time (default 1; slurm: every run); locally each gets "
                   "train.num_threads = cores // N unless set")
    p.add_argument("--executor", choices=["local", "slurm", "submitit-local"], default="local",
                   help="local child processes (default), Slurm through submitit, or "
                   "submitit's local executor")
    p.add_argument("--evaluate", action="store_true", help="evaluate each run after training")
    p.add_argument("--dry-run", action="store_true",
                   help="print each run's state (new, resume, finished, busy); run nothing")
    p.add_argument("--slurm-partition", default=None)
    p.add_argument("--slurm-time", default="60", metavar="MINUTES|H:MM:SS",
                   help="time limit per run (default 60 minutes; a cell cut short resumes on "
                   "the next sweep)")
    p.add_argument("--slurm-cpus", type=_positive_int, default=1,
                   help="CPUs per run (its train.num_threads unless set)")
    p.add_argument("--slurm-gpus", type=int, default=0, help="GPUs per run")
    p.add_argument("--slurm-mem", type=float, default=None, metavar="GB", help="memory per run")
    p.add_argument("--slurm-account", default=None)
    p.add_argument("--slurm-qos", default=None)
    p.add_argument("--slurm-setup", action="append", default=[], metavar="LINE",
                   help="shell line run before each job, e.g. 'source .venv/bin/activate'")

    p = sub.add_parser("compare", help="run folders (found recursively) as one Markdown/CSV "
                       "table: cells x metrics, mean, sd, se and n over seeds; plots")
    p.add_argument("dirs", nargs="+", metavar="DIR", help="run folders or folders holding them")
    p.add_argument("--metric", action="append", default=None,
                   help="a metric to table (repeatable; default: best_valid_elbo, "
                   "final_train_loss and log_likelihood, elbo where evaluated)")
    p.add_argument("--csv", default=None, metavar="PATH", help="also write the table as CSV")
    p.add_argument("--plots", default=None, metavar="OUTDIR",
                   help="write curves.png and metrics.png into OUTDIR")


def _bars(args) -> bool:
    """Progress bars: on a terminal only (a pipe or a log file gets plain lines), and not with
    ``--no-progress``."""
    return not getattr(args, "no_progress", False) and sys.stderr.isatty()


def _say(line: str) -> None:
    """A progress line on stdout, flushed at once (a pipe or a log file sees it live)."""
    print(line, flush=True)


def _cmd_train(args) -> int:
    from vaelab.resolve import load_config
    from vaelab.runs.report import write_report
    from vaelab.runs.tracking import log_results
    from vaelab.runs.train import train
    from vaelab.runs.world import World

    # bars on a terminal only; the config file's or --set's train.progress wins
    overrides = [f"train.progress={str(_bars(args)).lower()}", *args.overrides]
    cfg = load_config(args.config, overrides)
    if args.recompute and not args.evaluate:
        raise ValueError("--recompute goes with --evaluate")
    result = train(cfg, args.out, resume=args.resume)
    main = World.from_env().is_main  # under torchrun, rank 0 reports
    if not (main or args.evaluate):
        return 0
    run = result.run("best")  # the trained VAE and data, the best checkpoint loaded in place
    metrics, reused = _train_evaluation(args, run, main) if args.evaluate else (None, False)
    if not main:
        return 0
    if reused:
        report = run.dir / "report.md"
    else:
        report = write_report(run, metrics)
        log_results(run, metrics)  # [log]: the evaluation and the report's PNGs
    score = ("valid ELBO" if cfg.train.valid_particles == 1
             else f"valid {cfg.train.valid_particles}-sample bound")
    print(f"best epoch {result.best_epoch}, {score} {result.best_valid_elbo:.2f}; "
          f"report: {report}")
    if metrics is not None:
        print(result_line(metrics))
    return 0


def _train_evaluation(args, run, main: bool) -> tuple[dict, bool]:
    """``train --evaluate``: the run's ``[eval]`` on its best checkpoint, or ``RUN/eval.json``
    where it estimated exactly that (same checkpoint digest, same settings) and ``--recompute``
    was not given; returns the metrics and whether they were reused."""
    from vaelab.runs.sharded import evaluate_sharded

    ec = run.cfg.eval
    stamp = estimand(run, ec, "best")
    saved = None if args.recompute else _current_eval(run.dir, stamp)
    if saved is not None:
        if main:
            print(f"{run.dir / 'eval.json'} is current (the same checkpoint and [eval] "
                  "settings): reused, not recomputed (--recompute estimates again)")
        return saved, True
    if main:
        _say(f"evaluating: {_eval_plan(run, ec)}")
    est = evaluate_sharded(run, progress=_bars(args))
    return {**estimate_metrics(est), "estimand": stamp}, False


def estimand(run, ec, checkpoint: str) -> dict:
    """What an evaluation estimates: the scored parameters (a digest of the checkpoint's
    weights and its epoch, counted from 1) and the ``[eval]`` keys its numbers depend on."""
    import hashlib

    import torch

    from vaelab.runs.stages import ESTIMAND_KEYS

    h = hashlib.sha256()
    for name, value in sorted(run.vae.state_dict().items()):
        h.update(name.encode())
        h.update(value.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy())
    keys = set(ESTIMAND_KEYS) | {"block_size", "exact", "diagnostics"}
    return json.loads(json.dumps({
        "checkpoint": checkpoint, "epoch": run.epoch + 1, "digest": h.hexdigest()[:16],
        "eval": ec.model_dump(mode="json", include=keys)}))


def _current_eval(run_dir: Path, stamp: dict) -> dict | None:
    """``run_dir/eval.json`` when it holds an evaluation of exactly ``stamp``, else None (none
    there, unreadable, or of another checkpoint or settings: estimated again and rewritten)."""
    path = run_dir / "eval.json"
    try:
        saved = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    ok = isinstance(saved, dict) and saved.get("estimand") == stamp and "log_likelihood" in saved
    return saved if ok else None


def estimate_metrics(est) -> dict:
    """A :class:`~vaelab.inference.marginal.MarginalEstimate` as the command line reports it:
    its summary, then ``split`` and the rest of its ``extra``."""
    return {**est.summary(), "split": est.extra.get("split"),
            **{k: v for k, v in est.extra.items() if k != "split"}}


def _eval_plan(run, ec) -> str:
    """One line saying what an evaluation is about to compute."""
    n = run.split(ec.split, ec.limit).shape[0]
    if ec.method == "ais":
        return (f"AIS, T = {ec.ais_steps} steps, {ec.ais_chains} chains, on {n} {ec.split} "
                "points")
    return f"IS, K = {ec.num_samples}, on {n} {ec.split} points"


def result_line(m: dict) -> str:
    """The one line an evaluation ends with, e.g. ``test log p(x) = -99.23 ± 0.92 nats (IS,
    K = 5000, 1000 points; 45 of 1000 points flagged k̂ > 0.7: a loose lower bound)``; the ±
    is one standard error of the mean over points."""
    n = m["num_points"]
    head = (f"{m.get('split') or 'test'} log p(x) = {m['log_likelihood']:.2f} ± "
            f"{m['log_likelihood_stderr']:.2f} nats")
    if m.get("method") == "ais":
        how = (f"AIS, T = {m.get('num_steps', '?')} steps, {m.get('num_chains', '?')} chains, "
               f"{n} points; a stochastic lower bound")
    else:
        how = f"IS, K = {m['num_samples']}, {n} points"
        flagged = m.get("num_flagged")
        if flagged:
            how += f"; {flagged} of {n} points flagged k̂ > 0.7: a loose lower bound"
        elif flagged == 0:
            how += "; no point flagged k̂ > 0.7"
    if m.get("exact_log_likelihood") is not None:
        how += f"; exact {m['exact_log_likelihood']:.2f}"
    return f"{head} ({how})"


#: what the less obvious keys of ``vaelab evaluate``'s output mean, printed beside them
METRIC_NOTES = {
    "num_flagged": "points whose Pareto k̂ > 0.7: their weights likely have infinite variance, "
                   "so their log p(x) and its standard error are unreliable",
    "log_jacobian": "nats per point added to turn the density of the preprocessed data into the "
                    "data's own units (dequantization -D log L, standardization -sum log s_d); "
                    "already included in log_likelihood and elbo",
    "mc_stderr_mean": "mean per-point Monte Carlo standard error of log p(x) (delta method)",
}


def _print_metrics(metrics: dict) -> None:
    for k, v in metrics.items():
        if isinstance(v, dict):
            v = ", ".join(f"{a} {b:.4g}" if isinstance(b, float) else f"{a} {b}"
                          for a, b in v.items())
        text = f"{v:.4f}" if isinstance(v, float) else f"{v}"
        note = f"  ({METRIC_NOTES[k]})" if k in METRIC_NOTES else ""
        print(f"{k:>24}: {text}{note}")


def _cmd_evaluate(args) -> int:
    from vaelab.runs.run import eval_config, load_run
    from vaelab.runs.sharded import evaluate_sharded
    from vaelab.runs.tracking import Tracking
    from vaelab.runs.world import World

    run = load_run(args.run_dir, args.checkpoint)
    ec = eval_config(run.cfg, _eval_overrides(args))
    tracking = Tracking.for_run(run.cfg, run.dir)  # [log]: a missing library fails here, early
    curve_ks = None
    if args.curve and ec.method == "is":
        from vaelab.inference.marginal import default_curve_ks

        curve_ks = default_curve_ks(ec.num_samples)
    elif args.curve:
        raise ValueError("--curve applies to --method is (prefixes of the K importance draws)")
    main = World.from_env().is_main
    if main and not args.json:
        _say(f"evaluating: {_eval_plan(run, ec)}")
    # under torchrun: the blocks of points shared among the processes; rank 0 reports
    est = evaluate_sharded(run, ec, progress=_bars(args) and not args.json, curve_ks=curve_ks)
    if not main:
        return 0
    metrics = {**estimate_metrics(est), "checkpoint": args.checkpoint}
    if args.curve:
        from vaelab.runs.plots import save_convergence_plot

        save_convergence_plot(est, args.curve, title=f"{run.dir.name}: {est.num_points} points")
        metrics["curve"] = {str(k): v for k, v in est.curve().items()}
        metrics["curve_png"] = str(args.curve)
    if args.report:
        from vaelab.runs.report import write_report

        metrics["estimand"] = estimand(run, ec, args.checkpoint)
        write_report(run, metrics)
    tracking.log_results(run, metrics, images=args.report)
    if args.json:
        print(json.dumps(metrics))
    else:
        _print_metrics(metrics)
        print(result_line(metrics))
    return 0


def _cmd_sample(args) -> int:
    import numpy as np
    import torch

    from vaelab.runs.report import save_grid
    from vaelab.runs.run import load_run

    run = load_run(args.run_dir, args.checkpoint)
    torch.manual_seed(args.seed)
    out = Path(args.out) if args.out else run.dir / "samples.png"
    with torch.no_grad():
        x = run.vae.generative.sample(args.n)  # (n, D), in the units the model sees
    if out.suffix.lower() in (".csv", ".npy"):
        pre = run.pre
        if pre.mean is not None and pre.scale is not None:  # data.standardize undone
            x = x * pre.scale.to(x) + pre.mean.to(x)
        values = x.detach().cpu().double().numpy()  # (n, D)
        if out.suffix.lower() == ".npy":
            np.save(out, values)
        else:
            np.savetxt(out, values, delimiter=",", fmt="%.9g")
    else:
        save_grid(out, x, run.data.shape, ncol=8)
    print(out)
    return 0


def _module_list(text: str) -> list[str]:
    """The modules of ``plugins=VALUE`` (:func:`vaelab.resolve.plugin_modules`)."""
    from vaelab.resolve import plugin_modules

    return plugin_modules(text)


def first_sentence(doc: str) -> str:
    """The first sentence of a docstring's first paragraph, its lines joined (not the first
    line, which may stop mid-sentence)."""
    import re

    text = " ".join(doc.strip().split("\n\n")[0].split())
    # a full stop ends the sentence where the next word starts a new one ("e.g. x" does not)
    end = re.search(r"(?<!\be\.g)(?<!\bi\.e)(?<!\bal)(?<!\bvs)[.!?](?=\s+[A-Z(]|$)", text)
    text = text[: end.end()] if end else text
    return text[:-1] + "." if text.endswith(":") else text  # "...as follows:" before a formula


def _option_rows(options) -> list[str]:
    rows = []
    for name, field in options.model_fields.items():
        if name == "name":
            continue
        ann = field.annotation
        kind = ann.__name__ if isinstance(ann, type) else str(ann).replace("typing.", "")
        default = field.get_default(call_default_factory=True)
        doc = f" — {plain(field.description)}" if field.description else ""
        rows.append(f"      {name}: {kind} = {default!r}{doc}")
    return rows


def _cmd_list(args) -> int:
    import vaelab.catalog  # noqa: F401  (fills the registries)
    from vaelab.registry import REGISTRIES, load_entry_points, load_plugins
    from vaelab.resolve import apply_overrides

    plugins = [o for o in args.overrides if o.split("=", 1)[0].strip() == "plugins"]
    apply_overrides({}, [o for o in args.overrides if o not in plugins])  # errors name the key
    load_plugins([m for o in plugins for m in _module_list(o.split("=", 1)[1])])
    load_entry_points()
    kinds = {("families" if k == "family" else f"{k}s"): r for k, r in REGISTRIES.items()}
    wanted = kinds if args.kind is None else {args.kind: kinds.get(args.kind)}
    if None in wanted.values():
        raise ValueError(f"unknown kind {args.kind!r}; kinds: "
                         f"{', '.join(sorted(k for k, v in kinds.items() if v is not None))}")
    seen = set()
    for title, reg in sorted(wanted.items()):
        if reg is None or id(reg) in seen:
            continue
        seen.add(id(reg))
        print(f"{title}:")
        for name in reg.names():
            entry = reg.entry(name)
            doc = first_sentence(plain(entry.doc)) if entry.doc else ""
            print(f"  {name}" + (f" — {doc}" if doc else ""))
            for row in _option_rows(entry.options):
                print(row)
    return 0


def _cmd_config(args) -> int:
    from vaelab.config import dump_toml
    from vaelab.resolve import load_config

    print(dump_toml(load_config(args.config, args.overrides)), end="")
    return 0


def _cmd_diagnose(args) -> int:
    import torch

    from vaelab.inference.diagnostics import diagnose, format_table
    from vaelab.runs.checkpoint import read_metrics
    from vaelab.runs.run import load_run

    run = load_run(args.run_dir, args.checkpoint)
    x = run.pre.eval_split(run.split(args.split, args.batch_size), args.seed)  # fixed batch
    temperature = None
    rows = read_metrics(run.dir)
    if not run.vae.latent.continuous and rows:  # the checkpoint's temperature
        t = rows[min(run.epoch, len(rows) - 1)].get("temperature")
        temperature = None if t is None else torch.tensor(float(t))
    specs = [s for s in args.objectives.split(",") if s.strip()]
    reference = None
    if args.exact or args.bias:
        from vaelab.inference.gradient_bias import reference_gradient

        ref_args = (1.0,) if temperature is None else (1.0, temperature)
        reference = reference_gradient(run.vae, x, ref_args, exact=args.exact,
                                       draws=args.reference_draws, seed=args.seed)
    results = diagnose(run.vae, x, specs, draws=args.draws, temperature=temperature,
                       seed=args.seed, reference=reference)
    if args.plot and reference is not None:
        from vaelab.runs.plots import save_gradient_bias

        save_gradient_bias(args.plot, results)
    payload = {
        "run_dir": str(run.dir), "checkpoint": args.checkpoint, "epoch": run.epoch + 1,
        "split": args.split, "results": [r.to_dict() for r in results],
    }
    if args.json == "-":
        print(json.dumps(payload))
        return 0
    print(format_table(results))
    if args.plot and reference is not None:
        print(f"plot: {args.plot}")
    if args.json:
        Path(args.json).write_text(json.dumps(payload, indent=2) + "\n")
        print(f"JSON: {args.json}")
    return 0


COMMANDS = {"train": _cmd_train, "evaluate": _cmd_evaluate, "sample": _cmd_sample,
            "config": _cmd_config}
COMMANDS["diagnose"] = _cmd_diagnose
COMMANDS["list"] = _cmd_list


def _cmd_bdmc(args) -> int:
    import pyro

    from vaelab.inference.exact import exact_log_likelihood
    from vaelab.runs.run import eval_config, fused_log_joint, load_run
    from vaelab.runs.sharded import bdmc_sharded
    from vaelab.runs.world import World
    from vaelab.seed import seed_all

    run = load_run(args.run_dir, args.checkpoint)
    if not run.vae.latent.continuous:
        raise ValueError(
            f"bdmc runs AIS, which needs a continuous latent; latent type "
            f"{run.cfg.model.latent.name!r} is discrete"
        )
    ec = eval_config(run.cfg, _eval_overrides(args, ("steps", "chains", "leapfrog", "ais_base")))
    seed_all(args.seed)
    model, guide = run.vae.eval_pair()
    anchor = next(run.vae.parameters())
    x_like = anchor.new_zeros(args.num_points, run.data.train.shape[1])  # shape of the data
    with pyro.validation_enabled(False):  # under torchrun: blocks shared among the processes
        r = bdmc_sharded(
            model, guide, x_like, seed=args.seed, block=args.block_size,
            num_steps=ec.ais_steps, num_chains=ec.ais_chains, num_leapfrog=ec.ais_leapfrog,
            base=ec.ais_base, batch_size=args.batch_size,
            progress=_bars(args) and not args.json, log_joint_for=fused_log_joint(run, ec),
        )
    if not World.from_env().is_main:
        return 0  # rank 0 reports
    metrics = {"run_dir": str(run.dir), "checkpoint": args.checkpoint, **r.summary()}
    exact = exact_log_likelihood(run.vae, r.x.to(anchor))
    if exact is not None:
        metrics["exact_log_likelihood"] = float(exact.double().mean())
    if args.num_samples:
        from vaelab.inference.marginal import estimate_marginal

        with pyro.validation_enabled(False):
            est = estimate_marginal(model, guide, r.x.to(anchor), num_samples=args.num_samples,
                                    batch_size=args.batch_size)
        metrics["is_log_likelihood"] = float(est.log_px.mean())
        metrics["is_num_samples"] = args.num_samples
        metrics["is_num_flagged"] = int(est.flagged.sum())
    metrics["note"] = "nats per simulated point (the model's own samples, not the data set)"
    if args.json:
        print(json.dumps(metrics))
    else:
        _print_metrics(metrics)
    return 0


COMMANDS["bdmc"] = _cmd_bdmc


def _cmd_report(args) -> int:
    """``vaelab report DIR [--html]``: the report of a run folder from its checkpoint, with the
    evaluation results already in ``DIR/eval.json`` (none are computed here)."""
    from vaelab.runs.report import write_report
    from vaelab.runs.run import load_run, read_eval

    run_dir = Path(args.run_dir)
    if not run_dir.is_dir():
        raise FileNotFoundError(f"{str(run_dir)!r} is not a run folder (no such directory)")
    run = load_run(run_dir, args.checkpoint)
    metrics = read_eval(run_dir)
    report = write_report(run, metrics, html=args.html)
    print(report.with_suffix(".html") if args.html else report)
    return 0


COMMANDS["report"] = _cmd_report


def _check_run_args(args) -> None:
    """``vaelab reproduce RECIPE``'s arguments, each bad one refused in one line before anything
    runs (an unknown variant included)."""
    from vaelab.runs import reproduce as rp

    if args.recipe is None or args.out is None:
        raise ValueError("give a recipe and --out DIR (or --list-recipes, --table DIR...)")
    if args.seeds < 1:
        raise ValueError(f"--seeds must be at least 1, got {args.seeds}")
    if args.first_seed < 0:
        raise ValueError(f"--first-seed must be at least 0, got {args.first_seed}")
    if args.members_from is not None and not Path(args.members_from).is_dir():
        raise ValueError(f"--members-from {args.members_from}: no such folder (the DEST of "
                         "--export, e.g. experiments/results/reproduce)")
    recipe = rp.load_recipe(args.recipe)
    for v in args.variant:
        recipe.config(recipe.table.grids[v].base if v in recipe.table.grids else v)


def _cmd_reproduce(args) -> int:
    from vaelab.runs import reproduce as rp

    if args.export:
        if len(args.export) < 2:
            raise ValueError("--export DEST RUNS...: name the destination and at least one run")
        from vaelab.runs.tables import export_runs

        written = export_runs(args.export[0], args.export[1:])
        if not written:  # a run folder named instead of its recipe folder, or nothing evaluated
            raise ValueError(f"--export: no evaluated run under {', '.join(args.export[1:])} "
                             "(name recipe folders, e.g. runs/iwae_static, whose runs finished "
                             "their IS stage)")
        for target in written:
            print(f"exported: {target}")
        return 0
    if args.list_recipes:
        for name in rp.recipe_names():
            r = rp.load_recipe(name)
            grids = "".join(f"; grid {g} ({len(spec.members)} members, chosen on validation)"
                            for g, spec in r.table.grids.items())
            print(f"{name}: {r.meta.get('paper', '')}; variants: {', '.join(r.table.variants)}"
                  f"{grids}; "
                  f"budget: {r.meta.get('budget', '?')}; {rp.cost_estimate(name, args.out)}")
        if args.out is None:
            print("(costs are measured from finished runs: --list-recipes --out DIR reads the "
                  "recipe folders under DIR, or runs exported there, e.g. --out "
                  "experiments/results/reproduce in the repository)")
        return 0
    if args.plot and not args.table:
        raise ValueError("--plot PATH goes with --table DIR...")
    if args.table:
        print(rp.table(args.table), end="")
        if args.plot:
            from vaelab.runs.plots import save_reproduce_chart

            print(f"chart: {save_reproduce_chart(args.plot, rp.chart_rows(args.table))}")
        return 0
    _check_run_args(args)
    from vaelab.runs.world import World

    if not args.train_only:
        tip = rp.faster_command(args.recipe, args.out, args.variant, args.overrides, args.seeds,
                                cores=os.cpu_count() or 1, load=os.getloadavg()[0],
                                world_size=World.from_env().size, first_seed=args.first_seed)
        if tip:
            _say(f"note: {tip}")
    rows = rp.reproduce(args.recipe, args.out, seeds=args.seeds, first_seed=args.first_seed,
                        variants=args.variant or None, members_from=args.members_from,
                        overrides=rp.parse_overrides(args.overrides),
                        evaluate=not args.train_only, progress=_bars(args), say=_say)
    if World.from_env().is_main:  # under torchrun, rank 0 reports
        print(f"{len(rows)} run(s); table: {Path(args.out) / 'reproduce.md'}")
    return 0


COMMANDS["reproduce"] = _cmd_reproduce


def _cmd_sweep(args) -> int:
    from vaelab.runs.sweep import SlurmOptions, parse_minutes, sweep

    slurm = SlurmOptions(
        partition=args.slurm_partition, time_min=parse_minutes(args.slurm_time),
        cpus=args.slurm_cpus, gpus=args.slurm_gpus, mem_gb=args.slurm_mem,
        account=args.slurm_account, qos=args.slurm_qos, setup=args.slurm_setup)
    return sweep(args.config, args.out, args.grid, seeds=args.seeds, overrides=args.overrides,
                 jobs=args.jobs, executor=args.executor, evaluate=args.evaluate, slurm=slurm,
                 dry_run=args.dry_run)


def _cmd_compare(args) -> int:
    from vaelab.runs.compare import compare

    comp = compare(args.dirs, args.metric)
    print(comp.markdown(), end="")
    if args.csv:
        print(f"CSV: {comp.write_csv(args.csv)}", file=sys.stderr)
    if args.plots:
        print("plots: " + ", ".join(str(p) for p in comp.plots(args.plots)), file=sys.stderr)
    return 0


COMMANDS["sweep"] = _cmd_sweep
COMMANDS["compare"] = _cmd_compare


def _os_error(err: OSError) -> str:
    """One line naming the path and the reason, e.g. "cannot write 'runs/x/checkpoints/...':
    No space left on device"."""
    path = err.filename if err.filename is not None else ""
    line = f"{err.strerror or err}: {str(path)!r}" if path else str(err)
    if err.errno == 28:  # ENOSPC: what is kept, and how to go on
        line += ("; the run folder keeps its last committed epoch (every write is atomic): "
                 "free the space and resume with --resume")
    return line


class Terminated(KeyboardInterrupt):
    """SIGTERM outside training (whose own handler stops at a step boundary): raised in the
    main thread like a Ctrl-C, so that the command ends in one line, exit 143."""

    exit_code = 128 + 15


@contextmanager
def _sigterm_raises() -> Iterator[None]:
    """SIGTERM raises :class:`Terminated` in the main thread while a command runs (the
    handler it replaces is put back after)."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handle(signum, frame):
        world = sys.modules.get("vaelab.runs.world")
        if world is not None and world.peer_lost:
            return  # torchrun stopping the job after a peer died: the PeerLost line says it
        raise Terminated()

    old = signal.signal(signal.SIGTERM, handle)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old)


def _quiet_sigterm() -> None:
    """SIGTERM back to its default action (the process ends, exit 143, nothing printed)."""
    import signal
    import threading

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, signal.SIG_DFL)


def _in_chain(err: BaseException, kinds) -> BaseException | None:
    """The first exception of ``kinds`` among ``err`` and its causes and contexts (torch's zip
    writer wraps an ``OSError`` or a ``KeyboardInterrupt`` raised while it writes into a
    ``RuntimeError`` whose context is the real one)."""
    seen: set[int] = set()
    node: BaseException | None = err
    while node is not None and id(node) not in seen:
        if isinstance(node, kinds):
            return node
        seen.add(id(node))
        node = node.__cause__ or node.__context__
    return None


def _unbalanced(text: str) -> bool:
    return (text.count("[") != text.count("]") or text.count("{") != text.count("}")
            or text.count('"') % 2 == 1 or text.count("'") % 2 == 1)


def _cut_value(argv: list[str]) -> str | None:
    """The error line for a ``--set`` / ``--grid`` value the shell cut at a space (its brackets
    or quotes close only with the next arguments), naming the quoted form; else None."""
    for i, arg in enumerate(argv):
        flag, eq, value = arg.partition("=")
        if flag not in ("--set", "--grid"):
            continue
        if not eq:
            if i + 1 >= len(argv):
                continue
            value = argv[i + 1]
        if not _unbalanced(value):
            continue
        whole = value
        for more in argv[i + (1 if eq else 2):]:
            whole += " " + more
            if not _unbalanced(whole):
                break
        if whole == value or _unbalanced(whole):
            continue  # not a value cut by the shell: the config's own check names it
        return (f"{flag} {value!r} is cut at a space (the shell splits an unquoted value): "
                f"quote it whole, e.g. {flag} {shlex.quote(whole)}")
    return None


def _again(args, argv: list[str]) -> str:
    """How to continue an interrupted command, as one clause."""
    if args.command == "reproduce":
        return ("the finished epochs and evaluation blocks are kept; continue with the same "
                f"command: vaelab {shlex.join(argv)}")
    if args.command in ("train", "sweep"):
        return ("the run folder keeps its last committed epoch (every write is atomic); "
                f"continue with: vaelab {shlex.join(argv)}"
                + (" --resume" if args.command == "train" and not args.resume else ""))
    return "nothing was written"


def main(argv: list[str] | None = None) -> int:
    """Run one command; a bad input, a failed run or an OS error is one line on stderr and
    exit 2; SIGINT / SIGTERM during training stop at a step boundary with exit 130 / 143, and
    anywhere else end in one line with the same codes."""
    argv = list(sys.argv[1:] if argv is None else argv)
    cut = _cut_value(argv)
    if cut is not None:
        command = argv[0] if argv and argv[0] in COMMANDS else ""
        print(f"vaelab {command}: error: {cut}".replace("vaelab :", "vaelab:"), file=sys.stderr)
        return 2
    args = build_parser().parse_args(argv)  # --help and usage errors exit here, before torch
    rank = os.environ.get("RANK", "0")  # torchrun's; the other ranks tag their lines
    prefix = f"vaelab {args.command}" + (f" [rank {rank}]" if rank != "0" else "")
    try:
        with _sigterm_raises():
            return _run(args, argv, prefix, rank)
    except KeyboardInterrupt as err:  # a second Ctrl-C (in a checkpoint write, too), SIGTERM
        how = "by SIGTERM" if isinstance(err, Terminated) else "by Ctrl-C (SIGINT)"
        if rank == "0":
            print(f"{prefix}: interrupted {how}; {_again(args, argv)}", file=sys.stderr)
        return getattr(err, "exit_code", 130)


def _run(args, argv: list[str], prefix: str, rank: str) -> int:
    """:func:`main` once the arguments are parsed: the command, and its errors as one line."""
    from vaelab.registry import ConfigError
    from vaelab.runs.folder import Interrupted, RunFolderBusy

    known = (ConfigError, FileNotFoundError, FileExistsError, FloatingPointError, ValueError,
             RunFolderBusy)
    done = False
    try:
        rc = COMMANDS[args.command](args)
        done = True
        return rc
    except Interrupted as err:
        held = (f"the run folder holds epoch {err.committed_epoch}" if err.committed_epoch
                else "no epoch was committed, so nothing was kept")
        again = (_again(args, argv) if args.command == "reproduce"
                 else "continue with: vaelab train DIR/config.toml --out DIR --resume"
                 if err.committed_epoch and args.command == "train"
                 else "continue with: the same command")
        if rank == "0":  # every process of a torchrun job stops at the same step: one line
            print(f"{prefix}: {err}; {held}; {again}", file=sys.stderr)
        return err.exit_code
    except known as err:
        print(f"{prefix}: error: {err}", file=sys.stderr)
        return 2
    except OSError as err:
        print(f"{prefix}: error: {_os_error(err)}", file=sys.stderr)
        return 2
    except Exception as err:  # after `known`: RunFolderBusy is a RuntimeError too
        return _wrapped(err, prefix)
    finally:
        distributed = sys.modules.get("vaelab.runs.world")
        if distributed is not None:
            if not done:  # the command's one line is said: a SIGTERM now (torchrun tearing
                _quiet_sigterm()  # the job down) ends the process without a second line
            distributed.leave(synchronize=done)  # a torchrun job that succeeded leaves together


def _wrapped(err: Exception, prefix: str) -> int:
    """A lost torchrun peer, or an interrupt or OS error that a library wrapped (torch's zip
    writer: a ``RuntimeError`` whose context is the real one), as one line; else re-raised."""
    distributed = sys.modules.get("vaelab.runs.world")
    if distributed is not None and isinstance(err, distributed.PeerLost):
        print(f"{prefix}: error: {err}; the run folder holds its last committed epoch "
              "(resume with --resume, on any number of processes)", file=sys.stderr)
        return 2
    inner = _in_chain(err, (KeyboardInterrupt, OSError))
    if isinstance(inner, KeyboardInterrupt):
        raise inner from None  # main says it in one line
    if isinstance(inner, OSError):
        print(f"{prefix}: error: {_os_error(inner)}", file=sys.stderr)
        return 2
    raise err


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
