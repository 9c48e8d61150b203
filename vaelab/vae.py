"""The VAE: a generative model and an amortized guide, built from a :class:`RunConfig`.

:class:`VAE` is a plain :class:`torch.nn.Module` holding both halves; ``vae.model`` and
``vae.guide`` are the Pyro model and guide functions with matching sites, to be handed to any
Pyro objective::

    vae = build_vae(cfg, data_dim=784, shape=(1, 28, 28))
    svi = pyro.infer.SVI(vae.model, vae.guide, pyro.optim.Adam({"lr": 1e-3}), Trace_ELBO())
    svi.step(x)
"""

from __future__ import annotations

import functools
import math
import os
from dataclasses import dataclass
from typing import Any, cast

import pyro.poutine as poutine
import torch
from torch import nn

from vaelab.config import RunConfig
from vaelab.guide.amortized import AmortizedGuide
from vaelab.guide.hierarchical import HIERARCHIES, HierarchicalGuide, layer_inputs
from vaelab.guide.posteriors import Posterior
from vaelab.model.generative import Generative
from vaelab.model.hierarchy import GaussianConditional, HierarchicalGenerative
from vaelab.model.latents import GaussianLatent, Latent
from vaelab.model.likelihoods import Likelihood
from vaelab.model.networks import NETWORKS, Network, NetworkIO
from vaelab.registry import ConfigError, Options

__all__ = ["VAE", "BuildContext", "HierarchicalVAE", "build_hierarchical_vae", "build_vae"]


@dataclass
class BuildContext:
    """What a component builder may read besides its own options."""

    data_dim: int
    latent: Latent
    encoder: Network
    posterior: Posterior


