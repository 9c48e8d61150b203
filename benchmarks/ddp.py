"""Data-parallel throughput: training images per second on R processes × T threads each.

Network 784-300-300-40 (ReLU), Bernoulli likelihood, standard normal prior, global batch 100,
Adam 1e-3, statically binarized MNIST (a synthetic set with ``--smoke``). Every configuration
is ``torchrun --standalone --nproc_per_node=R -m vaelab train`` with ``OMP_NUM_THREADS=T`` and
``train.num_threads=T``, ``train.per_point_noise = true`` (so every configuration computes the
same thing: vaelab.runs.data_parallel), for ``--epochs`` epochs of ``--steps`` steps; the
figure is the median over the epochs after the first (start-up) of points / ``epoch_time``
(the training steps, batching and per-point draws; validation and the commit excluded). The
1-process default path (``per_point_noise = auto``: the JIT where it applies, one generator per
epoch) is measured too, for reference.

Ratios are to 1 process × 1 thread (per-point draws), measured in the same run; the scaling
efficiency of R processes is their throughput over R times that of one.

    python benchmarks/ddp.py [--steps 200] [--epochs 3] [--nproc 2] [--batch-size 100]
    python benchmarks/ddp.py --device cuda --nproc 8     # one process per GPU (NCCL)
    python benchmarks/ddp.py --smoke                     # synthetic data: seconds
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

CONFIG = ["data.name=binarized_mnist", "model.latent_dim=40", "model.hidden_sizes=[300, 300]",
          "train.batch_size=100", "train.lr=1e-3", "train.valid_limit=500",
          "train.progress=false"]
SMOKE = ["data.name=synthetic", "model.latent_dim=4", "model.hidden_sizes=[32, 32]",
         "train.batch_size=20", "train.valid_limit=50", "train.progress=false"]


def images_per_second(folder: Path, processes: int, threads: int, overrides: list[str],
                      device: str) -> float:
    """Train in ``folder`` with ``processes`` × ``threads``; the median images/s of the epochs
    after the first."""
    config = folder.parent / "empty.toml"
    config.write_text("")
    sets = [*overrides, f"train.num_threads={threads}", f"train.device={device}"]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone",
           f"--nproc_per_node={processes}", "-m", "vaelab", "train", str(config), "--out",
           str(folder), *[a for s in sets for a in ("--set", s)]]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{proc.stderr[-3000:]}")
    rows = [json.loads(s) for s in (folder / "metrics.jsonl").read_text().splitlines()]
    steps = rows[0]["step"]
    batch = [int(s.split("=")[1]) for s in overrides if s.startswith("train.batch_size")][-1]
    return statistics.median(steps * batch / r["epoch_time"] for r in rows[1:])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=200, help="steps per epoch")
    parser.add_argument("--epochs", type=int, default=3, help="epochs (the first is not timed)")
    parser.add_argument("--nproc", type=int, default=2, help="processes of the parallel runs")
    parser.add_argument("--batch-size", type=int, default=100, help="the global batch")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--smoke", action="store_true", help="synthetic data, tiny: seconds")
    args = parser.parse_args(argv)
    steps, epochs = (5, 2) if args.smoke else (args.steps, args.epochs)
    base = [*(SMOKE if args.smoke else CONFIG), f"train.epochs={epochs}",
            f"train.max_steps_per_epoch={steps}"]
    if not args.smoke:
        base.append(f"train.batch_size={args.batch_size}")
    per_point = [*base, "train.per_point_noise=true"]
    n = args.nproc
    # (label, processes, threads, overrides); on CUDA, one GPU per process
    runs = [(f"1 process x 1 thread{' (1 GPU)' if args.device == 'cuda' else ''}", 1, 1,
             per_point),
            ("1 process x 1 thread, default path (no per-point draws)", 1, 1, base)]
    if args.device == "cpu":
        runs.append((f"1 process x {n} threads", 1, n, per_point))
    runs.append((f"{n} processes x 1 thread{f' ({n} GPUs)' if args.device == 'cuda' else ''}",
                 n, 1, per_point))
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for i, (label, processes, threads, overrides) in enumerate(runs):
            folder = Path(tmp) / f"run{i}"
            results.append((label, processes, images_per_second(folder, processes, threads,
                                                                overrides, args.device)))
    ref = results[0][2]
    print(f"{'configuration':<58} {'images/s':>10} {'ratio':>7} {'efficiency':>10}")
    for label, processes, ips in results:
        eff = f"{ips / (processes * ref):.2f}" if processes > 1 else ""
        print(f"{label:<58} {ips:>10.0f} {ips / ref:>7.2f} {eff:>10}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
