"""Saved configs age well: every config a run saves carries ``version``
(:data:`~vaelab.config.CONFIG_VERSION`), and :func:`migrate` turns a saved config of any earlier
version into the current version with the same meaning.

A config read back from a run folder or a checkpoint whose version is older means what it meant
when it was saved: each key whose default changed since is filled with its old default
(:data:`CHANGED_DEFAULTS`), and each key that moved or went away since is upgraded (one
``_upgrade_to_N`` per version), so a long run started under an older vaelab resumes unchanged
under a newer one. A config without ``version`` that a run saved is version 1 (vaelab 0.1.0).
:mod:`vaelab.resolve` calls :func:`migrate` for every saved config it reads.
"""

from __future__ import annotations

import copy
from typing import Any

from vaelab.catalog import DATASETS
from vaelab.config import CONFIG_VERSION, DataConfig
from vaelab.data.datasets import path_ignored
from vaelab.notes import note
from vaelab.registry import ConfigError, Options

__all__ = ["CHANGED_DEFAULTS", "as_table", "migrate", "name_of", "note_once", "with_default"]

#: ``(version, dotted key, old value)``: the default of ``key`` changed in ``version``; a saved
#: config of an earlier version that lacks the key meant ``old value``
CHANGED_DEFAULTS: list[tuple[int, str, Any]] = [
    # before 2, data.limit and train.valid_limit kept the first N points of each split
    (2, "data.subset", "first"),
    # before 2, only a non-finite loss stopped a run
    (2, "train.divergence", 0.0),
    # before 4, the objective was trace (Monte Carlo KL) whatever the prior and guide
    (4, "objective.name", "trace"),
    # before 4, the encoder read the data as the likelihood scores them, counts included
    (4, "guide.input_transform", "none"),
    # before 5, evaluation traced the model unless asked for the fused path
    (5, "eval.fused", False),
]

#: what :func:`migrate` said already in this process (a resumed run reads its config twice)
_NOTED: set[str] = set()


def migrate(raw: dict[str, Any]) -> dict[str, Any]:
    """A saved config of any earlier version, as the current version with the same meaning.

    A missing ``version`` is 1 (vaelab 0.1.0 saved none). Each key whose default changed after
    the config's version and that the config lacks gets its old default
    (:data:`CHANGED_DEFAULTS`). Version 3 (:func:`_upgrade_to_3`) moved the width shortcuts
    ``model.hidden_sizes`` / ``guide.hidden_sizes`` into the networks they meant, and removed
    ``train.driver``. Version 4 made ``objective.name`` and ``guide.input_transform`` default to
    ``auto`` (older configs that lack them meant ``trace`` and ``none``), and refuses a
    ``data.path`` that a built-in data set ignores (:func:`_upgrade_to_4` drops it). Version 5
    added keys, each defaulting to what a version-4 config meant (several stochastic layers,
    the relaxed family's ``estimator``, protocol options such as ``train.shuffle`` and
    ``train.warmup_per``), and made ``eval.fused`` default to ``true`` (older configs that
    lack it meant ``false``; the numbers agree to float rounding).

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
    if version < 4:
        _upgrade_to_4(raw)
    raw["version"] = CONFIG_VERSION
    return raw


def _upgrade_to_4(raw: dict[str, Any]) -> None:
    """Version 3 → 4, in place: before 4 a ``data.path`` beside a built-in data set that reads no
    file (``binarized_mnist``, ...) was ignored; it is dropped, as it meant nothing (today it is
    refused, and a path without ``data.name`` means the ``array`` data set)."""
    data = raw.get("data")
    if not isinstance(data, dict) or data.get("path") is None:
        return
    name = data.get("name", DataConfig.model_fields["name"].default)
    if isinstance(name, str) and name in DATASETS and path_ignored(DATASETS.entry(name)):
        del data["path"]


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
        note_once("train.driver = 'svi' (a config saved before version 3): vaelab has one "
                   "driver, the objective's loss_and_grads and one torch Adam, which reaches "
                   "the parameters pyro.infer.SVI with pyro.optim.Adam reached, within float "
                   "error; the run trains with it")
    model, guide = raw.setdefault("model", {}), raw.setdefault("guide", {})
    if not isinstance(model, dict) or not isinstance(guide, dict):
        return  # not tables: validation names the key
    widths, guide_widths = model.pop("hidden_sizes", None), guide.pop("hidden_sizes", None)
    decoder = model.get("decoder")
    dec_mlp = decoder is None or name_of(decoder, "mlp") == "mlp"
    if widths is not None and dec_mlp:
        table = as_table(with_default(decoder, "mlp"))
        model["decoder"] = {**table, "hidden_sizes": table.get("hidden_sizes", widths)}
    encoder = guide.get("encoder")
    if encoder is None or (isinstance(encoder, dict) and "name" not in encoder):
        if guide_widths is not None:  # a table without name: its keys on top, as before
            base = {} if dec_mlp else {"name": "mlp"}
            guide["encoder"] = {**base, "hidden_sizes": guide_widths, **(encoder or {})}
    elif name_of(encoder, "") == "mlp":
        table = as_table(encoder)
        mirror = (widths if widths is not None else [400])[::-1]
        own = guide_widths if guide_widths is not None else mirror
        guide["encoder"] = {**table, "hidden_sizes": table.get("hidden_sizes", own)}


def name_of(spec: Any, default: str) -> Any:
    """The name a component spec gives (a name, or a table's ``name``), else ``default``."""
    return spec if isinstance(spec, str) else (spec or {}).get("name", default)


def note_once(message: str) -> None:
    """:func:`~vaelab.notes.note`, once per process (a resumed run reads its config twice)."""
    if message not in _NOTED:
        _NOTED.add(message)
        note(message)


def with_default(spec: Any, default: str) -> Any:
    """A component spec with its name filled in: None → default, a table without name too."""
    if spec is None:
        return default
    if isinstance(spec, dict) and "name" not in spec:
        return {"name": default, **spec}
    return spec


def as_table(spec: Any) -> Any:
    """A component spec as a table (a name → ``{name = ...}``, options → their dump)."""
    if isinstance(spec, Options):
        return spec.model_dump()
    if isinstance(spec, str):
        return {"name": spec}
    return spec
