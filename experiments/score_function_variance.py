"""How much the learned baseline reduces the variance of the score-function (REINFORCE) gradient.

For a trained run folder of the ``graph`` objective (``vaelab reproduce gumbel_softmax --variant
reinforce``, or any categorical-guide run with ``objective.name = "graph"``): the gradient of the
encoder's parameters on ``--points`` test images spread over the split, drawn ``--draws`` times
from fixed seeds, with the run's own objective (NVIL's baseline, :mod:`vaelab.inference.
objectives.graph`) and with plain TraceGraph_ELBO (no baseline). Reported: the total variance
(the trace of the covariance over draws), the norm of the mean gradient, and their ratio.

Then the parts of the learning signal that multiplies the score, per image over the same draws:
log p(x|z) alone, log p(z) − log q(z|x), and their sum (the signal TraceGraph_ELBO uses). If the
sum varied much more than log p(x|z) alone, an analytic KL (the score function on the
reconstruction term only) would be the next variance cut; the table says whether it would.

    python experiments/score_function_variance.py --run RUN --out DIR [--draws 40] [--points 100]
    python experiments/score_function_variance.py --smoke --out DIR   # a tiny run, trained here
"""

from __future__ import annotations

import sys
from pathlib import Path

import pyro
import pyro.poutine as poutine
import torch

from vaelab.inference.objectives import build_objective
from vaelab.inference.objectives.graph import BaselineTraceGraphELBO
from vaelab.resolve import load_config
from vaelab.runs.run import load_run
from vaelab.runs.train import train

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _runner import run_parser, write_markdown  # noqa: E402

SMOKE = ["data.name=synthetic", "model.latent={name='categorical', num_variables=3, "
         "num_classes=4}", "model.prior=categorical", "guide.family=categorical",
         "objective.name=graph", "model.hidden_sizes=[16]", "train.epochs=1",
         "train.batch_size=50", "train.progress=false"]


def encoder_gradients(run, objective, x: torch.Tensor, draws: int) -> torch.Tensor:
    """``(draws, P)``: the encoder's gradient on ``x`` for draws seeded 0 … draws − 1."""
    vae = run.vae
    encoder = [p for n, p in vae.named_parameters() if n.startswith("inference.encoder")]
    center = getattr(vae.inference.posterior, "baseline", None)
    saved = None if center is None else center.center.clone()
    out = []
    for i in range(draws):
        for p in vae.parameters():
            p.grad = None
        torch.manual_seed(i)
        with pyro.validation_enabled(False):
            objective.loss_and_grads(vae.model, vae.guide, x, 1.0, None)
        out.append(torch.cat([p.grad.flatten() for p in encoder]))
    if saved is not None:  # the objective moves the baseline's running mean: put it back
        center.center.copy_(saved)
    return torch.stack(out)


def signal_parts(vae, x: torch.Tensor, draws: int) -> dict[str, torch.Tensor]:
    """``(draws, B)`` each: log p(x|z), log p(z) − log q(z|x) and their sum at z ~ q(z|x),
    draws seeded 0 … draws − 1."""
    rec, kl_part = [], []
    with torch.no_grad(), pyro.validation_enabled(False):
        for i in range(draws):
            torch.manual_seed(i)
            guide = poutine.trace(vae.guide).get_trace(x)
            model = poutine.trace(poutine.replay(vae.model, trace=guide)).get_trace(x)
            guide.compute_log_prob()
            model.compute_log_prob()
            rec.append(model.nodes["x"]["log_prob"])
            kl_part.append(model.nodes["z"]["log_prob"] - guide.nodes["z"]["log_prob"])
    rec_t, kl_t = torch.stack(rec), torch.stack(kl_part)
    return {"log p(x|z)": rec_t, "log p(z) − log q(z|x)": kl_t,
            "sum (the signal used)": rec_t + kl_t}


def _correlation(a: torch.Tensor, b: torch.Tensor) -> float:
    """Mean over images of the correlation over draws of ``a`` and ``b`` ``(draws, B)``."""
    a, b = a - a.mean(0), b - b.mean(0)
    r = (a * b).sum(0) / (a.square().sum(0) * b.square().sum(0)).sqrt()
    return float(r.nanmean())


def main(argv: list[str] | None = None) -> int:
    parser = run_parser(__doc__, "a trained run folder (objective 'graph')")
    parser.add_argument("--draws", type=int, default=40)
    parser.add_argument("--points", type=int, default=100)
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    if args.smoke:
        args.run, args.draws, args.points = args.out / "run", 5, 20
        train(load_config(None, SMOKE), args.run)
    elif args.run is None:
        parser.error("--run RUN_DIR is required (or --smoke)")
    run = load_run(args.run)
    if run.cfg.objective.name != "graph":
        print(f"score_function_variance: {args.run} was trained with objective "
              f"{run.cfg.objective.name!r}, not 'graph'", file=sys.stderr)
        return 2
    run.vae.train()
    x = run.pre.eval_split(run.split("test", args.points), run.cfg.eval.seed)
    plain = BaselineTraceGraphELBO(baseline=None, num_particles=1, vectorize_particles=False,
                                   max_plate_nesting=1)
    rows = []
    for label, objective in (("no baseline (TraceGraph_ELBO)", plain),
                             ("learned baseline (the run's objective)",
                              build_objective(run.cfg.objective, run.vae))):
        g = encoder_gradients(run, objective, x, args.draws)
        variance, mean_norm = float(g.var(0).sum()), float(g.mean(0).norm())
        rows.append((label, variance, mean_norm))
    ratio = rows[0][1] / rows[1][1]
    lines = [f"# Score-function gradient variance: {args.run}",
             "",
             f"Encoder gradient on {x.shape[0]} test images, {args.draws} draws (seeds 0 … "
             f"{args.draws - 1}); variance = trace of the covariance over draws.",
             "",
             "| estimator | total variance | norm of the mean | ratio of variance |",
             "|---|---:|---:|---:|"]
    lines += [f"| {label} | {v:.4g} | {m:.4g} | {v / rows[1][1]:.1f} |" for label, v, m in rows]
    lines += ["", f"The baseline divides the variance by {ratio:.1f}."]
    parts = signal_parts(run.vae, x, args.draws)
    rec, kl_part, total = parts.values()
    lower = bool(total.var(0).mean() < rec.var(0).mean())
    lines += ["", "## The learning signal's parts",
              "",
              f"Per image, over the same {args.draws} draws: the variance of each part "
              "(mean over the images) and its mean.",
              "",
              "| part | variance over draws | mean |",
              "|---|---:|---:|"]
    for name, t in parts.items():
        cell = name.replace("|", "\\|")  # a literal | inside a Markdown table cell
        lines.append(f"| {cell} | {float(t.var(0).mean()):.4g} | {float(t.mean()):.4g} |")
    lines += ["", f"The two parts correlate at {_correlation(rec, kl_part):.2f} (mean over "
              f"images), so the full signal's variance is {'lower than' if lower else 'at least'}"
              " that of log p(x|z) alone: an analytic KL, which leaves the score function only "
              f"log p(x|z), would {'not ' if lower else ''}lower it."]
    write_markdown(args.out, "score_function_variance.md", lines)
    return 0


if __name__ == "__main__":
    sys.exit(main())
