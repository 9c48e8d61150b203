"""Each reproduction row's evaluation, timed before and after the fused path: points per second
of :func:`vaelab.runs.run.evaluate` (IS, K = 5000, the recipe's ``[eval]`` otherwise) with
``eval.fused = false`` (*before*: Pyro's vectorized trace) and ``eval.fused = true`` (*after*:
:mod:`vaelab.inference.fused`, the default).

**The rows** are the recipes' architectures, built from each recipe's resolved config
(:func:`vaelab.runs.recipes.load_recipe`, ``.config(variant)``) with untrained weights (the cost
does not depend on the values): ``iwae_static/iwae_k1`` (784-200-200-50 tanh, Gaussian z),
``vampprior_standard/default`` (gated 300-300, z = 40, standard normal prior),
``vampprior/default`` (the same networks with the 500-component VampPrior),
``gumbel_softmax/gumbel`` (784-512-256, 20 × 10 categorical); ``--rows`` adds
``paulus2021/gumbel_softmax``.

**The points**: the test split of binarized MNIST (``VAELAB_DATA``) where present, else seeded
random binary images of the same shape (the output says which); ``--points`` of them spread
evenly over the split, as ``eval.limit`` picks them. IS costs the same per point, so points/s
at fewer points is points/s at 1000 (the header gives the time 1000 points would take).

**Rounds** are paired: both paths once per round, the order alternated, the estimator's seed
the same; the table gives the median points/s over the rounds, the median of the per-round
ratios (after / before), the largest difference of the two paths' mean log p̂ over the rounds
(the same draws: float rounding, a check that both paths estimate the same thing) and the
1-minute load average read after each row.

    python benchmarks/rows.py [--points 1000] [--num-samples 5000] [--rounds 3] [--threads 1]
    python benchmarks/rows.py --smoke   # random images, 4 points, K = 20, 1 round: seconds
"""

from __future__ import annotations

import os
import statistics
import sys
import time
from pathlib import Path

import pyro
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import measuring, parse, parser  # noqa: E402

from vaelab.data import DataSplits, Preprocessor, load_dataset  # noqa: E402
from vaelab.inference.fused import fused_log_weights  # noqa: E402
from vaelab.runs.recipes import load_recipe  # noqa: E402
from vaelab.runs.run import Run, evaluate  # noqa: E402
from vaelab.vae import build_vae  # noqa: E402

#: the reproduction rows: (recipe, variant)
ROWS = [("iwae_static", "iwae_k1"), ("vampprior_standard", "default"), ("vampprior", "default"),
        ("gumbel_softmax", "gumbel")]
EXTRA_ROWS = [("paulus2021", "gumbel_softmax"), ("iwae_static_2layer", "iwae_k1")]
D = 784


def random_splits(n: int) -> DataSplits:
    """Seeded random binary 28 × 28 images, ``n`` per split."""
    g = torch.Generator().manual_seed(0)
    x = [torch.rand(n, D, generator=g).round() for _ in range(3)]
    return DataSplits(*x, name="binarized_mnist", image_shape=(28, 28), binary=True, levels=2)


def data_for(cfg, n: int, smoke: bool) -> tuple[DataSplits, str]:
    """The recipe's data set where it can be read (not in smoke mode), else random images."""
    if not smoke:
        try:
            return load_dataset(cfg.data), "binarized MNIST test split"
        except Exception:  # noqa: BLE001 - no data set on this machine
            pass
    return random_splits(max(n, 10)), "seeded random binary images"


def build_row(recipe: str, variant: str, n: int, smoke: bool) -> tuple[Run, str]:
    """The row's VAE (untrained, seeded weights) in a :class:`Run` over its data."""
    cfg = load_recipe(recipe).config(variant)
    splits, source = data_for(cfg, n, smoke)
    torch.manual_seed(0)
    vae = build_vae(cfg, splits.dim)
    vae.eval()
    run = Run(None, cfg, vae, splits, Preprocessor(cfg.data, splits), 0)  # type: ignore[arg-type]
    return run, source


def time_row(run: Run, args) -> dict:
    """Seconds per round of each path (paired, order alternated) and their mean log p̂."""
    ecs = {fused: run.cfg.eval.model_copy(update={
        "fused": fused, "method": "is", "split": "test", "limit": args.points,
        "num_samples": args.num_samples}) for fused in (False, True)}
    secs: dict[bool, list[float]] = {False: [], True: []}
    means: dict[bool, list[float]] = {False: [], True: []}
    for r in range(args.rounds):
        for fused in ((False, True) if r % 2 == 0 else (True, False)):
            t = time.perf_counter()
            est = evaluate(run, ecs[fused], progress=False)
            secs[fused].append(time.perf_counter() - t)
            means[fused].append(float(est.log_px.double().mean()))
    return {"secs": secs, "means": means}


def row_line(recipe: str, variant: str, run: Run, t: dict, n: int) -> str:
    med = statistics.median
    before, after = (n / med(t["secs"][f]) for f in (False, True))
    ratio = med(b / a for b, a in zip(t["secs"][False], t["secs"][True]))
    diff = max(abs(a - b) for a, b in zip(t["means"][False], t["means"][True]))
    applies = "yes" if fused_log_weights(run.vae) is not None else "no (traced both)"
    return (f"| {recipe}/{variant} | {applies} | {before:,.1f} | {after:,.1f} "
            f"| {1000 / before:,.0f} | {1000 / after:,.0f} | {ratio:.2f}x | {diff:.2g} "
            f"| {os.getloadavg()[0]:.2f} |")


def main(argv=None) -> int:
    p = parser(__doc__, rounds=3)
    p.add_argument("--points", type=int, default=1000)
    p.add_argument("--num-samples", type=int, default=5000)
    names = [f"{r}/{v}" for r, v in ROWS + EXTRA_ROWS]
    p.add_argument("--rows", nargs="+", default=names[:len(ROWS)], choices=names)
    args = parse(p, argv, threads=1, smoke_help="random images, 4 points, K = 20",
                 smoke={"points": 4, "num_samples": 20, "rounds": 1})
    header = False
    with measuring(args.threads):
        for name in args.rows:
            recipe, variant = name.split("/")
            run, source = build_row(recipe, variant, args.points, args.smoke)
            if not header:
                print(f"# Rows before/after: IS K={args.num_samples} on {args.points} points "
                      f"({source}; points/s at {args.points} points is points/s at 1000), "
                      f"median of {args.rounds} paired rounds, {args.threads} thread(s), "
                      f"torch {torch.__version__}, pyro {pyro.__version__}, "
                      f"{os.cpu_count()} cores; untrained weights")
                print("| row (recipe/variant) | fused applies | before points/s "
                      "| after points/s | before s/1000 pts | after s/1000 pts "
                      "| ratio after/before | max Δ mean log p̂ | load |")
                print("|---|---|---:|---:|---:|---:|---:|---:|---:|")
                header = True
            print(row_line(recipe, variant, run, time_row(run, args), args.points), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
