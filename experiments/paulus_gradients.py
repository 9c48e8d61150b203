r"""Every discrete estimator of the ``paulus2021`` recipe at one shared checkpoint: gradient
variance, SNR, bias and cosine on one fixed batch.

The checkpoint is the best one (or with ``--checkpoint last`` the last commit: issue 25 names the
Gumbel-softmax run at step 25,000, a copy of its folder taken then) of a run folder of the
recipe's Gumbel-softmax variant
(``vaelab reproduce paulus2021 --variant gumbel_softmax_lr`` writes ``OUT/gumbel_softmax_lr@...
/seed0``). Its encoder, decoder and prior parameters are loaded into one VAE per estimator, built
from the run's config with the recipe's overrides of that estimator (guide family, objective,
particles, temperature), and :func:`vaelab.inference.diagnostics.diagnose` asks each for M
gradient draws of the batch-mean negative bound on the same fixed batch of B training images:

* ``variance``, ``snr`` (per coordinate, averaged) and ``snr_norm`` (‖E g‖ / sd) per group
  (:mod:`vaelab.inference.diagnostics`); the encoder group here is the encoder network alone
  (the baseline networks of ``graph`` and RELAX are left out, so that every row has the same
  coordinates);
* bias and cosine of each mean gradient against one reference :math:`g^\star`: the gradient of
  the **discrete** model's ELBO, the mean of R DisARM draws (unbiased for binary latents; Dong
  et al. 2020), its standard error stated: a bias below it reads as zero. The space (2^120
  states) cannot be enumerated. What each estimator targets differs: ``gumbel_softmax`` the
  relaxed objective (Jang et al.), ``vimco`` the K-sample bound, the straight-through family a
  biased surrogate of the ELBO's gradient, the other score-function estimators the ELBO's
  gradient itself; the bias column measures the distance to the ELBO's gradient in every case.

The checkpoint carries no trained baseline: ``graph``'s b(x) and RELAX's r_ρ start untrained,
so those rows show the estimators without their learned control variates (``graph``: plain
REINFORCE with a zero running mean). Each estimator runs at its own recipe temperature.

    python experiments/paulus_gradients.py --run RUN --out DIR [--draws 100] [--batch-size 200]
        [--reference-draws 10000] [--checkpoint best|last]
    python experiments/paulus_gradients.py --smoke --out DIR   # a tiny run, made here
"""

from __future__ import annotations

import sys
from pathlib import Path

import pyro
import torch

from vaelab.inference.diagnostics import diagnose, gradient_diagnostics
from vaelab.inference.gradient_bias import ReferenceGradient, gradient_bias
from vaelab.inference.objectives import build_objective
from vaelab.resolve import apply_overrides, resolve
from vaelab.runs.recipes import load_recipe
from vaelab.runs.run import load_run
from vaelab.vae import build_vae

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _runner import run_parser, write_markdown  # noqa: E402

RECIPE = "paulus2021"
#: a tiny Gumbel-softmax run of the recipe (``--smoke``)
SMOKE = ["data.name=synthetic", "data.limit=300", "train.epochs=1",
         "train.max_steps_per_epoch=3", "train.valid_limit=50", "model.hidden_sizes=[16]",
         "guide.hidden_sizes=[16]", "model.latent.num_variables=4", "train.batch_size=20",
         'guide.family={name = "relaxed", kl = "categorical", estimator = "gumbel_softmax"}']


def estimator_vae(run, overrides: list[str]):
    """A VAE of the run's config with ``overrides`` (an estimator's), holding the run's
    checkpoint parameters; a parameter the checkpoint lacks may only be a baseline network's.
    Its ``parameter_groups`` lists the encoder network alone as ``encoder``."""
    cfg = resolve(apply_overrides(run.cfg.model_dump(mode="json"), overrides))
    vae = build_vae(cfg, run.data.train.shape[1], run.data.shape)
    missing, unexpected = vae.load_state_dict(run.vae.state_dict(), strict=False)
    strays = [k for k in missing if "baseline" not in k] + list(unexpected)
    if strays:
        raise ValueError(f"{overrides}: the checkpoint does not fit this VAE: {strays[:5]}")
    groups = vae.parameter_groups()
    groups["encoder"] = list(vae.inference.encoder.parameters())
    vae.parameter_groups = lambda: groups  # the same coordinates for every estimator
    return cfg, vae


