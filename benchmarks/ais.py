"""AIS at the hardware's limit: HMC transitions per second of vaelab's
:func:`~vaelab.inference.ais.ais` against a hand-written torch HMC AIS with the same draws, and
as a fraction of the GEMM limit.

**Model**: the ``iwae_static`` recipe's network (Gaussian z = 50, 50-200-200-784 tanh decoder,
Bernoulli likelihood, standard normal prior; random weights), AIS from the prior with the
recipe's ``ais`` settings per transition (C = 4 chains, L = 5 leapfrog steps) on B points, T
annealing steps (fewer than the recipe's 500: the rate per transition does not depend on T).

**Hand-written twin**: plain torch, the same sigmoid schedule, draws in the same order
(z₀ ~ N(0, I) of shape (C, B, d), a momentum ``randn_like`` and an acceptance ``rand_like`` per
transition), the same per-point step-size adaptation; log p(z) and its gradient −z written
out, log p(x | z) with ``binary_cross_entropy_with_logits`` and its gradient by one
``autograd.grad``. Its log p̂ is compared with vaelab's per point (``max |Δ|``: float rounding
of the gradients may flip an accept decision near its threshold, then the chains part).

**Paths**: ``vaelab ais`` (the traced :class:`~vaelab.inference.ais.LogJoint`, what
``vaelab evaluate --method ais`` runs) and ``vaelab ais, FusedLogJoint``
(:mod:`vaelab.inference.fast_ais`: the same values without the Pyro trace per leapfrog step).

**The limit**: every leapfrog step evaluates the decoder and its gradient in z, so its GEMMs
are the forward ``addmm`` of every layer on the C·B rows and the backward ``mm`` of the
gradient through it (the same FLOPs again); their time at the very shapes, measured in the
same rounds, over the path's time. BDMC (:mod:`vaelab.inference.bdmc`) runs the same ``ais``
transitions (forward, then reversed from the exact posterior sample), so the per-transition
figures hold for it.

Paired rounds (each variant once per round from the same seed, order rotated), medians of the
per-round ratios, with the 1-minute load average (the machine is shared).

    python benchmarks/ais.py [--rounds 5] [--steps 30] [--points 100] [--threads 1 2]
    python benchmarks/ais.py --smoke   # tiny network, 4 steps: seconds
"""

from __future__ import annotations

import os
import statistics
import sys
from collections.abc import Callable
from pathlib import Path

import torch
from torch.nn import functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import measuring, paired, parse, parser  # noqa: E402
from limit import load_points, recipe_vae  # noqa: E402

from vaelab.inference.ais import ais, beta_schedule  # noqa: E402
from vaelab.inference.fast_ais import FusedLogJoint  # noqa: E402

CHAINS, LEAPFROG = 4, 5  # the iwae_static recipe's ais = { chains = 4, leapfrog = 5 }


@torch.no_grad()
def hand_written_ais(vae, x: torch.Tensor, T: int, C: int, L: int, eps0: float = 0.05,
                     target: float = 0.65, rate: float = 0.05) -> torch.Tensor:
    """Plain torch AIS from N(0, I) with HMC, vaelab's schedule, draws and adaptation:
    log p̂(x) ``(B,)``."""
    dec, B, d = vae.generative.decoder, x.shape[0], vae.latent.flat_dim

    def terms(z):  # log p(z), log p(x|z) (C, B) and their gradients
        with torch.enable_grad():
            z = z.detach().requires_grad_(True)
            log_lik = -F.binary_cross_entropy_with_logits(
                dec(z), x.expand(C, B, -1), reduction="none").sum(-1)
            grad_lik, = torch.autograd.grad(log_lik.sum(), z)
        log_prior = -0.5 * z.detach().pow(2).sum(-1) - 0.5 * d * torch.log(torch.tensor(
            2 * torch.pi))
        return log_prior, log_lik.detach(), -z.detach(), grad_lik

    betas = [float(b) for b in beta_schedule(T)]
    z = torch.normal(torch.zeros(C, B, d), torch.ones(C, B, d))
    lp, ll, gp, gl = terms(z)
    log_w, eps, avg = torch.zeros(C, B), torch.full((B,), eps0), torch.full((B,), target)
    for t in range(1, T + 1):
        log_w += (betas[t] - betas[t - 1]) * ll
        if t == T:
            break
        b, e = betas[t], eps.view(1, B, 1)
        p = torch.randn_like(z)
        H0 = -(lp + b * ll) + 0.5 * p.pow(2).sum(-1)
        z1, (lp1, ll1, gp1, gl1) = z, (lp, ll, gp, gl)
        p = p + 0.5 * e * (gp1 + b * gl1)
        for step in range(L):
            z1 = z1 + e * p
            lp1, ll1, gp1, gl1 = terms(z1)
            if step < L - 1:
                p = p + e * (gp1 + b * gl1)
        p = p + 0.5 * e * (gp1 + b * gl1)
        log_acc = (H0 - (-(lp1 + b * ll1) + 0.5 * p.pow(2).sum(-1))).nan_to_num(
            nan=-torch.inf).clamp_max(0.0)
        acc = torch.rand_like(log_acc).log() < log_acc
        z = torch.where(acc.unsqueeze(-1), z1, z)
        lp, ll = torch.where(acc, lp1, lp), torch.where(acc, ll1, ll)
        gp, gl = (torch.where(acc.unsqueeze(-1), u, v) for u, v in ((gp1, gp), (gl1, gl)))
        avg = 0.9 * avg + 0.1 * log_acc.exp().mean(0)
        eps = torch.where(avg > target, eps * (1 + rate), eps * (1 - rate)).clamp(1e-4, 1.0)
    return torch.logsumexp(log_w.double(), 0) - torch.log(torch.tensor(float(C))).double()


