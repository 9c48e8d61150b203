"""Loading, overriding and resolving a run configuration: the one place names are looked up.

:func:`load_config` reads TOML, applies ``--set`` overrides and calls :func:`resolve`, which
validates the sections (:mod:`vaelab.config`) and parses every component through its registry
into typed, frozen :class:`~vaelab.registry.Options` (defaults filled in, latent-dependent
defaults chosen from the latent type's *class*, nothing built). Inner layers receive the result
and never consult a registry again.

**Versions.** A config read back from a run folder or a checkpoint (``saved=True``) is first
upgraded from its own version by :func:`vaelab.versions.migrate`, so it means what it meant
when it was saved; one a user writes means the current version.

**Networks** (``model.decoder``, ``guide.encoder``) hold their widths in one place, their own
``hidden_sizes``; ``model.hidden_sizes`` and ``guide.hidden_sizes`` are the short spelling of
the same widths (given both ways, they must agree), for whichever network it is, and a resolved
config echoes the networks' widths there. An encoder that is not named mirrors the decoder.

Example::

    cfg = load_config("experiments/configs/gaussian_mnist.toml", ["model.prior=vamp"])
    cfg.model.prior            # VampOptions(name='vamp', components=10, ...)
    print(dump_toml(cfg))
"""

from __future__ import annotations

import copy
import tomllib
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from vaelab.catalog import (
    DATASETS,
    FAMILIES,
    LATENTS,
    LIKELIHOODS,
    NETWORKS,
    OBJECTIVES,
    PRIORS,
)
from vaelab.config import (
    CONFIG_VERSION,
    MAX_DEPTH,
    SECTIONS,
    EvalConfig,
    GuideConfig,
    ModelConfig,
    RunConfig,
    dump_toml,
    nesting_depth,
    parse_value,
    to_dict,
)
from vaelab.data.datasets import path_ignored
from vaelab.inference.proposals import parse_proposal
from vaelab.model.priors import ANALYTIC_KL
from vaelab.registry import (
    ConfigError,
    Options,
    fits,
    format_validation_error,
    load_plugins,
    suggest,
)
from vaelab.versions import CHANGED_DEFAULTS, as_table, migrate, with_default

__all__ = [
    "CHANGED_DEFAULTS",
    "apply_overrides",
    "dump_toml",
    "load_config",
    "load_raw",
    "migrate",
    "parse_value",
    "resolve",
    "resolve_eval",
    "to_dict",
]

#: the largest config file read (a config is a few KiB; this bounds /dev/zero and the like)
MAX_CONFIG_BYTES = 1 << 20

