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
"""

from __future__ import annotations

import difflib
import importlib
import importlib.metadata
import os
import re
import sys
from dataclasses import dataclass
from types import ModuleType
from typing import Any, Callable, ClassVar, Generic, TypeVar

from pydantic import BaseModel, ConfigDict, ValidationError

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

T = TypeVar("T")


class ConfigError(ValueError):
    """A configuration value is unknown, malformed or does not fit the data.

    The message always names the offending key (dotted path), the bad value and, where there is a
    finite set of valid choices, the choices and the closest match.
    """


class Options(BaseModel):
    """Base class of a component's options: strict about unknown keys, immutable once resolved.

    Options parsed by a :class:`Registry` know their entry, so a resolved component is built
    with one call and no name is looked up again: ``prior = cfg.model.prior.build(latent_dim,
    ctx)``.
    """

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    #: set on the per-entry subclass that :meth:`Registry.register` creates
    registry_entry: ClassVar["Entry | None"] = None

    name: str

    def build(self, *args: Any, **kwargs: Any) -> Any:
        """Call the registered builder with these options."""
        entry = type(self).registry_entry
        if entry is None:
            raise TypeError(f"{type(self).__name__} was not parsed by a registry; nothing to build")
        return entry.builder(self, *args, **kwargs)

    @property
    def component(self) -> type | None:
        """The registered class whose class attributes describe this component, if any."""
        entry = type(self).registry_entry
        return None if entry is None else entry.component


def suggest(value: str, choices: list[str] | tuple[str, ...]) -> str:
    """`` (did you mean 'x'?)`` when ``value`` is close to one of ``choices``, else ``''``."""
    close = difflib.get_close_matches(str(value), list(choices), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _fields_at(model: type[BaseModel] | None, path: list) -> list[str] | None:
    """The field names of the (nested) pydantic model reached by ``path``, if it is one."""
    for part in path:
        field = model.model_fields.get(part) if model is not None else None
        ann = field.annotation if field is not None else None
        model = ann if isinstance(ann, type) and issubclass(ann, BaseModel) else None
    return list(model.model_fields) if model is not None else None


def format_validation_error(
    key: str,
    err: ValidationError,
    model: type[BaseModel] | None = None,
    list_keys: bool = True,
) -> str:
    """One clause per pydantic error, each naming the dotted key and the offending input.

    An unknown key (pydantic's ``extra_forbidden``) gets a close-match suggestion among the keys
    of its table when ``model`` (the validated class) is given, and the list of valid keys unless
    ``list_keys`` is false; a value outside a ``Literal`` gets a suggestion among its choices.

    :param key: dotted prefix of every location (``""`` for a whole config).
    :param err: the pydantic error.
    :param model: the pydantic model class that raised ``err``.
    :param list_keys: whether to list the valid keys after an unknown key.
    """
    lines = []
    for e in err.errors():
        parts = [p for p in e["loc"] if p != "__root__"]
        loc = ".".join(str(p) for p in parts)
        full = f"{key}.{loc}" if key and loc else (key or loc)
        got = e.get("input")
        if e["type"] == "extra_forbidden":
            fields = _fields_at(model, parts[:-1]) if parts else None
            hint = ""
            if fields:
                hint = suggest(str(parts[-1]), fields)
                if list_keys:
                    hint += f"; valid keys: {', '.join(fields)}"
            lines.append(f"{full}: unknown key (set to {got!r}){hint}")
            continue
        hint = ""
        if e["type"] == "literal_error":
            choices = re.findall(r"'([^']*)'", str(e.get("ctx", {}).get("expected", "")))
            hint = suggest(str(got), choices)
        msg = e["msg"].removeprefix("Value error, ")  # pydantic's prefix for our validators
        lines.append(f"{full}: {msg} (got {got!r}){hint}")
    return "; ".join(lines)


@dataclass(frozen=True)
class Entry(Generic[T]):
    """A registered component: its builder, its options model and, where one exists, the class
    whose class-level attributes describe it (read without building anything)."""

    name: str
    builder: Callable[..., T]
    options: type[Options]
    doc: str
    component: type | None = None
    #: latent types a user prior or guide family fits (besides the latent classes' own lists)
    latents: tuple[str, ...] = ()
    #: the module that defined the builder (named when a second one claims the name)
    origin: str = ""


#: the short kind a config, :func:`register` and error messages use for each registry's kind
_SHORT_KINDS = {"latent type": "latent", "guide family": "family", "data set": "dataset",
                "IS proposal": "proposal"}

#: how a builder of each kind is called (and what it returns): the protocol of a component
BUILDER_CALLS = {
    "prior": "obj(options, latent_dim, ctx) -> vaelab.model.priors.Prior",
    "likelihood": "obj(options, data_dim) -> vaelab.model.likelihoods.Likelihood",
    "latent": "obj(options, latent_dim) -> vaelab.model.latents.Latent",
    "family": "obj(options, latent) -> vaelab.guide.posteriors.Posterior",
    "network": "obj(options, io) -> vaelab.model.networks.Network",
    "proposal": "obj(options, model, guide) -> a Pyro guide",
    "objective": "obj(objective_config, vae) -> a Pyro ELBO",
    "dataset": "obj(data_config) -> vaelab.data.DataSplits",
}

#: kinds whose builders read their config section instead of options (named by decorator only)
_SECTION_KINDS = ("objective", "dataset")

#: the latent types a user prior or guide family fits unless it says otherwise
DEFAULT_LATENTS = ("gaussian",)

#: short kind → the registry of that kind; every :class:`Registry` adds itself when created
REGISTRIES: dict[str, "Registry"] = {}


@dataclass(frozen=True)
class ComponentSpec:
    """What :func:`register` attaches to a user component (``obj.__vaelab_component__``)."""

    kind: str
    builder: Callable[..., Any]
    options: type[Options]
    component: type | None = None
    latents: tuple[str, ...] = DEFAULT_LATENTS


class Registry(Generic[T]):
    """A named family of components, e.g. ``PRIORS`` or ``LIKELIHOODS``.

    ``entry(name)`` finds a registered name, or imports a ``"module:attr"`` path once (see the
    module docstring); names advertised by installed packages (:func:`load_entry_points`) are
    loaded on the first miss.

    Example::

        PRIORS = Registry("prior")

        @PRIORS.register("laplace", LaplaceOptions)
        def build_laplace(opts, latent_dim): ...

        opts = PRIORS.parse({"name": "laplace"}, key="model.prior")
        prior = PRIORS.build(opts, latent_dim=20)
    """

    def __init__(self, kind: str):
        self.kind = kind
        #: the short kind of configs and :func:`register` (``"latent"`` for ``"latent type"``)
        self.short = _SHORT_KINDS.get(kind, kind.replace(" ", "_"))
        self._entries: dict[str, Entry[T]] = {}
        self._imported: dict[str, Entry[T]] = {}  # "module:attr" → entry, kept out of names()
        REGISTRIES[self.short] = self

    def register(
        self,
        name: str,
        options: type[Options] | None = None,
        component: type | None = None,
        latents: tuple[str, ...] = (),
    ):
        """Decorator registering ``builder(options, *args)`` under ``name``.

        :param options: the pydantic options model (default: no options besides ``name``).
        :param component: the class the builder returns, when its class attributes carry facts
            that resolution reads (e.g. which priors a latent type admits).
        :param latents: for a prior or guide family not listed by a latent type's class, the
            latent types it fits.
        :raises ConfigError: ``name`` is taken by a different builder (re-registering the same
            definition, as a module reload does, replaces it).
        """

        def deco(builder: Callable[..., T]) -> Callable[..., T]:
            old = self._entries.get(name)
            if old is not None and not _same_definition(old.builder, builder):
                raise ConfigError(
                    f"{self.kind} {name!r} is already registered by {old.origin or 'vaelab'}; "
                    "choose another name"
                )
            self._entries[name] = self._make_entry(name, builder, options, component, latents)
            return builder

        return deco

    def _make_entry(
        self,
        name: str,
        builder: Callable[..., T],
        options: type[Options] | None,
        component: type | None,
        latents: tuple[str, ...],
    ) -> Entry[T]:
        # a subclass per entry, so that parsed options know their builder
        base = options or Options
        opts: type[Options] = type(base.__name__, (base,), {"__module__": base.__module__})
        entry = Entry(name, builder, opts, (builder.__doc__ or "").strip(), component,
                      tuple(latents), getattr(builder, "__module__", "") or "")
        opts.registry_entry = entry
        return entry

    def names(self) -> list[str]:
        return sorted(self._entries)

    def __contains__(self, name: str) -> bool:
        return name in self._entries

    def entry(self, name: str, key: str | None = None) -> Entry[T]:
        """The entry of a registered name or of a ``"module:attr"`` import path.

        :raises ConfigError: an unknown name (with the choices), or an import path whose module
            does not import, lacks the name, or holds something that is not a component.
        """
        if name in self._entries:
            return self._entries[name]
        if isinstance(name, str) and ":" in name:
            if name not in self._imported:
                self._imported[name] = self._import_entry(name, key)
            return self._imported[name]
        load_entry_points()  # installed packages may add the name
        if name not in self._entries:
            where = f"{key}: " if key else ""
            raise ConfigError(
                f"{where}unknown {self.kind} {name!r}{suggest(name, self.names())}; "
                f"valid choices: {', '.join(self.names())}"
            )
        return self._entries[name]

    def _import_entry(self, path: str, key: str | None) -> Entry[T]:
        """Import ``module:attr`` and make an entry of the component found there."""
        where = f"{key}: " if key else ""
        module_name, _, attr = (part.strip() for part in path.partition(":"))
        if not _is_dotted(module_name) or not _is_dotted(attr):
            raise ConfigError(
                f"{where}{path!r} is not an import path; expected 'module:name', e.g. "
                f"'my_pkg.priors:MyPrior', or one of the {self.kind} names: "
                f"{', '.join(self.names())}"
            )
        obj: Any = import_module(module_name, where)
        for part in attr.split("."):
            if not hasattr(obj, part):
                found = sorted(n for n, v in vars(obj).items()
                               if not n.startswith("_") and self._is_component(v))
                listed = (f"; {self.kind} components in it: {', '.join(found)}" if found
                          else f"; it holds no {self.kind} component")
                raise ConfigError(f"{where}module {module_name!r} has no {attr!r}"
                                  f"{suggest(part, found)}{listed}")
            obj = getattr(obj, part)
        spec = self._spec(obj, where)
        if spec is None:
            raise ConfigError(f"{where}{path!r} is {_describe(obj)}, not a vaelab component; "
                              f"{self.protocol()}")
        if spec.kind != self.short:
            other = REGISTRIES[spec.kind].kind if spec.kind in REGISTRIES else spec.kind
            raise ConfigError(f"{where}{path!r} is a {other} component, not a {self.kind}")
        return self._make_entry(path, spec.builder, spec.options, spec.component, spec.latents)

    def _spec(self, obj: Any, where: str = "") -> ComponentSpec | None:
        """The component ``obj`` is (decorated, or following the ``Options`` protocol), else None.

        :raises ConfigError: ``obj.Options`` exists but is not a :class:`Options` subclass.
        """
        spec = getattr(obj, "__vaelab_component__", None)
        if isinstance(spec, ComponentSpec) and spec.builder is obj:  # not inherited
            return spec
        opts = getattr(obj, "Options", None)
        if opts is None or not callable(obj) or self.short in _SECTION_KINDS:
            return None
        if not (isinstance(opts, type) and issubclass(opts, Options)):
            raise ConfigError(f"{where}{_describe(obj)} has an Options attribute that is not a "
                              f"subclass of vaelab.Options: {opts!r}")
        latents = tuple(getattr(obj, "latents", DEFAULT_LATENTS))
        return ComponentSpec(self.short, obj, opts, obj if isinstance(obj, type) else None,
                             latents)

    def _is_component(self, obj: Any) -> bool:
        try:
            spec = self._spec(obj)
        except ConfigError:
            return False
        return spec is not None and spec.kind == self.short

    def protocol(self) -> str:
        """What a component of this kind must be, in one clause (for error messages)."""
        call = BUILDER_CALLS.get(self.short, "obj(options, ...)")
        deco = f"decorated with @vaelab.register({self.short!r}, ...)"
        if self.short in _SECTION_KINDS:
            return f"a {self.kind} component is a function or class {deco}, called as {call}"
        return (f"a {self.kind} component is a class or function {deco}, or one with an "
                f"Options attribute (a vaelab.Options subclass), called as {call}")

    def parse(self, spec: Any, key: str) -> Options:
        """Resolve ``spec`` (a name, a ``{name = ..., **options}`` table or parsed options)."""
        if isinstance(spec, Options):
            spec = spec.model_dump()
        if isinstance(spec, str):
            spec = {"name": spec}
        if not isinstance(spec, dict) or "name" not in spec:
            raise ConfigError(
                f"{key}: expected a {self.kind} name or a table with 'name' and its options, "
                f"got {spec!r}; valid names: {', '.join(self.names())}"
            )
        entry = self.entry(spec["name"], key)
        try:
            return entry.options.model_validate(spec)
        except ValidationError as err:
            fields = sorted(set(entry.options.model_fields) - {"name"})
            raise ConfigError(
                format_validation_error(key, err, entry.options, list_keys=False)
                + f"; options of {self.kind} {spec['name']!r}: {', '.join(fields) or '(none)'}"
            ) from None

    def build(self, options: Options, *args: Any, **kwargs: Any) -> T:
        """Build from options this registry parsed (same as ``options.build(*args)``)."""
        return options.build(*args, **kwargs)


def fits(options: Options, latent: str, listed: tuple[str, ...] | list[str]) -> bool:
    """Whether parsed prior or guide-family options fit latent type ``latent``: the latent
    type's class lists the name (``listed``), or the component declares the latent type
    (:attr:`Entry.latents`, how user components say what they fit)."""
    entry = type(options).registry_entry
    return options.name in listed or (entry is not None and latent in entry.latents)


# --------------------------------------------------------------------------------------------
# user components: the public decorator, plugin modules, entry points


def register(
    kind: str,
    name: str | None = None,
    options: type[Options] | None = None,
    *,
    component: type | None = None,
    latents: tuple[str, ...] = DEFAULT_LATENTS,
) -> Callable[[Any], Any]:
    r"""Make a class or function a vaelab component of ``kind``; with ``name``, register it.

    The decorated object is called as the built-in builders of its kind are
    (:data:`BUILDER_CALLS`): a class receives the parsed options first, e.g. a prior
    ``MyPrior(options, latent_dim, ctx)``. Without ``name`` it can still be named in a config by
    its import path, ``"my_module:MyPrior"``; with ``name``, importing the module (listed in the
    config's ``plugins``, or advertised as an entry point) makes ``name`` a choice of its kind.

    :param kind: ``prior``, ``likelihood``, ``latent``, ``family``, ``network``, ``objective``,
        ``dataset`` or ``proposal`` (or a registry's full kind, ``"guide family"``).
    :param name: the config name; ``None``: by import path only.
    :param options: the options model, a subclass of :class:`Options` (default: the object's
        own ``Options`` attribute, else no options besides ``name``).
    :param component: the class a builder function returns, when its class attributes carry
        facts that resolution reads (a latent type's ``priors`` and ``families``); a decorated
        class is its own.
    :param latents: for a prior or guide family, the latent types it fits.
    :raises ConfigError: unknown ``kind``, or ``name`` already registered by another module.
    :raises TypeError: ``options`` is not a subclass of :class:`Options`.

    Example::

        @register("likelihood", "cauchy", CauchyOptions)
        class CauchyLikelihood(Likelihood):
            def __init__(self, opts, data_dim): ...
    """
    registry = registry_for(kind)

    def deco(obj: Any) -> Any:
        opts = options if options is not None else getattr(obj, "Options", None) or Options
        if not (isinstance(opts, type) and issubclass(opts, Options)):
            raise TypeError(f"register({kind!r}, {name!r}): options must subclass "
                            f"vaelab.Options, got {opts!r}")
        comp = component if component is not None else (obj if isinstance(obj, type) else None)
        obj.__vaelab_component__ = ComponentSpec(registry.short, obj, opts, comp, tuple(latents))
        if name is not None:
            registry.register(name, opts, comp, tuple(latents))(obj)
        return obj

    return deco


def registry_for(kind: str) -> Registry:
    """The registry of a short kind (``"prior"``) or a full one (``"guide family"``).

    :raises ConfigError: no registry has that kind (the kinds are listed).
    """
    short = _SHORT_KINDS.get(kind, kind)
    if short not in REGISTRIES:
        kinds = sorted(REGISTRIES)
        raise ConfigError(f"unknown component kind {kind!r}{suggest(kind, kinds)}; kinds: "
                          f"{', '.join(kinds)}")
    return REGISTRIES[short]


def _is_dotted(name: str) -> bool:
    return bool(name) and all(part.isidentifier() for part in name.split("."))


def _same_definition(a: Any, b: Any) -> bool:
    """The same source definition (a module reload re-creates the object)."""
    return a is b or (getattr(a, "__module__", None) == getattr(b, "__module__", 0)
                      and getattr(a, "__qualname__", None) == getattr(b, "__qualname__", 0))


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
