r"""A 256-way categorical over [0, 1]-scaled pixels.

:class:`PixelCategorical` is the ordinary categorical with its values rescaled to the grid
:math:`x_k = k / (L - 1)`, the support of
:class:`~vaelab.model.distributions.discretized_logistic.DiscretizedLogistic`:
:math:`\log P(x) = \mathrm{log\_softmax}(\ell)_{k(x)}`, :math:`k(x) = \mathrm{round}(x (L - 1))`.
"""

from __future__ import annotations

import torch
from pyro.distributions.torch_distribution import TorchDistribution
from torch import Tensor
from torch.distributions import constraints
from torch.distributions.utils import lazy_property

from vaelab.model.distributions.unit_grid import UnitGrid, _check_num_levels

__all__ = ["PixelCategorical"]


class PixelCategorical(TorchDistribution):
    r"""Categorical over the grid :math:`x_k = k / (L - 1)` in [0, 1], parameterized by logits.

    :math:`\log P(x) = \mathrm{log\_softmax}(\ell)_{k(x)}` with :math:`k(x) = \mathrm{round}(x (L -
    1))`; samples are returned as :math:`k / (L - 1)`. It is the ordinary ``Categorical`` with its
    values rescaled to the same support as :class:`DiscretizedLogistic`, so the likelihood
    registry can feed both the same ``level / 255`` data. The event shape is ``()``: a pixel is
    one draw, the logits carry one extra trailing dimension of size :math:`L`.

    .. note:: The logits are ``L`` times the size of the data: 256x the memory of a Bernoulli
        decoder. Chunk the batch or the particles accordingly.

    :param logits: unnormalized log-probabilities, shape ``batch_shape + (L,)``, e.g.
        ``(B, D, 256)``.
    :param int num_levels: number of levels :math:`L`; must equal ``logits.shape[-1]``.
    """

    arg_constraints = {"logits": constraints.real_vector}
    has_rsample = False
    has_enumerate_support = True

    def __init__(self, logits, num_levels: int = 256, *, validate_args=None):
        self.num_levels = _check_num_levels(num_levels)
        if logits.dim() < 1 or logits.shape[-1] != self.num_levels:
            raise ValueError(
                f"logits must have a trailing dimension of size num_levels={self.num_levels}, "
                f"got shape {tuple(logits.shape)}"
            )
        self.logits = logits - logits.logsumexp(dim=-1, keepdim=True)  # normalized
        super().__init__(self.logits.shape[:-1], validate_args=validate_args)

    @constraints.dependent_property(is_discrete=True, event_dim=0)
    def support(self):
        return UnitGrid(self.num_levels)

    @lazy_property
    def probs(self) -> Tensor:
        return self.logits.exp()  # batch_shape + (L,)

    def expand(self, batch_shape, _instance=None):
        new = self._get_checked_instance(PixelCategorical, _instance)
        batch_shape = torch.Size(batch_shape)
        new.num_levels = self.num_levels
        new.logits = self.logits.expand(batch_shape + (self.num_levels,))
        if "probs" in self.__dict__:
            new.probs = self.probs.expand(batch_shape + (self.num_levels,))
        super(PixelCategorical, new).__init__(batch_shape, validate_args=False)
        new._validate_args = self._validate_args
        return new

    def _grid(self) -> Tensor:
        levels = torch.arange(self.num_levels, dtype=self.logits.dtype, device=self.logits.device)
        return levels / (self.num_levels - 1)  # (L,)

    def log_prob(self, value):
        if self._validate_args:
            self._validate_sample(value)
        k = (value * (self.num_levels - 1)).round().clamp(0, self.num_levels - 1).long()
        k = k.unsqueeze(-1)  # sample_shape + batch_shape + (1,)
        k, log_pmf = torch.broadcast_tensors(k, self.logits)
        return log_pmf.gather(-1, k[..., :1]).squeeze(-1)

    def sample(self, sample_shape=torch.Size()):
        sample_shape = torch.Size(sample_shape)
        with torch.no_grad():
            probs_2d = self.probs.reshape(-1, self.num_levels)  # (prod(batch), L)
            k = torch.multinomial(probs_2d, sample_shape.numel(), replacement=True).T
            k = k.reshape(self._extended_shape(sample_shape))
            return k.to(self.logits.dtype) / (self.num_levels - 1)

    def enumerate_support(self, expand: bool = True) -> Tensor:
        grid = self._grid().reshape((-1,) + (1,) * len(self.batch_shape))
        if expand:
            grid = grid.expand((-1,) + self.batch_shape)
        return grid

    @property
    def mean(self):
        return (self.probs * self._grid()).sum(-1)

    @property
    def variance(self):
        grid = self._grid()
        mean = (self.probs * grid).sum(-1, keepdim=True)
        return (self.probs * (grid - mean) ** 2).sum(-1)

    def entropy(self):
        return -(self.probs * self.logits).sum(-1)
