r"""The support of the pixel likelihoods: the grid of ``num_levels`` points in [0, 1].

Both pixel likelihoods,
:class:`~vaelab.model.distributions.discretized_logistic.DiscretizedLogistic` and
:class:`~vaelab.model.distributions.pixel_categorical.PixelCategorical`, live on the grid

.. math:: x_k = k \, \Delta, \qquad \Delta = \frac{1}{L - 1}, \qquad k = 0, \dots, L - 1,

i.e. 8-bit data given as ``level / 255`` (``L = 256``). Their ``log_prob`` is a log *probability
mass* on that grid, so their bits/dim are directly comparable, and the likelihood registry can
treat both uniformly on [0, 1]-scaled data.
"""

from __future__ import annotations

from torch import Tensor
from torch.distributions import constraints

__all__ = ["UnitGrid"]


class UnitGrid(constraints.Constraint):
    r"""Constrain to the grid :math:`\{k / (L - 1) : k = 0, \dots, L - 1\}` in [0, 1].

    A value passes when ``value * (L - 1)`` lies in ``[0, L - 1]`` and is within ``atol`` (in units
    of levels, i.e. a fraction of the bin width) of an integer. The tolerance absorbs the rounding
    of ``level / 255`` in float32 (about ``3e-5`` levels).

    :param int num_levels: number of grid points ``L`` (256 for 8-bit data).
    :param float atol: tolerance in units of one level.
    """

    is_discrete = True
    event_dim = 0

    def __init__(self, num_levels: int, atol: float = 1e-3):
        self.num_levels = int(num_levels)
        self.atol = float(atol)
        super().__init__()

    def check(self, value: Tensor) -> Tensor:
        scaled = value * (self.num_levels - 1)  # in units of levels
        on_grid = (scaled - scaled.round()).abs() <= self.atol
        in_range = (scaled >= -self.atol) & (scaled <= self.num_levels - 1 + self.atol)
        return on_grid & in_range

    def __repr__(self) -> str:
        return f"{type(self).__name__}(num_levels={self.num_levels})"


def _check_num_levels(num_levels: int) -> int:
    if isinstance(num_levels, bool) or not isinstance(num_levels, int) or num_levels < 2:
        raise ValueError(f"num_levels must be an int >= 2, got {num_levels!r}")
    return num_levels
