"""AIS at the hardware's limit: HMC transitions per second of vaelab's
:func:`~vaelab.inference.ais.ais` against a hand-written torch HMC AIS with the same draws, and
as a fraction of the GEMM limit.

**Models** (``--recipes``, one table each): the ``iwae_static`` recipe's network (Gaussian
z = 50, 50-200-200-784 tanh decoder, Bernoulli likelihood, standard normal prior) and the
``iwae_static_2layer`` recipe's (z_2 = 50 ~ N(0, I), p(z_1 | z_2) 50-100-100-(2·100) with
log-variance scales, z_1 = 100, p(x | z_1) 100-200-200-784 tanh; HMC over z = (z_1, z_2)
jointly, as :class:`~vaelab.inference.ais.LogJoint` anneals several sites); random weights. AIS
from the prior with the recipes' ``ais`` settings per transition (C = 4 chains, L = 5 leapfrog
steps, both recipes) on B points, T annealing steps (fewer than the recipes' 500: the rate per
transition does not depend on T).

**Hand-written twin**: plain torch, the same sigmoid schedule, draws in the same order
(z₀ ~ N(0, I) of shape (C, B, d), a momentum ``randn_like`` and an acceptance ``rand_like`` per
transition), the same per-point step-size adaptation; log p(z) and its gradient −z written
out, log p(x | z) with ``binary_cross_entropy_with_logits`` and its gradient by one
``autograd.grad``. Its log p̂ is compared with vaelab's per point (``max |Δ|``: float rounding
of the gradients may flip an accept decision near its threshold, then the chains part). The
two-layer twin draws the prior as the model does, top-down (z_2 ~ N(0, I), then
z_1 = μ(z_2) + σ(z_2) ε), joins (z_1, z_2) in vaelab's order, and takes the gradient of
log p(z_2) + log p(z_1 | z_2) through the conditional's network by ``autograd.grad``.

**Paths**: ``vaelab ais`` (the traced :class:`~vaelab.inference.ais.LogJoint`, what
``vaelab evaluate --method ais`` runs) and ``vaelab ais, FusedLogJoint``
(:mod:`vaelab.inference.fast_ais`: the same values without the Pyro trace per leapfrog step;
for the two-layer model the layers' log p(z_2) + log p(z_1 | z_2) written out over the joined
z = (z_1, z_2)). A model that ``FusedLogJoint`` would score with the traced terms has the traced
path alone (``vaelab ais (traced; FusedLogJoint does not apply)``).

**The limit**: every leapfrog step evaluates the decoder and its gradient in z, so its GEMMs
are the forward ``addmm`` of every layer on the C·B rows and the backward ``mm`` of the
gradient through it (the same FLOPs again); with two layers, the decoder's and p(z_1 | z_2)'s
(the gradient in z_2 passes through it); their time at the very shapes, measured in the
same rounds, over the path's time. BDMC (:mod:`vaelab.inference.bdmc`) runs the same ``ais``
transitions (forward, then reversed from the exact posterior sample), so the per-transition
figures hold for it.

Paired rounds (each variant once per round from the same seed, order rotated), medians of the
per-round ratios, with the 1-minute load average (the machine is shared).

    python benchmarks/ais.py [--rounds 9] [--steps 30] [--points 100] [--threads 1 2]
                             [--recipes iwae_static iwae_static_2layer]
    python benchmarks/ais.py --smoke   # tiny network, 4 steps: seconds
"""

from __future__ import annotations

import math
import os
import statistics
import sys
from collections.abc import Callable
from pathlib import Path

import torch
from torch.distributions import Normal
from torch.nn import functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import measuring, paired, parse, parser  # noqa: E402
from limit import hierarchical, load_points, log_var_gaussian, recipe_vae  # noqa: E402

from vaelab.inference.ais import ais, beta_schedule  # noqa: E402
from vaelab.inference.fast_ais import FusedLogJoint  # noqa: E402

