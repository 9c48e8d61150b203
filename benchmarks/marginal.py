"""vaelab's importance-sampled log p(x) against a hand-written PyTorch estimator, the GEMM limit,
a per-data-point loop in the style of other toolkits, and its peak memory.

Model: a 784-400-20 MLP VAE (Bernoulli likelihood, standard normal prior, diagonal normal guide),
random weights (timings do not depend on training), K = 5000 importance samples for each of 128
binarized-MNIST test images (random binary images if the data set is not found).

(a) vaelab :func:`~vaelab.inference.marginal.estimate_marginal` vs a hand-written torch IS that
    uses the same particle chunks and the same random draws (values compared);
(b) vaelab's time vs the time its matrix products alone take at the GEMM throughput measured
    in this run on the very shapes of the decoder's layers ("fraction of the hardware limit");
(c) vaelab vs a per-data-point Python loop in pythae's style (``get_nll``: one point at a time,
    the samples in batches of 100, encoder re-run on each replicated batch); timed on a few
    points and scaled to 128, as stated in the table;
(d) peak memory: the peak resident set (``VmHWM``, reset through ``/proc/self/clear_refs``
    just before; ``ru_maxrss`` where that is not possible) of a fresh child process during the
    estimate minus its resident set (``VmRSS``) just before it, for several budgets.

Rounds alternate between variants (paired, so machine noise hits both alike); the table gives
medians over rounds and ratios measured in the same run. The points are spread evenly over the
test split (:func:`vaelab.data.subsets.spread_indices`).

    python benchmarks/marginal.py [--rounds 3] [--threads N] [--num-samples 5000] [--points 128]
    python benchmarks/marginal.py --smoke   # a 64-32-4 VAE on random data, K = 100: seconds
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import NamedTuple

import pyro
import torch
from torch.distributions import Normal
from torch.nn import functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import paired  # noqa: E402

from vaelab.data.subsets import spread_indices  # noqa: E402
from vaelab.inference.fused import fused_log_weights  # noqa: E402
from vaelab.inference.marginal import cache_rows, chunk_size_for, estimate_marginal  # noqa: E402
from vaelab.resolve import load_config  # noqa: E402
from vaelab.runs.run import bytes_per_particle  # noqa: E402
from vaelab.vae import build_vae  # noqa: E402


class Sizes(NamedTuple):
    D: int  #: data width
    H: int  #: hidden width
    Z: int  #: latent width


FULL = Sizes(784, 400, 20)
SMOKE = Sizes(64, 32, 4)


def make_vae(s: Sizes, seed: int = 0):
    torch.manual_seed(seed)
    cfg = load_config(None, [
        f"model.latent_dim={s.Z}", f"model.hidden_sizes=[{s.H}]", "data.name=synthetic",
        "model.likelihood=bernoulli", "model.prior=standard_normal",
    ])
    vae = build_vae(cfg, s.D)
    vae.eval()
    return vae


def load_points(n: int, s: Sizes, smoke: bool = False) -> tuple[torch.Tensor, str]:
    """``n`` binarized-MNIST test images spread over the split, else random binary images."""
    g = torch.Generator().manual_seed(0)
    random = torch.rand(n, s.D, generator=g).round(), "random binary images"
    if smoke:
        return random
    try:
        from vaelab.data import load_dataset

        cfg = load_config(None, ["data.name=binarized_mnist"])
        test = load_dataset(cfg.data).test
        return test[spread_indices(test.shape[0], n)].contiguous(), "binarized MNIST test"
    except Exception:  # noqa: BLE001 - no data set on this machine
        return random


# --- (a) the hand-written reference -------------------------------------------------------


@torch.no_grad()
def torch_is(vae, x: torch.Tensor, K: int, chunk: int) -> torch.Tensor:
    """Plain PyTorch IS with vaelab's networks, chunking and RNG order: log p̂(x) ``(B,)``."""
    enc, dec = vae.inference.encoder, vae.generative.decoder
    Z = vae.latent.flat_dim
    z_loc, raw = enc(x).split(Z, -1)  # (B, Z)
    z_scale = F.softplus(raw) + vae.inference.posterior.min_scale
    lse = None
    done = 0
    while done < K:
        k = min(chunk, K - done)
        eps = torch.randn(k, *z_loc.shape, device=z_loc.device)  # (k, B, Z)
        z = z_loc + z_scale * eps
        logits = dec(z)  # (k, B, D)
        # the best hand-written Bernoulli image log-likelihood: Σ_d x_d ℓ_d − softplus(ℓ_d)
        log_px_z = torch.einsum("kbd,bd->kb", logits, x) - F.softplus(logits).sum(-1)  # (k, B)
        log_pz = Normal(0.0, 1.0).log_prob(z).sum(-1)  # (k, B)
        log_qz = Normal(z_loc, z_scale).log_prob(z).sum(-1)  # (k, B)
        log_w = (log_px_z + log_pz - log_qz).double()  # (k, B)
        c = torch.logsumexp(log_w, 0)
        lse = c if lse is None else torch.logaddexp(lse, c)
        done += k
    return lse - math.log(K)


