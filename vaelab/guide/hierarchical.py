r"""Guides of the L-layer models (:mod:`vaelab.model.hierarchy`), with the model's sites
``"z_1" … "z_L"`` inside ``pyro.plate("data")``; ``guide.hierarchy`` picks the order.

* ``bottom_up`` (Burda et al. 2016, Sec. 5):

  .. math:: q(z_{1:L} \mid x) = q(z_1 \mid x) \prod_{l=2}^{L} q(z_l \mid z_{l-1})

* ``top_down`` (Tomczak & Welling 2018, the two-level VAE):

  .. math:: q(z_{1:L} \mid x) = q(z_L \mid x) \prod_{l=1}^{L-1} q(z_l \mid x, z_{l+1})

  Tomczak & Welling's code (``models/HVAE_2level.py``) reads x and z_2 in two gated branches of
  300 units joined by a third gated layer; here q(z_l | x, z_{l+1}) is one network on the
  concatenation [t(x), z_{l+1}] (its first layer sees both inputs at once).

* ``ladder`` (Sønderby et al. 2016, Sec. 2.2): a deterministic bottom-up pass gives
  (μ̂_l, σ̂_l) per layer; then top-down, q(z_L | x) = N(μ̂_L, σ̂_L²) and for l < L the
  precision-weighted product with the model's own p(z_l | z_{l+1}) = N(μ_p, σ_p²):

  .. math:: σ_q^2 = \frac{1}{σ̂^{-2} + σ_p^{-2}}, \qquad
      μ_q = \big(μ̂\,σ̂^{-2} + μ_p\,σ_p^{-2}\big)\,σ_q^2

  (:class:`LadderGuide`).

Each factor of ``bottom_up`` and ``top_down`` is a
:class:`~vaelab.model.hierarchy.GaussianConditional`. The guide's q(z_L | x)
(``top_down`` only) is what a VampPrior on z_L mixes at its pseudo-inputs (:attr:`top_encoder`);
a ``bottom_up`` guide has none, and the VampPrior is refused with it. β scales every site.

References:
  1. Y. Burda, R. Grosse, R. Salakhutdinov. *Importance Weighted Autoencoders*. ICLR 2016.
  2. J. Tomczak, M. Welling. *VAE with a VampPrior*. AISTATS 2018.
  3. C. K. Sønderby, T. Raiko, L. Maaløe, S. K. Sønderby, O. Winther. *Ladder Variational
     Autoencoders*. NeurIPS 2016 (Sec. 2.2, Eqs. 18–19).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, cast

import pyro
import pyro.distributions as dist
import torch
from torch import nn

from vaelab.guide.amortized import INPUT_TRANSFORMS
from vaelab.model.generative import scaled
from vaelab.model.hierarchy import (
    ConditionalNormal,
    GaussianConditional,
    cat_layers,
    site_names,
)
from vaelab.model.networks import register_module

__all__ = ["HIERARCHIES", "BottomUpGuide", "Draw", "HierarchicalGuide", "LadderGuide",
           "TopDownGuide"]

#: ``draw(k, conditional, inputs) → z_k``: how :meth:`HierarchicalGuide.walk` draws layer k
#: (a :class:`GaussianConditional` of a tensor, or a :class:`LadderMerge` of a pair)
Draw = Callable[[int, Any, Any], torch.Tensor]


class HierarchicalGuide(nn.Module):
    """Base class: ``layers[l]`` is the conditional of z_{l+1}; :meth:`forward` is the guide.

    :param layers: one :class:`GaussianConditional` per layer, bottom first.
    :param input_transform: what the networks read of x (``guide.input_transform``).
    """

    #: the order the sites are drawn in, bottom (``"bottom_up"``) or top (``"top_down"``) first
    order = "bottom_up"
    #: whether z_L is drawn from x alone (a q(z_L | x) for a VampPrior on z_L)
    reads_x_at_top = False

    def __init__(self, layers: Sequence[GaussianConditional], input_transform: str = "none"):
        super().__init__()
        if input_transform not in INPUT_TRANSFORMS:
            raise ValueError(f"guide.input_transform: expected one of {sorted(INPUT_TRANSFORMS)}, "
                             f"got {input_transform!r}")
        self.layers = nn.ModuleList(layers)
        self.input_transform = input_transform
        self.sites = site_names(len(layers))

    @classmethod
    def build(cls, layers: Sequence[GaussianConditional],
              conditionals: Sequence[GaussianConditional], input_transform: str = "none"
              ) -> HierarchicalGuide:
        """The guide of ``layers``; ``conditionals``, the model's p(z_l | z_{l+1}), are read
        only by a guide that shares them (:class:`LadderGuide`)."""
        return cls(layers, input_transform)

    @property
    def num_layers(self) -> int:
        return len(self.layers)

    @property
    def top_encoder(self) -> GaussianConditional | None:
        """q(z_L | x), for a VampPrior on z_L; ``None`` where z_L is not drawn from x alone."""
        return None

    @property
    def posterior(self) -> nn.Module:
        """The bottom layer's head (what code reading ``vae.inference.posterior`` sees: a
        reparameterized normal family)."""
        return cast(nn.Module, self.layers[0].head)

    @property
    def encoder(self) -> nn.ModuleList:
        """Every layer's conditional (their parameters are the guide's)."""
        return self.layers

    def walk(self, tx: torch.Tensor, draw: Draw) -> list[torch.Tensor]:
        """Visit the layers in the guide's order, each once: ``z_k = draw(k, conditional,
        inputs)`` with ``conditional(inputs)`` the distribution q(z_k | ·) (k from 0, bottom
        first). :meth:`draw` samples the Pyro sites; :meth:`common_noise_draws`
        reparameterizes with shared noise.

        :param tx: t(x), ``(B, D)``.
        :returns: ``[z_1, …, z_L]``.
        """
        raise NotImplementedError

    def parameter_groups(self, sites: Sequence[str]) -> list[tuple[str, list[nn.Parameter]]]:
        """``(site, parameters)`` per layer, bottom first: layer l's conditional q(z_l | ·)."""
        return [(name, list(layer.parameters())) for name, layer in zip(sites, self.layers)]

    @torch.no_grad()
    def common_noise_draws(self, x: torch.Tensor, num_draws: int = 64):
        r"""``S = num_draws`` draws of every layer for each row of ``x (b, D)``,
        reparameterized with the same noise for every point (common random numbers, so that
        Monte Carlo noise does not pass for activity in :mod:`vaelab.inference.layer_stats`):
        :math:`z_l = μ_l(\cdot) + σ_l(\cdot)\, ε_l`, :math:`ε_l \in \mathbb R^{S \times 1
        \times d_l}` standard normal, each layer's parents as ``guide.hierarchy`` says.

        :returns: ``(order, locs, scales, zs)``: the layer indices in the order the guide draws
            them; the conditional means μ_l, scales σ_l and draws z_l, bottom first, each
            ``(S, b, d_l)``.
        """
        L = self.num_layers
        order: list[int] = []
        locs: list[torch.Tensor] = [x] * L
        scales: list[torch.Tensor] = [x] * L

        def draw(k: int, cond, u: torch.Tensor) -> torch.Tensor:
            loc, scale = cond.loc_scale(u)  # (b, d) or (S, b, d)
            eps = torch.randn(num_draws, 1, loc.shape[-1]).to(loc)  # (S, 1, d), shared over b
            shape = (num_draws, *loc.shape[-2:])
            order.append(k)
            locs[k], scales[k] = loc.expand(shape), scale.expand(shape)  # (S, b, d)
            return loc + scale * eps

        zs = self.walk(self.tx(x), draw)
        return order, locs, scales, zs

    def draw(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Sample every layer (inside the data plate); ``[z_1, …, z_L]``."""
        return self.walk(self.tx(x), lambda k, cond, u: pyro.sample(self.sites[k], cond(u)))

    def forward(self, x: torch.Tensor, beta: float | torch.Tensor = 1.0,
                temperature: torch.Tensor | None = None, hard: bool = False
                ) -> list[torch.Tensor]:
        """The guide, with the model's signature; β scales every log q(z_l | ·).

        :returns: ``[z_1, …, z_L]``, each ``(..., B, d_l)``.
        """
        register_module("encoder", self.layers)
        with pyro.plate("data", x.shape[0], dim=-1), scaled(beta):
            return self.draw(x)

    def tx(self, x: torch.Tensor) -> torch.Tensor:
        """t(x), what the networks read of x, ``(B, D)``."""
        return INPUT_TRANSFORMS[self.input_transform](x)


class BottomUpGuide(HierarchicalGuide):
    """q(z_1 | x) ∏ q(z_l | z_{l−1}) (Burda et al. 2016)."""

    order = "bottom_up"

    def walk(self, tx: torch.Tensor, draw: Draw) -> list[torch.Tensor]:
        zs, u = [], tx  # u: (B, D), then (..., B, d_{l-1})
        for k, layer in enumerate(self.layers):
            u = draw(k, layer, u)  # (..., B, d_l)
            zs.append(u)
        return zs


class TopDownGuide(HierarchicalGuide):
    """q(z_L | x) ∏ q(z_l | x, z_{l+1}) (Tomczak & Welling 2018)."""

    order = "top_down"
    reads_x_at_top = True

    @property
    def top_encoder(self) -> GaussianConditional:
        return cast(GaussianConditional, self.layers[-1])

    def walk(self, tx: torch.Tensor, draw: Draw) -> list[torch.Tensor]:
        L = self.num_layers
        zs: list[torch.Tensor] = [tx] * L  # tx: (B, D)
        zs[L - 1] = draw(L - 1, self.layers[L - 1], tx)  # (..., B, d_L)
        for k in range(L - 2, -1, -1):
            u = cat_layers([tx, zs[k + 1]])  # (..., B, D + d_{k+1})
            zs[k] = draw(k, self.layers[k], u)
        return zs


class LadderMerge:
    r"""q(z_l | x, z_{l+1}) of :class:`LadderGuide`: the bottom-up (μ̂_l, σ̂_l) of t(x)
    merged with the model's p(z_l | z_{l+1}) by precision (Sønderby et al. 2016, Eqs.
    18–19); for the top layer (no model conditional) N(μ̂_L, σ̂_L²) itself. Inputs:
    ``(tx (B, D), z_{l+1} (..., B, d_{l+1}) or None)``. Holds no parameters of its own (the
    guide's upward networks and the model's conditional are their modules')."""

    def __init__(self, guide: LadderGuide, k: int, prior: GaussianConditional | None):
        self._guide, self._k, self._prior = guide, k, prior

    def loc_scale(self, inputs, detach: bool = False):
        """``(loc, scale)``, each ``(..., B, d_l)``; ``detach``: every parameter detached (the
        bottom-up networks' and the model conditional's), the parent sample attached."""
        tx, parent = inputs
        loc_hat, scale_hat = self._guide.upward(tx, self._k, detach)  # (B, d_l) each
        if self._prior is None:
            return loc_hat, scale_hat
        loc_p, scale_p = self._prior.loc_scale(parent, detach)  # (..., B, d_l) each
        prec_hat, prec_p = scale_hat.pow(-2), scale_p.pow(-2)
        var = 1.0 / (prec_hat + prec_p)  # σ_q²
        return (loc_hat * prec_hat + loc_p * prec_p) * var, var.sqrt()

    def __call__(self, inputs) -> ConditionalNormal:
        return _MergedNormal(cast(GaussianConditional, self), inputs)


class _MergedNormal(ConditionalNormal):
    """:class:`ConditionalNormal` whose inputs are a pair (:class:`LadderMerge`): expanding it
    leaves them as they are (:meth:`stop_gradient` broadcasts its result to the batch)."""

    def expand(self, batch_shape, _instance=None):
        new = _MergedNormal.__new__(_MergedNormal)
        dist.Independent.expand(self, torch.Size(batch_shape), _instance=new)
        new._layer, new._inputs = self._layer, self._inputs
        return new


class LadderGuide(HierarchicalGuide):
    r"""The ladder guide (Sønderby et al. 2016): ``layers[l]`` is the bottom-up step of layer
    l, a network of the previous step's output (t(x) for l = 1) giving the parameters
    (μ̂_l, σ̂_l) through its head; z_L … z_1 are then drawn top-down by :class:`LadderMerge`
    with the model's conditionals (``conditionals[l]`` = p(z_l | z_{l+1}), shared with the
    model, not this module's parameters).

    .. note:: The paper's upward pass carries a deterministic hidden layer d_l to the next
        step and reads (μ̂_l, σ̂_l) off it by linear maps; here step l + 1 reads step l's
        2·d_l outputs (μ̂_l and the pre-activation of σ̂_l), so the upward pass passes through
        the parameters' width.
    """

    order = "top_down"

    def __init__(self, layers: Sequence[GaussianConditional],
                 conditionals: Sequence[GaussianConditional], input_transform: str = "none"):
        super().__init__(layers, input_transform)
        if len(conditionals) != len(layers) - 1:
            raise ValueError(f"LadderGuide: {len(layers)} layers need {len(layers) - 1} model "
                             f"conditionals, got {len(conditionals)}")
        conds: list[GaussianConditional | None] = [*conditionals, None]
        self.merges = tuple(LadderMerge(self, k, c) for k, c in enumerate(conds))

    @classmethod
    def build(cls, layers: Sequence[GaussianConditional],
              conditionals: Sequence[GaussianConditional], input_transform: str = "none"
              ) -> HierarchicalGuide:
        return cls(layers, conditionals, input_transform)

    def upward(self, tx: torch.Tensor, k: int, detach: bool = False):
        """(μ̂_k, σ̂_k) of the deterministic bottom-up pass, each ``(B, d_k)`` (k from 0)."""
        h = tx  # (B, D), then (B, 2 d_l)
        for layer in self.layers[: k + 1]:
            net = cast(GaussianConditional, layer).network
            if detach:
                params = {n: v.detach() for n, v in net.named_parameters()}
                h = torch.func.functional_call(net, params, (h,))
            else:
                h = net(h)
        return cast(Any, self.layers[k]).head.loc_scale(h)  # the head has no parameters

    def walk(self, tx: torch.Tensor, draw: Draw) -> list[torch.Tensor]:
        L = self.num_layers
        zs: list[torch.Tensor] = [tx] * L
        zs[L - 1] = draw(L - 1, cast(GaussianConditional, self.merges[L - 1]), (tx, None))
        for k in range(L - 2, -1, -1):
            zs[k] = draw(k, cast(GaussianConditional, self.merges[k]), (tx, zs[k + 1]))
        return zs


#: ``guide.hierarchy`` → guide class; each says which inputs its layer l reads
#: (:func:`layer_inputs`)
HIERARCHIES: dict[str, type[HierarchicalGuide]] = {
    "bottom_up": BottomUpGuide,
    "top_down": TopDownGuide,
    "ladder": LadderGuide,
}


def layer_inputs(order: str, data_dim: int, latent_dims: Sequence[int]) -> list[int]:
    """Input width of each guide layer's network, bottom first.

    ``bottom_up``: D, d_1, …, d_{L−1}; ``top_down``: D + d_2, …, D + d_L, D; ``ladder``
    (the upward steps): D, 2 d_1, …, 2 d_{L−1}.
    """
    L = len(latent_dims)
    if order == "bottom_up":
        return [data_dim, *latent_dims[:-1]]
    if order == "ladder":
        return [data_dim, *(2 * d for d in latent_dims[:-1])]
    return [data_dim + latent_dims[k + 1] for k in range(L - 1)] + [data_dim]
