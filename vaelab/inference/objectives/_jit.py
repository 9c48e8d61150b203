"""Argument handling for Pyro's JIT objectives.

``torch.jit.trace`` takes tensors only, and Pyro compiles one graph per argument count; a Python
float β or a ``None`` temperature would break it, and a float changing every warm-up step would
recompile. :class:`TensorArgsMixin` drops trailing defaults and turns β into a tensor, so the
loop can call every objective the same way: ``loss_and_grads(model, guide, x, beta, temperature)``.
"""

from __future__ import annotations

import torch

__all__ = ["TensorArgsMixin", "tensor_args"]


def tensor_args(x, beta=1.0, temperature=None) -> tuple:
    """``(x,)``, ``(x, β)`` or ``(x, β, τ)`` as tensors, omitting trailing defaults."""
    if temperature is not None:
        return x, torch.as_tensor(beta, dtype=x.dtype), torch.as_tensor(temperature)
    if isinstance(beta, (int, float)) and beta == 1.0:
        return (x,)
    return x, torch.as_tensor(beta, dtype=x.dtype)


class TensorArgsMixin:
    """Mix into a ``Jit*_ELBO`` before the Pyro class: converts the loop's arguments."""

    def loss(self, model, guide, *args, **kwargs):
        return super().loss(model, guide, *tensor_args(*args), **kwargs)

    def loss_and_grads(self, model, guide, *args, **kwargs):
        return super().loss_and_grads(model, guide, *tensor_args(*args), **kwargs)

    def differentiable_loss(self, model, guide, *args, **kwargs):
        return super().differentiable_loss(model, guide, *tensor_args(*args), **kwargs)