CHAINS, LEAPFROG = 4, 5  # both recipes' ais = { chains = 4, leapfrog = 5 }
#: the recipes timed, one table each
RECIPES = ("iwae_static", "iwae_static_2layer")
#: the path column of vaelab's AIS where FusedLogJoint does not apply (layers it does not cover)
TRACED_ONLY = "vaelab ais (traced; FusedLogJoint does not apply)"

#: ``terms(z) → (log p(z), log p(x | z), ∇ log p(z), ∇ log p(x | z))`` at ``z (C, B, d)``
Terms = Callable[[torch.Tensor], tuple[torch.Tensor, ...]]


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

    z = torch.normal(torch.zeros(C, B, d), torch.ones(C, B, d))
    return hmc_ais(terms, z, T, L, eps0, target, rate)


@torch.no_grad()
def hand_written_ais_2layer(vae, x: torch.Tensor, T: int, C: int, L: int, eps0: float = 0.05,
                            target: float = 0.65, rate: float = 0.05) -> torch.Tensor:
    """Plain torch AIS of the two-layer model from its prior p(z_2) p(z_1 | z_2), HMC over
    z = (z_1, z_2) jointly, vaelab's schedule, draws and adaptation: log p̂(x) ``(B,)``."""
    cond, = vae.generative.conditionals
    p1, dec, B = cond.network, vae.generative.decoder, x.shape[0]
    d1, d2 = vae.generative.latent_dims

    def terms(z):  # log p(z_1, z_2), log p(x|z_1) (C, B) and their gradients (C, B, d1 + d2)
        with torch.enable_grad():
            z1, z2 = (v.clone().requires_grad_(True) for v in z.detach().split([d1, d2], -1))
            loc_p, scale_p = log_var_gaussian(p1(z2), d1)  # p(z_1 | z_2), (C, B, d1) each
            log_prior = ((-0.5 * z2.pow(2) - 0.5 * math.log(2 * math.pi)).sum(-1)  # N(0, I)
                         + Normal(loc_p, scale_p).log_prob(z1).sum(-1))  # (C, B)
            log_lik = -F.binary_cross_entropy_with_logits(
                dec(z1), x.expand(C, B, -1), reduction="none").sum(-1)  # (C, B)
            g_prior = torch.autograd.grad(log_prior.sum(), (z1, z2))
            g_lik, = torch.autograd.grad(log_lik.sum(), z1)
        return (log_prior.detach(), log_lik.detach(), torch.cat(g_prior, -1),
                torch.cat([g_lik, torch.zeros(C, B, d2)], -1))

    z2 = torch.randn(C, B, d2)  # the model's order: z_2 ~ N(0, I), then z_1 | z_2
    loc_p, scale_p = log_var_gaussian(p1(z2), d1)
    z1 = loc_p + torch.randn(C, B, d1) * scale_p  # (C, B, d1)
    return hmc_ais(terms, torch.cat([z1, z2], -1), T, L, eps0, target, rate)


@torch.no_grad()
def hmc_ais(terms: Terms, z: torch.Tensor, T: int, L: int, eps0: float, target: float,
            rate: float) -> torch.Tensor:
    """The AIS loop from ``z (C, B, d)``, drawn from the prior, to the posterior with HMC on
    log p(z) + β_t log p(x | z) (``terms``): log p̂(x) ``(B,)``."""
    C, B = z.shape[:2]
    betas = [float(b) for b in beta_schedule(T)]
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


def model_networks(vae) -> list[torch.nn.Module]:
    """The networks of the log joint: the decoder; with two layers, p(z_1 | z_2) too."""
    g = vae.generative
    return [*(c.network for c in g.conditionals), g.decoder] if hierarchical(vae) else [
        g.decoder]


def gemm_limit(vae, rows: int, evaluations: int) -> Callable[[], None]:
    """The forward ``addmm`` and backward ``mm`` (gradient in the input) of every layer of the
    log joint's networks (:func:`model_networks`) on ``rows`` rows, ``evaluations`` times (one
    per log-joint evaluation)."""
    ops = []
    for m in (m for net in model_networks(vae) for m in net.modules()):
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