def disarm_reference(run, x: torch.Tensor, draws: int, seed: int) -> ReferenceGradient:
    """The batch-mean negative ELBO's gradient of the discrete model at ``x``: the mean of
    ``draws`` DisARM draws (``x`` replicated 100 times per call), with its standard error
    norm per group, √(Σ_p σ̂_p² / calls)."""
    recipe = load_recipe(RECIPE)
    cfg, vae = estimator_vae(run, recipe.table.variants["disarm"])
    per_call = 100
    calls = max(2, -(-draws // per_call))
    x_rep = x.repeat(per_call, 1)  # (per_call B, D)
    pyro.set_rng_seed(seed + 1)  # other draws than the disarm row's
    got = gradient_diagnostics(vae, build_objective(cfg.objective, vae), x_rep, calls, (1.0,),
                               label="reference", objective_cfg=cfg.objective)
    se = {g: (s.variance * s.num_params / calls) ** 0.5 for g, s in got.groups.items()}
    return ReferenceGradient(got.mean_grads, "monte carlo",
                             f"mean of {calls * per_call} DisARM draws of the discrete ELBO's "
                             "gradient (unbiased)", se)


def diagnose_all(run, x: torch.Tensor, draws: int, seed: int) -> list[tuple[str, object]]:
    """(variant, :class:`~vaelab.inference.diagnostics.ObjectiveDiagnostics`) for every
    discrete variant of the recipe, at the run's parameters and ``x``."""
    recipe = load_recipe(RECIPE)
    out = []
    for variant, overrides in recipe.table.variants.items():
        if variant == "gaussian":
            continue
        cfg, vae = estimator_vae(run, overrides)
        relaxed = cfg.guide.family.name == "relaxed"
        tau = torch.tensor(cfg.model.latent.temperature) if relaxed else None
        [res] = diagnose(vae, x, [cfg.objective], draws=draws, temperature=tau, seed=seed)
        out.append((variant, res))
    return out


def table(rows, ref: ReferenceGradient, run, args) -> list[str]:
    lines = [f"# Gradients of every estimator at one checkpoint: {Path(args.run).name}", "",
             f"Checkpoint: epoch {run.epoch + 1} ("
             + ("best by validation" if args.checkpoint == "best" else "the last commit")
             + ") of the Gumbel-softmax run; "
             f"one fixed batch of {args.batch_size} training images; {args.draws} gradient draws "
             f"per estimator. Reference: {ref.description}, standard error "
             + ", ".join(f"{g} {v:.3g}" for g, v in ref.standard_error.items()) + ".", "",
             "| estimator | bound (mean ± sd) | encoder var | encoder snr | encoder snr_norm | "
             "decoder snr_norm | encoder ‖Δ‖ | encoder noise | encoder bias | encoder cosine "
             "| decoder ‖Δ‖ | decoder noise | decoder bias | decoder cosine | ms/step |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for variant, r in rows:
        cells = []
        for g in ("encoder", "decoder"):
            b = gradient_bias(r.mean_grads[g], ref.grads[g])
            noise = noise_norm(r.groups[g], args.draws, ref.standard_error[g])
            cells += [f"{b.bias:.3g}", f"{noise:.3g}", f"{excess_bias(b.bias, noise):.3g}",
                      f"{b.cosine:.3f}"]
        enc, dec = r.groups["encoder"], r.groups["decoder"]
        lines.append(f"| {variant} | {r.bound_mean:.2f} ± {r.bound_sd:.2f} | {enc.variance:.3g} "
                     f"| {enc.snr:.3g} | {enc.snr_norm:.3g} | {dec.snr_norm:.3g} | "
                     + " | ".join(cells) + f" | {r.time_per_step_ms:.1f} |")
    lines += ["", "‖Δ‖: ‖mean of the draws − reference‖₂ per group (batch-mean gradients, nats "
              "per image). It holds the estimator's bias and the Monte Carlo error of both "
              "means; noise: the norm that error alone would give, √(P σ̄²/M + se_ref²) (P "
              "coordinates, σ̄² the per-coordinate variance, M draws); bias: √max(0, ‖Δ‖² − "
              "noise²), what is left of ‖Δ‖ beyond it (0 for an unbiased estimator, up to "
              "noise). The cosine is the raw one, lowered by the same noise. snr is the mean "
              "over coordinates of |E g_p| / sd(g_p), which coordinates whose gradient hardly "
              "varies dominate; snr_norm (‖E g‖ / total sd) is the one to compare. `graph` and "
              "`relax` run with untrained baselines (the checkpoint has none). The bound column "
              "is each objective's own (the relaxed objective for gumbel_softmax, IWAE_K for "
              "vimco)."]
    return lines


def noise_norm(stats, draws: int, reference_se: float) -> float:
    """The expected norm of ``mean of draws − reference`` from Monte Carlo error alone:
    √(P σ̄² / M + se_ref²), ``stats`` a group's
    :class:`~vaelab.inference.diagnostics.GroupStats`."""
    return (stats.variance * stats.num_params / draws + reference_se ** 2) ** 0.5


def excess_bias(distance: float, noise: float) -> float:
    """√max(0, ‖Δ‖² − noise²): E‖Δ‖² = ‖bias‖² + noise² for independent errors."""
    return max(0.0, distance ** 2 - noise ** 2) ** 0.5


def main(argv: list[str] | None = None) -> int:
    parser = run_parser(__doc__, "a run folder of the recipe's Gumbel-softmax variant")
    parser.add_argument("--draws", "-M", type=int, default=100)
    parser.add_argument("--batch-size", type=int, default=200)
    parser.add_argument("--reference-draws", type=int, default=10_000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--checkpoint", choices=["best", "last"], default="best",
                        help="the run's best-validation checkpoint, or its last commit (a copy "
                             "of the run folder taken at step 25,000: the issue's checkpoint)")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    if args.smoke:
        from vaelab.runs.reproduce import reproduce

        got = reproduce(RECIPE, args.out / "runs", variants=["gumbel_softmax"], overrides=SMOKE,
                        evaluate=False)
        args.run = Path(got[0]["run_dir"])
        args.draws, args.batch_size, args.reference_draws = 3, 8, 200
    elif args.run is None:
        parser.error("--run RUN_DIR is required (or --smoke)")
    run = load_run(args.run, checkpoint=args.checkpoint)
    if getattr(run.cfg.model.latent, "num_classes", None) != 2:
        print(f"paulus_gradients: {args.run} is not a run of binary latents (the DisARM "
              "reference needs 2 classes)", file=sys.stderr)
        return 2
    x = run.pre.eval_split(run.split("train", args.batch_size), args.seed)  # fixed batch
    ref = disarm_reference(run, x, args.reference_draws, args.seed)
    rows = diagnose_all(run, x, args.draws, args.seed)
    write_markdown(args.out, "paulus_gradients.md", table(rows, ref, run, args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
