r"""The one runner of the comparison scripts: arguments, train-or-reuse, scoring, outputs.

Every ``experiments/compare_*.py`` is a thin script on :class:`Experiment`; what the scripts
share lives here once:

* **arguments** (:func:`parser`): ``--out``, ``--runs``, ``--smoke``, ``--reuse``,
  ``--table-only``, ``--set``, ``--num-samples``/``-K``, ``--test-limit``, ``--epochs``,
  ``--threads``;
* **a run folder per variant** (:meth:`Experiment.train`): trained from scratch, or with
  ``--reuse`` resumed from ``checkpoints/last.pt`` when it did not finish and reused as it is when
  it did; the trained VAE is handed to scoring without a rebuild
  (:meth:`vaelab.runs.train.TrainResult.run`);
* **one scoring path** (:meth:`Experiment.score`): :func:`vaelab.runs.run.evaluate` with an
  :class:`~vaelab.config.EvalConfig` (:meth:`Experiment.eval_config`), so every table scores the
  same ``eval.limit`` points spread evenly over the split
  (:func:`vaelab.data.subsets.spread_indices`, the one subset rule);
* **outputs** (:meth:`Experiment.write`): ``<name>.md`` ending with the exact command,
  ``<name>.json`` (the rows and that command, so ``--table-only`` rewrites the table without
  training or scoring), and PNGs named :meth:`Experiment.png`.

Example::

    def main(argv=None):
        argv = list(sys.argv[1:] if argv is None else argv)
        args = parser(__doc__, runs="runs/compare_priors").parse_args(argv)
        with Experiment("priors", args, argv, "experiments/compare_priors.py") as exp:
            if args.table_only:
                return exp.rewrite(table)  # table(rows, saved) -> Markdown lines
            run = exp.train("vamp", exp.config(CONFIG, ["model.prior=vamp"], smoke=SMOKE))
            est = exp.score(run)  # vaelab.runs.run.evaluate on eval.limit spread test points
            rows = [{"prior": "vamp", **est.summary()}]
            exp.write(table(rows, {}), rows)

The leading underscore keeps this module out of ``tests/test_experiments.py``'s discovery.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import shlex
import shutil
import tempfile
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
#: ``--smoke`` scoring budget, unless ``-K`` / ``--test-limit`` say otherwise
SMOKE_EVAL = ["eval.num_samples=20", "eval.limit=20"]

__all__ = ["Experiment", "parser", "arch", "ROOT", "SMOKE_EVAL"]


def run_parser(doc: str, run_help: str) -> argparse.ArgumentParser:
    """The options of a script that studies one trained run folder: ``--run``, ``--out`` and
    ``--smoke`` (make a tiny run here instead)."""
    p = argparse.ArgumentParser(description=doc.split("\n")[0])
    p.add_argument("--run", type=Path, help=run_help)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--smoke", action="store_true", help="a tiny run, made here: seconds")
    return p


#: the tiny ``vaelab reproduce vampprior_standard`` run that ``--smoke`` makes for the scripts
#: that study one run folder (:func:`run_or_smoke`)
SMOKE_RUN = ["data.name=synthetic", "data.limit=300", "train.epochs=2",
             "train.max_steps_per_epoch=3", "train.valid_limit=50", "eval.limit=30",
             "eval.num_samples=20", "recipe.ais.points=0", "recipe.bdmc.points=0"]


def run_or_smoke(args: argparse.Namespace, parser: argparse.ArgumentParser) -> bool:
    """Point ``args.run`` at the run folder to study: with ``--smoke``, a tiny reproduce run
    made under ``args.out/runs`` (:data:`SMOKE_RUN`); else ``--run``, which is then required.
    Creates ``args.out``. :returns: whether it is the smoke run (the caller shrinks its own
    sizes)."""
    from vaelab.runs.reproduce import reproduce

    args.out.mkdir(parents=True, exist_ok=True)
    if args.smoke:
        args.run = Path(reproduce("vampprior_standard", args.out / "runs",
                                  overrides=SMOKE_RUN)[0]["run_dir"])
        return True
    if args.run is None:
        parser.error("--run RUN_DIR is required (or --smoke)")
    return False


def write_markdown(out: Path, name: str, lines: list[str]) -> str:
    """Write ``lines`` as ``out/name`` (Markdown), print them, and return the text."""
    text = "\n".join(lines) + "\n"
    (out / name).write_text(text)
    print(text)
    return text


def parser(doc: str, *, runs: str) -> argparse.ArgumentParser:
    """The arguments every comparison script takes; a script adds its own to the result.

    :param doc: the script's docstring (first line: the description; the rest: the epilog).
    :param runs: default folder of the run folders, relative to the repository root.
    """
    p = argparse.ArgumentParser(
        description=doc.split("\n")[0], epilog="\n".join(doc.split("\n")[1:]),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--out", default=str(HERE / "results"), help="folder of the table, JSON, PNGs")
    p.add_argument("--runs", default=None,
                   help=f"run folders (default: {runs}; with --smoke a temporary folder)")
    p.set_defaults(default_runs=runs)
    p.add_argument("--smoke", action="store_true",
                   help="tiny budget on synthetic data (seconds; tests/test_experiments.py)")
    p.add_argument("--reuse", action="store_true",
                   help="resume run folders that have checkpoints/last.pt (a finished one is "
                   "reused as it is) and reuse their cached scores; without it every run is "
                   "trained from scratch")
    p.add_argument("--table-only", action="store_true",
                   help="rewrite the table from --out's JSON (no training, no scoring)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="config override for every run (eval.* keys set the scoring)")
    p.add_argument("--num-samples", "-K", type=int, default=None,
                   help="eval.num_samples: importance samples per test point")
    p.add_argument("--test-limit", type=int, default=None,
                   help="eval.limit: test points, spread evenly over the test split")
    p.add_argument("--epochs", type=int, default=None, help="train.epochs (default: the config's)")
    p.add_argument("--threads", type=int, default=1, help="torch threads (train.num_threads)")
    return p


def arch(run) -> str:
    """``D-h1-...-d``: the data width, ``model.hidden_sizes``, the latent width."""
    cfg = run.cfg.model
    return "-".join(str(h) for h in [run.data.dim, *cfg.hidden_sizes, cfg.latent_dim])


class Experiment:
    r"""One comparison: its run folders, its scoring settings and its output files.

    :param name: file prefix of the outputs (``<name>.md``, ``<name>.json``, ``<name>_*.png``).
    :param args: parsed :func:`parser` arguments (plus the script's own).
    :param argv: the command-line arguments as given, recorded in the table.
    :param script: the script's path relative to the repository root.

    Use it as a context manager: with ``--smoke`` and no ``--runs`` the run folders live in a
    temporary folder removed on exit.
    """

    def __init__(self, name: str, args: argparse.Namespace, argv: list[str], script: str):
        self.name, self.args, self.script = name, args, script
        self.argv = [a for a in argv if a != "--table-only"]
        self.out = Path(args.out)
        self._tmp: tempfile.TemporaryDirectory | None = None
        self.runs = Path(args.runs) if args.runs else ROOT / args.default_runs

    def __enter__(self) -> Experiment:
        self.out.mkdir(parents=True, exist_ok=True)
        torch.set_num_threads(self.args.threads)
        if self.args.smoke and not self.args.runs:
            self._tmp = tempfile.TemporaryDirectory(prefix=f"{self.name}_runs_")
            self.runs = Path(self._tmp.name)
        return self

    def __exit__(self, *exc) -> None:
        if self._tmp is not None:
            self._tmp.cleanup()

    # ----------------------------------------------------------------------------------------
    # configs and runs

    def config(self, path: str | Path | None, overrides: list[str], smoke: list[str] = ()):
        """The resolved config of one variant: ``path`` with the script's ``overrides``, its
        ``smoke`` overrides under ``--smoke``, ``--epochs``, ``--threads``, then ``--set``."""
        from vaelab.resolve import load_config

        ov = [*overrides, *(smoke if self.args.smoke else []),
              f"train.num_threads={self.args.threads}", "train.progress=false"]
        if self.args.epochs is not None:
            ov.append(f"train.epochs={self.args.epochs}")
        return load_config(path, [*ov, *self.args.overrides])

    def train(self, key: str, cfg, *, data=None, checkpoint: str = "best"):
        """Train ``runs/<key>`` (or, with ``--reuse``, resume or reuse it) and return the trained
        :class:`vaelab.runs.run.Run` with its ``checkpoint`` loaded, unrebuilt."""
        from vaelab.runs.checkpoint import read_metrics
        from vaelab.runs.train import train

        run_dir = self.runs / key
        resume = self.args.reuse and (run_dir / "checkpoints" / "last.pt").is_file()
        if not resume and run_dir.exists():
            shutil.rmtree(run_dir)
        done = len(read_metrics(run_dir)) if resume else 0
        t0 = time.perf_counter()
        try:
            result = train(cfg, run_dir, resume=resume, data=data)
        except ValueError as err:
            if not resume:
                raise
            raise ValueError(f"{err}; or drop --reuse to retrain {str(run_dir)!r}") from err
        epochs = len(result.history)
        how = "trained"
        if resume:
            how = "reused" if epochs == done else f"resumed from epoch {done}"
        print(f"[{self.name}/{key}] {how}: {epochs} epochs ({time.perf_counter() - t0:.0f}s)",
              flush=True)
        return result.run(checkpoint)

    @staticmethod
    def history(run) -> list[dict]:
        """The run's ``metrics.jsonl`` rows (:func:`vaelab.runs.checkpoint.read_metrics`)."""
        from vaelab.runs.checkpoint import read_metrics

        return read_metrics(run.dir)

    # ----------------------------------------------------------------------------------------
    # scoring

    def eval_config(self, run, overrides: list[str] = ()):
        """The run's ``[eval]`` section, then the ``--smoke`` budget, ``-K`` and
        ``--test-limit``, then ``overrides`` (a script's pass-specific settings)."""
        from vaelab.runs.run import eval_config

        ov = list(SMOKE_EVAL if self.args.smoke else [])
        if self.args.num_samples is not None:
            ov.append(f"eval.num_samples={self.args.num_samples}")
        if self.args.test_limit is not None:
            ov.append(f"eval.limit={self.args.test_limit}")
        return eval_config(run.cfg, [*ov, *overrides])

    def score(self, run, ec=None):
        r"""``vaelab.runs.run.evaluate(run, ec)`` (default :meth:`eval_config`), with its wall
        time in ``est.extra["eval_s"]``. With ``--reuse`` the estimate is cached in the run folder
        (``scores/<checkpoint epoch>-<hash of ec>.pt``) and read back when scored again."""
        from vaelab.inference.marginal import MarginalEstimate
        from vaelab.runs.run import evaluate

        ec = ec if ec is not None else self.eval_config(run)
        key = hashlib.sha1(json.dumps(ec.model_dump(mode="json"), sort_keys=True).encode())
        cache = run.dir / "scores" / f"epoch{run.epoch + 1}-{key.hexdigest()[:12]}.pt"
        if self.args.reuse and cache.is_file():
            try:
                return MarginalEstimate(**torch.load(cache, weights_only=True))
            except TypeError:  # written by a vaelab whose estimate had other fields: rescore
                pass
        t0 = time.perf_counter()
        est = evaluate(run, ec)
        est.extra["eval_s"] = time.perf_counter() - t0
        cache.parent.mkdir(exist_ok=True)
        torch.save({f.name: getattr(est, f.name) for f in dataclasses.fields(est)}, cache)
        return est

    @staticmethod
    def images(run, n: int) -> torch.Tensor:
        """``n`` test images spread evenly over the test split, for figures ``(n, D)``."""
        return run.split("test", n)

    # ----------------------------------------------------------------------------------------
    # outputs

    @property
    def command(self) -> str:
        """The exact command that produced this table."""
        env = "" if self.args.smoke else "VAELAB_DATA=/path/to/data "
        return f"{env}python {self.script} {shlex.join(self.argv)}".strip()

    def png(self, suffix: str) -> Path:
        """``--out/<name>_<suffix>.png``."""
        return self.out / f"{self.name}_{suffix}.png"

    def write(self, lines: list[str], rows: list[dict], **extra) -> Path:
        """``<name>.md`` (``lines`` and the command), ``<name>.json`` (``rows``, ``extra``, the
        command). Rows' keys starting with ``_`` are left out of the JSON."""
        return self._write(lines, rows, extra, self.command)

    def saved(self) -> dict:
        """The JSON :meth:`write` wrote (``rows``, ``command`` and the extras); a JSON written
        before the runner (a bare list of rows, or ``{"runs": rows, ...}``) reads the same."""
        data = json.loads((self.out / f"{self.name}.json").read_text())
        if isinstance(data, list):
            return {"rows": data}
        if "rows" not in data and "runs" in data:  # compare_estimators' JSON before the runner
            data = {**data, "rows": data["runs"]}
            del data["runs"]
        return data

    def rewrite(self, table) -> int:
        """``--table-only``: ``table(rows, saved)`` → Markdown lines, written with the command
        recorded when the rows were produced."""
        saved = self.saved()
        self._write(table(saved["rows"], saved), saved["rows"],
                    {k: v for k, v in saved.items() if k not in ("rows", "command")},
                    saved.get("command", self.command))
        print(self.out / f"{self.name}.md")
        return 0

    def _write(self, lines: list[str], rows: list[dict], extra: dict, command: str) -> Path:
        path = self.out / f"{self.name}.md"
        path.write_text("\n".join([*lines, "", f"Regenerate: `{command}`", ""]))
        plain = [{k: v for k, v in r.items() if not k.startswith("_")} for r in rows]
        payload = {"command": command, "rows": plain, **extra}
        (self.out / f"{self.name}.json").write_text(json.dumps(payload, indent=1) + "\n")
        return path
