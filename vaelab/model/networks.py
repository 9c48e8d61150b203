r"""Encoder and decoder networks, selectable by ``model.decoder`` and ``guide.encoder``.

One registry, :data:`NETWORKS`, serves both roles. A network maps

* as the **encoder**, a data point ``x (..., D)`` (viewed in its own shape, ``(C, H, W)`` for
  images) to the posterior family's parameters ``(..., latent_width)``;
* as the **decoder**, the latent's decoder input ``(..., latent_width)`` to the likelihood's
  parameters ``(..., data_width)``, ``data_width = P·D`` (P numbers per coordinate).

Leading dimensions are batch dimensions: the decoder sees ``(K, B, ·)`` under a particle plate.

==========  ================================================================================
``mlp``     :class:`MLP`: affine layers with an activation between them (``hidden_sizes = []``
            is one affine map, the linear VAE of probabilistic PCA)
``gated``   :class:`GatedMLP`: gated dense layers :math:`h(x) \odot σ(g(x))` of Tomczak &
            Welling (2018), then an affine output layer
``conv``    :class:`ConvEncoder` / :class:`ConvDecoder`: stride-2 convolutions (4×4 kernels,
            each halving the image) and their transposed mirror, for data with an image shape
==========  ================================================================================

A network's widths have one home, its own ``hidden_sizes``: ``model.hidden_sizes`` /
``guide.hidden_sizes`` are their short spelling, for whichever network it is, and
``model.activation`` fills an ``activation`` a table leaves out (:func:`vaelab.resolve.resolve`
fills ``model.decoder`` / ``guide.encoder`` with the full options, so a saved config names its
networks). ``hidden_sizes`` of ``mlp`` and ``gated``, and the
dense ``hidden_sizes`` of ``conv``, are listed from the network's input (the decoder's from z, the
encoder's from x); the encoder that is not configured mirrors the decoder
(:meth:`NetworkOptions.mirrored`). The ``channels`` of ``conv`` are listed from the data side in
both roles, so one table describes an encoder and its mirror decoder.

**Initialisation** (``init``): ``default`` is PyTorch's (Kaiming-uniform with a = √5, uniform
bias); ``he`` draws :math:`W \sim \mathcal N(0, 2/\text{fan-in})` (He et al. 2015), ``xavier``
:math:`W \sim U(\pm\sqrt{6/(\text{fan-in} + \text{fan-out})})` (Glorot & Bengio 2010), both with
zero biases; ``he_keep_bias`` draws He's weights and keeps PyTorch's biases, as the VampPrior
code's ``he_init`` does (``utils/nn.py``: it sets the weights only).

Every network declares :attr:`Network.activations_per_row`, the floats its weight layers output
for one input row: particle chunks of importance sampling are sized from it
(:func:`vaelab.runs.run.bytes_per_particle`).

One topic: the registry of networks (MLP, gated, conv), kept in one module with the shape
rules that let each serve as encoder and as decoder.

References:
  1. J. Tomczak, M. Welling. *VAE with a VampPrior*. AISTATS 2018 (gated dense layers).
  2. Y. Dauphin, A. Fan, M. Auli, D. Grangier. *Language Modeling with Gated Convolutional
     Networks*. ICML 2017.
  3. K. He, X. Zhang, S. Ren, J. Sun. *Delving Deep into Rectifiers*. ICCV 2015.
  4. X. Glorot, Y. Bengio. *Understanding the difficulty of training deep feedforward neural
     networks*. AISTATS 2010.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import pyro
import torch
from pydantic import Field, field_validator
from pyro.params import param_with_module_name
from torch import nn

from vaelab.registry import ConfigError, Options, Registry

__all__ = [
    "ACTIVATIONS",
    "NETWORKS",
    "ConvDecoder",
    "ConvEncoder",
    "GatedDense",
    "GatedMLP",
    "MLP",
    "Network",
    "NetworkIO",
    "register_module",
]

ACTIVATIONS: dict[str, type[nn.Module]] = {
    "relu": nn.ReLU,
    "tanh": nn.Tanh,
    "softplus": nn.Softplus,
    "elu": nn.ELU,
    "gelu": nn.GELU,
}

Activation = Literal["relu", "tanh", "softplus", "elu", "gelu"]
Init = Literal["default", "he", "he_keep_bias", "xavier"]


def initialize(module: nn.Module, init: str) -> None:
    """Re-initialise every ``Linear`` / ``Conv`` weight of ``module`` (biases to zero) by
    ``init``; ``"default"`` keeps PyTorch's initialisation."""
    if init == "default":
        return
    for m in module.modules():
        if isinstance(m, (nn.Linear, nn.Conv2d, nn.ConvTranspose2d)):
            if init in ("he", "he_keep_bias"):
                nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
            elif init == "xavier":
                nn.init.xavier_uniform_(m.weight)
            else:
                raise ValueError(f"unknown init {init!r}; choices: default, he, he_keep_bias, "
                                 "xavier")
            if m.bias is not None and init != "he_keep_bias":
                nn.init.zeros_(m.bias)