class VAE(nn.Module):
    """``generative`` (prior, decoder, likelihood) + ``inference`` (encoder, posterior family)."""

    def __init__(self, generative: Generative | HierarchicalGenerative,
                 inference: AmortizedGuide | HierarchicalGuide):
        super().__init__()
        self.generative = generative
        self.inference = inference
        # One bound-method object each, created once: Pyro's JIT objectives key their compiled
        # graph on id(model) and id(guide), and a fresh bound method per access would recompile
        # every step.
        self.model = self._model
        self.guide = self._guide
        # the discrete model's pair (hard one-hot latents), created once for the same reason
        self._hard_model = functools.partial(self._model, hard=True)
        self._hard_guide = functools.partial(self._guide, hard=True)

    # Pyro model and guide: identical signatures, matching "z" sites
    def _model(self, x, beta=1.0, temperature=None, hard=False):
        """The Pyro model p_θ(x, z) (see :class:`~vaelab.model.generative.Generative`)."""
        return self.generative(x, beta, temperature, hard)

    def _guide(self, x, beta=1.0, temperature=None, hard=False):
        """The Pyro guide q_φ(z | x) (see :class:`~vaelab.guide.amortized.AmortizedGuide`)."""
        return self.inference(x, beta, temperature, hard)

    def eval_pair(self) -> tuple:
        r"""(model, guide) that evaluation scores: ``(vae.model, vae.guide)`` for a continuous
        latent; for a discrete one the same functions with ``hard=True`` bound, the *discrete*
        model whatever relaxation trained it:

        .. math:: p(z) = \prod_n \mathrm{Cat}(z_n; π_n), \quad
            q(z \mid x) = \prod_n \mathrm{Cat}(z_n; \mathrm{softmax}(\ell_n(x))),

        with ℓ(x) the guide's logits and the sites of the training pair (``"z"`` one-hot,
        ``"x"``, in ``pyro.plate("data")``). With
        :func:`~vaelab.inference.marginal.estimate_marginal` it gives the ELBO of the discrete
        model (log p(z) − log q(z|x) exact) and the IS estimate of its log p(x).
        """
        if self.latent.continuous:
            return self.model, self.guide
        return self._hard_model, self._hard_guide

    @property
    def latent(self) -> Latent:
        return self.generative.latent

    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor, temperature=None) -> torch.Tensor:
        """E[x | z] at one draw z ~ q(z | x) (hard one-hot for discrete latents), ``(B, D)``."""
        z = cast(AmortizedGuide, self.inference).posterior_dist(x, temperature).sample()
        if not self.latent.continuous:
            z = self.latent.hard(z)
        g = self.generative
        return g.likelihood.mean(g.decoder(g.latent.decoder_input(z)))

    @torch.no_grad()
    def init_output_bias(self, x_train: torch.Tensor) -> None:
        r"""Set the decoder's output bias to the Bernoulli logit of the training mean,
        :math:`b_d = \log \bar x_d - \log(1 - \bar x_d)` with :math:`\bar x_d` clipped to
        [0.001, 0.999] (``model.output_bias = "data_mean"``; Burda et al. 2016's code), so that
        the untrained decoder already predicts the average image.

        :param x_train: the training split ``(n, D)`` in the model's [0, 1] scale.
        :raises ConfigError: a likelihood other than Bernoulli, or a decoder without an affine
            output layer of D units.
        """
        g = self.generative
        if type(g.likelihood).__name__ != "BernoulliLikelihood":
            raise ConfigError(
                f"model.output_bias = 'data_mean' sets Bernoulli logits, but the likelihood is "
                f"{type(g.likelihood).__name__}; use model.likelihood = 'bernoulli' or "
                "model.output_bias = 'default'")
        D = x_train.shape[1]
        layers = [m for m in g.decoder.modules() if isinstance(m, nn.Linear)]
        if not layers or layers[-1].bias is None or layers[-1].out_features != D:
            raise ConfigError(
                f"model.output_bias = 'data_mean' needs a decoder whose last layer is affine "
                f"with {D} outputs; {type(g.decoder).__name__} has none")
        mean = x_train.double().mean(0).clamp(1e-3, 1 - 1e-3)  # (D,)
        layers[-1].bias.copy_(torch.logit(mean).to(layers[-1].bias))

    def parameter_groups(self) -> dict[str, list[nn.Parameter]]:
        """Parameters by role, for per-group diagnostics: encoder, decoder, prior, and the
        score-function baseline of a categorical guide family (``baseline``: NVIL's network,
        RELAX's control variate), which is no part of q(z | x)."""
        g, q = self.generative, self.inference
        baseline = getattr(q.posterior, "baseline", None)
        extra = list(baseline.parameters()) if isinstance(baseline, nn.Module) else []
        own = {id(p) for p in extra}
        groups = {
            "encoder": [p for p in (*q.encoder.parameters(), *q.posterior.parameters())
                        if id(p) not in own],
            "decoder": [*g.decoder.parameters(), *g.likelihood.parameters()],
            "prior": list(g.prior.parameters()),
        }
        if extra:
            groups["baseline"] = extra
        return groups


def build_vae(cfg: RunConfig, data_dim: int, shape: tuple[int, ...] | None = None) -> VAE:
    """Build the networks and the components that the resolved ``cfg.model`` and ``cfg.guide``
    name: one ``.build(...)`` call per component, no registry lookup.

    :param cfg: a config from :func:`vaelab.resolve.load_config` / :func:`~vaelab.resolve.resolve`.
    :param data_dim: D, the flattened size of a data point.
    :param shape: one data point's shape (:attr:`vaelab.data.DataSplits.shape`: ``(C, H, W)``
        for images, ``(D,)`` for tables); default ``(D,)``. Convolutional networks need an image
        shape.
    :raises ConfigError: a network that does not fit the data, a prior that does not fit the
        guide family.
    """
    m, g = cfg.model, cfg.guide
    shape = _data_shape(data_dim, shape)
    if m.layers:
        return build_hierarchical_vae(cfg, data_dim, shape)
    latent, likelihood, posterior = _components(cfg, data_dim)
    check_size(cfg, data_dim, shape, (latent, likelihood, posterior))
    encoder, decoder = _networks(cfg, shape, latent, likelihood, posterior)
    ctx = BuildContext(data_dim, latent, encoder, posterior)
    if getattr(posterior, "normalizing_flow", False) and resolved(m.prior).name == "vamp":
        raise ConfigError(
            f"model.prior = 'vamp' mixes the guide's own posteriors at its pseudo-inputs, but "
            f"guide.family = {resolved(g.family).name!r} is a normalizing flow, whose mixture "
            "vaelab does not score; use guide.family = 'normal' with the VampPrior, or another "
            "prior (e.g. 'flow' or 'mog')"
        )
    prior = resolved(m.prior).build(m.latent_dim, ctx)
    generative = Generative(latent, prior, decoder, likelihood)
    return VAE(generative, AmortizedGuide(encoder, posterior, g.input_transform))


