"""Loading, overriding and resolving a run configuration: the one place names are looked up.

:func:`load_config` reads TOML, applies ``--set`` overrides and calls :func:`resolve`, which
validates the sections (:mod:`vaelab.config`) and parses every component through its registry
into typed, frozen :class:`~vaelab.registry.Options` (defaults filled in, latent-dependent
defaults chosen from the latent type's *class*, nothing built). Inner layers receive the result
and never consult a registry again.

**Versions.** Every saved config carries ``version`` (:data:`~vaelab.config.CONFIG_VERSION`). A
config read back from a run folder or a checkpoint (``saved=True``) whose version is older means
what it meant when it was saved: each key whose default changed since is filled with its old
default (:data:`CHANGED_DEFAULTS`), so a long run started under an older vaelab resumes
unchanged under a newer one. A config without ``version`` that a run saved is version 1 (vaelab
0.1.0); one a user writes means the current version.

Example::

    cfg = load_config("experiments/configs/gaussian_mnist.toml", ["model.prior=vamp"])
    cfg.model.prior            # VampOptions(name='vamp', components=10, ...)
    print(dump_toml(cfg))
"""

from __future__ import annotations

import ast
import copy
import tomllib
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from vaelab.catalog import DATASETS, FAMILIES, LATENTS, LIKELIHOODS, OBJECTIVES, PRIORS
from vaelab.config import CONFIG_VERSION, SECTIONS, ModelConfig, RunConfig, dump_toml, to_dict
from vaelab.inference.proposals import parse_proposal
from vaelab.registry import ConfigError, format_validation_error, suggest

__all__ = [
    "CHANGED_DEFAULTS",
    "apply_overrides",
    "dump_toml",
    "load_config",
    "load_raw",
    "migrate",
    "parse_value",
    "resolve",
    "to_dict",
]

#: ``(version, dotted key, old value)``: the default of ``key`` changed in ``version``; a saved
#: config of an earlier version that lacks the key meant ``old value``
CHANGED_DEFAULTS: list[tuple[int, str, Any]] = [
    # before 2, data.limit and train.valid_limit kept the first N points of each split
    (2, "data.subset", "first"),
    # before 2, only a non-finite loss stopped a run
    (2, "train.divergence", 0.0),
]