def paths(vae, x: torch.Tensor, T: int) -> dict[str, Callable[[], torch.Tensor]]:
    """vaelab's AIS paths (the traced one first) and the hand-written twin, each ``() → log p̂
    (B,)``; the two-layer model's over both latents jointly."""
    model, guide = vae.eval_pair()

    def vaelab(log_joint=None):
        return lambda: ais(model, guide, x, num_steps=T, num_chains=CHAINS,
                           num_leapfrog=LEAPFROG, base="prior",
                           log_joint=None if log_joint is None else log_joint()).log_px
    twin = hand_written_ais_2layer if hierarchical(vae) else hand_written_ais
    hand = {"hand-written": lambda: twin(vae, x, T, CHAINS, LEAPFROG)}
    if hierarchical(vae) and not FusedLogJoint(vae, x, CHAINS, "prior").layered:
        return {TRACED_ONLY: vaelab(), **hand}
    return {"vaelab ais": vaelab(),
            "vaelab ais, FusedLogJoint": vaelab(lambda: FusedLogJoint(vae, x, CHAINS, "prior")),
            **hand}


def measure(name: str, args, x: torch.Tensor, threads: int) -> list[str]:
    vae = recipe_vae(name, args.smoke)
    T, B = args.steps, x.shape[0]
    torch.set_num_threads(threads)
    fns = paths(vae, x, T)
    vaelab_paths = [path for path in fns if path != "hand-written"]
    torch.manual_seed(1)
    ref = fns["hand-written"]()
    diffs = []
    for path in vaelab_paths:
        torch.manual_seed(1)
        diffs.append(float((fns[path]() - ref).abs().max()))
    t = paired({**fns, "limit": gemm_limit(vae, CHAINS * B, 1 + (T - 1) * LEAPFROG)},
               args.rounds)
    load, med = os.getloadavg()[0], statistics.median
    moves = CHAINS * B * (T - 1)  # HMC transitions per run
    rows = []
    for path in fns:
        ratio = med(a / b for a, b in zip(t[path], t["hand-written"]))
        frac = med(a / b for a, b in zip(t["limit"], t[path]))
        rows.append(f"| {threads} | {path} | {moves / med(t[path]):,.0f} | {frac:.0%} "
                    f"| {ratio:.3f}x | {load:.2f} |")
    which = ", ".join(f"{label} {d:.1e}" for label, d in zip(("traced", "fused"), diffs))
    rows.append(f"| {threads} | max |Δ log p̂| vs hand-written: {which} nats | | | "
                f"| {load:.2f} |")
    return rows


def main(argv=None) -> int:
    p = parser(__doc__, rounds=9)
    p.add_argument("--steps", type=int, default=30, help="T annealing steps")
    p.add_argument("--points", type=int, default=100)
    p.add_argument("--recipes", nargs="+", default=list(RECIPES), choices=list(RECIPES))
    args = parse(p, argv, threads=[1, 2], smoke_help="tiny network, T = 4, 1 round",
                 smoke={"rounds": 1, "steps": 4, "points": 3, "threads": [1]})
    x, source = load_points(args.points, args.smoke)
    for name in args.recipes:
        jointly = " (HMC on z_1, z_2 jointly)" if name == "iwae_static_2layer" else ""
        print(f"# AIS from the prior, {name} network{jointly}, T={args.steps}, C={CHAINS}, "
              f"L={LEAPFROG}, {args.points} points ({source}), median of {args.rounds} paired "
              "rounds; load average (1 min) beside each figure: a shared machine")
        print("| threads | path | HMC transitions / s | fraction of the limit "
              "| ratio to hand-written | load |")
        print("|---:|---|---:|---:|---:|---:|")
        with measuring():
            for threads in args.threads:
                print("\n".join(measure(name, args, x, threads)), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
