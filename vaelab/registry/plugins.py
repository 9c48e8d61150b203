"""The import machine: user modules, the config's ``plugins = [...]`` and installed entry points.

:func:`import_module` imports a user module for its components (searching the current directory
too, as ``python`` does and the ``vaelab`` command does not), turning any failure into one
:class:`~vaelab.registry.errors.ConfigError` line; :func:`load_plugins` imports the modules of a
config's ``plugins`` list; :func:`load_entry_points` loads, once per process, every entry point of
the group :data:`ENTRY_POINT_GROUP` (a module to import, or a function to call that registers).
"""

from __future__ import annotations

import importlib
import importlib.metadata
import os
import sys
from types import ModuleType
from typing import Any

from vaelab.registry.errors import ConfigError
from vaelab.registry.options import ComponentSpec

__all__ = [
    "ENTRY_POINT_GROUP",
    "import_module",
    "load_entry_points",
    "load_plugins",
]


def _is_dotted(name: str) -> bool:
    return bool(name) and all(part.isidentifier() for part in name.split("."))



def _describe(obj: Any) -> str:
    if isinstance(obj, ModuleType):
        return f"module {obj.__name__!r}"
    if isinstance(obj, type):
        return f"class {obj.__qualname__!r}"
    if callable(obj):
        return f"{type(obj).__name__} {getattr(obj, '__qualname__', repr(obj))!r}"
    return f"a {type(obj).__name__} ({obj!r:.40})"


def _one_line(err: BaseException) -> str:
    text = " ".join(str(err).split())
    return text if isinstance(err, ConfigError) else f"{type(err).__name__}: {text}"


def import_module(name: str, where: str = "") -> ModuleType:
    """Import a user module for its components, or raise one line naming it.

    When the module is not found on ``sys.path``, the current directory is searched too (the
    ``vaelab`` command, unlike ``python``, does not put it on the path).

    :param where: the prefix naming the config key (``"model.prior: "``).
    :raises ConfigError: the module does not import (its ImportError's message), or importing
        it raised (e.g. it registers a name that already exists).
    """
    if not _is_dotted(name):
        raise ConfigError(f"{where}{name!r} is not a module name (dotted Python identifiers, "
                          "e.g. 'my_pkg.components')")
    try:
        try:
            return importlib.import_module(name)
        except ModuleNotFoundError as err:
            cwd = os.getcwd()
            if err.name != name.split(".")[0] or cwd in sys.path or "" in sys.path:
                raise
            sys.path.append(cwd)
            try:
                return importlib.import_module(name)
            finally:
                sys.path.remove(cwd)
    except ImportError as err:
        hint = ""
        if name.endswith(".py"):
            hint = f" (a module name, not a file name: {name.removesuffix('.py')!r})"
        elif isinstance(err, ModuleNotFoundError) and err.name == name.split(".")[0]:
            hint = (f" (a module is found on PYTHONPATH, among installed packages or in the "
                    f"current directory {os.getcwd()!r})")
        raise ConfigError(f"{where}module {name!r} does not import: {err}{hint}") from None
    except Exception as err:  # the user's module raised while importing
        raise ConfigError(f"{where}importing module {name!r} failed: {_one_line(err)}") from None


def load_plugins(modules: list[str] | tuple[str, ...], key: str = "plugins") -> None:
    """Import the entry points' modules (once per process) and then ``modules``, so that their
    :func:`register` decorators add their names before a config is resolved.

    :raises ConfigError: one line naming ``key``, the module and what went wrong.
    """
    load_entry_points()
    for name in modules:
        import_module(name, f"{key}: ")


#: the entry-point group through which installed packages advertise vaelab components
ENTRY_POINT_GROUP = "vaelab.plugins"
_entry_points_loaded = False


def load_entry_points() -> None:
    """Load every :data:`ENTRY_POINT_GROUP` entry point, once per process: an entry point
    naming a module imports it; one naming a function calls it with no arguments (it
    registers); one naming a component imports it (its module registered it).

    :raises ConfigError: one line naming the entry point and its package (then the next call
        tries again).
    """
    global _entry_points_loaded
    if _entry_points_loaded:
        return
    _entry_points_loaded = True  # set first: a plugin that resolves a config does not recurse
    try:
        for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
            _load_entry_point(ep)
    except BaseException:
        _entry_points_loaded = False
        raise


def _load_entry_point(ep: importlib.metadata.EntryPoint) -> None:
    dist = getattr(ep, "dist", None)
    where = (f"entry point {ep.name!r} = {ep.value!r} (group {ENTRY_POINT_GROUP!r}, package "
             f"{dist.name if dist is not None else '?'!r}): ")
    obj: Any = import_module(ep.module, where)
    for part in (ep.attr or "").split(".") if ep.attr else []:
        if not hasattr(obj, part):
            raise ConfigError(f"{where}module {ep.module!r} has no {ep.attr!r}")
        obj = getattr(obj, part)
    spec = getattr(obj, "__vaelab_component__", None)
    if isinstance(obj, ModuleType) or (isinstance(spec, ComponentSpec) and spec.builder is obj):
        return  # importing the module registered its components
    if not callable(obj):
        raise ConfigError(f"{where}{_describe(obj)} is neither a module nor a function that "
                          "registers components")
    try:
        obj()
    except Exception as err:
        raise ConfigError(f"{where}calling {ep.attr!r} failed: {_one_line(err)}") from None
