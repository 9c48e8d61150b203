"""What the benchmarks share: their command line's common options, the measurement's settings
(thread count, Pyro's validation) and paired rounds.

Two kinds of paired rounds, both putting the variants being compared back to back in every
round, so that machine noise (a shared machine's load) hits them alike and the per-round ratios
are what count:

* :func:`paired_rounds`: a reference step and a candidate step, in that order every round, each
  timed over a number of steps (ms/step); the medians and the median of the per-round ratios;
* :func:`paired`: several variants once per round, each from the same seed, in an order rotated
  from round to round (seconds per round of each).

Not a benchmark (its name starts with ``_``: ``tests/test_benchmarks.py`` does not smoke-run it);
a benchmark imports it after putting its own folder on ``sys.path`` (the tests load benchmarks
by path, not as scripts).
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import time
from collections.abc import Callable, Iterator

import pyro
import torch


def parser(doc: str, rounds: int) -> argparse.ArgumentParser:
    """A benchmark's parser, described by its docstring's first line, with ``--rounds``."""
    p = argparse.ArgumentParser(description=doc.split("\n")[0])
    p.add_argument("--rounds", type=int, default=rounds)
    return p


def parse(p: argparse.ArgumentParser, argv, *, threads: int | list[int], smoke_help: str,
          smoke: dict[str, object]) -> argparse.Namespace:
    """Add ``--threads`` (one count, or one or more where ``threads`` is a list) and
    ``--smoke`` to ``p``, parse ``argv``, and under ``--smoke`` set the arguments named in
    ``smoke`` to its values (the tiny sizes of ``tests/test_benchmarks.py``)."""
    if isinstance(threads, list):
        p.add_argument("--threads", type=int, nargs="+", default=threads)
    else:
        p.add_argument("--threads", type=int, default=threads)
    p.add_argument("--smoke", action="store_true", help=smoke_help)
    args = p.parse_args(argv)
    if args.smoke:
        for name, value in smoke.items():
            setattr(args, name, value)
    return args


@contextlib.contextmanager
def measuring(threads: int | None = None) -> Iterator[None]:
    """Pyro's validation off and, where ``threads`` is given, torch on that many threads; the
    thread count as it was restored on exit."""
    before = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        with pyro.validation_enabled(False):
            yield
    finally:
        torch.set_num_threads(before)


def warm_up(step: Callable[[torch.Tensor], object], x: torch.Tensor, n: int) -> None:
    """``n`` untimed calls of ``step(x)`` (JIT compilation, allocator, caches)."""
    for _ in range(n):
        step(x)


def ms_per_step(step: Callable[[torch.Tensor], object], x: torch.Tensor, steps: int) -> float:
    """Milliseconds per call of ``step(x)``, over ``steps`` calls."""
    t0 = time.perf_counter()
    for _ in range(steps):
        step(x)
    return (time.perf_counter() - t0) / steps * 1e3


def paired_rounds(reference: Callable[[torch.Tensor], object],
                  candidate: Callable[[torch.Tensor], object], x: torch.Tensor, *, rounds: int,
                  steps: int, warmup: int = 0) -> tuple[float, float, float]:
    """``(candidate ms/step, reference ms/step, ratio)``: ``candidate`` warmed up (``warmup``
    steps), then ``rounds`` rounds of ``reference`` and ``candidate`` back to back, each over
    ``steps`` steps on ``x``; the medians over rounds, and the median of the per-round ratios
    candidate / reference."""
    warm_up(candidate, x, warmup)
    ts, refs = [], []
    for _ in range(rounds):  # paired: reference and candidate back to back
        refs.append(ms_per_step(reference, x, steps))
        ts.append(ms_per_step(candidate, x, steps))
    ratio = statistics.median(t / r for t, r in zip(ts, refs))
    return statistics.median(ts), statistics.median(refs), ratio


def paired(fns: dict[str, Callable[[], object]], rounds: int) -> dict[str, list[float]]:
    """Seconds of each of ``fns`` per round, the variants back to back in every round, each
    from the same seed; the order rotates from round to round, so that no variant always runs
    first (after the previous round freed its buffers) or last."""
    times: dict[str, list[float]] = {name: [] for name in fns}
    names = list(fns)
    for r in range(rounds):
        for name in names[r % len(names):] + names[: r % len(names)]:
            torch.manual_seed(r)
            t = time.perf_counter()
            fns[name]()
            times[name].append(time.perf_counter() - t)
    return times
