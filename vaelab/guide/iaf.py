r"""``guide.family = "iaf"``: an inverse autoregressive flow on top of the Gaussian guide.

The encoder outputs a location, a scale and a context :math:`h` (``param_size = 2d + c``); the
guide draws from the diagonal normal and pushes the draw through T affine autoregressive steps
whose shifts and scales depend on the preceding coordinates *and* on h (Kingma et al. 2016,
eq. 10; Pyro's :class:`~pyro.distributions.transforms.ConditionalAffineAutoregressive` on a
:class:`~pyro.nn.ConditionalAutoRegressiveNN`):

.. math::

    u_0 = μ(x) + σ(x) \odot ε, \quad ε \sim \mathcal N(0, I), \qquad
    u_t = m_t(u_{t-1}, h) + s_t(u_{t-1}, h) \odot u_{t-1}, \quad t = 1..T, \qquad z = u_T

    \log q(z \mid x) = \log \mathcal N(u_0; μ, \operatorname{diag} σ^2)
        - \sum_{t=1}^{T} \sum_{i=1}^{d} \log s_{t,i}(u_{t-1}, h)

with :math:`m_{t,i}, s_{t,i}` functions of :math:`u_{t-1, <i}` only (in the flow's order,
reversed every other step), so sampling and the density of the site's own sample are one pass
per step. Every step's output layer starts at zero: at initialisation each step is the identity
and the family *is* the diagonal normal guide.

Sampling is the fast direction of the flow; scoring another z (AIS from the guide, STL and DReG's
detached density, :meth:`IAFDistribution.stop_gradient`) inverts each step one coordinate at a
time (d passes of its network). No KL between it and any prior has a closed form:
``objective.name = "mean_field"`` refuses it; every Monte Carlo objective and the IS and AIS
evaluators take it as it is.

References:
  1. D. Kingma, T. Salimans, R. Jozefowicz, X. Chen, I. Sutskever, M. Welling. *Improved
     Variational Inference with Inverse Autoregressive Flow*. NeurIPS 2016.
  2. M. Germain, K. Gregor, I. Murray, H. Larochelle. *MADE: Masked Autoencoder for Distribution
     Estimation*. ICML 2015.
"""

from __future__ import annotations

from functools import partial

import pyro.distributions as dist
import torch
from pydantic import Field
from pyro.distributions.transforms import AffineAutoregressive, ConditionalAffineAutoregressive
from pyro.nn import ConditionalAutoRegressiveNN
from torch import nn
from torch.func import functional_call

from vaelab.guide.posteriors import FAMILIES, NormalOptions, NormalPosterior
from vaelab.model.flows import (
    FlowWidths,
    alternating_order,
    check_made_widths,
    quiet_made,
    zero_last_layer,
)

__all__ = ["IAFDistribution", "IAFOptions", "IAFPosterior"]


class IAFDistribution(dist.TransformedDistribution):
    """The IAF guide's site distribution: a TransformedDistribution that can also give itself
    with every parameter detached (:meth:`stop_gradient`), for STL and DReG."""

    def stop_gradient(self) -> dist.TransformedDistribution:
        r""":math:`q_{\bar φ}`: the same density with the encoder's outputs and the flows'
        parameters detached, as a function of z (its log-density inverts the flows, d passes
        each; the gradient reaches z only)."""
        base = self.base_dist  # Independent(Normal), possibly expanded by a plate
        normal = base.base_dist
        frozen = dist.Normal(normal.loc.detach(), normal.scale.detach()).to_event(
            base.reinterpreted_batch_ndims)
        return dist.TransformedDistribution(frozen, [_frozen_step(t) for t in self.transforms])


