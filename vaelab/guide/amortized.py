r"""The amortized guide q_φ(z | x) as a Pyro guide function.

.. math:: z_n \sim q_φ(z \mid \mathrm{enc}_φ(x_n)), \qquad n = 1..B

The site ``"z"`` matches the model's (:mod:`vaelab.model.generative`), inside the same
``pyro.plate("data", B, dim=-1)``. The encoder runs once on ``x (B, D)``; an outer particle plate
only broadcasts the sampling, so K particles cost one encoder pass.
"""

from __future__ import annotations

import pyro
import torch
from torch import nn

from vaelab.guide.posteriors import Posterior
from vaelab.model.generative import scaled
from vaelab.model.networks import MLP, register_module

__all__ = ["AmortizedGuide"]


class AmortizedGuide(nn.Module):
    """Encoder network and posterior family, with :meth:`forward` as the Pyro guide."""

    def __init__(self, encoder: MLP, posterior: Posterior):
        super().__init__()
        self.encoder = encoder
        self.posterior = posterior

    def posterior_dist(self, x: torch.Tensor, temperature: torch.Tensor | None = None):
        """q_φ(z | x) for ``x (B, D)``: batch ``(B,)``, event the latent's."""
        return self.posterior(self.encoder(x), temperature)

    def forward(
        self,
        x: torch.Tensor,
        beta: float | torch.Tensor = 1.0,
        temperature: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """The guide, with the model's signature; β scales log q(z|x) like the model's log p(z)."""
        register_module("encoder", self.encoder)
        register_module("posterior", self.posterior)
        q_z = self.posterior_dist(x, temperature)
        with pyro.plate("data", x.shape[0], dim=-1):
            with scaled(beta):
                z = pyro.sample("z", q_z)  # (..., B, *event)
                # optional per-point guide terms of the family, under the same plate and β
                # (e.g. the categorical-KL factor of vaelab.guide.relaxed); none for Gaussians
                guide_terms = getattr(self.posterior, "guide_terms", None)
                if guide_terms is not None:
                    guide_terms(q_z, z)
        return z
