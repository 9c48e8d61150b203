r"""Training objectives, one module each, selected by ``objective.name``.

Every objective is a :class:`pyro.infer.ELBO` (Pyro's own or a vaelab subclass) and is driven the
same way by :func:`vaelab.inference.train.train`::

    loss = objective.loss_and_grads(vae.model, vae.guide, x, beta, temperature)

``loss`` is the negative bound summed over the batch (nats); gradients land in ``.grad`` of the
parameters, and one torch optimizer steps them. A builder receives the ``[objective]`` section and
the :class:`~vaelab.vae.VAE`, and refuses (with :class:`~vaelab.registry.ConfigError`) a model it
does not fit.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from vaelab.registry import Registry

if TYPE_CHECKING:  # pragma: no cover
    from pyro.infer import ELBO

    from vaelab.config import ObjectiveConfig
    from vaelab.vae import VAE

__all__ = ["OBJECTIVES", "build_objective"]

OBJECTIVES: Registry["ELBO"] = Registry("objective")


def build_objective(cfg: "ObjectiveConfig", vae: "VAE") -> "ELBO":
    """The objective named by ``cfg.name``, configured from ``cfg``, checked against ``vae``."""
    return OBJECTIVES.entry(cfg.name, key="objective.name").builder(cfg, vae)


# modules that register objectives (import order = listing order)
from vaelab.inference.objectives import trace  # noqa: E402,F401
from vaelab.inference.objectives import mean_field  # noqa: E402,F401
from vaelab.inference.objectives import renyi  # noqa: E402,F401
from vaelab.inference.objectives import iwae  # noqa: E402,F401
from vaelab.inference.objectives import dreg  # noqa: E402,F401
from vaelab.inference.objectives import stl  # noqa: E402,F401
from vaelab.inference.objectives import graph, enum  # noqa: E402,F401  (discrete latents)