class Network(nn.Module):
    """Base class of encoder and decoder networks: ``(..., in_features) → (..., out_features)``."""

    in_features: int
    out_features: int

    @property
    def activations_per_row(self) -> int:
        """Floats the weight layers (``Linear``, ``Conv2d``, ``ConvTranspose2d``) output for one
        input row, the activations' copies not counted (for memory estimates)."""
        raise NotImplementedError


def _flat_batch(x: torch.Tensor, width: int) -> tuple[torch.Tensor, torch.Size]:
    """``(..., width)`` → ``(N, width)`` and the leading shape ``(...)``."""
    lead = x.shape[:-1]
    return x.reshape(-1, width), lead


# --------------------------------------------------------------------------------------------
# dense networks


class MLP(nn.Sequential, Network):
    r"""``in_features → hidden_sizes[0] → … → out_features`` with an activation between layers.

    ``hidden_sizes = []`` gives a single affine map (the linear VAE of probabilistic PCA).
    Any number of leading batch dimensions is accepted:
    ``(..., in_features) → (..., out_features)``. The layers are the ``nn.Sequential``'s
    children (``0.weight``, ``2.weight``, ...), the state-dict keys of every vaelab MLP run.

    :param in_features: input width.
    :param hidden_sizes: hidden widths, in order from the input.
    :param out_features: output width.
    :param activation: a key of :data:`ACTIVATIONS`.
    :param init: ``"default"``, ``"he"`` or ``"xavier"`` (see the module docstring).
    """

    def __init__(
        self,
        in_features: int,
        hidden_sizes: Sequence[int],
        out_features: int,
        activation: str = "relu",
        init: str = "default",
    ):
        widths = [in_features, *hidden_sizes, out_features]
        layers: list[nn.Module] = []
        for i, (a, b) in enumerate(zip(widths[:-1], widths[1:])):
            layers.append(nn.Linear(a, b))
            if i < len(widths) - 2:
                layers.append(ACTIVATIONS[activation]())
        super().__init__(*layers)
        self.in_features = in_features
        self.out_features = out_features
        initialize(self, init)

    @property
    def linear_layers(self) -> list[nn.Linear]:
        return [m for m in self if isinstance(m, nn.Linear)]

    @property
    def activations_per_row(self) -> int:
        return sum(m.out_features for m in self.linear_layers)

    def forward(self, input: torch.Tensor) -> torch.Tensor:  # noqa: A002 - nn.Module's name
        return super().forward(input)


