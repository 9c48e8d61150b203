r"""Helpers for categorical latents: the joint states, the exact KL, the logits of a wrapped site.

:func:`joint_states` lists the :math:`K^N` one-hot joint states of N variables of K classes in
the ``itertools.product`` order (the support of
:class:`~vaelab.model.distributions.categorical_product.CategoricalProduct`, and the states exact
enumeration sums over); :func:`kl_categorical` is the exact KL between the unrelaxed
categoricals,

.. math:: \mathrm{KL}(q \,\|\, p) = \sum_{k} q_k (\log q_k - \log p_k),

the convention of Jang et al. [1] for a relaxed latent; :func:`logits_of` reads the logits of any
categorical-type distribution through its ``to_event`` / mask wrappers.

References

1. E. Jang, S. Gu, B. Poole, *Categorical Reparameterization with Gumbel-Softmax*, ICLR 2017.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["joint_states", "kl_categorical", "logits_of"]


def joint_states(
    num_variables: int,
    num_classes: int,
    start: int = 0,
    stop: int | None = None,
    *,
    dtype: torch.dtype | None = None,
    device: torch.device | str | None = None,
) -> Tensor:
    r"""One-hot joint states ``start .. stop-1`` of N variables with K classes, ``(S, N, K)``.

    State :math:`s` has class :math:`\lfloor s / K^{N-n} \rfloor \bmod K` for variable
    :math:`n = 1..N` (the ``itertools.product`` order).
    """
    N, K = num_variables, num_classes
    stop = K**N if stop is None else stop
    s = torch.arange(start, stop, device=device)  # (S,)
    powers = K ** torch.arange(N - 1, -1, -1, device=device)  # (N,)
    index = (s.unsqueeze(-1) // powers) % K  # (S, N)
    return F.one_hot(index, K).to(dtype or torch.get_default_dtype())  # (S, N, K)


def kl_categorical(q_logits: Tensor, p_logits: Tensor) -> Tensor:
    r"""Exact KL divergence between the unrelaxed categoricals,

    .. math:: \mathrm{KL}(q \,\|\, p) = \sum_{k} q_k (\log q_k - \log p_k),

    summed over the last dimension (the Jang et al. [1] convention for a relaxed latent; terms
    with :math:`q_k = 0` contribute 0, :math:`p_k = 0 < q_k` gives ``inf``).

    :param q_logits: unnormalized log-probabilities of :math:`q`, shape ``(..., K)``.
    :param p_logits: unnormalized log-probabilities of :math:`p`, broadcastable to ``q_logits``.
    :returns: KL divergence of shape ``broadcast(...)`` (last dimension summed out).
    """
    log_q = q_logits.log_softmax(dim=-1)  # (..., K)
    log_p = p_logits.log_softmax(dim=-1)  # (..., K)
    q = log_q.exp()
    log_ratio = torch.where(q > 0, log_q - log_p, torch.zeros_like(log_q))
    return (q * log_ratio).sum(-1)


def logits_of(fn) -> Tensor:
    """The logits of a (possibly masked / ``to_event``-wrapped) categorical-type distribution."""
    while not hasattr(fn, "logits") and hasattr(fn, "base_dist"):
        fn = fn.base_dist
    return fn.logits
