r"""Exp(1) draws bit for bit those of torch's ``exponential_``, faster on the CPU.

On the CPU, float32 ``Tensor.exponential_`` draws a float64 uniform u from the generator's
stream and returns :math:`-\log(1 - u)` one element at a time. The same stream through the
vectorized ``rand`` and ``log1p`` gives the same floats and leaves the generator in the same
state, about twice as fast. Exponential races use it where the draws must stay torch's own: the
categorical draws of fused IS (``multinomial`` of one sample is :math:`\arg\max_k p_k / E_k`,
:mod:`vaelab.inference.fused`) and the conditional Gumbels of GR-MCK
(:mod:`vaelab.guide.straight_through.gr_mck`).
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["exponential"]

#: whether this torch's float32 ``exponential_`` on the CPU is ``-log1p(-u)`` of its float64
#: uniform stream (checked once, on a private generator)
_EXP_FROM_UNIFORM: list[bool] = []


def exponential(shape: tuple[int, ...], like: Tensor) -> Tensor:
    r"""Exp(1) draws of ``shape`` with ``like``'s dtype and device, bit for bit
    ``torch.empty(shape).exponential_()`` and the same use of the global RNG: through ``rand``
    and ``log1p`` where a check on a private generator finds the identity (float32 on the CPU),
    else ``exponential_`` itself."""
    if like.device.type != "cpu" or like.dtype != torch.float32 or not _exp_from_uniform():
        return torch.empty(shape, dtype=like.dtype, device=like.device).exponential_()
    u = torch.rand(shape, dtype=torch.float64)
    return u.neg_().log1p_().neg_().to(torch.float32)


def _exp_from_uniform() -> bool:
    if not _EXP_FROM_UNIFORM:
        a, b = torch.Generator().manual_seed(1), torch.Generator().manual_seed(1)
        e = torch.empty(4099).exponential_(generator=a)
        u = torch.rand(4099, dtype=torch.float64, generator=b)
        same = torch.equal(e, u.neg_().log1p_().neg_().float())
        _EXP_FROM_UNIFORM.append(same and torch.equal(torch.rand(3, generator=a),
                                                      torch.rand(3, generator=b)))
    return _EXP_FROM_UNIFORM[0]