class GatedDense(nn.Module):
    r"""A gated dense layer, :math:`y = (W_h x + b_h) \odot σ(W_g x + b_g)` (Tomczak & Welling
    2018, after the gated units of Dauphin et al. 2017): the sigmoid gate decides, per unit,
    how much of the linear response passes.

    :param in_features: input width.
    :param out_features: output width.
    """

    def __init__(self, in_features: int, out_features: int):
        super().__init__()
        self.h = nn.Linear(in_features, out_features)
        self.g = nn.Linear(in_features, out_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.h(x) * torch.sigmoid(self.g(x))  # (..., out)


class GatedMLP(Network):
    r"""Gated dense layers, then an affine output layer:

    .. math:: h_0 = x, \quad h_{l} = (W^h_l h_{l-1} + b^h_l) \odot
        σ(W^g_l h_{l-1} + b^g_l), \quad y = W h_L + b

    the encoder and decoder of the VampPrior paper (Tomczak & Welling 2018, two gated layers of
    300 units for MNIST).

    :param in_features: input width.
    :param hidden_sizes: widths of the gated layers, from the input.
    :param out_features: output width.
    :param init: ``"default"``, ``"he"`` or ``"xavier"``.
    """

    def __init__(
        self, in_features: int, hidden_sizes: Sequence[int], out_features: int,
        init: str = "default",
    ):
        super().__init__()
        widths = [in_features, *hidden_sizes]
        self.gated = nn.ModuleList(GatedDense(a, b) for a, b in zip(widths[:-1], widths[1:]))
        self.out = nn.Linear(widths[-1], out_features)
        self.in_features, self.out_features = in_features, out_features
        self.hidden_sizes = list(hidden_sizes)
        initialize(self, init)

    @property
    def activations_per_row(self) -> int:
        return 2 * sum(self.hidden_sizes) + self.out_features  # h and g of each layer; output

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.gated:
            x = layer(x)
        return self.out(x)


# --------------------------------------------------------------------------------------------
# convolutional networks

#: kernel, stride and padding of every convolution: each stage halves the image (⌊H/2⌋)
KERNEL, STRIDE, PADDING = 4, 2, 1


def stage_sizes(height: int, width: int, stages: int) -> list[tuple[int, int]]:
    """Image sizes at the input and after each stride-2 stage: ``[(H, W), (⌊H/2⌋, ⌊W/2⌋), …]``."""
    sizes = [(height, width)]
    for _ in range(stages):
        h, w = sizes[-1]
        sizes.append(((h + 2 * PADDING - KERNEL) // STRIDE + 1,
                      (w + 2 * PADDING - KERNEL) // STRIDE + 1))
    return sizes


def _check_image(key: str, name: str, data_shape: tuple[int, ...], stages: int) -> None:
    if len(data_shape) != 3:
        raise ConfigError(
            f"{key}: network {name!r} needs data with an image shape (C, H, W), but the data "
            f"are a table of {math.prod(data_shape)} features (shape {tuple(data_shape)}); "
            "use 'mlp' or 'gated' for tabular data"
        )
    _, h, w = data_shape
    sizes = stage_sizes(h, w, stages)
    if min(sizes[-1]) < 1:
        raise ConfigError(
            f"{key}.channels: {stages} stride-2 stages shrink a {h}×{w} image to nothing "
            f"({' → '.join(f'{a}×{b}' for a, b in sizes)}); list fewer channels"
        )


class ConvEncoder(Network):
    r"""Stride-2 convolutions, then dense layers: ``x (..., C·H·W) → (..., out_features)``.

    .. math:: x \xrightarrow{\text{conv } 4{\times}4/2} (c_1, ⌊H/2⌋, ⌊W/2⌋)
        \xrightarrow{} \dots \xrightarrow{} (c_S, H_S, W_S) \xrightarrow{\text{flatten, dense}}
        \text{out}

    with the activation after every layer but the last.

    :param data_shape: ``(C, H, W)``.
    :param channels: channels of the S stages, from the data side.
    :param hidden_sizes: dense widths after the convolutions.
    :param out_features: output width.
    """

    def __init__(
        self, data_shape: tuple[int, int, int], channels: Sequence[int],
        hidden_sizes: Sequence[int], out_features: int, activation: str = "relu",
        init: str = "default",
    ):
        super().__init__()
        C, H, W = data_shape
        self.data_shape = (C, H, W)
        self.sizes = stage_sizes(H, W, len(channels))
        act = ACTIVATIONS[activation]
        convs: list[nn.Module] = []
        for c_in, c_out in zip([C, *channels[:-1]], channels):
            convs += [nn.Conv2d(c_in, c_out, KERNEL, STRIDE, PADDING), act()]
        self.convs = nn.Sequential(*convs)
        h_S, w_S = self.sizes[-1]
        flat = (channels[-1] if channels else C) * h_S * w_S
        self.dense = MLP(flat, hidden_sizes, out_features, activation)
        self.channels = list(channels)
        self.in_features, self.out_features = C * H * W, out_features
        initialize(self, init)

    @property
    def activations_per_row(self) -> int:
        conv = sum(c * h * w for c, (h, w) in zip(self.channels, self.sizes[1:]))
        return conv + self.dense.activations_per_row

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat, lead = _flat_batch(x, self.in_features)  # (N, C·H·W)
        h = self.convs(flat.view(-1, *self.data_shape))  # (N, c_S, H_S, W_S)
        return self.dense(h.flatten(1)).reshape(*lead, self.out_features)  # (..., out)


class ConvDecoder(Network):
    r"""Dense layers, then stride-2 transposed convolutions back to the image:
    ``u (..., in_features) → (..., P·C·H·W)``, P numbers per pixel.

    The mirror of :class:`ConvEncoder` with the same ``channels``: the dense layers map u to
    ``(c_S, H_S, W_S)``, each transposed convolution doubles the image (to the encoder's exact
    sizes, odd ones included) and the last one outputs ``P·C`` channels at ``(H, W)``, with the
    activation after every layer but the last.

    ``param_layout`` says how the likelihood reads its P·D numbers: ``"planes"`` (P planes of D,
    ``params.split(D, -1)``: loc then scale) or ``"pixels"`` (D groups of P,
    ``params.unflatten(-1, (D, P))``: the logits of a categorical over levels).

    :param data_shape: ``(C, H, W)``.
    :param channels: channels of the S stages, from the data side.
    :param hidden_sizes: dense widths, from the latent side.
    :param in_features: the latent's decoder-input width.
    :param out_features: P·D, the likelihood's ``param_size``.
    """

    def __init__(
        self, data_shape: tuple[int, int, int], channels: Sequence[int],
        hidden_sizes: Sequence[int], in_features: int, out_features: int,
        activation: str = "relu", init: str = "default",
        param_layout: Literal["planes", "pixels"] = "planes",
    ):
        super().__init__()
        C, H, W = data_shape
        D = C * H * W
        if out_features % D:
            raise ValueError(f"ConvDecoder: {out_features} outputs are not a multiple of D = {D}")
        self.data_shape, self.params_per_pixel = (C, H, W), out_features // D
        self.param_layout = param_layout
        self.sizes = stage_sizes(H, W, len(channels))
        act = ACTIVATIONS[activation]
        h_S, w_S = self.sizes[-1]
        c_S = channels[-1] if channels else self.params_per_pixel * C
        self.top = (c_S, h_S, w_S)
        self.dense = nn.Sequential(MLP(in_features, hidden_sizes, c_S * h_S * w_S, activation),
                                   act() if channels else nn.Identity())
        # stage j (data side, 1..S) maps channels c_j to c_{j-1}, with c_0 = P·C at (H, W)
        c = [self.params_per_pixel * C, *channels]
        self.deconvs = nn.ModuleList(
            nn.ConvTranspose2d(c[j], c[j - 1], KERNEL, STRIDE, PADDING)
            for j in range(len(channels), 0, -1)
        )
        self.act = act()
        self.channels = list(channels)
        self.in_features, self.out_features = in_features, out_features
        initialize(self, init)

    @property
    def activations_per_row(self) -> int:
        c = [self.params_per_pixel * self.data_shape[0], *self.channels]
        # the stage into c_{j-1} outputs (c_{j-1}, H_{j-1}, W_{j-1})
        deconv = sum(c[j - 1] * h * w for j, (h, w) in enumerate(self.sizes[:-1], start=1))
        mlp = self.dense[0]
        assert isinstance(mlp, MLP)
        return mlp.activations_per_row + deconv

    def forward(self, u: torch.Tensor) -> torch.Tensor:
        flat, lead = _flat_batch(u, self.in_features)  # (N, in)
        h = self.dense(flat).view(-1, *self.top)  # (N, c_S, H_S, W_S)
        last = len(self.deconvs) - 1
        for i, deconv in enumerate(self.deconvs):
            size = self.sizes[last - i]  # the encoder's size one stage closer to the data
            h = deconv(h, output_size=list(size))
            if i < last:
                h = self.act(h)
        C, H, W = self.data_shape
        P = self.params_per_pixel
        if self.param_layout == "pixels" and P > 1:  # (N, P·C, H, W) → (N, C, H, W, P)
            h = h.view(-1, P, C, H, W).permute(0, 2, 3, 4, 1)
        return h.reshape(*lead, self.out_features)  # (..., P·D)


# --------------------------------------------------------------------------------------------
# options and registration


@dataclass(frozen=True)
class NetworkIO:
    """What a network builder needs besides its options.

    :param role: ``"encoder"`` (data → latent side) or ``"decoder"`` (latent → data side).
    :param key: the config key named in errors (``model.decoder`` / ``guide.encoder``).
    :param data_shape: one data point's shape, ``(C, H, W)`` or ``(D,)``.
    :param latent_width: the encoder's output (the posterior family's ``param_size``) or the
        decoder's input (the latent's ``flat_dim``).
    :param data_width: the encoder's input D, or the decoder's output (the likelihood's
        ``param_size``).
    :param param_layout: how the likelihood reads the decoder's P·D outputs (``"planes"`` or
        ``"pixels"``, see :class:`ConvDecoder`).
    """

    role: Literal["encoder", "decoder"]
    key: str
    data_shape: tuple[int, ...]
    latent_width: int
    data_width: int
    param_layout: Literal["planes", "pixels"] = "planes"

    @property
    def in_features(self) -> int:
        return self.data_width if self.role == "encoder" else self.latent_width

    @property
    def out_features(self) -> int:
        return self.latent_width if self.role == "encoder" else self.data_width


NETWORKS: Registry[Network] = Registry("network")


def _positive(v: list[int]) -> list[int]:
    if any(h <= 0 for h in v):
        raise ValueError(f"every width must be positive, got {v}")
    return v


class NetworkOptions(Options):
    """Options every network has; :meth:`mirrored` gives the encoder that mirrors a decoder."""

    init: Init = Field("default",
                       description="weight initialisation: default, he, he_keep_bias or xavier")

    def mirrored(self) -> dict:
        """These options for the other role (widths listed from its own input), as a table."""
        d = self.model_dump()
        if "hidden_sizes" in d:
            d["hidden_sizes"] = d["hidden_sizes"][::-1]
        return d


class MLPOptions(NetworkOptions):
    hidden_sizes: list[int] = Field(default_factory=lambda: [400],
                                    description="hidden widths, from the input")
    activation: Activation = "relu"

    @field_validator("hidden_sizes")
    @classmethod
    def _widths(cls, v: list[int]) -> list[int]:
        return _positive(v)


class GatedOptions(NetworkOptions):
    hidden_sizes: list[int] = Field(default_factory=lambda: [300, 300],
                                    description="widths of the gated layers, from the input")

    @field_validator("hidden_sizes")
    @classmethod
    def _widths(cls, v: list[int]) -> list[int]:
        return _positive(v)


class ConvOptions(NetworkOptions):
    channels: list[int] = Field(default_factory=lambda: [32, 64],
                                description="channels of the stride-2 stages, from the data side")
    hidden_sizes: list[int] = Field(default_factory=list,
                                    description="dense widths between the convolutions and z, "
                                    "from the network's input")
    activation: Activation = "relu"

    @field_validator("channels", "hidden_sizes")
    @classmethod
    def _widths(cls, v: list[int]) -> list[int]:
        return _positive(v)


@NETWORKS.register("mlp", MLPOptions, component=MLP)
def _mlp(opts: MLPOptions, io: NetworkIO) -> Network:
    """Affine layers with an activation between them."""
    return MLP(io.in_features, opts.hidden_sizes, io.out_features, opts.activation, opts.init)


@NETWORKS.register("gated", GatedOptions, component=GatedMLP)
def _gated(opts: GatedOptions, io: NetworkIO) -> Network:
    """Gated dense layers h(x)·σ(g(x)) (Tomczak & Welling 2018)."""
    return GatedMLP(io.in_features, opts.hidden_sizes, io.out_features, opts.init)


@NETWORKS.register("conv", ConvOptions, component=ConvEncoder)
def _conv(opts: ConvOptions, io: NetworkIO) -> Network:
    """Stride-2 convolutions (encoder) and transposed convolutions (decoder) for images."""
    _check_image(io.key, "conv", io.data_shape, len(opts.channels))
    C, H, W = io.data_shape
    if io.role == "encoder":
        return ConvEncoder((C, H, W), opts.channels, opts.hidden_sizes, io.out_features,
                           opts.activation, opts.init)
    return ConvDecoder((C, H, W), opts.channels, opts.hidden_sizes, io.in_features,
                       io.out_features, opts.activation, opts.init, io.param_layout)


def register_module(name: str, module: nn.Module) -> nn.Module:
    """``pyro.module(name, module)`` with this module's own tensors under its names: the one way
    vaelab's model and guide declare their parameters, in every run.

    **The regime.** Pyro 1.9.2 has two: ``pyro.module`` puts a module's parameters into the
    param store of the moment under ``name$$$param`` (a plain ``nn.Module``'s way; without
    ``update_module_params`` it never swaps a parameter object); ``PyroModule`` keeps them in
    the module when ``pyro.settings`` ``module_local_params`` is on. That setting is read by
    ``PyroModule`` only, never by ``pyro.module``, so vaelab's networks (plain modules) behave
    the same under either value, and nothing in vaelab sets it. The store route is the one
    every Pyro consumer reads: ``SVI`` and ``pyro.optim`` collect the param sites of the trace,
    Pyro's JIT objectives fetch the parameters by name from the store, and a score-function
    baseline trains only once registered (PYRO_NOTES).

    **The one care.** The store is process-global: another model built in the same process (a
    second VAE, a test, a benchmark) may have left its tensors under the same names, and plain
    ``pyro.module`` would then put *those* in the trace (SVI or the JIT would step or trace the
    wrong tensors). A name that the store maps to another tensor is released first (the store's
    own ``param_name`` and ``del``), so the trace always holds this module's parameters.
    """
    store = pyro.get_param_store()
    for pname, p in module.named_parameters():
        full = param_with_module_name(name, pname)
        if store.param_name(p) != full and full in store:
            del store[full]  # another model's tensor under this name
    return pyro.module(name, module)
