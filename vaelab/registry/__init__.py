r"""Name → builder registries, resolved once when a config is validated, and user components.

Every swappable component (prior, likelihood, latent type, posterior family, network, objective,
data set, IS proposal) lives in a :class:`Registry`. A registry entry pairs a builder with a
small pydantic options model, so a config such as ``likelihood = {name = "normal", scale = 0.1}``
is checked against the options of ``normal`` and nothing else: unknown names and unknown option
keys fail with the valid choices and a close-match suggestion.

**Your own components.** Any registry also takes a component from the user's own code, its
options validated exactly like a built-in's. Three ways to name one:

1. *by import path* in the config, ``prior = "my_pkg.priors:LogisticPrior"`` (or a table
   ``{name = "my_pkg.priors:LogisticPrior", scale = 0.5}``): the registry imports ``my_pkg.priors``
   and takes ``LogisticPrior``. The saved config keeps the path, so a run folder reloads from its
   config alone wherever the module is importable (installed, on ``PYTHONPATH``, or in the
   current directory);
2. *by a registered name*: a module listed in the config's top-level ``plugins = ["my_pkg"]`` is
   imported before resolution, and its :func:`register` decorators add names such as
   ``prior = "logistic"``;
3. *by an installed package*: every entry point of the group ``vaelab.plugins``
   (:data:`ENTRY_POINT_GROUP`) is loaded once, before the first resolution; an entry point is a
   module to import (``my_pkg = "my_pkg.components"``) or a function to call that registers
   (``my_pkg = "my_pkg:register_all"``).

A **component** is either

* a class or function decorated with :func:`register` (it carries its kind and options), or
* a class or function with an attribute ``Options``, a subclass of :class:`Options` (for a
  prior or a guide family, an optional ``latents`` tuple names the latent types it fits;
  default ``("gaussian",)``).

Either way it is called as the built-in builders are (:data:`BUILDER_CALLS`), e.g. a prior
``obj(options, latent_dim, ctx)`` returning a :class:`~vaelab.model.priors.Prior`; a class is
its own builder (its ``__init__`` takes the options first). Data sets and objectives read their
config section (``[data]``, ``[objective]``) rather than options of their own, so they are
named by the decorator only.

Example::

    from pydantic import Field

    from vaelab import Options, register
    from vaelab.model.priors import Prior

    class LogisticOptions(Options):
        scale: float = Field(0.55, gt=0.0)

    @register("prior", "logistic", LogisticOptions)
    class LogisticPrior(Prior):
        def __init__(self, opts, latent_dim, ctx): ...
        def forward(self, temperature=None): ...

    # config: plugins = ["my_module"]  and  [model] prior = {name = "logistic", scale = 0.5}
    # or, with no plugins line:         [model] prior = "my_module:LogisticPrior"


The package, one job per module:

* :mod:`~vaelab.registry.errors`: :class:`ConfigError` and the one-line messages that name the key;
* :mod:`~vaelab.registry.options`: :class:`Options` and the protocols of a component
  (:class:`ComponentSpec`, :data:`BUILDER_CALLS`, :func:`fits`);
* :mod:`~vaelab.registry.core`: :class:`Registry`, :data:`REGISTRIES` and :func:`register`;
* :mod:`~vaelab.registry.plugins`: the import machine (import paths, ``plugins = [...]``, entry
  points).
"""

from __future__ import annotations

# the names of __all__, and (``X as X``) the other public names of the old one-module registry
from vaelab.registry.core import REGISTRIES, Registry, register
from vaelab.registry.core import registry_for as registry_for
from vaelab.registry.errors import ConfigError, suggest
from vaelab.registry.errors import format_validation_error as format_validation_error
from vaelab.registry.options import BUILDER_CALLS, Options, fits
from vaelab.registry.options import DEFAULT_LATENTS as DEFAULT_LATENTS
from vaelab.registry.options import ComponentSpec as ComponentSpec
from vaelab.registry.options import Entry as Entry
from vaelab.registry.plugins import ENTRY_POINT_GROUP, load_entry_points, load_plugins
from vaelab.registry.plugins import import_module as import_module

__all__ = [
    "BUILDER_CALLS",
    "ENTRY_POINT_GROUP",
    "REGISTRIES",
    "ConfigError",
    "Options",
    "Registry",
    "fits",
    "load_entry_points",
    "load_plugins",
    "register",
    "suggest",
]
