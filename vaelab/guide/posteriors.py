r"""Posterior families q_φ(z | x): how the encoder's output becomes a distribution over z.

Selected by ``guide.family``; a family declares ``param_size`` (the encoder's output width) and
maps ``h (..., param_size)`` to a distribution with batch ``(...)`` and the latent's event shape.
Families of discrete latents also define :meth:`Posterior.hard_dist`, the posterior over hard
(one-hot) latents that the guide samples with ``hard=True``.
"""

from __future__ import annotations

from typing import Literal

import pyro.distributions as dist
import torch
from pydantic import Field, model_validator
from torch import nn
from torch.nn.functional import softplus

from vaelab.registry import Options, Registry

__all__ = ["FAMILIES", "Posterior", "NormalPosterior"]

FAMILIES: Registry["Posterior"] = Registry("guide family")


class Posterior(nn.Module):
    """Base class: ``posterior(h, temperature) -> Distribution``."""

    param_size: int
    reparameterized: bool = True
    #: a normalizing flow: no closed-form KL with any prior (analytic-KL objectives refuse it)
    normalizing_flow: bool = False

    def forward(self, h: torch.Tensor, temperature: torch.Tensor | None = None):
        raise NotImplementedError

    def hard_dist(self, h: torch.Tensor):
        """q(z | x) over hard (one-hot) latents of the discrete model, batch ``(...)``; only
        families of discrete latents have one."""
        raise NotImplementedError(f"{type(self).__name__} is not a family of a discrete latent")

    def logits_from(self, h: torch.Tensor) -> torch.Tensor:
        """Encoder output ``h`` → the logits of a categorical family, ``(..., N, K)``; only
        families of discrete latents have them."""
        raise NotImplementedError(f"{type(self).__name__} is not a family of a discrete latent")


class NormalPosterior(Posterior):
    r"""q(z | x) = N(z_loc, diag z_scale²), the encoder's second half ``r`` read as

    * ``scale = "softplus"``: z_scale = softplus(r) + min_scale;
    * ``scale = "log_var"``: log z_scale² = hardtanh(r, log_var_min, log_var_max), i.e.
      z_scale = exp(clamp(r) / 2) (Tomczak & Welling 2018's code clamps to [−6, 2]; without
      bounds, Burda et al. 2016's σ = exp(linear)). The clamp is the floor; min_scale is unused.
    """

    def __init__(self, latent_dim: int, min_scale: float, scale: str = "softplus",
                 log_var_min: float | None = None, log_var_max: float | None = None):
        super().__init__()
        self.latent_dim = latent_dim
        self.param_size = 2 * latent_dim
        self.min_scale = min_scale
        self.scale, self.log_var_min, self.log_var_max = scale, log_var_min, log_var_max

    def _loc_raw(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(z_loc, r)``, r clamped where the ``log_var`` rule has bounds."""
        z_loc, raw = h.split(self.latent_dim, dim=-1)  # (..., d), (..., d)
        if self.scale == "log_var" and (self.log_var_min is not None
                                        or self.log_var_max is not None):
            raw = raw.clamp(self.log_var_min, self.log_var_max)  # hardtanh(r, lo, hi)
        return z_loc, raw

    def loc_scale(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        z_loc, raw = self._loc_raw(h)
        if self.scale == "log_var":
            return z_loc, torch.exp(0.5 * raw)
        return z_loc, softplus(raw) + self.min_scale

    def loc_scale_log(self, h: torch.Tensor
                      ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(z_loc, z_scale, log z_scale)``: :meth:`loc_scale`'s values, and the log of the
        scale without a ``log`` where the rule gives it (``log_var``: clamp(r) / 2)."""
        if self.scale != "log_var":
            z_loc, z_scale = self.loc_scale(h)
            return z_loc, z_scale, z_scale.log()
        z_loc, raw = self._loc_raw(h)
        half = 0.5 * raw
        return z_loc, torch.exp(half), half

    def forward(self, h, temperature=None):
        z_loc, z_scale = self.loc_scale(h)
        return dist.Normal(z_loc, z_scale, validate_args=False).to_event(1)


class StudentTPosterior(NormalPosterior):
    r"""q(z | x) = ∏ StudentT(ν, z_loc, z_scale): a heavier-tailed guide (fixed ν)."""

    def __init__(self, latent_dim: int, min_scale: float, df: float, scale: str = "softplus",
                 log_var_min: float | None = None, log_var_max: float | None = None):
        super().__init__(latent_dim, min_scale, scale, log_var_min, log_var_max)
        self.df = df

    def forward(self, h, temperature=None):
        z_loc, z_scale = self.loc_scale(h)
        return dist.StudentT(torch.full_like(z_loc, self.df), z_loc, z_scale).to_event(1)


class NormalOptions(Options):
    min_scale: float = Field(1e-5, ge=0.0, description="floor on z_scale (scale = softplus)")
    scale: Literal["softplus", "log_var"] = Field(
        "softplus", description="z_scale = softplus(r) + min_scale, or exp(clamp(r) / 2)")
    log_var_min: float | None = Field(None, description="lower clamp of log z_scale² (log_var)")
    log_var_max: float | None = Field(None, description="upper clamp of log z_scale² (log_var)")

    @model_validator(mode="after")
    def _check_bounds(self):
        lo, hi = self.log_var_min, self.log_var_max
        if (lo is not None or hi is not None) and self.scale != "log_var":
            raise ValueError("log_var_min / log_var_max clamp the log-variance: set "
                             "scale = 'log_var' with them")
        if lo is not None and hi is not None and lo >= hi:
            raise ValueError(f"log_var_min = {lo} must be below log_var_max = {hi}")
        return self


class StudentTOptions(NormalOptions):
    df: float = Field(5.0, gt=0.0)


@FAMILIES.register("normal", NormalOptions)
def _normal(opts, latent):
    """Diagonal normal (Kingma & Welling 2014)."""
    return NormalPosterior(latent.flat_dim, opts.min_scale, opts.scale, opts.log_var_min,
                           opts.log_var_max)


@FAMILIES.register("student_t", StudentTOptions)
def _student_t(opts, latent):
    """Diagonal Student-t with fixed degrees of freedom."""
    return StudentTPosterior(latent.flat_dim, opts.min_scale, opts.df, opts.scale,
                             opts.log_var_min, opts.log_var_max)
