r"""Components of one's own: a prior, a likelihood and a data set, registered with vaelab.

Each is a class (or function) decorated with :func:`vaelab.register`, which gives it a kind, a
config name and a typed options model, validated like the built-ins' (an unknown option or a
negative scale is refused with the key, the value and the valid options). A config names them
in either of two ways::

    plugins = ["my_components"]             # import this module before resolving, then
    [model]
    prior = "logistic"                      # ... the registered names

    [model]                                 # or, with no plugins line, the import paths
    prior = "my_components:LogisticPrior"

Run from this folder (``vaelab`` also finds modules in the current directory)::

    vaelab train config.toml --out runs/plugins --evaluate
    vaelab train by_path.toml --out runs/by_path --evaluate

A builder is called as the built-ins of its kind are (:data:`vaelab.registry.BUILDER_CALLS`): a
prior class as ``cls(options, latent_dim, ctx)``, a likelihood class as ``cls(options,
data_dim)``, a data set function as ``fn(data_config)``.
"""

from __future__ import annotations

import math

import pyro.distributions as dist
import torch
from pydantic import Field
from torch import nn
from torch.nn.functional import softplus

from vaelab import Options, register
from vaelab.config import DataConfig
from vaelab.data import SPLITS, DataSplits
from vaelab.model.likelihoods import Likelihood
from vaelab.model.priors import Prior

#: the logistic scale of unit variance, s = √3 / π
UNIT_SCALE = math.sqrt(3.0) / math.pi


class LogisticOptions(Options):
    """Options of ``prior = "logistic"``."""

    scale: float = Field(UNIT_SCALE, gt=0.0, description="s (the default: unit variance)")
    learn_scale: bool = Field(False, description="learn one s per latent dimension")


@register("prior", "logistic", LogisticOptions)
class LogisticPrior(Prior):
    r"""A product of logistic densities, lighter-tailed than Laplace and smooth at 0:

    .. math::

        \log p(z) = \sum_{j=1}^{d} \Big[ -\frac{z_j}{s_j} - \log s_j
            - 2 \log\big(1 + e^{-z_j / s_j}\big) \Big], \qquad
        \mathrm{Var}(z_j) = \frac{\pi^2 s_j^2}{3},

    with :math:`s_j = \mathrm{softplus}(\rho_j)`, fixed at ``scale`` or learned. Batch ``()``,
    event ``(d,)``, as every prior (the model expands it over the data plate).

    :param opts: :class:`LogisticOptions`.
    :param latent_dim: d.
    :param ctx: what else a prior may read (:class:`vaelab.vae.BuildContext`); unused.
    """

    def __init__(self, opts: LogisticOptions, latent_dim: int, ctx=None):
        super().__init__(latent_dim)
        rho = torch.full((latent_dim,), math.log(math.expm1(opts.scale)))  # softplus⁻¹(s), (d,)
        if opts.learn_scale:
            self.raw_scale = nn.Parameter(rho)
        else:
            self.register_buffer("raw_scale", rho)

    def forward(self, temperature=None):
        scale = softplus(self.raw_scale)  # (d,)
        return dist.Logistic(torch.zeros_like(scale), scale).to_event(1)


class HeteroscedasticOptions(Options):
    """Options of ``likelihood = "heteroscedastic_normal"``."""

    min_scale: float = Field(1e-2, gt=0.0, description="floor σ_min added to every scale")


@register("likelihood", "heteroscedastic_normal", HeteroscedasticOptions)
class HeteroscedasticNormal(Likelihood):
    r"""A normal whose mean *and* scale the decoder outputs, per point and feature:

    .. math::

        \log p(x \mid z) = \sum_{d=1}^{D} \Big[ -\frac{(x_d - \mu_d(z))^2}{2 \sigma_d(z)^2}
            - \log \sigma_d(z) - \tfrac12 \log 2\pi \Big], \qquad
        \sigma_d(z) = \mathrm{softplus}(\rho_d(z)) + \sigma_{\min},

    the decoder giving :math:`(\mu, \rho)`, ``2D`` numbers. Any finite real data.

    .. note:: The floor :math:`\sigma_{\min} > 0` keeps the density bounded: without it a
        decoder can shrink σ onto a repeated value and send log p(x | z) to infinity.

    :param opts: :class:`HeteroscedasticOptions`.
    :param data_dim: D.
    """

    #: the values it scores: any finite real number (``check_data`` refuses others)
    domain = "real"

    def __init__(self, opts: HeteroscedasticOptions, data_dim: int):
        super().__init__(data_dim)
        self.min_scale = opts.min_scale

    @property
    def param_size(self) -> int:
        return 2 * self.data_dim

    def loc_scale(self, params: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``params (..., 2D)`` → μ ``(..., D)``, σ ``(..., D)``."""
        loc, rho = params.split(self.data_dim, dim=-1)  # (..., D), (..., D)
        return loc, softplus(rho) + self.min_scale

    def forward(self, params):
        loc, scale = self.loc_scale(params)
        return dist.Normal(loc, scale).to_event(1)  # batch (...), event (D,)

    def mean(self, params):
        return self.loc_scale(params)[0]


def toy_parameters(seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """W ``(6, 2)``, V ``(6, 2)`` and b ``(6,)`` of :func:`heteroscedastic_toy`."""
    g = torch.Generator().manual_seed(seed)
    w, v = torch.randn(6, 2, generator=g), torch.randn(6, 2, generator=g)  # (D, d) each
    return w, v, 3.0 * torch.randn(6, generator=g)


@register("dataset", "heteroscedastic_toy")
def heteroscedastic_toy(cfg: DataConfig) -> DataSplits:
    r"""400/100/100 points in :math:`\mathbb{R}^6` from a model of the two components above:

    .. math::

        z \sim \prod_{j=1}^{2} \mathrm{Logistic}(0, \sqrt3/\pi), \qquad
        x = W z + b + \sigma(z) \odot \varepsilon, \quad
        \sigma(z) = 0.1 + \mathrm{softplus}(V z), \quad \varepsilon \sim \mathcal N(0, I_6),

    with :math:`W, V` standard normal and :math:`b \sim \mathcal N(0, 3^2 I)` drawn from
    ``data.split_seed`` (:func:`toy_parameters`): real values far outside [0, 1]. Other
    ``[data]`` keys are ignored.
    """
    w, v, b = toy_parameters(cfg.split_seed)
    g = torch.Generator().manual_seed(cfg.split_seed + 1)
    xs = {}
    for split, n in zip(SPLITS, (400, 100, 100)):
        u = torch.rand(n, 2, generator=g).clamp(1e-6, 1 - 1e-6)  # (n, d)
        z = UNIT_SCALE * torch.logit(u)  # logistic draws by the inverse CDF, (n, d)
        sigma = 0.1 + softplus(z @ v.T)  # (n, D)
        xs[split] = z @ w.T + b + sigma * torch.randn(n, 6, generator=g)  # (n, D)
    return DataSplits(**xs, name="heteroscedastic_toy")
