"""Start-up time: ``vaelab --help`` and ``import vaelab`` against ``import torch, pyro``.

Each command runs in a fresh interpreter (``python -c`` / the console entry point), rounds
alternating between the commands (paired, so machine noise hits all alike); the table gives the
median wall time over rounds and the ratio to ``python -c "import torch, pyro"`` measured in the
same run. It also lists which heavy modules ``import vaelab`` pulls in (matplotlib, scipy and the
data stack should wait until they are needed).

    python benchmarks/startup.py [--rounds 7]
    python benchmarks/startup.py --smoke   # 1 round
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time

HEAVY = ("matplotlib", "scipy", "numpy", "torch", "pyro", "pydantic", "tqdm")

COMMANDS = {
    'python -c "import torch, pyro"': [sys.executable, "-c", "import torch, pyro"],
    "python -c \"import vaelab\"": [sys.executable, "-c", "import vaelab"],
    "vaelab --help": [sys.executable, "-m", "vaelab", "--help"],
    "vaelab train --help": [sys.executable, "-m", "vaelab", "train", "--help"],
}


def wall(cmd: list[str]) -> float:
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL,
                   env={**os.environ, "OMP_NUM_THREADS": "1"})
    return time.perf_counter() - t0


def imported_by(code: str) -> list[str]:
    probe = f"import sys; {code}; print(' '.join(m for m in {HEAVY!r} if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", probe], check=True, capture_output=True,
                         text=True).stdout
    return out.split()


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--smoke", action="store_true", help="1 round")
    args = p.parse_args(argv)
    rounds = 1 if args.smoke else args.rounds
    times: dict[str, list[float]] = {name: [] for name in COMMANDS}
    for _ in range(rounds):
        for name, cmd in COMMANDS.items():
            times[name].append(wall(cmd))
    ref = statistics.median(times['python -c "import torch, pyro"'])
    print(f"start-up, median of {rounds} round(s), fresh interpreters\n")
    print("| command | wall s | ratio to import torch, pyro |")
    print("|---|---:|---:|")
    for name, ts in times.items():
        t = statistics.median(ts)
        print(f"| `{name}` | {t:.2f} | {t / ref:.2f}x |")
    print(f"\n`import vaelab` imports: {', '.join(imported_by('import vaelab')) or 'none of them'}")
    print(f"`vaelab --help` imports: "
          f"{', '.join(imported_by('import vaelab.cli as c; c.build_parser()')) or 'none of them'}")
    print("target: vaelab --help <= 1.5x import torch, pyro")
    return 0


if __name__ == "__main__":
    sys.exit(main())
