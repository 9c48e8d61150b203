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
from vaelab.registry import ConfigError, Entry, Registry

__all__ = ["OBJECTIVES", "build_objective", "compiles", "jit_fallback_reason", "objective_entry"]

OBJECTIVES: Registry[ELBO] = Registry("objective")


def compiles(builder):
    """Mark an objective's builder as having a compiled (JIT) variant for ``objective.jit``."""
    builder.has_jit = True
    return builder


def objective_entry(cfg: Any) -> Entry:
    """The registry entry of ``cfg.name``: the one resolution bound to the section
    (:attr:`~vaelab.config.NamedSection.entry`, no lookup), or, for an ``[objective]`` section
    written by hand (``ObjectiveConfig(name="iwae")``), looked up here, once.

    :raises ConfigError: an unknown name (with the choices), or ``auto`` unresolved.
    """
    entry = getattr(cfg, "entry", None)
    if entry is None and cfg.name == "auto":
        raise ConfigError(
            "objective.name = 'auto' is decided from the prior and guide family when a config is "
            "resolved (vaelab.load_config, vaelab.resolve.resolve): build from a resolved "
            "config, or name the objective (e.g. 'mean_field' or 'trace')")
    return entry if entry is not None else OBJECTIVES.entry(cfg.name, key="objective.name")


def jit_fallback_reason(cfg: Any, vae: Any, world_size: int = 1,
                        entry: Entry | None = None) -> str | None:
    """Why ``objective.jit = "auto"`` must run eager, or None when it may compile.

    :param entry: the objective's entry (default: :func:`objective_entry`).
    """
    entry = entry if entry is not None else objective_entry(cfg)
    if not getattr(entry.builder, "has_jit", False):
        return f"objective {cfg.name!r} has no compiled variant"
    if world_size > 1:
        return f"{world_size} processes train (the JIT and DistributedDataParallel do not mix)"
    blockers = jit_blockers(vae)
    if blockers:
        return f"not on the JIT allowlist: {', '.join(blockers)}"
    return None


def build_objective(cfg: Any, vae: Any, world_size: int = 1) -> ELBO:
    """The objective ``cfg`` names, configured from ``cfg``, checked against ``vae``: built by
    its resolved entry (:func:`objective_entry`; a section written by hand is looked up once).

    ``cfg.jit = "auto"`` becomes true or false here (:func:`jit_fallback_reason`; a fallback is
    said in one note).

    :param cfg: the ``[objective]`` section, a :class:`~vaelab.config.ObjectiveConfig`.
    :param vae: the :class:`~vaelab.vae.VAE` it will train.
    :param world_size: processes training together.
    """
    entry = objective_entry(cfg)
    if cfg.jit == "auto":
        why = jit_fallback_reason(cfg, vae, world_size, entry)
        if why is not None and getattr(entry.builder, "has_jit", False):
            note(f"objective.jit = 'auto': eager, {why}")
        cfg = cfg.model_copy(update={"jit": why is None})
    return entry.builder(cfg, vae)
