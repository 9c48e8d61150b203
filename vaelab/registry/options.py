"""A component's options and the protocols a component follows.

Every registry entry pairs a builder with a small pydantic :class:`Options` model (strict about
unknown keys, frozen once resolved), so that parsed options build their component with one call.
A component is named in one of two ways, and called in one way:

* decorated with :func:`~vaelab.registry.register`, which attaches a :class:`ComponentSpec`
  (``obj.__vaelab_component__``: its kind, builder, options and the latent types it fits), or
* carrying an attribute ``Options``, a subclass of :class:`Options` (and, for a prior or a guide
  family, an optional ``latents`` tuple; default :data:`DEFAULT_LATENTS`);

either way it is called as the built-in builders of its kind are, :data:`BUILDER_CALLS`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, ClassVar, Generic, TypeVar

from pydantic import BaseModel, ConfigDict

__all__ = [
    "BUILDER_CALLS",
    "DEFAULT_LATENTS",
    "ComponentSpec",
    "Entry",
    "Options",
    "fits",
]

T = TypeVar("T")


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


@dataclass(frozen=True)
class ComponentSpec:
    """What :func:`register` attaches to a user component (``obj.__vaelab_component__``)."""

    kind: str
    builder: Callable[..., Any]
    options: type[Options]
    component: type | None = None
    latents: tuple[str, ...] = DEFAULT_LATENTS



def fits(options: Options, latent: str, listed: tuple[str, ...] | list[str]) -> bool:
    """Whether parsed prior or guide-family options fit latent type ``latent``: the latent
    type's class lists the name (``listed``), or the component declares the latent type
    (:attr:`Entry.latents`, how user components say what they fit)."""
    entry = type(options).registry_entry
    return options.name in listed or (entry is not None and latent in entry.latents)