def _data_shape(data_dim: int, shape: tuple[int, ...] | None) -> tuple[int, ...]:
    if shape is None:
        return (data_dim,)
    shape = tuple(int(s) for s in shape)
    if math.prod(shape) != data_dim:
        raise ValueError(f"build_vae: data shape {shape} does not hold D = {data_dim} values")
    return shape


def _components(cfg: RunConfig, data_dim: int) -> tuple[Latent, Likelihood, Posterior]:
    """The latent type, likelihood and posterior family (small; built before the size check)."""
    m, g = cfg.model, cfg.guide
    latent = resolved(m.latent).build(m.latent_dim)
    likelihood = resolved(m.likelihood).build(data_dim)
    posterior = resolved(g.family).build(latent)
    return latent, likelihood, posterior


def _interfaces(shape: tuple[int, ...], latent: Latent, likelihood: Likelihood,
                posterior: Posterior) -> tuple[NetworkIO, NetworkIO]:
    """What the encoder and the decoder connect: the data's shape, the posterior family's
    parameters, the latent's decoder input and the likelihood's parameters (and their layout)."""
    D = math.prod(shape)
    layout = getattr(likelihood, "param_layout", "planes")
    enc = NetworkIO("encoder", "guide.encoder", shape, posterior.param_size, D)
    dec = NetworkIO("decoder", "model.decoder", shape, latent.flat_dim, likelihood.param_size,
                    layout)
    return enc, dec


def _networks(cfg: RunConfig, shape: tuple[int, ...], latent: Latent, likelihood: Likelihood,
              posterior: Posterior) -> tuple[Network, Network]:
    """(encoder, decoder) as ``guide.encoder`` and ``model.decoder`` say; the encoder first,
    the order (and so the draws of a seed) of every vaelab so far."""
    enc, dec = _interfaces(shape, latent, likelihood, posterior)
    encoder = resolved(cfg.guide.encoder).build(enc)
    return encoder, resolved(cfg.model.decoder).build(dec)


