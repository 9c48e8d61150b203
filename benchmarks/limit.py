"""Importance sampling at the hardware's limit: IS points per second of each vaelab path as a
fraction of the GEMM limit, and against a hand-written torch IS with the same draws.

**The limit.** The FLOPs of every model and guide GEMM of a dense reference implementation
(the encoder's layers on the B points of a batch, once per batch; the decoder's layers on the
k·B rows of every particle chunk, the one-hot input of a categorical latent as a dense GEMM;
with two stochastic layers, q(z_1 | x) once per batch and q(z_2 | z_1), p(z_1 | z_2) and
p(x | z_1) on the k·B rows of every chunk), at
the GEMM rate measured in this process at the very same shapes (``torch.addmm``, same rows,
same thread count): the time those GEMMs alone take. A path's *fraction of the limit* is that
time over the path's own time; 100 % would be an evaluation that is nothing but its GEMMs.

**The models** are the decoder shapes of the reproduction rows, from the recipes'
``[model]`` and ``[guide]`` sections (random weights: timings do not depend on training):
``iwae_static`` (Gaussian z = 50, 50-200-200-784 tanh, log-variance guide),
``gumbel_softmax`` (20 × 10 categorical, 200-256-512-784 ReLU, scored as the discrete model) and
``iwae_static_2layer`` (Burda et al.'s two stochastic layers, z_1 = 100, z_2 = 50, tanh,
log-variance scales: q(z_1 | x) 784-200-200-(2·100), q(z_2 | z_1) 100-100-100-(2·50),
p(z_1 | z_2) 50-100-100-(2·100), p(x | z_1) 100-200-200-784).

**The paths**, each a full :func:`~vaelab.inference.marginal.estimate_marginal` over the same
points, K draws each, the chunks sized to the last-level cache as ``vaelab evaluate`` sizes them:

* ``fused``: :mod:`vaelab.inference.fused` (no tracing; the one-hot input a gather);
* ``traced``: Pyro's vectorized trace of the model and guide (``eval.fused = false``);
* ``fused+k̂``: the fused path with the streamed Pareto k̂ diagnostics (evaluation's default);
* ``hand-written``: plain torch a user would write (dense decoder, the Bernoulli log-likelihood
  as Σ x ℓ − softplus ℓ), the same chunks and the same random draws: its log p̂ is compared
  with the fused path's per point (``max |Δ|``).

The two-layer model's fused path is :mod:`vaelab.inference.fused_hierarchy` (what
``vaelab evaluate`` runs for it), its hand-written twin a two-layer IS with the same draws (ε_1
of z_1 = μ_1(x) + σ_1(x) ε_1, then ε_2 of z_2 = μ_2(z_1) + σ_2(z_1) ε_2, per chunk). A model
the fused path refuses would have the traced path alone (``traced (fused does not apply)``
and ``traced+k̂``), with the chunks ``vaelab evaluate`` gives it (the memory budget's, no cache
cap).

Rounds are paired (every variant once per round, from the same seed, in an order rotated from
round to round); the table gives medians over ≥ 5 rounds of the per-round ratios, at 1 and 2
threads, with the 1-minute load average read after each thread count's rounds (the machine is
shared: ratios measured in one round are what count).

    python benchmarks/limit.py [--rounds 5] [--num-samples 1000] [--points 100] [--threads 1 2]
    python benchmarks/limit.py --smoke   # tiny networks, K = 20: seconds
"""

from __future__ import annotations

import math
import os
import statistics
import sys
import tomllib
from collections.abc import Callable
from importlib.resources import files
from pathlib import Path

import pyro
import torch
from torch.distributions import Normal
from torch.nn import functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import measuring, paired, parse, parser  # noqa: E402

from vaelab.inference.fused import fused_log_weights  # noqa: E402
from vaelab.inference.marginal import cache_rows, chunk_size_for, estimate_marginal  # noqa: E402
from vaelab.resolve import resolve  # noqa: E402
from vaelab.vae import build_vae  # noqa: E402

D = 784
#: recipe → its latent type's name in the table
RECIPES = {"iwae_static": "gaussian", "gumbel_softmax": "categorical",
           "iwae_static_2layer": "2 gaussian layers"}
_SMOKE_MLP = {"name": "mlp", "hidden_sizes": [8], "activation": "tanh"}
SMOKE_MODEL = {"iwae_static": {"latent_dim": 3, "hidden_sizes": [8]},
               "gumbel_softmax": {"latent": {"name": "categorical", "num_variables": 3,
                                             "num_classes": 4}, "hidden_sizes": [8]},
               "iwae_static_2layer": {"latent_dim": 3, "hidden_sizes": [8], "layers": [
                   {"latent_dim": 2, "network": _SMOKE_MLP, "encoder": _SMOKE_MLP}]}}


