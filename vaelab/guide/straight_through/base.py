r"""What the straight-through estimators share: the registry, the guide distribution, and the
two tensor tricks that put an estimator's gradient behind a one-hot forward value.

Every estimator of this package is a *surrogate* :math:`s(\ell, D, \tau)`, a function of the
logits ℓ (with gradient), of the one-hot sample :math:`D \sim \mathrm{Cat}(\mathrm{softmax}(\ell))`
and of the temperature τ. The decoder sees D in the forward pass; the backward pass uses the
Jacobian of s:

.. math:: \hat g = \Bigl(\frac{\partial s}{\partial \ell}\Bigr)^{\!\top}
    \frac{\partial f}{\partial z}\Big|_{z = D}.

Only the gradient of s matters, never its value.

The ``"z"`` site of a relaxed guide holds log-space values, and
:func:`~vaelab.model.distributions.straight_through` maps a log-space value y to
:math:`\mathrm{one\_hot}(\arg\max y) + e^{y} - \mathrm{stopgrad}(e^{y})`. :func:`carry_gradient`
builds the y for which this is D forward and :math:`\partial s / \partial \ell` backward:

.. math:: y = \log c + \frac{s - \mathrm{stopgrad}(s)}{c}, \qquad
    c = \tfrac12\bigl(D + \tfrac1K\bigr),

with c held constant: :math:`\arg\max y = \arg\max c = D` and :math:`\partial e^{y} = c \cdot
\partial s / c = \partial s`. Since :math:`c \ge 1/(2K)`, nothing underflows at any temperature.

.. note:: y is **not** a Concrete sample: it carries D and the gradient of s, nothing else. These
    estimators therefore need ``kl = "categorical"``, where the ``"z"`` site is masked and its
    density is never evaluated (a Concrete density of y would be meaningless).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.distributions.utils import clamp_probs

from vaelab.model.distributions import ExpRelaxedCategorical

__all__ = [
    "ESTIMATORS",
    "Estimator",
    "StraightThroughCategorical",
    "Surrogate",
    "carry_gradient",
    "register_estimator",
    "softmax_jacobian",
]

#: ``surrogate(logits (..., K), one_hot (..., K), temperature ()) -> (..., K)``: only its
#: Jacobian with respect to ``logits`` is used
Surrogate = Callable[..., Tensor]


@dataclass(frozen=True)
class Estimator:
    """A registered estimator: its surrogate and the names of the guide-family options it reads.

    :param surrogate: the surrogate function, called with those options as keywords.
    :param options: names of :class:`~vaelab.guide.relaxed.RelaxedOptions` fields it reads.
    :param min_temperature: the lowest temperature it admits (ReinMax: τ ≥ 1).
    """

    surrogate: Surrogate
    options: tuple[str, ...] = ()
    min_temperature: float = 0.0


#: ``guide.family.estimator`` → :class:`Estimator` (the new straight-through estimators)
ESTIMATORS: dict[str, Estimator] = {}


def register_estimator(name: str, options: tuple[str, ...] = (), min_temperature: float = 0.0):
    """Decorator: register a surrogate function under ``name`` in :data:`ESTIMATORS`."""

    def deco(fn: Surrogate) -> Surrogate:
        ESTIMATORS[name] = Estimator(fn, options, min_temperature)
        return fn

    return deco


def softmax_jacobian(p: Tensor, logits: Tensor) -> Tensor:
    r"""A tensor of value 0 whose Jacobian with respect to ``logits`` is the softmax Jacobian
    at the (constant) point p:

    .. math:: J(p)\,δ = p \odot δ - p\,(p^\top δ), \qquad δ = \ell - \mathrm{stopgrad}(\ell).

    :param p: a point of the simplex, ``(..., K)`` (detached).
    :param logits: ℓ, ``(..., K)``.
    """
    delta = logits - logits.detach()  # (..., K): 0 forward, identity backward
    return p * delta - p * (p * delta).sum(-1, keepdim=True)


def carry_gradient(one_hot: Tensor, surrogate: Tensor) -> Tensor:
    r"""The log-space site value :math:`y = \log c + (s - \mathrm{stopgrad}(s)) / c`,
    :math:`c = (D + 1/K)/2` (module docstring): its straight-through map is D forward and the
    gradient of s backward.

    :param one_hot: D, ``(..., K)``.
    :param surrogate: s, ``(..., K)``.
    """
    c = 0.5 * (one_hot + 1.0 / one_hot.shape[-1])  # (..., K), ≥ 1/(2K), argmax D
    return c.log() + (surrogate - surrogate.detach()) / c


def gumbel_max(logits: Tensor) -> Tensor:
    r"""One-hot Gumbel-max draw :math:`D = \mathrm{one\_hot}(\arg\max_k(\ell_k + g_k))`,
    :math:`g_k \sim \mathrm{Gumbel}(0, 1)`: an exact :math:`\mathrm{Cat}(\mathrm{softmax}(\ell))`
    sample, ``(..., K)``, no gradient."""
    u = clamp_probs(torch.rand(logits.shape, dtype=logits.dtype, device=logits.device))  # (..., K)
    g = -(-u.log()).log()
    index = (logits.detach() + g).argmax(-1)  # (...,)
    return F.one_hot(index, logits.shape[-1]).to(logits.dtype)  # (..., K)


class StraightThroughCategorical(ExpRelaxedCategorical):
    r"""The guide distribution of a straight-through estimator: :meth:`rsample` draws
    :math:`D \sim \mathrm{Cat}(\mathrm{softmax}(\ell))` by Gumbel-max and returns
    :func:`carry_gradient` (D, s(ℓ, D, τ)) with s the estimator's surrogate.

    It keeps :class:`~vaelab.model.distributions.ExpRelaxedCategorical`'s parameters (logits,
    temperature) so that the categorical KL reads its logits; it is meant to be masked
    (``kl = "categorical"``), its density never evaluated (see the module docstring).

    :param temperature: τ, a scalar.
    :param surrogate: the estimator's surrogate, options already bound.
    :param logits: ℓ, ``batch_shape + (K,)``.
    """

    def __init__(self, temperature, surrogate: Surrogate, *, logits: Tensor,
                 validate_args=None):
        self.surrogate = surrogate
        super().__init__(temperature, logits=logits, validate_args=validate_args)

    def expand(self, batch_shape, _instance=None):
        new = self._get_checked_instance(StraightThroughCategorical, _instance)
        new.surrogate = self.surrogate
        return super().expand(batch_shape, _instance=new)

    def rsample(self, sample_shape=torch.Size()) -> Tensor:
        shape = self._extended_shape(sample_shape)
        logits = self.logits.expand(shape)  # (*sample, *batch, K), normalized logits
        one_hot = gumbel_max(logits)
        return carry_gradient(one_hot, self.surrogate(logits, one_hot, self.temperature))

    def log_prob(self, value: Tensor) -> Tensor:
        raise NotImplementedError(
            "StraightThroughCategorical carries a one-hot sample and a surrogate gradient, not "
            "a Concrete sample: it has no density (use it masked, kl = 'categorical')"
        )