def _available_memory() -> int:
    """Bytes of memory available now (MemAvailable; physical memory where /proc is absent)."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def _network_name(opts) -> str:
    if not isinstance(opts, Options):
        return "mlp"
    return opts.name + "".join(f" {getattr(opts, k)}" for k in ("channels", "hidden_sizes")
                               if hasattr(opts, k))


def check_size(cfg: RunConfig, data_dim: int, shape: tuple[int, ...] | None = None,
               parts: tuple[Latent, Likelihood, Posterior] | None = None) -> None:
    """Refuse networks whose parameters cannot fit in memory, before allocating them.

    The encoder and decoder are built on PyTorch's ``meta`` device (shapes only, no memory) and
    their parameters counted, together with the posterior family's and the likelihood's; times
    16 bytes (float32 parameter, gradient and Adam's two moments). A lower bound of what
    training needs.

    :param parts: the built latent, likelihood and posterior (default: built here).
    """
    m = cfg.model
    shape = _data_shape(data_dim, shape)
    latent, likelihood, posterior = parts if parts is not None else _components(cfg, data_dim)
    enc, dec = _interfaces(shape, latent, likelihood, posterior)
    with torch.device("meta"):  # shapes only; draws nothing from the random generators
        decoder = resolved(m.decoder).build(dec)  # first: a misfit names the key a user sets
        encoder = resolved(cfg.guide.encoder).build(enc)
    weights = sum(p.numel() for mod in (encoder, decoder, posterior, likelihood)
                  for p in mod.parameters())
    need, have = 16 * weights, _available_memory()
    if need > have:
        raise ValueError(
            f"model: latent size {latent.flat_dim} with networks {_network_name(m.decoder)} "
            f"(decoder) / {_network_name(cfg.guide.encoder)} (encoder) on D = {data_dim} needs "
            f"about {need / 2**30:.3g} GiB for parameters, gradients and Adam state alone, more "
            f"than the {have / 2**30:.3g} GiB of memory available; choose smaller "
            "model.latent_dim / hidden sizes"
        )


def resolved(spec):
    """``spec`` when it is parsed options, else a TypeError saying how to get them."""
    if not isinstance(spec, Options):
        raise TypeError(
            f"component {spec!r} is not resolved: build from a config returned by "
            "vaelab.load_config or vaelab.resolve.resolve"
        )
    return spec


# --------------------------------------------------------------------------------------------
# several stochastic layers (model.layers)


class HierarchicalVAE(VAE):
    """A :class:`VAE` whose model has L ≥ 2 stochastic layers (:mod:`vaelab.model.hierarchy`)
    and whose guide is a :mod:`~vaelab.guide.hierarchical` guide; sites ``"z_1" … "z_L"``."""

    generative: HierarchicalGenerative
    inference: HierarchicalGuide

    @property
    def sites(self) -> list[str]:
        """The latent sites, bottom first."""
        return list(self.generative.sites)

    @torch.no_grad()
    def encode_layers(self, x: torch.Tensor) -> list[torch.Tensor]:
        """One draw ``[z_1, …, z_L]`` of the guide for ``x (B, D)``, each ``(B, d_l)``."""
        tr = poutine.trace(self.inference).get_trace(x)
        return [torch.as_tensor(tr.nodes[name]["value"]) for name in self.sites]

    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor, temperature=None) -> torch.Tensor:
        """E[x | z] at one draw z ~ q(z_{1:L} | x), ``(B, D)``."""
        g = self.generative
        return g.likelihood.mean(g.decoder(g.decoder_input(self.encode_layers(x))))

    def parameter_groups(self) -> dict[str, list[nn.Parameter]]:
        """Parameters by role and layer, for per-group diagnostics: ``encoder z_l`` (the
        guide's q(z_l | ·), l = 1 … L), ``decoder`` (p(x | ·) and its likelihood),
        ``decoder z_l`` (the conditional p(z_l | z_{l+1}), l = 1 … L − 1), ``prior`` (of z_L);
        every parameter in exactly one group. A guide whose layers share networks (``ladder``)
        lists them under ``encoder`` (:meth:`HierarchicalGuide.parameter_groups`)."""
        g, sites = self.generative, self.sites
        groups = {f"encoder {name}": ps for name, ps in self.inference.parameter_groups(sites)}
        groups["decoder"] = [*g.decoder.parameters(), *g.likelihood.parameters()]
        for name, cond in zip(sites, g.conditionals):
            groups[f"decoder {name}"] = list(cond.parameters())
        groups["prior"] = list(g.prior.parameters())
        return groups


def _layer_network(spec, default: Options, key: str, io: NetworkIO) -> Network:
    """A network of ``model.layers``: ``spec`` (a name, a table or options; ``None``:
    ``default``) built for ``io``."""
    opts = default if spec is None else NETWORKS.parse(spec, key)
    return opts.build(io)


def _check_hierarchy(cfg: RunConfig) -> None:
    """Refuse what the L-layer model does not support, in one line naming the key."""
    m, g = cfg.model, cfg.guide
    if resolved(m.latent).name != "gaussian":
        raise ConfigError(f"model.layers: stochastic layers are Gaussian; model.latent = "
                          f"{resolved(m.latent).name!r} is not (use 'gaussian' or drop "
                          "model.layers)")
    if resolved(g.family).name != "normal":
        raise ConfigError(f"model.layers: every layer's conditional is a diagonal normal; "
                          f"guide.family = {resolved(g.family).name!r} is not (use 'normal')")
    if resolved(m.prior).name == "vamp" and not HIERARCHIES[g.hierarchy].reads_x_at_top:
        raise ConfigError(f"model.prior = 'vamp' on z_L mixes the guide's q(z_L | x), but "
                          f"guide.hierarchy = {g.hierarchy!r} has no one network of x for "
                          "z_L; use guide.hierarchy = 'top_down'")


def _guide_layers(cfg: RunConfig, shape: tuple[int, ...], dims: list[int]
                  ) -> list[GaussianConditional]:
    """The guide's conditionals, bottom first: q(z_1 | ·) from ``guide.encoder``, q(z_l | ·)
    from ``model.layers[l − 2].encoder`` (default: that layer's network mirrored)."""
    m, g = cfg.model, cfg.guide
    D = math.prod(shape)
    widths = layer_inputs(g.hierarchy, D, dims)
    out = []
    for k, (d, width) in enumerate(zip(dims, widths)):
        head = resolved(g.family).build(GaussianLatent(d))
        data_shape = shape if width == D else (width,)
        if k == 0:
            io = NetworkIO("encoder", "guide.encoder", data_shape, head.param_size, width)
            net = resolved(g.encoder).build(io)
        else:
            key = f"model.layers[{k - 1}]"
            spec = m.layers[k - 1]
            base = spec.network if spec.network is not None else resolved(m.decoder)
            mirror = cast(Any, NETWORKS.parse(base, f"{key}.network")).mirrored()
            io = NetworkIO("encoder", f"{key}.encoder", data_shape, head.param_size, width)
            net = _layer_network(spec.encoder, NETWORKS.parse(mirror, f"{key}.encoder"),
                                 f"{key}.encoder", io)
        out.append(GaussianConditional(net, head))
    return out


def _model_conditionals(cfg: RunConfig, dims: list[int]) -> list[GaussianConditional]:
    """p(z_l | z_{l+1}) for l = 1 … L − 1, from ``model.layers[l − 1].network``."""
    m, g = cfg.model, cfg.guide
    out = []
    for k, spec in enumerate(m.layers):
        head = resolved(g.family).build(GaussianLatent(dims[k]))
        key = f"model.layers[{k}].network"
        io = NetworkIO("decoder", key, (head.param_size,), dims[k + 1], head.param_size)
        out.append(GaussianConditional(_layer_network(spec.network, resolved(m.decoder), key,
                                                      io), head))
    return out


def build_hierarchical_vae(cfg: RunConfig, data_dim: int,
                           shape: tuple[int, ...] | None = None) -> HierarchicalVAE:
    """The L-layer VAE of ``model.layers`` (see :mod:`vaelab.model.hierarchy`) with the guide
    ``guide.hierarchy`` names; the networks in the order guide (bottom first), decoder,
    conditionals, then the prior of z_L.

    :raises ConfigError: a non-Gaussian latent or guide family, a VampPrior without q(z_L | x).
    """
    m, g = cfg.model, cfg.guide
    shape = _data_shape(data_dim, shape)
    _check_hierarchy(cfg)
    dims = [m.latent_dim, *(layer.latent_dim for layer in m.layers)]
    likelihood = resolved(m.likelihood).build(data_dim)
    layers = _guide_layers(cfg, shape, dims)
    dec_in = sum(dims) if m.skip else dims[0]
    dec_io = NetworkIO("decoder", "model.decoder", shape, dec_in, likelihood.param_size,
                       cast(Any, getattr(likelihood, "param_layout", "planes")))
    decoder = resolved(m.decoder).build(dec_io)
    conditionals = _model_conditionals(cfg, dims)
    guide = HIERARCHIES[g.hierarchy].build(layers, conditionals, g.input_transform)
    top = guide.top_encoder
    top_layer = cast(GaussianConditional, top if top is not None else guide.layers[-1])
    ctx = BuildContext(data_dim, GaussianLatent(dims[-1]), top_layer.network,
                       cast(Posterior, top_layer.head))
    prior = resolved(m.prior).build(dims[-1], ctx)
    generative = HierarchicalGenerative(dims, prior, conditionals, decoder, likelihood, m.skip)
    return HierarchicalVAE(generative, guide)
