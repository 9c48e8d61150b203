"""The cost of one training step of every discrete-latent gradient estimator of the
``paulus2021`` recipe, against ``trace`` with the plain Gumbel-softmax guide on the same network.

Each estimator is the recipe's variant (``vaelab/recipes/paulus2021.toml``: its guide family,
objective, particles and temperature) at the recipe's network (784-512-256 encoder, 256-512-784
decoder, 120 binary latents), batch 200 and optimizer (SGD with momentum), on a fixed batch of
synthetic binary data (the cost does not depend on the pixels). A step is what the training loop
runs (:class:`vaelab.runs.stepper.Stepper`: the objective's loss and gradients, then the
optimizer). Rounds alternate the reference and the estimator (paired: machine noise hits both
alike); the table gives each median ms/step and the median of the per-round ratios to the
reference measured in the same run.

    python benchmarks/estimators.py [--rounds 7] [--steps 10] [--threads 1]
    python benchmarks/estimators.py --smoke   # a 64-32 network, 6 binary latents: seconds
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

import pyro
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import measuring, paired_rounds, parse, parser, warm_up  # noqa: E402

from vaelab.runs.recipes import load_recipe  # noqa: E402

RECIPE = "paulus2021"
#: the reference variant: ``trace`` with the plain Gumbel-softmax guide
REFERENCE = "gumbel_softmax"


class Sizes(NamedTuple):
    D: int  #: data width
    overrides: list[str]  #: the network and batch, as ``--set`` overrides


#: the recipe's own network and batch
FULL = Sizes(784, [])
SMOKE = Sizes(64, ["model.hidden_sizes=[32]", "guide.hidden_sizes=[32]",
                   "model.latent.num_variables=6", "train.batch_size=16"])


def estimators() -> list[str]:
    """The recipe's variants of a discrete latent, the reference first."""
    recipe = load_recipe(RECIPE)
    names = [v for v in recipe.table.variants if v != "gaussian"]
    return [REFERENCE, *[v for v in names if v != REFERENCE]]


def make_step(variant: str, sizes: Sizes, smoke: bool, extra: tuple[str, ...] = ()
              ) -> tuple[Callable[[torch.Tensor], object], str, bool]:
    """One training step of the recipe's ``variant`` (the loop's :class:`Stepper`), its VAE
    built on synthetic data of width ``sizes.D``, its :func:`label`, and whether its objective
    is compiled (``objective.jit = "auto"`` compiles it); ``extra``: more overrides."""
    from vaelab.data import DataSplits, Preprocessor
    from vaelab.runs.stepper import Stepper
    from vaelab.runs.train import choose_objective
    from vaelab.vae import build_vae

    # a step's cost does not depend on the rate; the variants' own rates let a score-function
    # estimator diverge over the rounds' hundreds of steps on one batch (REINFORCE with its
    # baseline hit NaN logits at step 13 of a full `make bench`)
    over = [*sizes.overrides, "train.lr=1e-8", *extra]
    if smoke and variant == "gr_mck":
        over.append('guide.family={name = "relaxed", kl = "categorical", estimator = "gr_mck", '
                    'num_gumbels = 20}')
    cfg = load_recipe(RECIPE).config(variant, 0, ["data.name=synthetic", *over])
    vae = build_vae(cfg, sizes.D)
    B = cfg.train.batch_size
    x = torch.bernoulli(torch.full((4 * B, sizes.D), 0.3))
    data = DataSplits(x, x[:B], x[:B], "bench", binary=True, levels=2)
    stepper = Stepper(cfg.train, vae, *choose_objective(cfg, vae, data,
                                                        Preprocessor(cfg.data, data)))
    tau = vae.latent.temperature_at(0)
    return (lambda xb: stepper.step(xb, 1.0, tau)), label(variant, cfg), stepper.eager is not None


def label(variant: str, cfg) -> str:
    """The variant with what distinguishes it in ``cfg`` (particles, Gumbels, temperature)."""
    family, parts = cfg.guide.family, []
    if cfg.objective.num_particles > 1:
        parts.append(f"K={cfg.objective.num_particles}")
    if getattr(family, "estimator", None) == "gr_mck":
        parts.append(f"{family.num_gumbels} Gumbels")
    if family.name == "relaxed" or cfg.objective.name == "relax":
        parts.append(f"τ={cfg.model.latent.temperature:g}")
    return variant + (f" ({', '.join(parts)})" if parts else "")


def measure(args, sizes: Sizes, smoke: bool
            ) -> list[tuple[str, float, float, float, float | None]]:
    """(label, ms/step, reference ms/step, ratio, compiled / eager or ``None``) per estimator,
    in paired rounds; an estimator whose objective compiles is also paired with its eager
    twin (``objective.jit = false``)."""
    B = load_recipe(RECIPE).config(REFERENCE, 0, ["data.name=synthetic",
                                                  *sizes.overrides]).train.batch_size
    x = torch.bernoulli(torch.full((B, sizes.D), 0.3))
    pyro.clear_param_store()
    reference, _, _ = make_step(REFERENCE, sizes, smoke)
    warm_up(reference, x, args.warmup)
    rows = []
    for variant in [v for v in estimators() if not args.variants or v in args.variants]:
        # two models at once: vaelab's networks register their own tensors (eager steps)
        step, name, compiled = make_step(variant, sizes, smoke)
        timing = paired_rounds(reference, step, x, rounds=args.rounds, steps=args.steps,
                               warmup=args.warmup)
        jit = None
        if compiled:
            eager, _, _ = make_step(variant, sizes, smoke, ("objective.jit=false",))
            jit = paired_rounds(eager, step, x, rounds=args.rounds, steps=args.steps,
                                warmup=args.warmup)[2]
        rows.append((name, *timing, jit))
    return rows


def main(argv=None) -> int:
    p = parser(__doc__, rounds=7)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--variants", nargs="+", default=None, choices=estimators(),
                   help="these of the recipe's variants only (default: all)")
    args = parse(p, argv, threads=1,
                 smoke_help="tiny sizes, 1 round of 2 steps (tests/test_benchmarks.py)",
                 smoke={"rounds": 1, "steps": 2, "warmup": 1})
    sizes = SMOKE if args.smoke else FULL
    torch.manual_seed(0)
    with measuring(args.threads):
        rows = measure(args, sizes, args.smoke)
    net = "64-32, 6 binary latents, batch 16" if args.smoke else \
        "784-512-256 / 256-512-784, 120 binary latents, batch 200"
    print(f"recipe {RECIPE}'s estimators, {net}, SGD step, {args.threads} thread(s), "
          f"{args.rounds} paired rounds x {args.steps} steps\n")
    print("| estimator | ms/step | reference ms/step | ratio to trace + Gumbel-softmax "
          "| compiled / eager (`objective.jit = false`) |")
    print("|---|---:|---:|---:|---:|")
    for name, ms, ref, ratio, jit in rows:
        twin = "eager (no compiled variant)" if jit is None else f"{jit:.2f}"
        print(f"| {name} | {ms:.2f} | {ref:.2f} | {ratio:.2f} | {twin} |")
    print(f"\nload average (1 min) at the end: {os.getloadavg()[0]:.2f} on {os.cpu_count()} "
          "cores (a shared machine: ratios are paired per round, absolute times are not)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