def plugin_modules(text: str) -> list[str]:
    """The modules of ``plugins=VALUE``: a TOML array (``["a", "b"]``), or the array the shell
    leaves of ``plugins=['a']`` once it has removed the quotes (``[a]``), or one name."""
    value = parse_value(text)
    if isinstance(value, str):
        value = [v.strip().strip("'\"") for v in value.strip().strip("[]").split(",")]
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ConfigError(f"plugins={text}: expected a list of module names, e.g. "
                          "plugins=['my_module']")
    return [v for v in value if v]


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``section.key=value`` (or ``section.component.option=value``) overrides to ``raw``.

    Setting an option of a component given by name promotes it to a table:
    ``model.likelihood.scale=0.1`` turns ``likelihood = "normal"`` into
    ``likelihood = {name = "normal", scale = 0.1}``. An option of a component the config does not
    name yet gives a table without ``name``; :func:`resolve` fills in the default that applies
    (for ``model.prior`` and ``guide.family``, the latent type's). ``plugins=[module, ...]``
    sets the top-level list of plugin modules.
    """
    raw = copy.deepcopy(raw)
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r}: expected KEY=VALUE, e.g. train.epochs=5")
        key, text = item.split("=", 1)
        parts = key.strip().split(".")
        if parts == ["plugins"]:  # the one top-level key: modules to import
            raw["plugins"] = plugin_modules(text)
            continue
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
        try:
            node[parts[-1]] = parse_value(text)
        except ConfigError as err:
            raise ConfigError(f"{key.strip()}: {err}") from None
    return raw


def load_raw(path: str | Path) -> dict[str, Any]:
    """The plain data of a TOML file, with a one-line error naming the file."""
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"config file {str(path)!r} does not exist")
    try:
        with path.open("rb") as f:
            data = f.read(MAX_CONFIG_BYTES + 1)
        if len(data) > MAX_CONFIG_BYTES:
            raise ConfigError(f"config file {str(path)!r} is over {MAX_CONFIG_BYTES >> 20} MiB; "
                              "a config is a few KiB of TOML")
        text = data.decode("utf-8")
    except UnicodeDecodeError as err:
        raise ConfigError(f"config file {str(path)!r} is not UTF-8 text (byte {err.start}); "
                          "TOML files are UTF-8") from None
    except OSError as err:
        raise ConfigError(f"config file {str(path)!r} cannot be read: {err.strerror}") from None
    too_deep = ConfigError(f"config file {str(path)!r}: arrays or tables nested more than "
                           f"{MAX_DEPTH} deep")
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(f"config file {str(path)!r} is not valid TOML: {err}") from None
    except RecursionError:
        raise too_deep from None
    if nesting_depth(raw) > MAX_DEPTH:
        raise too_deep
    return raw


def _mirrored(opts: Options) -> dict[str, Any]:
    """A network's options for the other role (its ``mirrored``; else widths reversed)."""
    mirror = getattr(opts, "mirrored", None)
    if callable(mirror):
        return mirror()
    d = opts.model_dump()
    if isinstance(d.get("hidden_sizes"), list):
        d["hidden_sizes"] = d["hidden_sizes"][::-1]
    return d


def _network(spec: Any, key: str, widths: list[int] | None, widths_key: str,
             activation: str) -> Options:
    """Parse a network, ``widths`` (the value of ``widths_key``, its short spelling) filling
    its ``hidden_sizes`` and ``activation`` its activation, where its table gives none.

    :raises ConfigError: ``widths`` and the table's ``hidden_sizes`` disagree, or the network
        has no widths to set.
    """
    table = as_table(spec)
    opts = NETWORKS.parse(table, key)
    fields = type(opts).model_fields
    fill: dict[str, Any] = {}
    if widths is not None:
        own = table.get("hidden_sizes") if isinstance(table, dict) else None
        if "hidden_sizes" not in fields:
            raise ConfigError(f"{widths_key} = {list(widths)}: network {opts.name!r} ({key}) "
                              f"has no hidden_sizes; drop {widths_key}")
        if own is not None and list(own) != list(widths):
            raise ConfigError(
                f"{widths_key} = {list(widths)} and {key}.hidden_sizes = {list(own)} disagree; "
                f"give the widths once, as {key}.hidden_sizes (or {widths_key})")
        fill["hidden_sizes"] = list(widths)
    if "activation" in fields and "activation" not in table:
        fill["activation"] = activation
    return NETWORKS.parse({**opts.model_dump(), **fill}, key) if fill else opts


def _resolve_networks(m: ModelConfig, g: GuideConfig) -> tuple[Options, Options]:
    """``model.decoder`` (default ``mlp``) and ``guide.encoder`` as full options.

    No ``guide.encoder`` (or a table without a name): the decoder mirrored
    (:meth:`~vaelab.model.networks.NetworkOptions.mirrored`), the table's keys on top.
    """
    decoder = _network(with_default(m.decoder, "mlp"), "model.decoder", m.hidden_sizes,
                       "model.hidden_sizes", m.activation)
    spec = g.encoder
    if spec is None or (isinstance(spec, dict) and "name" not in spec):
        base = _mirrored(decoder)
        if g.hidden_sizes is not None:
            base.pop("hidden_sizes", None)  # the mirror's widths give way to the ones given
        spec = {**base, **(spec or {})}
    encoder = _network(spec, "guide.encoder", g.hidden_sizes, "guide.hidden_sizes",
                       m.activation)
    return decoder, encoder


def _resolve_components(cfg: RunConfig) -> RunConfig:
    """``cfg`` with each component replaced by its parsed options (one registry pass)."""
    m, g = cfg.model, cfg.guide
    latent = LATENTS.parse(with_default(m.latent, ModelConfig.model_fields["latent"].default),
                           "model.latent")
    kind = latent.component  # the latent type's class: its admitted priors and families
    prior = PRIORS.parse(with_default(m.prior, kind.priors[0]), "model.prior")
    family = FAMILIES.parse(with_default(g.family, kind.families[0]), "guide.family")
    likelihood = LIKELIHOODS.parse(
        with_default(m.likelihood, ModelConfig.model_fields["likelihood"].default),
        "model.likelihood",
    )
    data = cfg.data.bound(_data_entry(cfg))
    chosen: dict[str, str] = {}
    name, why = default_objective(prior, family)
    if cfg.objective.name == "auto" or cfg.objective.name == name:
        chosen["objective.name"] = why
    objective = cfg.objective.model_copy(update={"name": name}) \
        if cfg.objective.name == "auto" else cfg.objective
    objective = objective.bound(OBJECTIVES.entry(objective.name, key="objective.name"))
    transform, why = default_input_transform(likelihood)
    if g.input_transform in ("auto", transform):
        chosen["guide.input_transform"] = why
    if g.input_transform == "auto":
        g = g.model_copy(update={"input_transform": transform})
    if not fits(prior, latent.name, kind.priors):
        raise ConfigError(
            f"model.prior: {prior.name!r} does not fit latent type {latent.name!r}"
            f"{suggest(prior.name, kind.priors)}; priors for it: {', '.join(kind.priors)}"
        )
    if not fits(family, latent.name, kind.families):
        raise ConfigError(
            f"guide.family: {family.name!r} does not fit latent type {latent.name!r}; "
            f"families for it: {', '.join(kind.families)}"
        )
    decoder, encoder = _resolve_networks(m, g)
    # the short keys echo the networks (a saved config re-resolves to itself)
    echo = {"hidden_sizes": getattr(decoder, "hidden_sizes", None)}
    if "activation" in type(decoder).model_fields:
        echo["activation"] = decoder.activation
    return cfg.model_copy(update={
        "data": data,
        "model": m.model_copy(update={"latent": latent, "prior": prior, "likelihood": likelihood,
                                      "decoder": decoder, **echo}),
        "guide": g.model_copy(update={"family": family, "encoder": encoder,
                                      "hidden_sizes": getattr(encoder, "hidden_sizes", None)}),
        "objective": objective,
        "eval": _parsed_eval(cfg.eval),
    }).with_chosen(chosen)


def default_objective(prior: Options, family: Options) -> tuple[str, str]:
    """The objective of ``objective.name = "auto"`` for a resolved prior and guide family, and
    why: the one rule.

    ``mean_field`` (:class:`pyro.infer.TraceMeanField_ELBO`, the ELBO with KL(q ‖ p) in closed
    form) where :func:`torch.distributions.kl_divergence` has a closed form for the pair
    (:data:`vaelab.model.priors.ANALYTIC_KL`, checked against torch's registry by the tests: a
    ``normal`` guide with the ``standard_normal``, ``normal`` or ``laplace`` prior); else
    ``trace`` (:class:`pyro.infer.Trace_ELBO`, a Monte Carlo KL): mixtures (``mog``, ``vamp``),
    ``student_t``, flows (``flow``, ``iaf``), and every family of categorical latents (a
    Concrete density has no closed-form KL; ``kl = "categorical"`` adds its closed-form KL as a
    guide term under any objective, and the ``categorical`` family is not reparameterized).
    """
    pair = f"{family.name} guide vs {prior.name} prior"
    if (family.name, prior.name) in ANALYTIC_KL:
        return "mean_field", f"default: analytic KL for {pair}"
    if getattr(family, "kl", None) == "categorical":  # z masked out of the ELBO, KL a guide term
        return "trace", f"default: the {family.name} guide adds KL(q || p) in closed form itself"
    return "trace", f"default: Monte Carlo KL, no closed form for {pair}"


def default_input_transform(likelihood: Options) -> tuple[str, str]:
    """The encoder input of ``guide.input_transform = "auto"``, and why: ``log1p`` for a
    likelihood of counts (its class declares ``domain = "counts"``; raw counts up to thousands
    make the encoder diverge), ``none`` otherwise."""
    component = likelihood.component
    if getattr(component, "domain", None) == "counts":
        return "log1p", (f"default: the encoder reads log(1 + x) of the counts "
                         f"{likelihood.name} scores")
    return "none", f"default: {likelihood.name} does not score counts"


def _data_entry(cfg: RunConfig) -> Any:
    """The ``data.name`` entry, refusing a ``data.path`` that the data set ignores."""
    entry = DATASETS.entry(cfg.data.name, key="data.name")
    if cfg.data.path is not None and path_ignored(entry):
        raise ConfigError(f"data.path is set but data.name is {cfg.data.name!r}, which reads no "
                          "file; did you mean data.name = \"array\"?")
    return entry


def _parsed_eval(ec: EvalConfig) -> EvalConfig:
    return ec.model_copy(update={"proposal": parse_proposal(ec.proposal, "eval.proposal")})


def resolve_eval(raw: dict[str, Any]) -> EvalConfig:
    """Validate and resolve an ``[eval]`` section alone (its proposal parsed), e.g. a run's
    saved ``[eval]`` with ``eval.KEY=VALUE`` overrides (:func:`vaelab.runs.run.eval_config`):
    the other sections were resolved when the run was loaded.

    :raises ConfigError: one line naming the ``eval.`` key.
    """
    try:
        ec = EvalConfig.model_validate(raw)
    except ValidationError as err:
        raise ConfigError(format_validation_error("eval", err, EvalConfig)) from None
    return _parsed_eval(ec)


def resolve(raw: dict[str, Any] | RunConfig, *, saved: bool = False) -> RunConfig:
    """Validate plain data into a :class:`RunConfig` whose components are typed options.

    The modules of ``plugins`` (and, once per process, the entry points of installed packages)
    are imported first, so that the components they register are choices
    (:func:`~vaelab.registry.load_plugins`); a ``"module:name"`` component is imported by its
    registry.

    :param raw: plain data (a parsed TOML file, a checkpoint's config) or a config to re-resolve.
    :param saved: ``raw`` was saved by a run (read it at its own version, see :func:`migrate`).
    :raises ConfigError: one line naming the key, the value and the valid choices.
    """
    if isinstance(raw, RunConfig):
        raw = to_dict(raw)
    if not isinstance(raw, dict):
        raise ConfigError(f"a config is a table of sections, got {type(raw).__name__}")
    if nesting_depth(raw) > MAX_DEPTH:
        raise ConfigError(f"a config's arrays or tables nest at most {MAX_DEPTH} deep")
    raw = migrate(raw) if saved else {**raw, "version": raw.get("version", CONFIG_VERSION)}
    if raw["version"] != CONFIG_VERSION:
        raw = migrate(raw)
    unknown = [k for k in raw if k not in SECTIONS and k not in ("version", "plugins")]
    if unknown:
        k = unknown[0]
        raise ConfigError(
            f"unknown section [{k}]{suggest(k, SECTIONS)}; sections: {', '.join(SECTIONS)}"
        )
    data = raw.get("data")
    if isinstance(data, dict) and data.get("path") is not None and "name" not in data:
        raw = {**raw, "data": {**data, "name": "array"}}  # a file without a name: the array set
    try:
        cfg = RunConfig.model_validate(raw)
    except ValidationError as err:
        raise ConfigError(format_validation_error("", err, RunConfig)) from None
    load_plugins(cfg.plugins)  # the user's modules register their components first
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

