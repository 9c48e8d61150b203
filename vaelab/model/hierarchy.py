r"""Generative models with L stochastic layers as a Pyro model function.

.. math::

    z_L \sim p(z_L), \qquad z_l \mid z_{l+1} \sim \mathcal N\big(μ_l(z_{l+1}),
    \operatorname{diag} σ_l(z_{l+1})^2\big) \ (l = L-1, \dots, 1), \qquad
    x \mid z_1 \,[, z_2, \dots, z_L] \sim p_θ(x \mid \mathrm{dec}_θ(\cdot))

each conditional a diagonal Gaussian whose mean and scale a registered network computes
(:class:`GaussianConditional`: the network's output is read as the guide family reads the
encoder's, softplus or clamped log-variance), the top prior any registered prior of a Gaussian
latent (a VampPrior mixes the guide's q(z_L | x)), the likelihood any registered one. With
``skip`` the decoder reads z_1 … z_L concatenated (Tomczak & Welling 2018's two-level model,
p(x | z_1, z_2)); else z_1 alone (Burda et al. 2016's two-layer model).

Sites: ``"z_1" … "z_L"`` (:func:`site_names`) and ``"x"``, all inside ``pyro.plate("data", B,
dim=-1)``, sampled top-down (z_L first). The one-layer model (``model.layers = []``) is
:class:`vaelab.model.generative.Generative` with its site ``"z"``, unchanged. β (KL warm-up)
scales every latent site.

Config::

    [model]
    latent_dim = 100                                 # z_1
    hidden_sizes = [200, 200]                        # the decoder p(x | z_1)
    activation = "tanh"
    layers = [{latent_dim = 50, network = {name = "mlp", hidden_sizes = [100, 100],
               activation = "tanh"}}]                # z_2 and p(z_1 | z_2)

References:
  1. Y. Burda, R. Grosse, R. Salakhutdinov. *Importance Weighted Autoencoders*. ICLR 2016
     (Sec. 5, the two-stochastic-layer architecture).
  2. J. Tomczak, M. Welling. *VAE with a VampPrior*. AISTATS 2018 (Sec. 3.2, the two-level
     VAE; ``models/HVAE_2level.py`` of the authors' code).
  3. C. K. Sønderby, T. Raiko, L. Maaløe, S. K. Sønderby, O. Winther. *Ladder Variational
     Autoencoders*. NeurIPS 2016.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, cast

import pyro
import pyro.distributions as dist
import torch
from torch import nn
from torch.func import functional_call

from vaelab.model.generative import scaled
from vaelab.model.latents import GaussianLatent
from vaelab.model.likelihoods import Likelihood
from vaelab.model.networks import Network, register_module
from vaelab.model.priors import Prior

__all__ = [
    "ConditionalNormal",
    "GaussianConditional",
    "HierarchicalGenerative",
    "cat_layers",
    "site_names",
]


def site_names(num_layers: int) -> list[str]:
    """The latent sites of an L-layer model, bottom first: ``["z"]`` for L = 1 (the one-layer
    VAE), else ``["z_1", …, "z_L"]``."""
    if num_layers == 1:
        return ["z"]
    return [f"z_{k}" for k in range(1, num_layers + 1)]


def cat_layers(values: Sequence[torch.Tensor]) -> torch.Tensor:
    """Concatenate layer values ``(..., d_l)`` along the last dimension, their leading
    (particle, data) dimensions broadcast first: ``(..., Σ d_l)``."""
    lead = torch.broadcast_shapes(*(v.shape[:-1] for v in values))
    return torch.cat([v.expand(*lead, v.shape[-1]) for v in values], dim=-1)


class ConditionalNormal(dist.Independent):
    r"""N(μ(u), diag σ(u)²) of one layer, event ``(d,)``, whose parameters a
    :class:`GaussianConditional` computes from its inputs u (e.g. the parent layer's sample).

    :meth:`stop_gradient` gives :math:`q_{\bar φ}(z_l \mid u)`: the network re-run with its
    parameters detached on the *attached* inputs, so that the path gradient through the parent
    layers' samples is kept (what STL and DReG need in a hierarchical guide; detaching μ and σ
    themselves would drop it).
    """

    def __init__(self, layer: GaussianConditional, inputs: torch.Tensor):
        loc, scale = layer.loc_scale(inputs)  # (..., d) each
        super().__init__(dist.Normal(loc, scale, validate_args=False), 1)
        self._layer, self._inputs = layer, inputs

    def expand(self, batch_shape, _instance=None):
        new = ConditionalNormal.__new__(ConditionalNormal)
        batch_shape = torch.Size(batch_shape)
        dist.Independent.expand(self, batch_shape, _instance=new)
        new._layer = self._layer
        new._inputs = self._inputs.expand(*batch_shape, self._inputs.shape[-1])
        return new

    def stop_gradient(self) -> dist.TorchDistribution:
        """This distribution with the network's parameters detached, inputs attached."""
        loc, scale = self._layer.loc_scale(self._inputs, detach=True)
        base = dist.Normal(loc, scale, validate_args=False)
        return base.expand(self.batch_shape + loc.shape[-1:]).to_event(1)


