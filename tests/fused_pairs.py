"""The traced path and the fused one on the same draws, for the tests of
``vaelab.inference.fused`` (one latent site), ``fused_hierarchy`` (several) and ``fast_ais``:
each helper runs both under one seed and returns (traced, fused)."""

from __future__ import annotations

import torch

from vaelab.inference.ais import ais
from vaelab.inference.fast_ais import FusedLogJoint
from vaelab.inference.fused import fused_log_weights
from vaelab.inference.marginal import estimate_marginal


def estimates(vae, x: torch.Tensor, seed: int = 3, **kwargs):
    """``estimate_marginal`` traced, then with ``fused_log_weights(vae)``, each after
    ``torch.manual_seed(seed)``; ``kwargs``: its sizes (num_samples, batch_size, chunk_size)."""
    model, guide = vae.eval_pair()
    runs = []
    for fused in (None, fused_log_weights(vae)):
        torch.manual_seed(seed)
        runs.append(estimate_marginal(model, guide, x, fused=fused, **kwargs))
    return tuple(runs)


def ais_runs(vae, x: torch.Tensor, num_chains: int, base: str, seed: int = 5, **kwargs):
    """``ais`` with the traced log joint, then with :class:`FusedLogJoint`, each after
    ``torch.manual_seed(seed)``; ``kwargs``: its settings (num_steps, num_leapfrog, ...)."""
    model, guide = vae.eval_pair()
    runs = []
    for fused in (False, True):
        torch.manual_seed(seed)
        lj = FusedLogJoint(vae, x, num_chains=num_chains, base=base) if fused else None
        runs.append(ais(model, guide, x, num_chains=num_chains, base=base, log_joint=lj,
                        **kwargs))
    return tuple(runs)