def hierarchical(vae) -> bool:
    """Whether ``vae`` has several stochastic layers (sites ``z_1 … z_L``)."""
    return len(getattr(vae, "sites", ["z"])) > 1


def recipe_vae(name: str, smoke: bool = False):
    """The recipe's model and guide (random weights, ``output_bias`` left at its default)."""
    raw = tomllib.loads(files("vaelab.recipes").joinpath(f"{name}.toml").read_text())
    model = {k: v for k, v in raw["model"].items() if k != "output_bias"}
    guide = dict(raw.get("guide", {}))
    if smoke:
        model.update(SMOKE_MODEL[name])
        guide["hidden_sizes"] = [8]
    torch.manual_seed(0)
    vae = build_vae(resolve({"model": model, "guide": guide}), D)
    vae.eval()
    return vae


def load_points(n: int, smoke: bool) -> tuple[torch.Tensor, str]:
    """``n`` binarized-MNIST test images spread over the split, else random binary images."""
    random = torch.rand(n, D, generator=torch.Generator().manual_seed(0)).round()
    if smoke:
        return random, "random binary images"
    try:
        from vaelab.data import load_dataset
        from vaelab.data.subsets import spread_indices
        from vaelab.resolve import load_config

        test = load_dataset(load_config(None, ["data.name=binarized_mnist"]).data).test
        return test[spread_indices(test.shape[0], n)].contiguous(), "binarized MNIST test"
    except Exception:  # noqa: BLE001 - no data set on this machine
        return random, "random binary images"


# --- the hand-written twin ------------------------------------------------------------------


@torch.no_grad()
def hand_written_is(vae, x: torch.Tensor, K: int, chunk: int) -> torch.Tensor:
    """Plain torch IS with the VAE's networks and the same draws: log p̂(x) ``(B,)``."""
    enc, dec, lat = vae.inference.encoder, vae.generative.decoder, vae.latent
    h = enc(x)
    if lat.continuous:  # the guide's scale map (one call per batch)
        z_loc, z_scale = vae.inference.posterior.loc_scale(h)
    else:
        N, C = lat.num_variables, lat.num_classes
        log_q = F.log_softmax(h.view(-1, N, C), -1)  # (B, N, C)
        probs = torch.softmax(log_q, -1)
        log_prior = F.log_softmax(vae.generative.prior.logits, -1)  # (N, C)
    lse, done = None, 0
    while done < K:
        k = min(chunk, K - done)
        if lat.continuous:
            z = z_loc + z_scale * torch.randn(k, *z_loc.shape)  # (k, B, Z)
            u = z
            log_pz = (-0.5 * z.pow(2) - 0.5 * math.log(2 * math.pi)).sum(-1)  # N(0, I)
            log_pq = log_pz - Normal(z_loc, z_scale).log_prob(z).sum(-1)  # (k, B)
        else:  # one exponential race per variable: multinomial's draw
            c = (probs / torch.empty(k, *probs.shape).exponential_()).argmax(-1)  # (k, B, N)
            u = F.one_hot(c, C).float()  # (k, B, N, C)
            log_pq = (u * (log_prior - log_q)).sum((-2, -1))  # (k, B)
            u = u.flatten(-2)
        logits = dec(u)  # (k, B, D)
        log_px_z = torch.einsum("kbd,bd->kb", logits, x) - F.softplus(logits).sum(-1)
        c_lse = torch.logsumexp((log_px_z + log_pq).double(), 0)
        lse = c_lse if lse is None else torch.logaddexp(lse, c_lse)
        done += k
    return lse - math.log(K)


