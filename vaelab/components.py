"""Resolve every named component of a :class:`~vaelab.config.RunConfig` through its registry.

Importing this module populates all registries (priors, likelihoods, latent types, guide
families, objectives, data sets), so name checks happen once, at config-load time, before a run
writes anything.
"""

from __future__ import annotations

from vaelab.config import RunConfig
from vaelab.guide.posteriors import FAMILIES
from vaelab.model.latents import LATENTS
from vaelab.model.likelihoods import LIKELIHOODS
from vaelab.model.priors import PRIORS
from vaelab.registry import ConfigError, suggest

__all__ = ["resolve_components"]


def _load_plugins() -> None:
    # modules that register further entries into the registries above
    import vaelab.data  # noqa: F401  (data sets)
    import vaelab.inference.objectives  # noqa: F401  (objectives)

    try:
        import vaelab.model.categorical  # noqa: F401  (discrete latent types)
    except ImportError:  # pragma: no cover - optional until it exists
        pass


def resolve_components(cfg: RunConfig) -> RunConfig:
    """Return ``cfg`` with each component spec replaced by its full, validated option table."""
    _load_plugins()
    from vaelab.data import DATASETS
    from vaelab.inference.objectives import OBJECTIVES

    m, g = cfg.model, cfg.guide
    latent = LATENTS.parse(m.latent, "model.latent")
    latent_obj = LATENTS.build(latent, m.latent_dim)
    prior_spec = m.prior
    if "prior" not in m.model_fields_set and latent_obj.priors:
        prior_spec = latent_obj.priors[0]  # the latent type's default prior
    family_spec = g.family
    if "family" not in g.model_fields_set and latent_obj.families:
        family_spec = latent_obj.families[0]
    prior = PRIORS.parse(prior_spec, "model.prior")
    likelihood = LIKELIHOODS.parse(m.likelihood, "model.likelihood")
    family = FAMILIES.parse(family_spec, "guide.family")
    DATASETS.entry(cfg.data.name, key="data.name")
    OBJECTIVES.entry(cfg.objective.name, key="objective.name")

    if prior.name not in latent_obj.priors:
        raise ConfigError(
            f"model.prior: {prior.name!r} does not fit latent type {latent.name!r}"
            f"{suggest(prior.name, latent_obj.priors)}; priors for it: "
            f"{', '.join(latent_obj.priors)}"
        )
    if family.name not in latent_obj.families:
        raise ConfigError(
            f"guide.family: {family.name!r} does not fit latent type {latent.name!r}; "
            f"families for it: {', '.join(latent_obj.families)}"
        )
    update = {
        "model": m.model_copy(
            update={
                "latent": latent.model_dump(),
                "prior": prior.model_dump(),
                "likelihood": likelihood.model_dump(),
            }
        ),
        "guide": g.model_copy(update={"family": family.model_dump()}),
    }
    return cfg.model_copy(update=update)
