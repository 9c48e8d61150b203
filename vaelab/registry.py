"""Name → builder registries, resolved once when a config is validated.

Every swappable component (prior, likelihood, latent type, posterior family, objective, data set)
lives in a :class:`Registry`. A registry entry pairs a builder with a small pydantic options model,
so a config such as ``likelihood = {name = "normal", scale = 0.1}`` is checked against the options
of ``normal`` and nothing else: unknown names and unknown option keys fail with the valid choices
and a close-match suggestion.
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass
from typing import Any, Callable, ClassVar, Generic, TypeVar

from pydantic import BaseModel, ConfigDict, ValidationError

__all__ = ["ConfigError", "Options", "Registry", "suggest"]

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


class Registry(Generic[T]):
    """A named family of components, e.g. ``PRIORS`` or ``LIKELIHOODS``.

    Example::

        PRIORS = Registry("prior")

        @PRIORS.register("laplace", LaplaceOptions)
        def build_laplace(opts, latent_dim): ...

        opts = PRIORS.parse({"name": "laplace"}, key="model.prior")
        prior = PRIORS.build(opts, latent_dim=20)
    """

    def __init__(self, kind: str):
        self.kind = kind
        self._entries: dict[str, Entry[T]] = {}

    def register(
        self, name: str, options: type[Options] | None = None, component: type | None = None
    ):
        """Decorator registering ``builder(options, *args)`` under ``name``.

        :param options: the pydantic options model (default: no options besides ``name``).
        :param component: the class the builder returns, when its class attributes carry facts
            that resolution reads (e.g. which priors a latent type admits).
        """

        def deco(builder: Callable[..., T]) -> Callable[..., T]:
            if name in self._entries:
                raise KeyError(f"{self.kind} {name!r} is registered twice")
            # a subclass per entry, so that parsed options know their builder
            base = options or Options
            opts = type(base.__name__, (base,), {"__module__": base.__module__})
            entry = Entry(name, builder, opts, (builder.__doc__ or "").strip(), component)
            opts.registry_entry = entry
            self._entries[name] = entry
            return builder

        return deco

    def names(self) -> list[str]:
        return sorted(self._entries)

    def __contains__(self, name: str) -> bool:
        return name in self._entries

    def entry(self, name: str, key: str | None = None) -> Entry[T]:
        if name not in self._entries:
            where = f"{key}: " if key else ""
            raise ConfigError(
                f"{where}unknown {self.kind} {name!r}{suggest(name, self.names())}; "
                f"valid choices: {', '.join(self.names())}"
            )
        return self._entries[name]

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
