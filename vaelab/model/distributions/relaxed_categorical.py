r"""The log-space Concrete / Gumbel-softmax distribution ("ExpConcrete") [1, 2].

:class:`ExpRelaxedCategorical`'s samples are the *logs* of points on the simplex,

.. math:: y = \mathrm{log\_softmax}\!\left(\frac{\ell + g}{\tau}\right), \qquad
    g_k \overset{iid}{\sim} \mathrm{Gumbel}(0, 1),

and stay finite at every temperature (the simplex-space ``RelaxedOneHotCategorical`` underflows
to exact zeros at low temperature). :mod:`~vaelab.model.distributions.straight_through` maps a
sample to the soft and to the straight-through hard one-hot sample.

References

1. C. J. Maddison, A. Mnih, Y. W. Teh, *The Concrete Distribution: A Continuous Relaxation of
   Discrete Random Variables*, ICLR 2017.
2. E. Jang, S. Gu, B. Poole, *Categorical Reparameterization with Gumbel-Softmax*, ICLR 2017.
"""

from __future__ import annotations

from numbers import Number

import torch
from pyro.distributions.torch_distribution import TorchDistributionMixin
from torch import Tensor
from torch.distributions import constraints
from torch.distributions.relaxed_categorical import (
    ExpRelaxedCategorical as _TorchExpRelaxedCategorical,
)

__all__ = ["ExpRelaxedCategorical"]


class ExpRelaxedCategorical(_TorchExpRelaxedCategorical, TorchDistributionMixin):
    r"""Log-space Concrete / Gumbel-softmax distribution ("ExpConcrete", [1, Appendix C]),
    usable in ``pyro.sample`` (``.to_event``, ``.expand``, ``.mask``).

    A sample is the *log* of a relaxed one-hot vector,

    .. math::

        y = \mathrm{log\_softmax}\!\left(\frac{\ell + g}{\tau}\right), \qquad
        g_k \overset{iid}{\sim} \mathrm{Gumbel}(0, 1),

    finite at every temperature :math:`\tau` (``exp(y)`` is the ``RelaxedOneHotCategorical``
    sample, which underflows to exact zeros at low :math:`\tau`). The log-density is torch's

    .. math::

        \log p(y) = \log\Gamma(K) + (K - 1)\log\tau
            + \sum_{k=1}^{K}\Bigl[\ell_k - \tau y_k
            - \mathrm{logsumexp}_i(\ell_i - \tau y_i)\Bigr].

    .. note:: **Base measure.** This is the density of the log-ratio coordinates
        :math:`z = (y_k - y_K)_{k < K}` with respect to Lebesgue measure on
        :math:`\mathbb{R}^{K-1}` (the Concrete density on the simplex times
        :math:`\prod_{k=1}^K x_k`), *not* of the first :math:`K - 1` coordinates of :math:`y`.
        For :math:`K = 2` it is exactly the logistic density of :math:`y_1 - y_2 \sim
        \mathrm{Logistic}((\ell_1 - \ell_2)/\tau,\ 1/\tau)`. It depends on :math:`y` only through
        log-ratios (adding a constant to ``value`` does not change it). Density ratios, hence the
        relaxed KL and the ELBO of a relaxed model [1], are unaffected as long as prior and guide
        both use this class.

    .. note:: The temperature must be a *scalar* (0-dim tensor or Python number): a batched
        temperature gives wrong ``log_prob`` shapes in torch (pytorch issue 37162). Pass it as a
        tensor to avoid JIT recompilation per value.

    Example::

        >>> tau = torch.tensor(0.5)
        >>> with pyro.plate("data", 32):
        ...     y = pyro.sample("z", ExpRelaxedCategorical(tau, logits=torch.zeros(32, 4, 10))
        ...                     .to_event(1))  # 4 categorical latents of 10 classes each
        >>> straight_through(y).shape  # hard one-hot forward, soft gradient backward
        torch.Size([32, 4, 10])

    :param temperature: relaxation temperature :math:`\tau > 0`, a scalar.
    :param probs: event probabilities, shape ``batch_shape + (K,)``.
    :param logits: unnormalized log-probabilities :math:`\ell`, shape ``batch_shape + (K,)``.
    :raises ValueError: if ``temperature`` is not a scalar.
    """

    arg_constraints = {
        "probs": constraints.simplex,
        "logits": constraints.real_vector,
        "temperature": constraints.positive,
    }

    def __init__(self, temperature, *, logits=None, probs=None, validate_args=None):
        param = logits if logits is not None else probs
        if isinstance(temperature, Number):
            dtype = param.dtype if isinstance(param, Tensor) else torch.get_default_dtype()
            device = param.device if isinstance(param, Tensor) else None
            temperature = torch.tensor(float(temperature), dtype=dtype, device=device)
        if not isinstance(temperature, Tensor) or temperature.dim() != 0:
            shape = tuple(temperature.shape) if isinstance(temperature, Tensor) else None
            raise ValueError(
                "ExpRelaxedCategorical: temperature must be a scalar (0-dim tensor or number); "
                f"got {type(temperature).__name__} of shape {shape}. Batched temperatures give "
                "wrong log_prob shapes (pytorch issue 37162); use temperature.reshape(()) for a "
                "one-element tensor."
            )
        super().__init__(temperature, probs=probs, logits=logits, validate_args=validate_args)

    def expand(self, batch_shape, _instance=None):
        # torch's expand carries the (scalar) temperature over; we only supply the instance of
        # this class, which torch cannot create itself because __init__ is overridden.
        new = self._get_checked_instance(ExpRelaxedCategorical, _instance)
        return super().expand(batch_shape, _instance=new)
