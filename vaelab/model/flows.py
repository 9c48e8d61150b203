r"""Pieces shared by the normalizing flows of vaelab, all built from Pyro's own transforms.

* ``guide.family = "iaf"`` (:mod:`vaelab.guide.iaf`): an inverse autoregressive flow on top of
  the diagonal Gaussian guide, conditioned on the encoder's output (Kingma et al. 2016);
* ``model.prior = "flow"`` (:class:`vaelab.model.priors.FlowPrior`): a learned autoregressive
  (MAF direction) or spline-coupling flow on a standard normal base.

Both are :class:`pyro.distributions.TransformedDistribution` sites: with :math:`z = f(u)`,
:math:`u \sim p_0`,

.. math:: \log q(z) = \log p_0\big(f^{-1}(z)\big) - \log\big|\det J_f\big(f^{-1}(z)\big)\big|.

Pyro's autoregressive transforms cache the last ``(u, z)`` pair, so the log-density of a site's
own sample costs no inversion; any other z of an affine autoregressive *forward* map is inverted
one coordinate at a time (d network passes).

References:
  1. D. Kingma, T. Salimans, R. Jozefowicz, X. Chen, I. Sutskever, M. Welling. *Improved
     Variational Inference with Inverse Autoregressive Flow*. NeurIPS 2016.
  2. G. Papamakarios, T. Pavlakou, I. Murray. *Masked Autoregressive Flow for Density
     Estimation*. NeurIPS 2017.
  3. C. Durkan, A. Bekasov, I. Murray, G. Papamakarios. *Neural Spline Flows*. NeurIPS 2019.
"""

from __future__ import annotations

import typing
import warnings
from collections.abc import Sequence

import torch
from pydantic import AfterValidator
from torch import nn

from vaelab.registry import ConfigError

__all__ = ["FlowWidths", "alternating_order", "check_made_widths", "quiet_made",
           "zero_last_layer"]


def _flow_widths(v: list[int]) -> list[int]:
    if not v or any(h <= 0 for h in v):
        raise ValueError(f"at least one hidden layer, every width positive; got {v}")
    return v


#: the hidden widths of a flow step's network (an option type): at least one, each positive
FlowWidths = typing.Annotated[list[int], AfterValidator(_flow_widths)]


def alternating_order(dim: int, index: int) -> torch.LongTensor:
    """The autoregressive order of the ``index``-th flow: ``0..d-1``, reversed every other flow
    (so each coordinate conditions on every other one across two flows, as in Kingma et al.)."""
    order = torch.arange(dim)
    return typing.cast(torch.LongTensor, order if index % 2 == 0 else order.flip(0))


def zero_last_layer(net: nn.Module) -> None:
    """Zero the output layer of a Pyro MADE (``AutoRegressiveNN``, ``ConditionalAutoRegressiveNN``)
    or ``DenseNN``: an affine autoregressive transform then starts as the identity
    (shift 0, log-scale 0)."""
    layers = net.layers
    assert isinstance(layers, nn.ModuleList), "a Pyro MADE or DenseNN keeps its layers in a list"
    last = layers[-1]
    assert isinstance(last, nn.Linear), "the output layer is a (masked) nn.Linear"
    with torch.no_grad():
        last.weight.zero_()
        if last.bias is not None:
            last.bias.zero_()


def check_made_widths(key: str, hidden_sizes: Sequence[int], dim: int) -> None:
    """A MADE layer narrower than its input cannot connect every output: refuse it in one line."""
    narrow = [h for h in hidden_sizes if h < dim]
    if narrow:
        raise ConfigError(
            f"{key}.hidden_sizes: every width of an autoregressive network must be at least the "
            f"latent dimension {dim} (a masked layer narrower than its input cannot keep every "
            f"output connected), got {list(hidden_sizes)}"
        )


def quiet_made(build):
    """Build a Pyro MADE, silencing its advice for a one-dimensional input (a single affine map
    conditioned on the context, which is what a flow over d = 1 is)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*input_dim = 1.*")
        return build()
