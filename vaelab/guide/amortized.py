r"""The amortized guide q_φ(z | x) as a Pyro guide function.

.. math:: z_n \sim q_φ(z \mid \mathrm{enc}_φ(x_n)), \qquad n = 1..B

The site ``"z"`` matches the model's (:mod:`vaelab.model.generative`), inside the same
``pyro.plate("data", B, dim=-1)``. The encoder runs once on ``x (B, D)``; an outer particle plate
only broadcasts the sampling, so K particles cost one encoder pass.

With ``hard=True`` the site draws from the family's
:meth:`~vaelab.guide.posteriors.Posterior.hard_dist` (one-hot
:class:`~vaelab.model.distributions.CategoricalProduct` with the encoder's logits for a
categorical latent) and the family's extra guide terms are left out: the guide of the discrete
model, paired with the model's ``hard=True`` (:meth:`vaelab.vae.VAE.eval_pair`).

**Encoder input** (``guide.input_transform``). The encoder reads :math:`t(x)`, the likelihood
scores the raw x: ``none``, :math:`t(x) = x`; ``log1p``, :math:`t(x) = \log(1 + x)` (scVI's
encoder input for counts [1]: raw counts up to ~10⁴ saturate the first layer and the loss
diverges within a few steps). The transform is part of q's parameterization: the bound and
the IS estimate of log p(x) are of the same model either way.

References:
  1. R. Lopez, J. Regier, M. B. Cole, M. I. Jordan, N. Yosef. *Deep generative modeling for
     single-cell transcriptomics*. Nature Methods 2018 (scVI).
"""

from __future__ import annotations

from collections.abc import Callable

import pyro
import torch
from torch import nn

from vaelab.guide.posteriors import Posterior
from vaelab.model.generative import scaled
from vaelab.model.networks import Network, register_module

__all__ = ["INPUT_TRANSFORMS", "AmortizedGuide"]

#: ``guide.input_transform`` → t, what the encoder reads of x (``log1p`` for counts, x ≥ 0)
INPUT_TRANSFORMS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "none": lambda x: x,
    "log1p": torch.log1p,
}


class AmortizedGuide(nn.Module):
    """Encoder network and posterior family, with :meth:`forward` as the Pyro guide.

    :param input_transform: what the encoder reads, a key of :data:`INPUT_TRANSFORMS`
        (``guide.input_transform`` as resolved: ``none`` or ``log1p``).
    """

    def __init__(self, encoder: Network, posterior: Posterior, input_transform: str = "none"):
        super().__init__()
        self.encoder = encoder
        self.posterior = posterior
        if input_transform not in INPUT_TRANSFORMS:
            raise ValueError(f"guide.input_transform: expected one of {sorted(INPUT_TRANSFORMS)}, "
                             f"got {input_transform!r}")
        self.input_transform = input_transform

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """The encoder's output ``h (B, param_size)`` for ``x (B, D)``: the encoder reads
        t(x), t the input transform."""
        return self.encoder(INPUT_TRANSFORMS[self.input_transform](x))  # (B, param_size)

    def posterior_dist(
        self, x: torch.Tensor, temperature: torch.Tensor | None = None, hard: bool = False
    ):
        """q_φ(z | x) for ``x (B, D)``: batch ``(B,)``, event the latent's (``hard``: over
        one-hot latents, :meth:`~vaelab.guide.posteriors.Posterior.hard_dist`). The encoder
        reads each row in the data's own shape (``(C, H, W)`` for a convolutional one)."""
        h = self.encode(x)  # (B, param_size)
        return self.posterior.hard_dist(h) if hard else self.posterior(h, temperature)

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """The unnormalized logits ℓ(x) of a categorical family, ``(B, N, K)``."""
        return self.posterior.logits_from(self.encode(x))  # (B, N, K)

    def forward(
        self,
        x: torch.Tensor,
        beta: float | torch.Tensor = 1.0,
        temperature: torch.Tensor | None = None,
        hard: bool = False,
    ) -> torch.Tensor:
        """The guide, with the model's signature; β scales log q(z|x) like the model's log p(z).

        :param hard: the guide of the discrete model (one-hot ``"z"``, no extra guide terms).
        """
        register_module("encoder", self.encoder)
        register_module("posterior", self.posterior)
        q_z = self.posterior_dist(x, temperature, hard)
        with pyro.plate("data", x.shape[0], dim=-1):
            with scaled(beta):
                z = pyro.sample("z", q_z)  # (..., B, *event)
                # optional per-point guide terms of the family, under the same plate and β
                # (e.g. the categorical-KL factor of vaelab.guide.relaxed); none for Gaussians
                # and none for the discrete model
                guide_terms = getattr(self.posterior, "guide_terms", None)
                if guide_terms is not None and not hard:
                    guide_terms(q_z, z)
        return z
