"""Floating-point settings of the process while vaelab trains or evaluates.

Denormal (subnormal) floats are 10-100x slower on x86 CPUs; as a ReLU network's weights shrink
during training more activations and gradients fall into that range, and epochs slow down by
30-40 % (measured in ``benchmarks/train_step.py``). Flushing them to zero changes results by
less than float32 rounding does at those magnitudes.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch

__all__ = ["flush_denormals", "last_level_cache_bytes"]

#: the cache size assumed where the system does not report one (32 MiB, an EPYC's L3)
DEFAULT_CACHE_BYTES = 32 * 2**20


def last_level_cache_bytes() -> int:
    """Size of the CPU's last-level cache (Linux sysfs; :data:`DEFAULT_CACHE_BYTES` where it is
    not reported). Importance sampling sizes its particle chunks so that the decoder's output
    of a chunk stays within it (:func:`vaelab.inference.marginal.estimate_marginal`)."""
    from pathlib import Path

    best = (0, DEFAULT_CACHE_BYTES)
    for index in Path("/sys/devices/system/cpu/cpu0/cache").glob("index*"):
        try:
            level = int((index / "level").read_text())
            text = (index / "size").read_text().strip().upper()
        except (OSError, ValueError):
            continue
        scale = {"K": 2**10, "M": 2**20, "G": 2**30}.get(text[-1:], 1)
        digits = text.rstrip("KMG")
        if digits.isdigit() and level > best[0]:
            best = (level, int(digits) * scale)
    return best[1]


@contextmanager
def flush_denormals(on: bool = True) -> Iterator[bool]:
    """Flush denormals to zero inside the block (``train.flush_denormal``); yields whether the
    CPU supports it. torch has no getter for the setting, so it is left off afterwards, which is
    torch's default."""
    supported = torch.set_flush_denormal(on) if on else False
    try:
        yield supported
    finally:
        if on:
            torch.set_flush_denormal(False)