def log_var_gaussian(h: torch.Tensor, d: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A Gaussian layer's ``(loc, scale)`` from its network's output ``h (..., 2 d)``: the mean
    and σ = exp(½ log σ²), the log-variance unclamped (Burda et al.'s σ = exp(linear))."""
    loc, log_var = h.split(d, dim=-1)  # (..., d) each
    return loc, torch.exp(0.5 * log_var)


@torch.no_grad()
def hand_written_is_2layer(vae, x: torch.Tensor, K: int, chunk: int) -> torch.Tensor:
    """Plain torch IS of the two-layer model with its networks and the traced path's draws
    (ε_1 then ε_2 per chunk): log p̂(x) ``(B,)``."""
    q1, q2 = (layer.network for layer in vae.inference.layers)
    cond, = vae.generative.conditionals
    p1, dec = cond.network, vae.generative.decoder
    for head in (*(layer.head for layer in vae.inference.layers), cond.head):
        if (head.scale, head.log_var_min, head.log_var_max) != ("log_var", None, None):
            raise ValueError("hand_written_is_2layer writes σ = exp(½ log σ²), unclamped")
    d1, d2 = vae.generative.latent_dims
    loc1, scale1 = log_var_gaussian(q1(x), d1)  # (B, d1) each, once per batch
    lse, done = None, 0
    while done < K:
        k = min(chunk, K - done)
        z1 = loc1 + torch.randn(k, *loc1.shape) * scale1  # (k, B, d1)
        loc2, scale2 = log_var_gaussian(q2(z1), d2)  # (k, B, d2) each
        z2 = loc2 + torch.randn(loc2.shape) * scale2  # (k, B, d2)
        loc_p, scale_p = log_var_gaussian(p1(z2), d1)  # p(z_1 | z_2), (k, B, d1) each
        log_pz = ((-0.5 * z2.pow(2) - 0.5 * math.log(2 * math.pi)).sum(-1)  # N(0, I)
                  + Normal(loc_p, scale_p).log_prob(z1).sum(-1))  # (k, B)
        log_qz = (Normal(loc1, scale1).log_prob(z1).sum(-1)
                  + Normal(loc2, scale2).log_prob(z2).sum(-1))  # (k, B)
        logits = dec(z1)  # (k, B, D)
        log_px_z = torch.einsum("kbd,bd->kb", logits, x) - F.softplus(logits).sum(-1)
        c_lse = torch.logsumexp((log_px_z + log_pz - log_qz).double(), 0)
        lse = c_lse if lse is None else torch.logaddexp(lse, c_lse)
        done += k
    return lse - math.log(K)


# --- the limit ------------------------------------------------------------------------------


def linear_shapes(net: torch.nn.Module) -> list[tuple[int, int]]:
    """(in, out) of a network's linear layers, in order."""
    return [(m.in_features, m.out_features) for m in net.modules()
            if isinstance(m, torch.nn.Linear)]


def per_particle_networks(vae) -> list[tuple[str, torch.nn.Module]]:
    """The networks run on every particle's rows, named: the decoder; with two stochastic
    layers q(z_2 | z_1), p(z_1 | z_2) and p(x | z_1) (a bottom-up guide's q(z_1 | x) runs once
    per batch)."""
    if not hierarchical(vae):
        return [("decoder", vae.generative.decoder)]
    if type(vae.inference).__name__ != "BottomUpGuide" or vae.generative.skip:
        raise ValueError("the two-layer limit counts Burda et al.'s model: a bottom-up guide, "
                         "p(x | z_1) without skip")
    _, q2 = vae.inference.layers
    cond, = vae.generative.conditionals
    return [("q(z_2|z_1)", q2.network), ("p(z_1|z_2)", cond.network),
            ("p(x|z_1)", vae.generative.decoder)]


def gemm_shapes(vae) -> tuple[list[tuple[int, int]], list[tuple[int, int]]]:
    """(in, out) of the linear layers run once per batch (the encoder; q(z_1 | x) of the
    two-layer model) and on every particle (:func:`per_particle_networks`)."""
    once = vae.inference.layers[0].network if hierarchical(vae) else vae.inference.encoder
    return linear_shapes(once), [s for _, net in per_particle_networks(vae)
                                 for s in linear_shapes(net)]


def gemm_limit(vae, K: int, B: int, chunk: int) -> tuple[Callable[[], None], float]:
    """``(run, FLOPs)``: ``run()`` does the dense reference's GEMMs for one batch of B points and
    K draws (``torch.addmm`` on preallocated operands of the very shapes), once each."""
    enc, dec = gemm_shapes(vae)
    rows = [B] + [min(chunk, K - d) * B for d in range(0, K, chunk)]
    operands: dict[tuple[int, int, int], tuple] = {}
    calls, flops = [], 0.0
    for i, r in enumerate(rows):
        for a, b in enc if i == 0 else dec:
            if (r, a, b) not in operands:
                x, w, bias = torch.randn(r, a), torch.randn(b, a), torch.randn(b)
                operands[(r, a, b)] = (bias, x, w.t(), torch.empty(r, b))
            calls.append(operands[(r, a, b)])
            flops += 2.0 * r * a * b

    def run() -> None:
        for bias, x, wt, out in calls:
            torch.addmm(bias, x, wt, out=out)

    return run, flops


# --- rounds ---------------------------------------------------------------------------------


#: the path column of the traced path where the fused one does not apply
TRACED_ONLY = "traced (fused does not apply)"


def paths(vae, x: torch.Tensor, K: int, chunk: int) -> dict:
    model, guide = vae.eval_pair()
    fused = fused_log_weights(vae)
    B = x.shape[0]

    def est(fn, diagnostics=False):
        return lambda: estimate_marginal(model, guide, x, num_samples=K, batch_size=B,
                                         chunk_size=chunk, diagnostics=diagnostics,
                                         fused=fn).log_px
    twin = hand_written_is_2layer if hierarchical(vae) else hand_written_is
    hand = {"hand-written": lambda: twin(vae, x, K, chunk)}
    if fused is None:  # vaelab's path where the fused one does not apply: traced
        return {TRACED_ONLY: est(None), "traced+k̂": est(None, True), **hand}
    return {"fused": est(fused), "traced": est(None), "fused+k̂": est(fused, True), **hand}


def measure(name: str, args, x: torch.Tensor, threads: int) -> list[str]:
    vae = recipe_vae(name, args.smoke)
    K, B = args.num_samples, x.shape[0]
    out = vae.generative.likelihood.param_size
    chunk = chunk_size_for(K, B, 4 * 4 * 1024, 512.0)  # vaelab evaluate's traced chunks
    applies = fused_log_weights(vae) is not None
    if applies:  # the fused path's: capped to the last-level cache
        chunk = max(1, min(chunk, cache_rows(out) // B))
    torch.set_num_threads(threads)
    fns = paths(vae, x, K, chunk)
    gemms, flops = gemm_limit(vae, K, B, chunk)
    vaelab_path = "fused" if applies else TRACED_ONLY
    torch.manual_seed(1)
    ref = fns["hand-written"]()
    torch.manual_seed(1)
    diff = float((fns[vaelab_path]() - ref).abs().max())
    t = paired({**fns, "limit": gemms}, args.rounds)
    load = os.getloadavg()[0]
    med = statistics.median
    limit = med(t["limit"])
    rows = []
    for path in fns:
        ratio = med(a / b for a, b in zip(t[path], t["hand-written"]))
        frac = med(a / b for a, b in zip(t["limit"], t[path]))
        rows.append(f"| {RECIPES[name]} ({name}) | {threads} | {path} "
                    f"| {B * K / med(t[path]):,.0f} | {B * K / med(t[path]) / 5000:.1f} "
                    f"| {frac:.0%} | {ratio:.3f}x | {load:.2f} |")
    nets = ", ".join(f"{label} {'-'.join(str(s[0]) for s in shapes)}-{shapes[-1][1]}"
                     for label, shapes in ((label, linear_shapes(net))
                                           for label, net in per_particle_networks(vae)))
    if hierarchical(vae):
        nets = "per particle " + nets
    # the GEMM rate's spread over the rounds: how far the machine drifted while they ran
    lo, hi = flops / max(t["limit"]) / 1e9, flops / min(t["limit"]) / 1e9
    rows.append(f"| … limit: {flops / 1e9:.1f} GFLOP in {limit:.2f} s "
                f"({flops / limit / 1e9:.1f} GFLOP/s; rounds {lo:.0f}–{hi:.0f}), {nets}, "
                f"chunk {chunk} × {B} rows "
                f"| {threads} | max |Δ log p̂| {vaelab_path.split(' ')[0]} − "
                f"hand-written = {diff:.1e} nats | | | | | {load:.2f} |")
    return rows


def main(argv=None) -> int:
    p = parser(__doc__, rounds=5)
    p.add_argument("--num-samples", type=int, default=1000)
    p.add_argument("--points", type=int, default=100)
    p.add_argument("--recipes", nargs="+", default=list(RECIPES), choices=list(RECIPES))
    args = parse(p, argv, threads=[1, 2], smoke_help="tiny networks, K = 20, 1 round",
                 smoke={"rounds": 1, "num_samples": 20, "points": 4, "threads": [1]})
    x, source = load_points(args.points, args.smoke)
    print(f"# IS at the limit: K={args.num_samples}, {args.points} points ({source}), median of "
          f"{args.rounds} paired rounds, torch {torch.__version__}, pyro {pyro.__version__}, "
          f"{os.cpu_count()} cores; load average (1 min) beside each figure: a shared machine")
    print("| latent (recipe) | threads | path | points·draws / s | points / s at K = 5000 "
          "| fraction of the limit | ratio to hand-written | load |")
    print("|---|---:|---|---:|---:|---:|---:|---:|")
    with measuring():
        for threads in args.threads:
            for name in args.recipes:
                print("\n".join(measure(name, args, x, threads)), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
