"""Loading, overriding and resolving a run configuration: the one place names are looked up.

:func:`load_config` reads TOML, applies ``--set`` overrides and calls :func:`resolve`, which
validates the sections (:mod:`vaelab.config`) and parses every component through its registry
into typed, frozen :class:`~vaelab.registry.Options` (defaults filled in, latent-dependent
defaults chosen from the latent type's *class*, nothing built). Inner layers receive the result
and never consult a registry again.

**Versions.** Every saved config carries ``version`` (:data:`~vaelab.config.CONFIG_VERSION`). A
config read back from a run folder or a checkpoint (``saved=True``) whose version is older means
what it meant when it was saved: each key whose default changed since is filled with its old
default (:data:`CHANGED_DEFAULTS`), and each key that moved or went away since is upgraded
(:func:`migrate`), so a long run started under an older vaelab resumes unchanged under a newer
one. A config without ``version`` that a run saved is version 1 (vaelab 0.1.0); one a user writes
means the current version.

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
    SECTIONS,
    EvalConfig,
    GuideConfig,
    ModelConfig,
    RunConfig,
    dump_toml,
    parse_value,
    to_dict,
)
from vaelab.inference.proposals import parse_proposal
from vaelab.notes import note
from vaelab.registry import (
    ConfigError,
    Options,
    fits,
    format_validation_error,
    load_plugins,
    suggest,
)

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

#: ``(version, dotted key, old value)``: the default of ``key`` changed in ``version``; a saved
#: config of an earlier version that lacks the key meant ``old value``
CHANGED_DEFAULTS: list[tuple[int, str, Any]] = [
    # before 2, data.limit and train.valid_limit kept the first N points of each split
    (2, "data.subset", "first"),
    # before 2, only a non-finite loss stopped a run
    (2, "train.divergence", 0.0),
]

#: what :func:`migrate` said already in this process (a resumed run reads its config twice)
_NOTED: set[str] = set()


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
    (:data:`CHANGED_DEFAULTS`). Version 3 (:func:`_upgrade_to_3`) moved the width shortcuts
    ``model.hidden_sizes`` / ``guide.hidden_sizes`` into the networks they meant, and removed
    ``train.driver``.

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
    if version < 3:
        _upgrade_to_3(raw)
    raw["version"] = CONFIG_VERSION
    return raw


def _upgrade_to_3(raw: dict[str, Any]) -> None:
    """Version 2 → 3, in place: the same networks and the same training, said differently.

    * ``train.driver`` is gone: ``"torch"`` was the default; ``"svi"`` (``pyro.infer.SVI`` with
      ``pyro.optim.Adam``) reached the same parameters as the one driver within float error
      (``tests/test_vae.py``), which now trains it, and one note says so.
    * ``model.hidden_sizes`` became the decoder's ``hidden_sizes``: before 3 it filled in the
      widths of an MLP decoder (``mlp``, or no decoder) whose table gave none, and for another
      network it changed nothing (it had to agree with the network's own widths).
    * ``guide.hidden_sizes`` became the encoder's: before 3 it gave the widths of an encoder that
      mirrors an MLP decoder, an MLP of those widths beside any other decoder, and those of a
      named MLP encoder without its own (which otherwise took ``model.hidden_sizes``, reversed).

    An MLP is recognised by its name ``mlp``, as every network config saved so far names it.
    """
    train = raw.get("train")
    if isinstance(train, dict) and train.pop("driver", "torch") == "svi":
        _note_once("train.driver = 'svi' (a config saved before version 3): vaelab has one "
                   "driver, the objective's loss_and_grads and one torch Adam, which reaches "
                   "the parameters pyro.infer.SVI with pyro.optim.Adam reached, within float "
                   "error; the run trains with it")
    model, guide = raw.setdefault("model", {}), raw.setdefault("guide", {})
    if not isinstance(model, dict) or not isinstance(guide, dict):
        return  # not tables: validation names the key
    widths, guide_widths = model.pop("hidden_sizes", None), guide.pop("hidden_sizes", None)
    decoder = model.get("decoder")
    dec_mlp = decoder is None or _name_of(decoder, "mlp") == "mlp"
    if widths is not None and dec_mlp:
        table = _table(_with_default(decoder, "mlp"))
        model["decoder"] = {**table, "hidden_sizes": table.get("hidden_sizes", widths)}
    encoder = guide.get("encoder")
    if encoder is None or (isinstance(encoder, dict) and "name" not in encoder):
        if guide_widths is not None:  # a table without name: its keys on top, as before
            base = {} if dec_mlp else {"name": "mlp"}
            guide["encoder"] = {**base, "hidden_sizes": guide_widths, **(encoder or {})}
    elif _name_of(encoder, "") == "mlp":
        table = _table(encoder)
        mirror = (widths if widths is not None else [400])[::-1]
        own = guide_widths if guide_widths is not None else mirror
        guide["encoder"] = {**table, "hidden_sizes": table.get("hidden_sizes", own)}


def _name_of(spec: Any, default: str) -> Any:
    """The name a component spec gives (a name, or a table's ``name``), else ``default``."""
    return spec if isinstance(spec, str) else (spec or {}).get("name", default)


def _note_once(message: str) -> None:
    if message not in _NOTED:
        _NOTED.add(message)
        note(message)


def _with_default(spec: Any, default: str) -> Any:
    """A component spec with its name filled in: None → default, a table without name too."""
    if spec is None:
        return default
    if isinstance(spec, dict) and "name" not in spec:
        return {"name": default, **spec}
    return spec


def _table(spec: Any) -> Any:
    """A component spec as a table (a name → ``{name = ...}``, options → their dump)."""
    if isinstance(spec, Options):
        return spec.model_dump()
    if isinstance(spec, str):
        return {"name": spec}
    return spec


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
    table = _table(spec)
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
    decoder = _network(_with_default(m.decoder, "mlp"), "model.decoder", m.hidden_sizes,
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
    latent = LATENTS.parse(_with_default(m.latent, ModelConfig.model_fields["latent"].default),
                           "model.latent")
    kind = latent.component  # the latent type's class: its admitted priors and families
    prior = PRIORS.parse(_with_default(m.prior, kind.priors[0]), "model.prior")
    family = FAMILIES.parse(_with_default(g.family, kind.families[0]), "guide.family")
    likelihood = LIKELIHOODS.parse(
        _with_default(m.likelihood, ModelConfig.model_fields["likelihood"].default),
        "model.likelihood",
    )
    data = cfg.data.bound(DATASETS.entry(cfg.data.name, key="data.name"))
    objective = cfg.objective.bound(OBJECTIVES.entry(cfg.objective.name, key="objective.name"))
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
    })


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
    raw = migrate(raw) if saved else {**raw, "version": raw.get("version", CONFIG_VERSION)}
    if raw["version"] != CONFIG_VERSION:
        raw = migrate(raw)
    unknown = [k for k in raw if k not in SECTIONS and k not in ("version", "plugins")]
    if unknown:
        k = unknown[0]
        raise ConfigError(
            f"unknown section [{k}]{suggest(k, SECTIONS)}; sections: {', '.join(SECTIONS)}"
        )
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

