"""The VAE: a generative model and an amortized guide, built from a :class:`RunConfig`.

:class:`VAE` is a plain :class:`torch.nn.Module` holding both halves; ``vae.model`` and
``vae.guide`` are the Pyro model and guide functions with matching sites, to be handed to any
Pyro objective::

    vae = build_vae(cfg, data_dim=784)
    svi = pyro.infer.SVI(vae.model, vae.guide, pyro.optim.Adam({"lr": 1e-3}), Trace_ELBO())
    svi.step(x)
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from vaelab.config import RunConfig
from vaelab.guide.amortized import AmortizedGuide
from vaelab.guide.posteriors import FAMILIES, Posterior
from vaelab.model.generative import Generative
from vaelab.model.latents import LATENTS, Latent
from vaelab.model.likelihoods import LIKELIHOODS
from vaelab.model.networks import MLP
from vaelab.model.priors import PRIORS

__all__ = ["VAE", "BuildContext", "build_vae"]


@dataclass
class BuildContext:
    """What a component builder may read besides its own options."""

    data_dim: int
    latent: Latent
    encoder: MLP
    posterior: Posterior


class VAE(nn.Module):
    """``generative`` (prior, decoder, likelihood) + ``inference`` (encoder, posterior family)."""

    def __init__(self, generative: Generative, inference: AmortizedGuide):
        super().__init__()
        self.generative = generative
        self.inference = inference
        # One bound-method object each, created once: Pyro's JIT objectives key their compiled
        # graph on id(model) and id(guide), and a fresh bound method per access would recompile
        # every step.
        self.model = self._model
        self.guide = self._guide

    # Pyro model and guide: identical signatures, matching "z" sites
    def _model(self, x, beta=1.0, temperature=None):
        """The Pyro model p_θ(x, z) (see :class:`~vaelab.model.generative.Generative`)."""
        return self.generative(x, beta, temperature)

    def _guide(self, x, beta=1.0, temperature=None):
        """The Pyro guide q_φ(z | x) (see :class:`~vaelab.guide.amortized.AmortizedGuide`)."""
        return self.inference(x, beta, temperature)

    def eval_pair(self) -> tuple:
        """(model, guide) used for evaluation: the training pair, or hard-latent versions."""
        return self.latent.eval_pair(self)

    @property
    def latent(self) -> Latent:
        return self.generative.latent

    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor, temperature=None) -> torch.Tensor:
        """E[x | z] at one draw z ~ q(z | x) (hard one-hot for discrete latents), ``(B, D)``."""
        z = self.inference.posterior_dist(x, temperature).sample()
        if not self.latent.continuous:
            z = self.latent.hard(z)
        g = self.generative
        return g.likelihood.mean(g.decoder(g.latent.decoder_input(z)))

    def parameter_groups(self) -> dict[str, list[nn.Parameter]]:
        """Parameters by role, for per-group diagnostics: encoder, decoder, prior."""
        g, q = self.generative, self.inference
        return {
            "encoder": [*q.encoder.parameters(), *q.posterior.parameters()],
            "decoder": [*g.decoder.parameters(), *g.likelihood.parameters()],
            "prior": list(g.prior.parameters()),
        }


def build_vae(cfg: RunConfig, data_dim: int) -> VAE:
    """Build the networks and components named by ``cfg.model`` and ``cfg.guide``."""
    m, gcfg = cfg.model, cfg.guide
    latent = LATENTS.build(LATENTS.parse(m.latent, "model.latent"), m.latent_dim)
    likelihood = LIKELIHOODS.build(LIKELIHOODS.parse(m.likelihood, "model.likelihood"), data_dim)
    posterior = FAMILIES.build(FAMILIES.parse(gcfg.family, "guide.family"), latent)
    enc_hidden = gcfg.hidden_sizes if gcfg.hidden_sizes is not None else m.hidden_sizes[::-1]
    encoder = MLP(data_dim, enc_hidden, posterior.param_size, m.activation)
    decoder = MLP(latent.flat_dim, m.hidden_sizes, likelihood.param_size, m.activation)
    ctx = BuildContext(data_dim, latent, encoder, posterior)
    prior = PRIORS.build(PRIORS.parse(m.prior, "model.prior"), m.latent_dim, ctx)
    generative = Generative(latent, prior, decoder, likelihood)
    return VAE(generative, AmortizedGuide(encoder, posterior))
