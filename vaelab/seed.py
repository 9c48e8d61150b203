"""Seeding and RNG state capture, so that a resumed run continues exactly."""

from __future__ import annotations

import random

import numpy as np
import pyro
import torch

__all__ = ["seed_all", "get_rng_state", "set_rng_state", "derived_generator", "derived_seed"]


def seed_all(seed: int) -> None:
    """Seed Python, NumPy, torch (and so Pyro) from one integer."""
    pyro.set_rng_seed(seed)  # random, numpy and torch


def get_rng_state() -> dict:
    """Every global RNG state as tensors and plain data (loadable with ``weights_only=True``)."""
    np_state = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "python": random.getstate(),
        "numpy": (np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *np_state[2:]),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    name, keys, *rest = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), *rest))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def derived_seed(*keys: int) -> int:
    """A seed in [0, 2^63) mixed from ``keys`` (e.g. seed, epoch, stream) by a 64-bit LCG step
    per key: different key tuples give unrelated seeds (unlike ``seed + k``)."""
    h = 0x9E3779B97F4A7C15
    for k in keys:
        h = (h * 6364136223846793005 + int(k) + 1442695040888963407) % 2**63
    return h


def derived_generator(*keys: int, device: str | torch.device = "cpu") -> torch.Generator:
    """A private generator seeded by ``keys`` (e.g. seed, epoch, stream): reproducible anywhere."""
    g = torch.Generator(device=device)
    g.manual_seed(derived_seed(*keys))
    return g
