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

__all__ = ["flush_denormals"]


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