def parse_value(text: str) -> Any:
    """Parse an override's right-hand side: TOML/JSON/Python literal, else a bare string."""
    text = text.strip()
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        pass
    low = text.lower()
    if low in ("none", "null"):
        return None
    if low in ("true", "false"):
        return low == "true"
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``section.key=value`` (or ``section.component.option=value``) overrides to ``raw``.

    Setting an option of a component given by name promotes it to a table:
    ``model.likelihood.scale=0.1`` turns ``likelihood = "normal"`` into
    ``likelihood = {name = "normal", scale = 0.1}``. An option of a component the config does not
    name yet gives a table without ``name``; :func:`resolve` fills in the default that applies
    (for ``model.prior`` and ``guide.family``, the latent type's).
    """
    raw = copy.deepcopy(raw)
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r}: expected KEY=VALUE, e.g. train.epochs=5")
        key, text = item.split("=", 1)
        parts = key.strip().split(".")
        if len(parts) < 2 or parts[0] not in SECTIONS:
            raise ConfigError(
                f"override {item!r}: the key must start with a section"
                f"{suggest(parts[0], SECTIONS)}; sections: {', '.join(SECTIONS)}"
            )
        node = raw.setdefault(parts[0], {})
        if not isinstance(node, dict):
            raise ConfigError(f"override {item!r}: [{parts[0]}] is not a table")
        for i, p in enumerate(parts[1:-1], start=1):
            child = node.get(p)
            if isinstance(child, str):
                child = {"name": child}
            elif child is None:
                child = {}
            elif not isinstance(child, dict):
                raise ConfigError(f"override {item!r}: {'.'.join(parts[: i + 1])} is not a table")
            node[p] = child
            node = child
        node[parts[-1]] = parse_value(text)
    return raw


def load_raw(path: str | Path) -> dict[str, Any]:
    """The plain data of a TOML file, with a one-line error naming the file."""
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"config file {str(path)!r} does not exist")
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as err:
        raise ConfigError(f"config file {str(path)!r} is not UTF-8 text (byte {err.start}); "
                          "TOML files are UTF-8") from None
    except OSError as err:
        raise ConfigError(f"config file {str(path)!r} cannot be read: {err.strerror}") from None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(f"config file {str(path)!r} is not valid TOML: {err}") from None


def migrate(raw: dict[str, Any]) -> dict[str, Any]:
    """A saved config of any earlier version, as the current version with the same meaning.

    A missing ``version`` is 1 (vaelab 0.1.0 saved none). Each key whose default changed after
    the config's version and that the config lacks gets its old default
    (:data:`CHANGED_DEFAULTS`).

    :raises ConfigError: the config is newer than this vaelab.
    """
    raw = copy.deepcopy(raw)
    version = raw.get("version", 1)
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise ConfigError(f"version: expected a positive integer, got {version!r}")
    if version > CONFIG_VERSION:
        raise ConfigError(
            f"version: the config has version {version}, newer than this vaelab's "
            f"{CONFIG_VERSION}; upgrade vaelab to read it"
        )
    for changed_in, key, old in CHANGED_DEFAULTS:
        section, name = key.split(".")
        if version < changed_in and name not in raw.get(section, {}):
            raw.setdefault(section, {})[name] = old
    raw["version"] = CONFIG_VERSION
    return raw


def _with_default(spec: Any, default: str) -> Any:
    """A component spec with its name filled in: None → default, a table without name too."""
    if spec is None:
        return default
    if isinstance(spec, dict) and "name" not in spec:
        return {"name": default, **spec}
    return spec


def _resolve_components(cfg: RunConfig) -> RunConfig:
    """``cfg`` with each component replaced by its parsed options (one registry pass)."""
    m, g = cfg.model, cfg.guide
    latent = LATENTS.parse(_with_default(m.latent, ModelConfig.model_fields["latent"].default),
                           "model.latent")
    kind = latent.component  # the latent type's class: its admitted priors and families
    prior = PRIORS.parse(_with_default(m.prior, kind.priors[0]), "model.prior")
    family = FAMILIES.parse(_with_default(g.family, kind.families[0]), "guide.family")
    likelihood = LIKELIHOODS.parse(
        _with_default(m.likelihood, ModelConfig.model_fields["likelihood"].default),
        "model.likelihood",
    )
    DATASETS.entry(cfg.data.name, key="data.name")
    OBJECTIVES.entry(cfg.objective.name, key="objective.name")
    proposal = parse_proposal(cfg.eval.proposal, "eval.proposal")
    if prior.name not in kind.priors:
        raise ConfigError(
            f"model.prior: {prior.name!r} does not fit latent type {latent.name!r}"
            f"{suggest(prior.name, kind.priors)}; priors for it: {', '.join(kind.priors)}"
        )
    if family.name not in kind.families:
        raise ConfigError(
            f"guide.family: {family.name!r} does not fit latent type {latent.name!r}; "
            f"families for it: {', '.join(kind.families)}"
        )
    return cfg.model_copy(update={
        "model": m.model_copy(update={"latent": latent, "prior": prior, "likelihood": likelihood}),
        "guide": g.model_copy(update={"family": family}),
        "eval": cfg.eval.model_copy(update={"proposal": proposal}),
    })


def resolve(raw: dict[str, Any] | RunConfig, *, saved: bool = False) -> RunConfig:
    """Validate plain data into a :class:`RunConfig` whose components are typed options.

    :param raw: plain data (a parsed TOML file, a checkpoint's config) or a config to re-resolve.
    :param saved: ``raw`` was saved by a run (read it at its own version, see :func:`migrate`).
    :raises ConfigError: one line naming the key, the value and the valid choices.
    """
    if isinstance(raw, RunConfig):
        raw = to_dict(raw)
    if not isinstance(raw, dict):
        raise ConfigError(f"a config is a table of sections, got {type(raw).__name__}")
    raw = migrate(raw) if saved else {**raw, "version": raw.get("version", CONFIG_VERSION)}
    if raw["version"] != CONFIG_VERSION:
        raw = migrate(raw)
    unknown = [k for k in raw if k not in SECTIONS and k != "version"]
    if unknown:
        k = unknown[0]
        raise ConfigError(
            f"unknown section [{k}]{suggest(k, SECTIONS)}; sections: {', '.join(SECTIONS)}"
        )
    try:
        cfg = RunConfig.model_validate(raw)
    except ValidationError as err:
        raise ConfigError(format_validation_error("", err, RunConfig)) from None
    return _resolve_components(cfg)


def is_saved_config(path: str | Path) -> bool:
    """Whether ``path`` is the ``config.toml`` a run saved (a run folder holds it)."""
    path = Path(path)
    return path.name == "config.toml" and (path.parent / "checkpoints").is_dir()


def load_config(
    path: str | Path | None = None,
    overrides: list[str] | None = None,
    *,
    saved: bool | None = None,
) -> RunConfig:
    """Load TOML (or defaults when ``path`` is None), apply overrides, validate, resolve.

    :param saved: read the file at its saved version; by default, when it is a run folder's
        ``config.toml`` (so ``vaelab train DIR/config.toml --out DIR --resume`` means what the
        run meant when it was saved).
    """
    raw = load_raw(path) if path is not None else {}
    if saved is None:
        saved = path is not None and is_saved_config(path)
    if saved:
        raw = migrate(raw)
    return resolve(apply_overrides(raw, overrides or []))

