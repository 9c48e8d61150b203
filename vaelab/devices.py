"""Where tensors live: the training device, host-to-device copies, deterministic kernels.

One copy of each rule that a GPU run needs:

* :func:`resolve_device` turns ``train.device`` (``cpu``, ``cuda``, ``auto``) into a device;
  :func:`run_device` does so for a saved run, falling back to the CPU where it was trained on
  a GPU this machine does not have;
* :func:`to_device` copies a host tensor to a CUDA device from pinned (page-locked) memory,
  asynchronously: the copy overlaps the kernels already queued instead of stalling the host.
  Pinned blocks come from PyTorch's caching host allocator, which records an event for each
  asynchronous copy, so a block is not reused before its copy has finished;
* :func:`deterministic` makes the kernels deterministic for the duration of a run
  (``train.deterministic``): ``torch.use_deterministic_algorithms(True)``, cuDNN's autotuner
  off, and ``CUBLAS_WORKSPACE_CONFIG=:4096:8``, which cuBLAS needs for reproducible GEMMs
  (see PyTorch's *Reproducibility* notes).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

import torch

from vaelab.notes import note
from vaelab.registry import ConfigError

__all__ = ["CUBLAS_WORKSPACE", "DeviceUnavailable", "deterministic", "resolve_device",
           "run_device", "to_device"]

#: the cuBLAS workspace setting PyTorch's reproducibility notes name for deterministic GEMMs
CUBLAS_WORKSPACE = ":4096:8"


class DeviceUnavailable(ConfigError, RuntimeError):
    """``train.device`` names a device this machine does not have: a config error (one line,
    exit 2, naming the key), and a :class:`RuntimeError` as before."""


def resolve_device(name: str) -> torch.device:
    """``train.device`` as a :class:`torch.device`: ``auto`` is CUDA when torch sees one.

    :raises DeviceUnavailable: ``cuda`` asked for on a machine where torch sees no CUDA device (one
        line naming the key, which the command line prints with exit status 2).
    """
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise DeviceUnavailable(f"train.device = {name!r}, but torch sees no CUDA device here; set "
                          "train.device = 'cpu' or 'auto'")
    return torch.device(name)


def run_device(name: str) -> torch.device:
    """The device a saved run is loaded on: its ``train.device`` where this machine has it,
    else the CPU, with a note. Evaluation draws from the device's generator, so a CUDA run
    evaluated on the CPU gets other (equally valid) draws."""
    if name != "cpu" and not torch.cuda.is_available():
        if name != "auto":
            note(f"the run was trained with train.device = {name!r}; torch sees no CUDA "
                 "device here, so it is loaded on the CPU")
        return torch.device("cpu")
    return resolve_device(name)


def to_device(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    """``t`` on ``device``; from the host to a CUDA device through pinned memory, without
    blocking the host (no-op when ``t`` is already there)."""
    if t.device == device:
        return t
    if device.type == "cuda" and t.device.type == "cpu":
        return t.pin_memory().to(device, non_blocking=True)
    return t.to(device)


@contextmanager
def deterministic(enabled: bool) -> Iterator[None]:
    """Deterministic kernels inside the block when ``enabled`` (else nothing changes); the
    previous settings are restored on exit.

    An operation with no deterministic implementation then raises instead of running. The
    cuBLAS workspace variable is read when CUDA initialises, so it is set here only if CUDA has
    not been initialised yet and the variable is unset; a user who initialises CUDA earlier
    sets it in the environment.
    """
    if not enabled:
        yield
        return
    if "CUBLAS_WORKSPACE_CONFIG" not in os.environ and not torch.cuda.is_initialized():
        os.environ["CUBLAS_WORKSPACE_CONFIG"] = CUBLAS_WORKSPACE
    before = (torch.are_deterministic_algorithms_enabled(),
              torch.is_deterministic_algorithms_warn_only_enabled(),
              torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic)
    torch.use_deterministic_algorithms(True)
    torch.backends.cudnn.benchmark = False
    torch.backends.cudnn.deterministic = True
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(before[0], warn_only=before[1])
        torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic = before[2:]
