r"""The generative model p_θ(x, z) = p(z) p_θ(x | z) as a Pyro model function.

.. math::

    z_n \sim p(z), \qquad x_n \mid z_n \sim p_θ(x \mid \mathrm{dec}_θ(z_n)), \qquad n = 1..B

Sites: ``"z"`` (latent, event shape ``latent.event_shape``) and ``"x"`` (observed, event
``(D,)``), both inside ``pyro.plate("data", B, dim=-1)``. The guide
(:mod:`vaelab.guide.amortized`) samples the same ``"z"``. An outer vectorized particle plate
(``dim=-2``) broadcasts everything to ``(K, B, ...)``.

With ``hard=True`` the ``"z"`` site draws from the prior of the *discrete* model,
:meth:`~vaelab.model.priors.Prior.hard_dist` (one-hot
:class:`~vaelab.model.distributions.CategoricalProduct` with the prior logits for a categorical
latent), and the decoder reads the one-hot sample as it is: the model that evaluation scores,
whatever relaxation trained it (:meth:`vaelab.vae.VAE.eval_pair`).
"""

from __future__ import annotations

import pyro
import pyro.poutine as poutine
import torch
from torch import nn

from vaelab.model.latents import Latent
from vaelab.model.likelihoods import Likelihood
from vaelab.model.networks import Network, register_module
from vaelab.model.priors import Prior

__all__ = ["Generative", "scaled"]


def scaled(beta: float | torch.Tensor):
    """``poutine.scale`` for a KL weight β: a no-op when β is the Python float 1, and a mask
    (log-densities dropped, as β = 0 requires; ``poutine.scale`` refuses 0) when β == 0.

    A tensor β (what the compiled objectives pass, so that one graph serves the whole warm-up)
    cannot branch: it scales, and β = 0 multiplies the finite log-densities by 0. Pyro's
    validation refuses a zero tensor scale at construction, so it is built without it.
    """
    if isinstance(beta, (int, float)):
        if beta == 1.0:
            return _NULL
        if beta == 0.0:
            return poutine.mask(mask=False)
        return poutine.scale(scale=beta)
    with pyro.validation_enabled(False):
        return poutine.scale(scale=beta)


class _Null:
    def __enter__(self):
        return None

    def __exit__(self, *exc):
        return False


_NULL = _Null()


class Generative(nn.Module):
    """Prior, decoder network and likelihood, with :meth:`forward` as the Pyro model."""

    def __init__(self, latent: Latent, prior: Prior, decoder: Network, likelihood: Likelihood):
        super().__init__()
        self.latent = latent
        self.prior = prior
        self.decoder = decoder
        self.likelihood = likelihood

    def forward(
        self,
        x: torch.Tensor,
        beta: float | torch.Tensor = 1.0,
        temperature: torch.Tensor | None = None,
        hard: bool = False,
    ) -> torch.Tensor:
        r"""The model: ``x (B, D)`` observed; β scales the latent site (KL warm-up, β-VAE).

        :param x: a batch of flattened data points, ``(B, D)``.
        :param beta: weight of log p(z) (the guide scales log q(z|x) by the same β).
        :param temperature: relaxation temperature of a discrete latent (scalar tensor).
        :param hard: the discrete model: ``"z"`` one-hot from :meth:`Prior.hard_dist
            <vaelab.model.priors.Prior.hard_dist>` (discrete latents only).
        :returns: the sampled z, ``(..., B, *event_shape)``.
        """
        register_module("decoder", self.decoder)
        register_module("prior", self.prior)
        register_module("likelihood", self.likelihood)
        p_z = self.prior.hard_dist() if hard else self.prior(temperature)  # batch (), event
        with pyro.plate("data", x.shape[0], dim=-1):
            with scaled(beta):
                z = pyro.sample("z", p_z)  # (..., B, *event)
            u = self.latent.decoder_input(z, hard=hard)  # (..., B, flat_dim)
            params = self.decoder(u)  # (..., B, param_size)
            pyro.sample("x", self.likelihood(params), obs=x)
        return z

    @torch.no_grad()
    def sample(self, n: int, temperature: torch.Tensor | None = None) -> torch.Tensor:
        """Mean images E[x | z] of ``n`` prior draws z ~ p(z), ``(n, D)``."""
        z = self.prior(temperature).sample((n,))
        if not self.latent.continuous:
            z = self.latent.hard(z)
        return self.likelihood.mean(self.decoder(self.latent.decoder_input(z)))
