"""vaelab on one GPU: the training step, whole epochs, importance sampling; run by ``gpu.sh``.

Four measurements, each against a reference taken in the same run, on ``--device`` (CUDA):

(a) **step**: vaelab's default training step (``objective.jit = "auto"``, the torch driver,
    the loss left on the device and read back every ``train.sync_every`` = 50 steps) against a
    hand-written PyTorch step of the same 784-400-20 VAE, batch 128, that also reads its loss
    every 50 steps (``benchmarks/train_step.py``'s ``PlainVAE``); paired rounds, median ms/step;
(b) **epochs/s** of the 784-300-300-40 VAE (batch 100, 50,000 images: binarized MNIST if
    ``VAELAB_DATA`` has it, else random binary images of its size), the data resident on the
    device, with ``vaelab.runs.train.train``: the training steps of an epoch
    (``epoch_time``) and the whole epoch with validation on 1000 points and the commit, for
    ``sync_every`` = 50 and = 1 (a host synchronisation every step);
(c) **IS points/s** at K = 5000 for the 784-400-20 VAE (``estimate_marginal``, 1 GiB particle
    chunks) against a hand-written torch IS with the same chunks and draws (values compared);
(d) with two or more GPUs, ``benchmarks/ddp.py --device cuda --nproc 2``: 2 processes on NCCL
    against 1.

    bash benchmarks/gpu.sh                     # on a machine with a CUDA GPU: under 5 minutes
    python benchmarks/gpu.py --device cuda [--rounds 5] [--steps 200] [--points 2000]
    python benchmarks/gpu.py --smoke           # the CPU, tiny sizes: seconds (tests)
"""

from __future__ import annotations

import argparse
import math
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))  # the sibling benchmarks' reference implementations

from marginal import Sizes as ISSizes  # noqa: E402
from marginal import make_vae, torch_is  # noqa: E402
from train_step import FULL, SMOKE, PlainVAE, Sizes, objective_step  # noqa: E402

from vaelab.data import DataSplits, load_dataset  # noqa: E402
from vaelab.inference.marginal import chunk_size_for, estimate_marginal  # noqa: E402
from vaelab.resolve import load_config  # noqa: E402
from vaelab.runs.run import bytes_per_particle  # noqa: E402

EPOCH_CONFIG = ["data.name=binarized_mnist", "model.latent_dim=40",
                "model.hidden_sizes=[300, 300]", "train.batch_size=100", "train.lr=1e-3",
                "train.valid_limit=1000", "train.progress=false"]
EPOCH_SMOKE = ["data.name=synthetic", "model.latent_dim=4", "model.hidden_sizes=[32, 32]",
               "train.batch_size=20", "train.valid_limit=50", "train.progress=false"]
READ_EVERY = 50  #: the hand-written step reads its loss back this often, as vaelab does


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed_steps(step, x: torch.Tensor, steps: int, device: torch.device) -> float:
    """ms per step over ``steps`` steps, the device drained before and after."""
    sync(device)
    t0 = time.perf_counter()
    for _ in range(steps):
        step(x)
    sync(device)
    return (time.perf_counter() - t0) / steps * 1e3


def plain_step_fn(s: Sizes, device: torch.device):
    """The hand-written step: loss, backward, fused Adam; the loss read every READ_EVERY
    steps (and checked, as any training loop must)."""
    vae = PlainVAE(s).to(device)
    opt = torch.optim.Adam(vae.parameters(), lr=1e-3, fused=True)
    losses: list[torch.Tensor] = []

    def step(x):
        loss = vae.loss(x)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(loss.detach())
        if len(losses) == READ_EVERY:
            if not all(math.isfinite(v) for v in torch.stack(losses).tolist()):
                raise FloatingPointError("non-finite loss")
            losses.clear()

    return step


def vaelab_step_fn(s: Sizes, device: torch.device):
    """vaelab's default step (Stepper, JIT auto) on ``device``, the losses read back every
    READ_EVERY steps, as ``train_epoch`` does."""
    step = objective_step(s, [f"train.sync_every={READ_EVERY}"], device)
    pending: list[torch.Tensor] = []

    def run(x):
        loss, _ = step(x)
        pending.append(torch.as_tensor(loss))
        if len(pending) == READ_EVERY:
            if not all(math.isfinite(v) for v in torch.stack(pending).tolist()):
                raise FloatingPointError("non-finite loss")
            pending.clear()

    return run


def step_rows(args, device: torch.device) -> list[tuple[str, float, float]]:
    s = SMOKE if args.smoke else FULL
    x = torch.bernoulli(torch.full((s.B, s.D), 0.3)).to(device)
    fns = {"hand-written torch step": plain_step_fn(s, device),
           "vaelab step (default path)": vaelab_step_fn(s, device)}
    for fn in fns.values():  # warm-up: JIT compile, CUDA kernels, allocator
        timed_steps(fn, x, max(READ_EVERY, 2 * args.warmup), device)
    times: dict[str, list[float]] = {k: [] for k in fns}
    for r in range(args.rounds):
        order = list(fns) if r % 2 == 0 else list(reversed(fns))
        for k in order:
            times[k].append(timed_steps(fns[k], x, args.steps, device))
    ref = statistics.median(times["hand-written torch step"])
    return [(f"{k} ({s.D}-{s.H}-{s.Z}, batch {s.B})", statistics.median(v),
             statistics.median(v) / ref) for k, v in times.items()]


