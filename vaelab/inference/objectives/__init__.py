r"""Training objectives, one module each, selected by ``objective.name``.

Every objective is a :class:`pyro.infer.ELBO` (Pyro's own or a vaelab subclass) and is driven the
same way by :func:`vaelab.runs.train.train`::

    loss = objective.loss_and_grads(vae.model, vae.guide, x, beta, temperature)

``loss`` is the negative bound summed over the batch (nats); gradients land in ``.grad`` of the
parameters, and one torch optimizer steps them. A builder receives the ``[objective]`` section and
the :class:`~vaelab.vae.VAE`, and refuses (with :class:`~vaelab.registry.ConfigError`) a model it
does not fit.

The registry lives in :mod:`~vaelab.inference.objectives.registry`, which every objective module
imports; this package collects the modules.
"""

from __future__ import annotations

from vaelab.inference.objectives import (
    arm,
    disarm,
    dreg,
    enum,
    graph,
    iwae,
    mean_field,
    reinforce_loo,
    relax,
    renyi,
    stl,
    trace,
    vimco,
)
from vaelab.inference.objectives.registry import OBJECTIVES, build_objective

__all__ = [
    "OBJECTIVES",
    "arm",
    "build_objective",
    "disarm",
    "dreg",
    "enum",
    "graph",
    "iwae",
    "mean_field",
    "reinforce_loo",
    "relax",
    "renyi",
    "stl",
    "trace",
    "vimco",
]