def vaelab_is(vae, x, K, chunk, diagnostics=False, fused=False):
    """vaelab's estimator: traced (``fused=False``) or on the fused path that ``vaelab
    evaluate`` takes for this model (:mod:`vaelab.inference.fused`)."""
    return estimate_marginal(vae.model, vae.guide, x, num_samples=K, batch_size=x.shape[0],
                             chunk_size=chunk, diagnostics=diagnostics,
                             fused=fused_log_weights(vae) if fused else None).log_px


def gemm_time(s: Sizes, K: int, N: int, chunk: int) -> float:
    """The decoder's GEMMs on the rows of every chunk, chunk by chunk (seconds)."""
    total, done = 0.0, 0
    while done < K:
        k = min(chunk, K - done)
        total += gemm_seconds(s, k * N, reps=1)[0]
        done += k
    return total


# --- (c) a per-data-point loop in pythae's style ------------------------------------------


@torch.no_grad()
def pythae_style_nll(vae, x: torch.Tensor, K: int, batch_size: int = 100) -> torch.Tensor:
    """One data point at a time; K // batch_size full batches of replicated inputs (the
    remainder silently dropped, as pythae's ``get_nll`` does)."""
    enc, dec = vae.inference.encoder, vae.generative.decoder
    Z = vae.latent.flat_dim
    out = []
    for i in range(x.shape[0]):
        x_rep = torch.cat(batch_size * [x[i : i + 1]])  # (100, D)
        log_w = []
        for _ in range(K // batch_size):
            z_loc, raw = enc(x_rep).split(Z, -1)
            z_scale = F.softplus(raw)
            z = z_loc + z_scale * torch.randn_like(z_loc)
            log_q = (-0.5 * ((z - z_loc) / z_scale).pow(2) - z_scale.log()).sum(-1)
            log_p_z = (-0.5 * z.pow(2)).sum(-1)
            recon = torch.sigmoid(dec(z))
            log_p_x = -F.binary_cross_entropy(recon, x_rep, reduction="none").sum(-1)
            log_w.append(log_p_x + log_p_z - log_q)
        out.append(float(torch.logsumexp(torch.cat(log_w), 0) - math.log(len(log_w) * batch_size)))
    return torch.tensor(out)


# --- (b) GEMM throughput on the decoder's shapes ------------------------------------------


def decoder_flops(s: Sizes, rows: int) -> int:
    """Multiply-adds x 2 of the decoder on ``rows`` latent vectors (the encoder runs on B only)."""
    return 2 * rows * (s.Z * s.H + s.H * s.D)


def gemm_seconds(s: Sizes, rows: int, reps: int = 3) -> tuple[float, float]:
    """Median time of the decoder's two matrix products alone (same shapes) and its FLOP/s."""
    a1, w1 = torch.randn(rows, s.Z), torch.randn(s.Z, s.H)
    a2, w2 = torch.randn(rows, s.H), torch.randn(s.H, s.D)
    b1, b2 = torch.randn(s.H), torch.randn(s.D)
    torch.addmm(b1, a1, w1)
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        torch.addmm(b1, a1, w1)
        torch.addmm(b2, a2, w2)
        times.append(time.perf_counter() - t)
    t = statistics.median(times)
    return t, decoder_flops(s, rows) / t


def square_gemm_flops(n: int = 2048) -> float:
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    t = time.perf_counter()
    for _ in range(3):
        a @ b
    return 3 * 2 * n**3 / (time.perf_counter() - t)


# --- (d) memory in a fresh process --------------------------------------------------------


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


def _reset_peak() -> bool:
    """Reset the kernel's peak-RSS counter (VmHWM) of this process (Linux ≥ 4.0)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def child_memory(args, s: Sizes) -> None:
    torch.set_num_threads(args.threads)
    vae = make_vae(s)
    x, _ = load_points(args.points, s, args.smoke)
    chunk = chunk_size_for(args.num_samples, x.shape[0], bytes_per_particle(vae, s.D),
                           args.child_mem)
    gc.collect()
    reset = _reset_peak()
    before = _status_kib("VmRSS")
    with pyro.validation_enabled(False):
        if args.child_kind == "vaelab":
            vaelab_is(vae, x, args.num_samples, chunk, diagnostics=True)
        else:
            torch_is(vae, x, args.num_samples, chunk)
    # peak resident set since the reset (VmHWM), else since the process started (ru_maxrss)
    peak = _status_kib("VmHWM") if reset else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"chunk": chunk, "delta_mib": (peak - before) / 1024, "reset": reset}))


def measure_memory(args, kind: str, budget: float) -> dict:
    cmd = [sys.executable, __file__, "--child", kind, "--child-mem", str(budget),
           "--threads", str(args.threads), "--num-samples", str(args.num_samples),
           "--points", str(args.points), *(["--smoke"] if args.smoke else [])]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, env=os.environ).stdout
    return json.loads(out.strip().splitlines()[-1])


# --- main ---------------------------------------------------------------------------------


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--threads", type=int, default=torch.get_num_threads())
    p.add_argument("--num-samples", type=int, default=5000)
    p.add_argument("--points", type=int, default=128)
    p.add_argument("--max-memory", type=float, default=512.0, help="vaelab's chunk budget, MiB")
    p.add_argument("--loop-points", type=int, default=4, help="points timed for (c)")
    p.add_argument("--smoke", action="store_true", help="a 64-32-4 VAE on 8 random points, "
                   "K = 100, 1 round, one memory budget: seconds (tests/test_benchmarks.py)")
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    p.add_argument("--child-mem", type=float, default=512.0, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    args.child_kind = args.child
    sizes = FULL
    if args.smoke:
        sizes = SMOKE
        if not args.child:
            args.rounds, args.num_samples, args.points, args.loop_points = 1, 100, 8, 1
    if args.child:
        child_memory(args, sizes)
        return 0
    torch.set_num_threads(args.threads)
    with pyro.validation_enabled(False):
        rows = measure(args, sizes)
    print("| measurement | time / memory | ratio |")
    print("|---|---:|---|")
    for name, value, note in rows:
        print(f"| {name} | {value} | {note} |")
    return 0


def measure(args, s: Sizes) -> list[tuple[str, str, str]]:
    """The table's rows: (measurement, time or memory, ratio)."""
    K, N = args.num_samples, args.points
    vae = make_vae(s)
    x, source = load_points(N, s, args.smoke)
    chunk = chunk_size_for(K, N, bytes_per_particle(vae, s.D), args.max_memory)
    print(f"# K={K}, {N} points ({source}), {s.D}-{s.H}-{s.Z} VAE, {args.threads} thread(s), "
          f"chunk {chunk} particles ({args.max_memory:g} MiB budget), torch {torch.__version__}, "
          f"pyro {pyro.__version__}")

    # warm-up and same-draws check
    torch.manual_seed(1)
    ref = torch_is(vae, x, K, chunk)
    torch.manual_seed(1)
    ours = vaelab_is(vae, x, K, chunk)
    max_diff = float((ours - ref).abs().max())

    t_vae, t_vae_diag, t_torch, t_gemm = [], [], [], []
    for r in range(args.rounds):
        torch.manual_seed(r)
        t = time.perf_counter()
        vaelab_is(vae, x, K, chunk)
        t_vae.append(time.perf_counter() - t)
        torch.manual_seed(r)
        t = time.perf_counter()
        torch_is(vae, x, K, chunk)
        t_torch.append(time.perf_counter() - t)
        torch.manual_seed(r)
        t = time.perf_counter()
        vaelab_is(vae, x, K, chunk, diagnostics=True)
        t_vae_diag.append(time.perf_counter() - t)
        # the decoder's GEMMs on the same rows, chunk by chunk
        gemm_s, done = 0.0, 0
        while done < K:
            k = min(chunk, K - done)
            gemm_s += gemm_seconds(s, k * N, reps=1)[0]
            done += k
        t_gemm.append(gemm_s)
    ratios = [a / b for a, b in zip(t_vae, t_torch)]
    ratios_diag = [a / b for a, b in zip(t_vae_diag, t_torch)]
    gemm = statistics.median(t_gemm)
    flops = decoder_flops(s, K * N)

    # (c) pythae-style loop on a few points, scaled to N
    n_loop = min(args.loop_points, N)
    t = time.perf_counter()
    pythae_style_nll(vae, x[:n_loop], K)
    t_loop = (time.perf_counter() - t) * N / n_loop
    n_sq = 256 if args.smoke else 2048
    sq = square_gemm_flops(n_sq)

    med = statistics.median
    rows = [
        ("(a) vaelab IS, K draws for all points", f"{med(t_vae):.2f} s",
         f"{med(ratios):.3f}x hand-written torch (rounds: "
         f"{', '.join(f'{v:.3f}' for v in ratios)})"),
        ("(a) … with Pareto k̂ diagnostics", f"{med(t_vae_diag):.2f} s",
         f"{med(ratios_diag):.3f}x hand-written torch"),
        ("(a) hand-written torch IS, same chunks and draws", f"{med(t_torch):.2f} s",
         f"1.000x; max |Δ log p̂| = {max_diff:.2e} nats"),
        ("(b) decoder GEMMs alone, same shapes", f"{gemm:.2f} s",
         f"{flops / 1e9:.0f} GFLOP at {flops / gemm / 1e9:.1f} GFLOP/s: vaelab runs at "
         f"{gemm / med(t_vae):.0%} of this limit (hand-written {gemm / med(t_torch):.0%})"),
        (f"(b) square {n_sq} GEMM throughput", "", f"{sq / 1e9:.1f} GFLOP/s (machine reference)"),
        (f"(c) pythae-style per-point loop (timed on {n_loop} points, ×{N / n_loop:g})",
         f"{t_loop:.1f} s", f"{t_loop / med(t_vae):.1f}x slower than vaelab"),
    ]
    rows += default_path_rows(args, s, vae, x, chunk)
    for budget in (64.0,) if args.smoke else (64.0, args.max_memory):
        m = measure_memory(args, "vaelab", budget)
        rows.append((f"(d) vaelab peak memory, max_memory_mb={budget:g} (chunk {m['chunk']})",
                     f"{m['delta_mib']:.0f} MiB", "peak RSS during − RSS before, fresh process"))
    m = measure_memory(args, "torch", args.max_memory)
    rows.append((f"(d) hand-written torch peak memory (chunk {m['chunk']})",
                 f"{m['delta_mib']:.0f} MiB", "same measure"))
    return rows


def default_path_rows(args, s: Sizes, vae, x, budget_chunk: int) -> list[tuple[str, str, str]]:
    """``eval.fused = true``: fused log weights, chunks capped so the decoder output stays in
    the last-level cache (:func:`~vaelab.inference.marginal.cache_rows`), against the
    hand-written estimator at the same chunks and at the budget's chunks."""
    K, N = args.num_samples, x.shape[0]
    chunk = max(1, min(budget_chunk, cache_rows(s.D) // N))
    torch.manual_seed(1)
    ref = torch_is(vae, x, K, chunk)
    torch.manual_seed(1)
    diff = float((vaelab_is(vae, x, K, chunk, fused=True) - ref).abs().max())
    t = paired({
        "default": lambda: vaelab_is(vae, x, K, chunk, fused=True),
        "default+k": lambda: vaelab_is(vae, x, K, chunk, diagnostics=True, fused=True),
        "traced": lambda: vaelab_is(vae, x, K, chunk),
        "torch": lambda: torch_is(vae, x, K, chunk),
        "torch@budget": lambda: torch_is(vae, x, K, budget_chunk),
    }, args.rounds)
    med = statistics.median

    def ratio(a: str, b: str) -> float:
        return med(u / v for u, v in zip(t[a], t[b]))

    gemm = med(gemm_time(s, K, N, chunk) for _ in range(max(1, args.rounds // 2)))
    flops = decoder_flops(s, K * N)
    return [
        (f"(e) vaelab eval.fused = true: chunk {chunk} ({chunk * N} rows, cache-sized)",
         f"{med(t['default']):.2f} s",
         f"{ratio('default', 'torch'):.3f}x hand-written torch at the same chunks "
         f"({ratio('default', 'torch@budget'):.3f}x at the budget's chunk {budget_chunk}); "
         f"max |Δ log p̂| = {diff:.2e} nats"),
        ("(e) … with Pareto k̂ (streamed tail)", f"{med(t['default+k']):.2f} s",
         f"{ratio('default+k', 'default'):.3f}x without"),
        ("(e) … traced at these chunks", f"{med(t['traced']):.2f} s",
         f"{ratio('traced', 'default'):.3f}x the fused path"),
        ("(e) decoder GEMMs alone at these chunks", f"{gemm:.2f} s",
         f"{flops / gemm / 1e9:.1f} GFLOP/s: the fused path runs at "
         f"{gemm / med(t['default']):.0%} of this limit (hand-written "
         f"{gemm / med(t['torch']):.0%})"),
    ]


if __name__ == "__main__":
    raise SystemExit(main())
