"""How far a reproduce row's figures may still move: IS with K = 5000 against K = 100,000 on the
same draws, and AIS at T = 500, 2000 and 8000, on the same spread test images.

For a run folder that ``vaelab reproduce`` evaluated, on ``--points`` test images spread over
the split (:func:`vaelab.data.subsets.spread_indices`, the rule of every stage):

* **IS**: one pass with the largest K; the smaller K's figure is the bound of the *first* K
  draws of the same pass (``curve_ks``), so the paired difference per image is the gain from the
  extra draws alone, ± its standard error over the images. IS is a stochastic lower bound that
  rises with K: the gain says how far the K = 5000 figure still was from converging, at least.
* **AIS** (continuous latents): T = 500, 2000, 8000 with the recipe's chains and leapfrog steps,
  from the prior, or from the guide for a VampPrior (where AIS from the prior is looser than IS
  at T = 500, ``experiments/results/ais_base.md``); the paired difference of each T with the
  previous one ± se, and AIS at the largest T minus IS at the largest K. Each T draws its own
  chains: the differences are paired by image, not by draw.

Blocks are saved under ``RUN/reproduce/convergence/`` as they complete, so an interrupted run
continues. Writes ``convergence.json`` and ``convergence.md`` into ``--out``: for a row of the
table, ``RUN/reproduce``, whence ``vaelab reproduce --export`` copies ``convergence.json``
beside the run's ``result.json`` and ``make results`` lists it under the table.

    python experiments/convergence.py --run RUN --out RUN/reproduce [--points 100]
        [--ks 5000 100000] [--steps 500 2000 8000]
    python experiments/convergence.py --smoke --out DIR   # a tiny reproduce run, made here
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import torch

from vaelab.runs.run import eval_config, load_run
from vaelab.runs.stages import AIS_BLOCK, evaluate_in_blocks

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _runner import run_or_smoke, run_parser, write_markdown  # noqa: E402

#: the format of ``convergence.json``
FORMAT = 1


def _paired(a: torch.Tensor, b: torch.Tensor) -> dict:
    """a − b per image: mean ± standard error over the images, and the share where a > b."""
    d = (a.double() - b.double())
    return {"mean": float(d.mean()), "stderr": float(d.std() / math.sqrt(d.numel())),
            "frac_positive": float((d > 0).double().mean()), "num_points": d.numel()}


def is_convergence(run, folder: Path, points: int, ks: list[int]) -> dict:
    """One IS pass with ``max(ks)`` draws per image, the smaller Ks from its first draws."""
    k_max, smaller = max(ks), sorted(k for k in ks if k != max(ks))
    ec = eval_config(run.cfg, ["eval.method=is", f"eval.limit={points}",
                               f"eval.num_samples={k_max}", "eval.exact=false"])
    est = evaluate_in_blocks(run, ec, folder / f"is_k{k_max}", curve_ks=smaller or None,
                             progress=True, say=print, label=f"IS, K = {k_max}")
    rows = {str(k_max): {"log_likelihood": float(est.log_px.double().mean()),
                         "pareto_k_over_0.7": float(est.flagged.double().mean())}}
    for k in smaller:
        first = est.curve_log_px[est.curve_ks.index(k)]
        rows[str(k)] = {"log_likelihood": float(first.double().mean()),
                        f"gain_to_{k_max}": _paired(est.log_px, first)}
    return {"num_samples": rows, "points": points, "log_px": est.log_px}


def ais_convergence(run, folder: Path, points: int, steps: list[int], chains: int,
                    leapfrog: int) -> dict:
    """AIS at each T of ``steps`` on the same images, each T against the previous one."""
    base = "guide" if type(run.vae.generative.prior).__name__ == "VampPrior" else "prior"
    out, prev = {"base": base, "chains": chains, "leapfrog": leapfrog, "steps": {}}, None
    for T in sorted(steps):
        ec = eval_config(run.cfg, [
            "eval.method=ais", f"eval.limit={points}", f"eval.ais_steps={T}",
            f"eval.ais_chains={chains}", f"eval.ais_leapfrog={leapfrog}",
            f"eval.ais_base={base}", "eval.exact=false"])
        est = evaluate_in_blocks(run, ec, folder / f"ais_T{T}", block=AIS_BLOCK, progress=True,
                                 say=print, label=f"AIS, T = {T}")
        row = {"log_likelihood": float(est.log_px.double().mean()),
               "ess": float(est.ess.double().mean())}
        if prev is not None:
            row[f"gain_from_T{prev[0]}"] = _paired(est.log_px, prev[1])
        out["steps"][str(T)] = row
        prev = (T, est.log_px)
    out["log_px"] = prev[1] if prev else None
    return out


def _markdown(run_dir: Path, res: dict) -> list[str]:
    ks = res["is"]["num_samples"]
    k_max = max(int(k) for k in ks)
    lines = [f"# How converged: {run_dir}", "",
             f"On {res['points']} test images spread over the split. Differences are paired "
             "image by image (± their standard error over the images).", "",
             "| estimate | mean log p̂(x) | gain over the previous (paired) | higher on |",
             "|---|---:|---:|---:|"]
    for k in sorted(ks, key=int):
        g = ks[k].get(f"gain_to_{k_max}")
        where = ("all draws" if int(k) == k_max else f"the first draws of the K = {k_max} "
                 "pass")
        lines.append(f"| IS, K = {int(k)} ({where}) | "
                     f"{ks[k]['log_likelihood']:.2f} | "
                     + (f"K = {k_max} is {g['mean']:+.3f} ± {g['stderr']:.3f} above | "
                        f"{100 * g['frac_positive']:.0f} % |" if g else "— | — |"))
    ais = res.get("ais")
    for T, row in (ais or {}).get("steps", {}).items():
        g = next((v for k, v in row.items() if k.startswith("gain_from_T")), None)
        lines.append(f"| AIS from the {ais['base']}, T = {T} ({ais['chains']} chains) | "
                     f"{row['log_likelihood']:.2f} | "
                     + (f"{g['mean']:+.3f} ± {g['stderr']:.3f} | "
                        f"{100 * g['frac_positive']:.0f} % |" if g else "— | — |"))
    if "ais_minus_is" in res:
        p = res["ais_minus_is"]
        lines += ["", f"AIS at the largest T minus IS at K = {k_max} on the same images: "
                  f"{p['mean']:+.3f} ± {p['stderr']:.3f} (AIS higher on "
                  f"{100 * p['frac_positive']:.0f} %)."]
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = run_parser(__doc__, "a run folder that vaelab reproduce evaluated")
    parser.add_argument("--points", type=int, default=100)
    parser.add_argument("--ks", type=int, nargs="+", default=[5000, 100_000])
    parser.add_argument("--steps", type=int, nargs="+", default=[500, 2000, 8000])
    parser.add_argument("--chains", type=int, default=4)
    parser.add_argument("--leapfrog", type=int, default=5)
    args = parser.parse_args(argv)
    if run_or_smoke(args, parser):
        args.points, args.ks, args.steps, args.chains, args.leapfrog = 6, [5, 40], [3, 6], 2, 2
    if not (args.run / "reproduce" / "result.json").is_file():
        print(f"convergence: {args.run} has no reproduce/result.json (run vaelab reproduce "
              "first)", file=sys.stderr)
        return 2
    run = load_run(args.run)
    folder = args.run / "reproduce" / "convergence"
    res: dict = {"format_version": FORMAT, "points": args.points}
    res["is"] = is_convergence(run, folder, args.points, args.ks)
    if run.vae.latent.continuous:
        res["ais"] = ais_convergence(run, folder, args.points, args.steps, args.chains,
                                     args.leapfrog)
        res["ais_minus_is"] = _paired(res["ais"].pop("log_px"), res["is"]["log_px"])
    res["is"].pop("log_px")
    (args.out / "convergence.json").write_text(json.dumps(res, indent=1) + "\n")
    write_markdown(args.out, "convergence.md", _markdown(args.run, res))
    return 0


if __name__ == "__main__":
    sys.exit(main())
