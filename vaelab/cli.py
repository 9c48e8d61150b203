"""The ``vaelab`` command line: train, evaluate, sample, config show.

::

    vaelab train experiments/configs/gaussian_mnist.toml --out runs/g --set train.epochs=5
    vaelab evaluate runs/g --num-samples 5000 --json
    vaelab sample runs/g -n 64 --out samples.png
    vaelab config show experiments/configs/gaussian_mnist.toml --set model.prior=vamp
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

__all__ = ["main", "build_parser"]


def _add_set(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
        help="override a config value, e.g. --set train.epochs=5 --set model.likelihood.scale=0.1",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vaelab", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="train a VAE from a TOML config")
    p.add_argument("config", help="TOML config file")
    p.add_argument("--out", required=True, help="run folder (config, metrics, checkpoints, report)")
    _add_set(p)
    p.add_argument("--resume", action="store_true", help="continue from OUT/checkpoints/last.pt")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument("--evaluate", action="store_true", help="evaluate (IS) after training")

    p = sub.add_parser("evaluate", help="ELBO and importance-sampled log p(x) of a trained run")
    p.add_argument("run_dir")
    p.add_argument("--split", choices=["train", "valid", "test"], default=None)
    p.add_argument("--num-samples", "-K", type=int, default=None, help="importance samples K")
    p.add_argument("--limit", type=int, default=None, help="first N points of the split")
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--max-memory", type=float, default=None, help="particle-chunk budget, MiB")
    p.add_argument("--checkpoint", choices=["best", "last"], default="best")
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--report", action="store_true", help="(re)write RUN_DIR/report.md with the result")
    p.add_argument("--no-progress", action="store_true")

    p = sub.add_parser("sample", help="decode prior samples into an image grid")
    p.add_argument("run_dir")
    p.add_argument("-n", type=int, default=64)
    p.add_argument("--out", default=None, help="PNG path (default RUN_DIR/samples.png)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--checkpoint", choices=["best", "last"], default="best")

    p = sub.add_parser("config", help="configuration tools")
    csub = p.add_subparsers(dest="config_command", required=True)
    cs = csub.add_parser("show", help="print the resolved config")
    cs.add_argument("config", nargs="?", default=None, help="TOML file (default: all defaults)")
    _add_set(cs)
    return parser


def _cmd_train(args) -> int:
    from vaelab.config import load_config
    from vaelab.inference.train import train

    cfg = load_config(args.config, args.overrides)
    if args.no_progress:
        cfg.train.progress = False
    result = train(cfg, args.out, resume=args.resume)
    metrics = None
    from vaelab.report import write_report
    from vaelab.run import evaluate, load_run

    run = load_run(args.out)
    if args.evaluate:
        metrics = evaluate(run, progress=cfg.train.progress).summary()
    report = write_report(run, metrics)
    print(f"best epoch {result.best_epoch}, valid ELBO {result.best_valid_elbo:.2f}; report: {report}")
    return 0


def _cmd_evaluate(args) -> int:
    from vaelab.run import evaluate, load_run

    run = load_run(args.run_dir, args.checkpoint)
    est = evaluate(
        run, split=args.split, num_samples=args.num_samples, limit=args.limit,
        batch_size=args.batch_size, max_memory_mb=args.max_memory, seed=args.seed,
        progress=not args.no_progress and not args.json,
    )
    metrics = {**est.summary(), "split": est.extra["split"], "checkpoint": args.checkpoint}
    metrics.update({k: v for k, v in est.extra.items() if k != "split"})
    if args.report:
        from vaelab.report import write_report

        write_report(run, metrics)
    if args.json:
        print(json.dumps(metrics))
    else:
        for k, v in metrics.items():
            print(f"{k:>24}: {v:.4f}" if isinstance(v, float) else f"{k:>24}: {v}")
    return 0


def _cmd_sample(args) -> int:
    import torch

    from vaelab.report import save_grid
    from vaelab.run import load_run

    run = load_run(args.run_dir, args.checkpoint)
    torch.manual_seed(args.seed)
    out = Path(args.out) if args.out else run.dir / "samples.png"
    save_grid(out, run.vae.generative.sample(args.n), run.data.image_shape, ncol=8)
    print(out)
    return 0


def _cmd_config(args) -> int:
    from vaelab.config import dump_toml, load_config

    print(dump_toml(load_config(args.config, args.overrides)), end="")
    return 0


COMMANDS = {"train": _cmd_train, "evaluate": _cmd_evaluate, "sample": _cmd_sample, "config": _cmd_config}


def main(argv: list[str] | None = None) -> int:
    from vaelab.registry import ConfigError

    args = build_parser().parse_args(argv)
    known = (ConfigError, FileNotFoundError, FileExistsError, FloatingPointError, ValueError)
    try:
        return COMMANDS[args.command](args)
    except known as err:
        print(f"vaelab {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