def epoch_data(n: int, dim: int, smoke: bool) -> tuple[DataSplits | None, str]:
    if smoke:
        return None, "synthetic"
    try:
        data = load_dataset(load_config(None, ["data.name=binarized_mnist"]).data)
        return data, "binarized MNIST"
    except Exception:  # noqa: BLE001 - no data set on this machine
        g = torch.Generator().manual_seed(0)
        x = torch.rand(n + 2000, dim, generator=g).round()
        return (DataSplits(x[:n], x[n : n + 1000], x[n + 1000 :], "random", binary=True,
                           levels=2), "random binary images")


def epoch_rows(args, device: torch.device) -> tuple[list[tuple[str, float, float]], str]:
    from vaelab.runs.train import train

    data, source = epoch_data(50_000, 784, args.smoke)
    base = [*(EPOCH_SMOKE if args.smoke else EPOCH_CONFIG), f"train.device={device.type}",
            f"train.epochs={args.epochs}"]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for every in (READ_EVERY, 1):
            cfg = load_config(None, [*base, f"train.sync_every={every}"])
            t0 = time.perf_counter()
            result = train(cfg, Path(tmp) / f"every{every}", data=data)
            wall = time.perf_counter() - t0
            # the first epoch compiles and warms up: the median of the others
            later = result.history[1:] or result.history
            steps = statistics.median(r["epoch_time"] for r in later)
            rows.append((every, 1.0 / steps, args.epochs / wall))
    table = []
    for i, what in ((1, "training steps only"), (2, "whole run incl. start-up, validation")):
        ref = rows[0][i]
        table += [(f"epochs/s, {what}, sync_every={r[0]}", r[i], r[i] / ref) for r in rows]
    return table, source


def is_rows(args, device: torch.device) -> list[tuple[str, float, float]]:
    s = ISSizes(64, 32, 4) if args.smoke else ISSizes(784, 400, 20)
    K = 100 if args.smoke else 5000
    n = 20 if args.smoke else args.points
    vae = make_vae(s).to(device)
    x = torch.rand(n, s.D, generator=torch.Generator().manual_seed(0)).round().to(device)
    # vaelab's own chunk rule for a 1 GiB budget; the hand-written IS uses the same chunks
    chunk = chunk_size_for(K, n, bytes_per_particle(vae, s.D), max_memory_mb=1024.0)

    def ours():
        return estimate_marginal(vae.model, vae.guide, x, num_samples=K, batch_size=n,
                                 chunk_size=chunk, diagnostics=True, device=device).log_px

    def theirs():
        return torch_is(vae, x, K, chunk)

    out = {}
    for name, fn in (("vaelab", ours), ("torch", theirs)):
        torch.manual_seed(1)
        fn()  # warm-up
        sync(device)
        best = math.inf
        for _ in range(args.rounds):
            torch.manual_seed(1)
            t0 = time.perf_counter()
            values = fn()
            sync(device)
            best = min(best, time.perf_counter() - t0)
        out[name] = (n / best, values.double().cpu())
    diff = float((out["vaelab"][1] - out["torch"][1]).abs().max())
    ref = out["torch"][0]
    return [(f"IS points/s, K={K}, hand-written torch IS ({n} points)", ref, 1.0),
            (f"IS points/s, K={K}, vaelab estimate_marginal with Pareto k-hat "
             f"(max |diff| {diff:.2g} nats)", out["vaelab"][0], out["vaelab"][0] / ref)]


def ddp_rows(args) -> list[str]:
    if args.smoke or torch.cuda.device_count() < 2:
        return [f"2-process NCCL run: skipped ({torch.cuda.device_count()} CUDA device(s))"]
    proc = subprocess.run([sys.executable, str(HERE / "ddp.py"), "--device", "cuda",
                           "--nproc", "2", "--steps", "200", "--epochs", "3"],
                          capture_output=True, text=True, timeout=240)
    if proc.returncode != 0:
        return [f"2-process NCCL run failed:\n{proc.stderr[-2000:]}"]
    return proc.stdout.strip().splitlines()


def print_table(title: str, rows: list[tuple[str, float, float]], unit: str) -> None:
    print(f"\n{title}")
    print(f"{'':<84} {unit:>10} {'ratio':>7}")
    for label, value, ratio in rows:
        print(f"{label:<84} {value:>10.4g} {ratio:>7.3f}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cuda", help="cuda (default), cuda:N or cpu")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=200, help="steps per timed round")
    parser.add_argument("--warmup", type=int, default=30)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--points", type=int, default=2000, help="test points of the IS run")
    parser.add_argument("--smoke", action="store_true", help="the CPU, tiny sizes: seconds")
    args = parser.parse_args(argv)
    if args.smoke:
        args.device, args.rounds, args.steps, args.warmup, args.epochs = "cpu", 1, 3, 1, 2
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("gpu.py: torch sees no CUDA device; run on a GPU machine, or --smoke on the CPU",
              file=sys.stderr)
        return 2
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    print(f"device: {name}; torch {torch.__version__}; "
          f"TF32 matmul: {torch.backends.cuda.matmul.allow_tf32}")
    t0 = time.perf_counter()
    print_table("(a) training step, ratio to the hand-written step", step_rows(args, device),
                "ms/step")
    rows, source = epoch_rows(args, device)
    arch = "64-32-32-4, batch 20" if args.smoke else "784-300-300-40, batch 100"
    print_table(f"(b) whole epochs, {arch} ({source}), ratio to sync_every={READ_EVERY}", rows,
                "epochs/s")
    print_table("(c) importance sampling, ratio to the hand-written IS", is_rows(args, device),
                "points/s")
    print("\n(d) data-parallel")
    print("\n".join(ddp_rows(args)))
    print(f"\ntotal {time.perf_counter() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