def _frozen_step(step: AffineAutoregressive) -> AffineAutoregressive:
    """``step`` (a conditioned Pyro IAF step) evaluated with detached parameters and context."""
    conditioned = step.arn  # functools.partial(ConditionalAutoRegressiveNN, context=h)
    made: nn.Module = conditioned.func
    context = conditioned.keywords["context"].detach()
    state = {k: v.detach() for k, v in [*made.named_parameters(), *made.named_buffers()]}
    arn = partial(functional_call, made, state, kwargs={"context": context})

    def call(x):
        return arn((x,))

    call.permutation = made.permutation  # type: ignore[attr-defined]  # read by the inversion
    return AffineAutoregressive(call, log_scale_min_clip=step.log_scale_min_clip,
                                log_scale_max_clip=step.log_scale_max_clip)


class IAFPosterior(NormalPosterior):
    r"""q(z | x): the diagonal normal N(μ, σ²) pushed through ``num_flows`` conditional affine
    autoregressive steps (see the module docstring).

    :param latent_dim: d.
    :param min_scale: floor on σ.
    :param num_flows: T.
    :param hidden_sizes: hidden widths of each step's MADE (each ≥ d).
    :param context_size: c, the width of the context h the encoder outputs.
    """

    #: no closed-form KL with any prior: analytic-KL objectives refuse it
    normalizing_flow = True

    def __init__(self, latent_dim: int, min_scale: float, num_flows: int,
                 hidden_sizes: list[int], context_size: int, scale: str = "softplus",
                 log_var_min: float | None = None, log_var_max: float | None = None):
        super().__init__(latent_dim, min_scale, scale, log_var_min, log_var_max)
        self.context_size = context_size
        self.hidden_sizes = list(hidden_sizes)
        self.param_size = 2 * latent_dim + context_size
        steps = []
        for t in range(num_flows):
            made = quiet_made(lambda t=t: ConditionalAutoRegressiveNN(
                latent_dim, context_size, list(hidden_sizes),
                permutation=alternating_order(latent_dim, t)))
            zero_last_layer(made)  # identity at initialisation
            steps.append(ConditionalAffineAutoregressive(made))
        self.flows = nn.ModuleList(steps)

    @property
    def activations_per_sample(self) -> int:
        """Floats one particle's draw and density produce (for memory estimates)."""
        d = self.latent_dim
        return len(self.flows) * (sum(self.hidden_sizes) + 4 * d)

    def split(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Encoder output ``h (..., 2d + c)`` → ``z_loc (..., d)``, ``z_scale (..., d)``,
        context ``(..., c)``."""
        d = self.latent_dim
        base, context = h.split([2 * d, self.context_size], dim=-1)
        z_loc, z_scale = NormalPosterior.loc_scale(self, base)  # the base family's σ rule
        return z_loc, z_scale, context

    def loc_scale(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The base Gaussian's location and scale (before the flow)."""
        z_loc, z_scale, _ = self.split(h)
        return z_loc, z_scale

    def forward(self, h, temperature=None):
        z_loc, z_scale, context = self.split(h)
        base = dist.Normal(z_loc, z_scale, validate_args=False).to_event(1)  # batch (...), (d,)
        return IAFDistribution(base, [step.condition(context) for step in self.flows])


class IAFOptions(NormalOptions):
    num_flows: int = Field(2, gt=0, description="T, autoregressive steps")
    hidden_sizes: FlowWidths = Field(default_factory=lambda: [200],
                                     description="hidden widths of each step's MADE (≥ latent_dim)")
    context_size: int = Field(20, gt=0, description="c, width of the context h from the encoder")


@FAMILIES.register("iaf", IAFOptions, component=IAFPosterior)
def _iaf(opts: IAFOptions, latent) -> IAFPosterior:
    """Inverse autoregressive flow on the diagonal normal, conditioned on the encoder (Kingma
    et al. 2016)."""
    check_made_widths("guide.family", opts.hidden_sizes, latent.flat_dim)
    return IAFPosterior(latent.flat_dim, opts.min_scale, opts.num_flows, opts.hidden_sizes,
                        opts.context_size, opts.scale, opts.log_var_min, opts.log_var_max)