class GaussianConditional(nn.Module):
    r"""A diagonal Gaussian conditional :math:`\mathcal N(μ(u), \operatorname{diag} σ(u)^2)`:
    ``network (..., in) → (..., 2 d)`` read by ``head`` (a
    :class:`~vaelab.guide.posteriors.NormalPosterior` of size d: softplus scale or clamped
    log-variance, as ``guide.family`` says).

    :param network: the network of u.
    :param head: an object with ``loc_scale(h) → (loc, scale)`` and ``param_size = 2 d``.
    """

    def __init__(self, network: Network, head: nn.Module):
        super().__init__()
        self.network = network
        self.head = head

    def loc_scale(self, inputs: torch.Tensor, detach: bool = False):
        """``(loc, scale)``, each ``(..., d)``; ``detach``: with the parameters detached."""
        if detach:
            params = {k: v.detach() for k, v in self.network.named_parameters()}
            h = functional_call(self.network, params, (inputs,))  # (..., 2 d)
        else:
            h = self.network(inputs)  # (..., 2 d)
        return cast(Any, self.head).loc_scale(h)

    def forward(self, inputs: torch.Tensor) -> ConditionalNormal:
        return ConditionalNormal(self, inputs)


class HierarchicalGenerative(nn.Module):
    """Top prior, the conditionals p(z_l | z_{l+1}), decoder and likelihood; :meth:`forward` is
    the Pyro model (see the module docstring).

    :param latent_dims: ``[d_1, …, d_L]``, L ≥ 2.
    :param prior: p(z_L), of size d_L.
    :param conditionals: ``[p(z_1 | z_2), …, p(z_{L−1} | z_L)]``.
    :param decoder: reads z_1 (``skip = False``) or z_1 … z_L concatenated.
    :param likelihood: p(x | decoder output).
    """

    def __init__(self, latent_dims: Sequence[int], prior: Prior,
                 conditionals: Sequence[GaussianConditional], decoder: Network,
                 likelihood: Likelihood, skip: bool = False):
        super().__init__()
        if len(latent_dims) < 2 or len(conditionals) != len(latent_dims) - 1:
            raise ValueError(f"HierarchicalGenerative: {len(latent_dims)} layers need "
                             f"{len(latent_dims) - 1} conditionals, got {len(conditionals)}")
        self.latent_dims = list(latent_dims)
        self.sites = site_names(len(latent_dims))
        self.prior = prior
        self.conditionals = nn.ModuleList(conditionals)
        self.decoder = decoder
        self.likelihood = likelihood
        self.skip = skip
        #: the bottom layer as a latent type (what code reading ``vae.latent`` sees)
        self.latent = GaussianLatent(latent_dims[0])

    @property
    def num_layers(self) -> int:
        return len(self.latent_dims)

    def decoder_input(self, zs: Sequence[torch.Tensor]) -> torch.Tensor:
        """``[z_1, …, z_L]`` → the decoder's input, z_1 or all layers concatenated."""
        return cat_layers(zs) if self.skip else zs[0]

    def forward(self, x: torch.Tensor, beta: float | torch.Tensor = 1.0,
                temperature: torch.Tensor | None = None, hard: bool = False) -> list[torch.Tensor]:
        """The model: ``x (B, D)`` observed; β scales every latent site.

        :returns: ``[z_1, …, z_L]``, each ``(..., B, d_l)``.
        """
        register_module("decoder", self.decoder)
        register_module("prior", self.prior)
        register_module("likelihood", self.likelihood)
        register_module("conditionals", self.conditionals)
        p_top = self.prior(temperature)  # batch (), event (d_L,)
        L = self.num_layers
        zs: list[torch.Tensor] = [x] * L
        with pyro.plate("data", x.shape[0], dim=-1):
            with scaled(beta):
                zs[L - 1] = pyro.sample(self.sites[L - 1], p_top)  # (..., B, d_L)
                for k in range(L - 2, -1, -1):
                    p_l = self.conditionals[k](zs[k + 1])  # batch (..., B), event (d_l,)
                    zs[k] = pyro.sample(self.sites[k], p_l)
            params = self.decoder(self.decoder_input(zs))  # (..., B, param_size)
            pyro.sample("x", self.likelihood(params), obs=x)
        return zs

    @torch.no_grad()
    def sample_layers(self, n: int, temperature: torch.Tensor | None = None
                      ) -> list[torch.Tensor]:
        """``n`` ancestral draws ``[z_1, …, z_L]`` from the prior, each ``(n, d_l)``."""
        z = self.prior(temperature).sample((n,))  # (n, d_L)
        zs = [z]
        for cond in reversed(self.conditionals):
            z = cond(z).sample()  # (n, d_l)
            zs.append(z)
        return zs[::-1]

    @torch.no_grad()
    def decode_top(self, z_top: torch.Tensor) -> torch.Tensor:
        r"""E[x | z_1, …, z_L] for a given top layer ``z_top (..., d_L)``, every lower layer at
        its conditional mean :math:`z_l = μ_l(z_{l+1})` (a traversal of z_L): ``(..., D)``."""
        zs = [z_top]
        for cond in reversed(self.conditionals):
            zs.append(cast(GaussianConditional, cond).loc_scale(zs[-1])[0])  # (..., d_l)
        return self.likelihood.mean(self.decoder(self.decoder_input(zs[::-1])))

    @torch.no_grad()
    def sample(self, n: int, temperature: torch.Tensor | None = None) -> torch.Tensor:
        """Mean images E[x | z] of ``n`` ancestral prior draws, ``(n, D)``."""
        zs = self.sample_layers(n, temperature)
        return self.likelihood.mean(self.decoder(self.decoder_input(zs)))
