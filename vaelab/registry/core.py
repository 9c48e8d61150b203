"""The :class:`Registry` of each kind of component, and the public decorator :func:`register`.

A registry maps names to entries (builder, options model, component class); :meth:`Registry.parse`
turns a config value (a name, a ``{name = ..., **options}`` table or a ``"module:attr"`` import
path) into options that know their entry, and :data:`REGISTRIES` maps each short kind to its
registry, so that :func:`register` finds the registry of a user component's kind.
"""

from __future__ import annotations

from typing import Any, Callable, Generic, TypeVar

from pydantic import ValidationError

from vaelab.registry.errors import ConfigError, format_validation_error, suggest
from vaelab.registry.options import (
    _SECTION_KINDS,
    _SHORT_KINDS,
    BUILDER_CALLS,
    DEFAULT_LATENTS,
    ComponentSpec,
    Entry,
    Options,
)
from vaelab.registry.plugins import _describe, _is_dotted, import_module, load_entry_points

__all__ = [
    "REGISTRIES",
    "Registry",
    "register",
    "registry_for",
]

T = TypeVar("T")

#: short kind → the registry of that kind; every :class:`Registry` adds itself when created
REGISTRIES: dict[str, "Registry"] = {}


class Registry(Generic[T]):
    """A named family of components, e.g. ``PRIORS`` or ``LIKELIHOODS``.

    ``entry(name)`` finds a registered name, or imports a ``"module:attr"`` path once (see
    :mod:`vaelab.registry`); names advertised by installed packages (:func:`load_entry_points`)
    are loaded on the first miss.

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


# --------------------------------------------------------------------------------------------
# user components: the public decorator


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



def _same_definition(a: Any, b: Any) -> bool:
    """The same source definition (a module reload re-creates the object)."""
    return a is b or (getattr(a, "__module__", None) == getattr(b, "__module__", 0)
                      and getattr(a, "__qualname__", None) == getattr(b, "__qualname__", 0))
