r"""The soft and the straight-through samples of a log-space relaxed categorical [1, 2].

Given a log-space sample :math:`y` of
:class:`~vaelab.model.distributions.relaxed_categorical.ExpRelaxedCategorical`, :func:`soft` is
the point :math:`x = \exp(y)` of the simplex and :func:`straight_through` the hard one-hot
:math:`h = \mathrm{one\_hot}(\arg\max_k y_k)` forward with the gradient of :math:`x` backward,

.. math:: h + \bigl(x - \mathrm{stopgrad}(x)\bigr).

References

1. E. Jang, S. Gu, B. Poole, *Categorical Reparameterization with Gumbel-Softmax*, ICLR 2017.
2. Y. Bengio, N. Léonard, A. Courville, *Estimating or Propagating Gradients Through Stochastic
   Neurons for Conditional Computation*, arXiv:1308.3432, 2013.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["soft", "straight_through"]


def soft(log_sample: Tensor) -> Tensor:
    r"""Soft relaxed one-hot sample :math:`x = \exp(y)` of a log-space sample ``y`` (a point of the
    simplex, last dimension).

    :param log_sample: log-space sample of :class:`ExpRelaxedCategorical`, shape ``(..., K)``.
    :returns: ``exp(log_sample)``, same shape.
    """
    return log_sample.exp()


def straight_through(log_sample: Tensor) -> Tensor:
    r"""Straight-through Gumbel-softmax [1, 2]: hard one-hot forward, soft gradient backward.

    .. math:: h + \bigl(x - \mathrm{stopgrad}(x)\bigr), \qquad x = \exp(y),\quad
        h = \mathrm{one\_hot}(\arg\max_k y_k).

    The bracket is exactly zero in floating point, so the forward value is *exactly* one-hot;
    the gradient is that of the soft sample :math:`x`. :math:`\arg\max_k y_k = \arg\max_k (\ell_k
    + g_k)`, so the hard sample is an exact ``Categorical(logits)`` draw (Gumbel-max) at every
    temperature.

    :param log_sample: log-space sample of :class:`ExpRelaxedCategorical`, shape ``(..., K)``.
    :returns: one-hot tensor of shape ``(..., K)`` carrying the gradient of ``exp(log_sample)``.
    """
    x = soft(log_sample)  # (..., K)
    index = log_sample.argmax(dim=-1, keepdim=True)  # (..., 1)
    hard = torch.zeros_like(x).scatter_(-1, index, 1.0)  # (..., K)
    return hard + (x - x.detach())
