"""AIS started from the prior against AIS started from the guide, each against IS on the same test
images, for a run folder that ``vaelab reproduce`` evaluated.

Both AIS runs anneal from a base distribution to p(x, z) over T steps with HMC moves
(:mod:`vaelab.inference.ais`); ``prior`` is the recipes' setting (Wu et al. 2017), ``guide``
starts each chain from q(z | x). Each is scored on the recipe's spread test images, in resumable
blocks under ``RUN/reproduce/`` (``ais`` for the prior: the recipe's own stage, reused;
``ais_guide`` for the guide), and paired image by image with the run's IS blocks
(K = 5000): AIS − IS > 0 says IS understates log p(x) by at least that much on those images.

    python experiments/ais_base.py --run RUN --out DIR [--points 1000] [--steps 500]
    python experiments/ais_base.py --smoke --out DIR   # a tiny reproduce run, made here
"""

from __future__ import annotations

import sys
from pathlib import Path

from vaelab.runs.run import eval_config, load_run
from vaelab.runs.stages import AIS_BLOCK, ais_minus_is, evaluate_in_blocks

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _runner import run_or_smoke, run_parser, write_markdown  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = run_parser(__doc__, "a run folder that vaelab reproduce evaluated")
    parser.add_argument("--points", type=int, default=1000)
    parser.add_argument("--steps", type=int, default=500, help="T")
    parser.add_argument("--chains", type=int, default=4)
    parser.add_argument("--leapfrog", type=int, default=5)
    args = parser.parse_args(argv)
    if run_or_smoke(args, parser):
        args.points, args.steps, args.chains, args.leapfrog = 8, 5, 2, 2
    run = load_run(args.run)
    folder = args.run / "reproduce"
    if not run.vae.latent.continuous or not (folder / "is").is_dir():
        print(f"ais_base: {args.run} has no IS blocks of a continuous-latent model "
              "(run vaelab reproduce first)", file=sys.stderr)
        return 2
    rows = []
    for base, blocks in (("prior", folder / "ais"), ("guide", folder / "ais_guide")):
        ec = eval_config(run.cfg, [
            "eval.method=ais", f"eval.limit={args.points}", f"eval.ais_steps={args.steps}",
            f"eval.ais_chains={args.chains}", f"eval.ais_leapfrog={args.leapfrog}",
            f"eval.ais_base={base}", "eval.exact=false"])
        est = evaluate_in_blocks(run, ec, blocks, block=AIS_BLOCK, progress=True)
        paired = ais_minus_is(run, run.cfg.eval, ec, folder, blocks)
        rows.append((base, float(est.log_px.mean()), paired, float(est.ess.mean())))
    lines = [f"# AIS from the prior and from the guide, against IS: {args.run}", "",
             f"AIS with T = {args.steps}, {args.chains} chains, {args.leapfrog} leapfrog steps, "
             f"on {args.points} test images spread over the split; IS with K = "
             f"{run.cfg.eval.num_samples}. AIS − IS is paired image by image (± its standard "
             "error over the images).", "",
             "| AIS base | AIS mean log p̂(x) | AIS − IS (paired) | AIS higher on | mean ESS of "
             "the chains |", "|---|---:|---:|---:|---:|"]
    lines += [f"| {base} | {mean:.2f} | {p['mean']:+.2f} ± {p['stderr']:.2f} | "
              f"{100 * p['frac_ais_higher']:.1f} % of {p['num_points']} | {ess:.2f} |"
              for base, mean, p, ess in rows]
    write_markdown(args.out, "ais_base.md", lines)
    return 0


if __name__ == "__main__":
    sys.exit(main())
