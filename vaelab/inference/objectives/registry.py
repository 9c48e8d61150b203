"""The registry of training objectives, :data:`OBJECTIVES`, and :func:`build_objective`.

Each objective module registers its builder here with ``@OBJECTIVES.register(name)``; a builder
receives the ``[objective]`` section (:class:`~vaelab.config.ObjectiveConfig`) and the
:class:`~vaelab.vae.VAE`, and refuses (with :class:`~vaelab.registry.ConfigError`) a model it does
not fit. Kept apart from the package ``__init__`` so that the objective modules import this
module, not the package that imports them.
"""

from __future__ import annotations

from typing import Any

from pyro.infer import ELBO

from vaelab.registry import Registry

__all__ = ["OBJECTIVES", "build_objective"]

OBJECTIVES: Registry[ELBO] = Registry("objective")


def build_objective(cfg: Any, vae: Any) -> ELBO:
    """The objective named by ``cfg.name``, configured from ``cfg``, checked against ``vae``.

    :param cfg: the ``[objective]`` section, a :class:`~vaelab.config.ObjectiveConfig`.
    :param vae: the :class:`~vaelab.vae.VAE` it will train.
    """
    return OBJECTIVES.entry(cfg.name, key="objective.name").builder(cfg, vae)