def gemm_limit(vae, rows: int, evaluations: int) -> Callable[[], None]:
    """The decoder's forward ``addmm`` and backward ``mm`` (gradient in the input) of every
    layer on ``rows`` rows, ``evaluations`` times (one per log-joint evaluation)."""
    ops = []
    for m in vae.generative.decoder.modules():
        if isinstance(m, torch.nn.Linear):
            a, b = m.in_features, m.out_features
            ops.append((torch.randn(b), torch.randn(rows, a), torch.randn(a, b),
                        torch.empty(rows, b), torch.randn(rows, b), torch.randn(b, a),
                        torch.empty(rows, a)))

    def run() -> None:
        for _ in range(evaluations):
            for bias, x, wt, out, gy, w, gx in ops:
                torch.addmm(bias, x, wt, out=out)
                torch.mm(gy, w, out=gx)

    return run


def measure(args, x: torch.Tensor, threads: int) -> list[str]:
    vae = recipe_vae("iwae_static", args.smoke)
    model, guide = vae.eval_pair()
    T, B = args.steps, x.shape[0]
    torch.set_num_threads(threads)
    fns = {
        "vaelab ais": lambda: ais(model, guide, x, num_steps=T, num_chains=CHAINS,
                                  num_leapfrog=LEAPFROG, base="prior").log_px,
        "vaelab ais, FusedLogJoint": lambda: ais(
            model, guide, x, num_steps=T, num_chains=CHAINS, num_leapfrog=LEAPFROG,
            base="prior", log_joint=FusedLogJoint(vae, x, CHAINS, "prior")).log_px,
        "hand-written": lambda: hand_written_ais(vae, x, T, CHAINS, LEAPFROG),
        "limit": gemm_limit(vae, CHAINS * B, 1 + (T - 1) * LEAPFROG),
    }
    torch.manual_seed(1)
    ref = fns["hand-written"]()
    torch.manual_seed(1)
    diff = float((fns["vaelab ais"]() - ref).abs().max())
    torch.manual_seed(1)
    diff_fused = float((fns["vaelab ais, FusedLogJoint"]() - ref).abs().max())
    t = paired(fns, args.rounds)
    load, med = os.getloadavg()[0], statistics.median
    moves = CHAINS * B * (T - 1)  # HMC transitions per run
    rows = []
    for path in ("vaelab ais", "vaelab ais, FusedLogJoint", "hand-written"):
        ratio = med(a / b for a, b in zip(t[path], t["hand-written"]))
        frac = med(a / b for a, b in zip(t["limit"], t[path]))
        rows.append(f"| {threads} | {path} | {moves / med(t[path]):,.0f} | {frac:.0%} "
                    f"| {ratio:.3f}x | {load:.2f} |")
    rows.append(f"| {threads} | max |Δ log p̂| vs hand-written: traced {diff:.1e}, fused "
                f"{diff_fused:.1e} nats | | | | {load:.2f} |")
    return rows


def main(argv=None) -> int:
    p = parser(__doc__, rounds=5)
    p.add_argument("--steps", type=int, default=30, help="T annealing steps")
    p.add_argument("--points", type=int, default=100)
    args = parse(p, argv, threads=[1, 2], smoke_help="tiny network, T = 4, 1 round",
                 smoke={"rounds": 1, "steps": 4, "points": 3, "threads": [1]})
    x, source = load_points(args.points, args.smoke)
    print(f"# AIS from the prior, iwae_static network, T={args.steps}, C={CHAINS}, L={LEAPFROG}, "
          f"{args.points} points ({source}), median of {args.rounds} paired rounds; load average "
          "(1 min) beside each figure: a shared machine")
    print("| threads | path | HMC transitions / s | fraction of the limit | ratio to hand-written "
          "| load |")
    print("|---:|---|---:|---:|---:|---:|")
    with measuring():
        for threads in args.threads:
            print("\n".join(measure(args, x, threads)), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
