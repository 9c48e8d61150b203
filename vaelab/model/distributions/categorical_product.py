r"""N independent one-hot categoricals of K classes as one event of shape ``(N, K)``.

:class:`CategoricalProduct` is the hard latent of ``model.latent = "categorical"``,

.. math:: \log q(z) = \sum_{n=1}^{N} \sum_{k=1}^{K} z_{nk} \log \mathrm{softmax}(\ell_n)_k,

enumerating its joint support of :math:`K^N` states in the order of
:func:`~vaelab.model.distributions.discrete.joint_states`, so that Pyro's ``TraceEnum_ELBO`` sums
over all states of one ``"z"`` site.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from pyro.distributions.torch_distribution import TorchDistribution
from torch import Tensor
from torch.distributions import constraints
from torch.distributions.utils import lazy_property

from vaelab.model.distributions.discrete import joint_states

__all__ = ["CategoricalProduct"]


class CategoricalProduct(TorchDistribution):
    r"""N independent one-hot categoricals of K classes as one event of shape ``(N, K)``.

    .. math:: \log q(z) = \sum_{n=1}^{N} \sum_{k=1}^{K} z_{nk} \log \mathrm{softmax}(\ell_n)_k

    Unlike ``OneHotCategorical(logits).to_event(1)``, it enumerates its *joint* support: the
    :math:`S = K^N` one-hot configurations, in the order of ``itertools.product(range(K),
    repeat=N)`` (variable 1 most significant), so :class:`~pyro.infer.TraceEnum_ELBO` can sum
    over all states of one ``"z"`` site. Not reparameterizable (score-function gradients).

    :param logits: unnormalized log-probabilities :math:`\ell`, shape ``batch_shape + (N, K)``.
    """

    arg_constraints = {"logits": constraints.independent(constraints.real, 2)}
    support = constraints.independent(constraints.one_hot, 1)
    has_enumerate_support = True
    has_rsample = False

    def __init__(self, logits: Tensor, validate_args=None):
        if logits.dim() < 2:
            raise ValueError(f"logits must have shape (..., N, K), got {tuple(logits.shape)}")
        self.logits = logits - logits.logsumexp(-1, keepdim=True)  # (..., N, K), normalized
        super().__init__(logits.shape[:-2], logits.shape[-2:], validate_args=validate_args)

    @property
    def num_states(self) -> int:
        """:math:`K^N`, the number of joint states."""
        N, K = self.event_shape
        return K**N

    @lazy_property
    def probs(self) -> Tensor:
        return self.logits.exp()  # (..., N, K)

    @property
    def mean(self) -> Tensor:
        return self.probs

    def expand(self, batch_shape, _instance=None):
        new = self._get_checked_instance(CategoricalProduct, _instance)
        batch_shape = torch.Size(batch_shape)
        new.logits = self.logits.expand(batch_shape + self.event_shape)
        super(CategoricalProduct, new).__init__(batch_shape, self.event_shape, validate_args=False)
        new._validate_args = self._validate_args
        return new

    def sample(self, sample_shape=torch.Size()) -> Tensor:
        with torch.no_grad():
            index = torch.distributions.Categorical(logits=self.logits).sample(sample_shape)
            return F.one_hot(index, self.event_shape[-1]).to(self.logits.dtype)

    def log_prob(self, value: Tensor) -> Tensor:
        if self._validate_args:
            self._validate_sample(value)
        return (value * self.logits).sum((-2, -1))  # (..., *batch)

    def entropy(self) -> Tensor:
        return -(self.probs * self.logits).sum((-2, -1))

    def enumerate_support(self, expand: bool = True) -> Tensor:
        N, K = self.event_shape
        states = joint_states(N, K, dtype=self.logits.dtype, device=self.logits.device)  # (S, N, K)
        states = states.reshape((-1,) + (1,) * len(self.batch_shape) + (N, K))
        if expand:
            states = states.expand((-1,) + self.batch_shape + (N, K))
        return states
