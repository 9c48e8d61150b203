"""Threads or processes for a long evaluation: one process with 2 threads against 2 processes
with 1 thread each, each process scoring half of the points (what sharded evaluation,
:mod:`vaelab.runs.sharded`, does under ``torchrun --nproc_per_node=2``).

The evaluation is the fused importance-sampling path (:mod:`vaelab.inference.fused`) on the
``gumbel_softmax`` recipe's network (20 × 10 categorical, 200-256-512-784; random weights) with
K draws for N points, chunks sized to the last-level cache. Every variant runs in fresh child
processes; each child times its own estimate (imports and model building excluded), and a
variant's wall time runs from the children's common start (a barrier once every child has
built its model) to the last child's end. Rounds are
paired (both variants per round, order alternating); the table gives medians and the median of
the per-round ratios, with the 1-minute load average (the machine is shared).

    python benchmarks/shards.py [--rounds 5] [--points 400] [--num-samples 1000]
    python benchmarks/shards.py --smoke   # tiny network: seconds
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve()


def child(args) -> None:
    import pyro
    import torch

    sys.path.insert(0, str(HERE.parent))
    from limit import load_points, recipe_vae

    from vaelab.inference.fused import fused_log_weights
    from vaelab.inference.marginal import cache_rows, estimate_marginal

    torch.set_num_threads(args.threads)
    vae = recipe_vae("gumbel_softmax", args.smoke)
    x, _ = load_points(args.points, args.smoke)
    x = x[args.start:args.stop]
    B = min(100, x.shape[0])
    chunk = max(1, cache_rows(vae.generative.likelihood.param_size) // B)
    model, guide = vae.eval_pair()
    torch.manual_seed(args.start)
    barrier = Path(args.barrier)
    (barrier / f"ready.{args.start}").touch()
    while not (barrier / "go").exists():  # every child set up: all start together
        time.sleep(0.01)
    start = time.time()
    with pyro.validation_enabled(False):
        estimate_marginal(model, guide, x, num_samples=args.num_samples, batch_size=B,
                          chunk_size=chunk, fused=fused_log_weights(vae))
    print(json.dumps({"start": start, "end": time.time()}))


def run_variant(args, procs: int) -> float:
    """Wall seconds of ``procs`` children, ``2 // procs`` threads each, on equal shares."""
    share = args.points // procs
    cmds = [[sys.executable, str(HERE), "--child", "--threads", str(2 // procs),
             "--start", str(i * share), "--stop", str((i + 1) * share if i < procs - 1
                                                      else args.points),
             "--points", str(args.points), "--num-samples", str(args.num_samples),
             *(["--smoke"] if args.smoke else [])] for i in range(procs)]
    env = {**os.environ, "OMP_NUM_THREADS": str(2 // procs)}
    with tempfile.TemporaryDirectory() as barrier:
        cmds = [[*c, "--barrier", barrier] for c in cmds]
        running = [subprocess.Popen(c, stdout=subprocess.PIPE, text=True, env=env) for c in cmds]
        while len(list(Path(barrier).glob("ready.*"))) < procs:
            if any(p.poll() is not None for p in running):
                break
            time.sleep(0.01)
        (Path(barrier) / "go").touch()
        return _wall(running)


def _wall(running: list[subprocess.Popen]) -> float:
    marks = []
    for p in running:
        out, _ = p.communicate()
        if p.returncode != 0:
            raise RuntimeError(f"shards.py child failed ({p.returncode})")
        marks.append(json.loads(out.strip().splitlines()[-1]))
    return max(m["end"] for m in marks) - min(m["start"] for m in marks)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--points", type=int, default=400)
    p.add_argument("--num-samples", type=int, default=1000)
    p.add_argument("--smoke", action="store_true", help="tiny network, 1 round")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--threads", type=int, default=1, help=argparse.SUPPRESS)
    p.add_argument("--start", type=int, default=0, help=argparse.SUPPRESS)
    p.add_argument("--stop", type=int, default=0, help=argparse.SUPPRESS)
    p.add_argument("--barrier", default="", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        child(args)
        return 0
    if args.smoke:
        args.rounds, args.points, args.num_samples = 1, 8, 20
    times: dict[int, list[float]] = {1: [], 2: []}
    for r in range(args.rounds):
        for procs in ((1, 2) if r % 2 == 0 else (2, 1)):
            times[procs].append(run_variant(args, procs))
    load, med = os.getloadavg()[0], statistics.median
    ratio = med(a / b for a, b in zip(times[2], times[1]))
    print(f"# fused IS, gumbel_softmax network, K={args.num_samples}, {args.points} points, "
          f"median of {args.rounds} paired rounds, {os.cpu_count()} cores, load average "
          f"(1 min) {load:.2f}: a shared machine")
    print("| layout | wall s | points / s | ratio to 1 process × 2 threads |")
    print("|---|---:|---:|---:|")
    print(f"| 1 process × 2 threads | {med(times[1]):.2f} | {args.points / med(times[1]):.1f} "
          "| 1.000x |")
    print(f"| 2 processes × 1 thread (shards) | {med(times[2]):.2f} "
          f"| {args.points / med(times[2]):.1f} | {ratio:.3f}x |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
