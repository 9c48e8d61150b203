"""Latent types: what z is, and how the decoder reads it.

A latent type fixes the event shape of z and the map from a sample of z to the decoder input.
``gaussian`` is a real vector of ``model.latent_dim`` entries; discrete latent types (see
:mod:`vaelab.model.categorical`) register themselves here too.
"""

from __future__ import annotations

import torch
from torch import nn

from vaelab.registry import Options, Registry

__all__ = ["LATENTS", "Latent", "GaussianLatent"]


class Latent(nn.Module):
    """Base class: ``event_shape`` of z, ``flat_dim`` of the decoder input, ``continuous`` flag."""

    event_shape: tuple[int, ...]
    continuous: bool = True
    #: guide families this latent type admits (the first is the default)
    families: tuple[str, ...] = ("normal",)
    #: priors this latent type admits
    priors: tuple[str, ...] = ()

    @property
    def flat_dim(self) -> int:
        n = 1
        for s in self.event_shape:
            n *= s
        return n

    def decoder_input(self, z: torch.Tensor) -> torch.Tensor:
        """``(..., *event_shape) → (..., flat_dim)``."""
        return z.reshape(*z.shape[: z.dim() - len(self.event_shape)], self.flat_dim)

    def temperature_at(self, step: int) -> torch.Tensor | None:
        """Relaxation temperature at a training step (``None``: not a relaxed latent)."""
        return None

    def eval_pair(self, vae) -> tuple:
        """The (model, guide) pair that scores this latent type (hard latents for discrete ones)."""
        return vae.model, vae.guide


LATENTS: Registry[Latent] = Registry("latent type")


class GaussianLatent(Latent):
    """z ∈ ℝ^d, read by the decoder as it is."""

    continuous = True
    families = ("normal", "student_t")
    priors = ("standard_normal", "normal", "laplace", "student_t", "mog", "vamp")

    def __init__(self, latent_dim: int):
        super().__init__()
        self.event_shape = (latent_dim,)

    def decoder_input(self, z: torch.Tensor) -> torch.Tensor:
        return z  # (..., d)


@LATENTS.register("gaussian", Options)
def build_gaussian(opts: Options, latent_dim: int) -> Latent:
    """A real latent vector of size ``model.latent_dim`` (Kingma & Welling 2014)."""
    return GaussianLatent(latent_dim)
