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

from vaelab.inference.objectives._jit import jit_blockers
from vaelab.notes import note
from vaelab.registry import Registry

__all__ = ["OBJECTIVES", "build_objective", "compiles", "jit_fallback_reason"]

OBJECTIVES: Registry[ELBO] = Registry("objective")


def compiles(builder):
    """Mark an objective's builder as having a compiled (JIT) variant for ``objective.jit``."""
    builder.has_jit = True
    return builder


def jit_fallback_reason(cfg: Any, vae: Any, world_size: int = 1) -> str | None:
    """Why ``objective.jit = "auto"`` must run eager, or None when it may compile."""
    if not getattr(OBJECTIVES.entry(cfg.name, key="objective.name").builder, "has_jit", False):
        return f"objective {cfg.name!r} has no compiled variant"
    if world_size > 1:
        return f"{world_size} processes train (the JIT and DistributedDataParallel do not mix)"
    blockers = jit_blockers(vae)
    if blockers:
        return f"not on the JIT allowlist: {', '.join(blockers)}"
    return None


def build_objective(cfg: Any, vae: Any, world_size: int = 1) -> ELBO:
    """The objective named by ``cfg.name``, configured from ``cfg``, checked against ``vae``.

    ``cfg.jit = "auto"`` becomes true or false here (:func:`jit_fallback_reason`; a fallback is
    said in one note).

    :param cfg: the ``[objective]`` section, a :class:`~vaelab.config.ObjectiveConfig`.
    :param vae: the :class:`~vaelab.vae.VAE` it will train.
    :param world_size: processes training together.
    """
    if cfg.jit == "auto":
        why = jit_fallback_reason(cfg, vae, world_size)
        if why is not None and getattr(OBJECTIVES.entry(cfg.name).builder, "has_jit", False):
            note(f"objective.jit = 'auto': eager, {why}")
        cfg = cfg.model_copy(update={"jit": why is None})
    return OBJECTIVES.entry(cfg.name, key="objective.name").builder(cfg, vae)
