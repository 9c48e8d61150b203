r"""Independent Bernoulli pixels of a binary image as one distribution (event ``(D,)``).

.. math:: \log p(x \mid ℓ) = \sum_{d=1}^{D} x_d ℓ_d - \operatorname{softplus}(ℓ_d)

:class:`BernoulliImage` is ``Bernoulli(logits=ℓ).to_event(1)`` with the event sum fused into one
contraction, which keeps importance sampling over many particles within memory.
"""

from __future__ import annotations

import torch
from pyro.distributions.torch_distribution import TorchDistribution
from torch.distributions import constraints

__all__ = ["BernoulliImage"]


class BernoulliImage(TorchDistribution):
    r"""Independent Bernoulli(σ(ℓ_d)) pixels as one distribution over an image (event ``(D,)``).

    .. math:: \log p(x \mid ℓ) = \sum_{d=1}^{D} x_d ℓ_d - \operatorname{softplus}(ℓ_d)

    The same density as ``Bernoulli(logits=ℓ).to_event(1)`` with the event sum fused into one
    contraction: no full-size ``(K, B, D)`` negation or ``binary_cross_entropy_with_logits``
    temporary, which is what makes importance sampling over many particles memory-bound
    (``benchmarks/marginal.py``).

    :param logits: ``(..., D)`` real logits ℓ.
    """

    arg_constraints = {"logits": constraints.real}
    support = constraints.independent(constraints.boolean, 1)
    has_enumerate_support = False

    def __init__(self, logits: torch.Tensor, validate_args=None):
        self.logits = logits
        super().__init__(logits.shape[:-1], logits.shape[-1:], validate_args=validate_args)

    def expand(self, batch_shape, _instance=None):
        batch_shape = torch.Size(batch_shape)
        return BernoulliImage(
            self.logits.expand(batch_shape + self.event_shape), validate_args=self._validate_args
        )

    @property
    def mean(self) -> torch.Tensor:
        return torch.sigmoid(self.logits)

    @property
    def variance(self) -> torch.Tensor:
        p = torch.sigmoid(self.logits)
        return p * (1 - p)

    def sample(self, sample_shape=torch.Size()) -> torch.Tensor:
        shape = self._extended_shape(sample_shape)
        with torch.no_grad():
            return torch.bernoulli(torch.sigmoid(self.logits).expand(shape))

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        if self._validate_args:
            self._validate_sample(value)
        dot = torch.einsum("...d,...d->...", self.logits, value.to(self.logits.dtype))  # Σ x ℓ
        return dot - torch.nn.functional.softplus(self.logits).sum(-1)  # (...,)
