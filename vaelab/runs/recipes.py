"""Paper recipes: the ``[recipe]`` schema of ``vaelab/recipes/NAME.toml`` and its loading.

A recipe is a config shipped in ``vaelab/recipes/NAME.toml`` (so an installed wheel has it) that
follows a published protocol, each setting naming its source (``../shared/PROTOCOLS.md``), plus a
``[recipe]`` table: the paper, its budget, the published numbers per variant, the variants (lists
of ``--set`` overrides), the AIS / BDMC settings of the evaluation, and optionally the pairs of
variants whose differences :func:`vaelab.runs.tables.paired_table` takes image by image
(``paired``; a reference ``RECIPE/VARIANT`` names another recipe's variant, e.g. the VampPrior
against the standard prior). :func:`vaelab.runs.reproduce.reproduce` runs them.

Example::

    from vaelab.runs.recipes import load_recipe
    cfg = load_recipe("iwae_static").config("iwae_k5", seed_offset=1)
"""

from __future__ import annotations

import copy
import tomllib
from dataclasses import dataclass
from importlib import resources
from typing import Any

from vaelab.config import ConfigError, RunConfig
from vaelab.resolve import apply_overrides, parse_value, resolve

__all__ = ["Recipe", "load_recipe", "parse_overrides", "recipe_names", "with_recipe_overrides"]

#: the schema of a recipe's ``[recipe]`` table
_META_KEYS = {"paper", "source", "budget", "published", "pythae", "ais", "bdmc", "variants",
              "metric", "paired"}


@dataclass(frozen=True)
class Recipe:
    """A shipped recipe: its ``[recipe]`` table and the config it extends."""

    name: str
    meta: dict[str, Any]
    raw: dict[str, Any]  #: the config tables, as written

    @property
    def variants(self) -> dict[str, list[str]]:
        return dict(self.meta.get("variants", {"default": []}))

    def published(self, variant: str) -> float | None:
        return self.meta.get("published", {}).get(variant)

    def pythae(self, variant: str) -> float | None:
        return self.meta.get("pythae", {}).get(variant)

    def config(self, variant: str, seed_offset: int = 0,
               overrides: list[str] | tuple[str, ...] = ()) -> RunConfig:
        """The resolved config of ``variant`` at seed ``train.seed + seed_offset``, with
        ``overrides`` (``KEY=VALUE``) last."""
        if variant not in self.variants:
            raise ConfigError(f"recipe {self.name!r} has no variant {variant!r}; variants: "
                              f"{', '.join(self.variants)}")
        raw = apply_overrides(self.raw, list(self.variants[variant]))
        seed = raw.get("train", {}).get("seed", 0) + seed_offset
        return resolve(apply_overrides(raw, [f"train.seed={seed}", *overrides]))


def with_recipe_overrides(recipe: Recipe, overrides) -> tuple[Recipe, list[str]]:
    """Apply the ``recipe.KEY=VALUE`` overrides (e.g. ``recipe.ais.points=100``, a smaller
    evaluation) to the recipe's table; returns it and the remaining config overrides."""
    mine = [o for o in overrides if o.strip().startswith("recipe.")]
    if not mine:
        return recipe, list(overrides)
    meta = copy.deepcopy(recipe.meta)
    for item in mine:
        key, text = item.split("=", 1)
        *path, last = key.strip().split(".")[1:]
        node = meta
        for k in path:
            node = node.setdefault(k, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {item!r}: recipe.{k} is not a table")
        node[last] = parse_value(text)
    unknown = set(meta) - _META_KEYS
    if unknown:
        raise ConfigError(f"recipe {recipe.name!r}: unknown [recipe] keys {sorted(unknown)}")
    return Recipe(recipe.name, meta, recipe.raw), [o for o in overrides if o not in mine]


def recipe_names() -> list[str]:
    """The recipes shipped with vaelab."""
    folder = resources.files("vaelab") / "recipes"
    return sorted(p.name[:-5] for p in folder.iterdir() if p.name.endswith(".toml"))


def load_recipe(name: str) -> Recipe:
    """:raises ConfigError: no such recipe, or a malformed ``[recipe]`` table."""
    if name not in recipe_names():
        raise ConfigError(f"unknown recipe {name!r}; recipes: {', '.join(recipe_names())}")
    raw = _read_recipe(name)
    meta = raw.pop("recipe", {})
    unknown = set(meta) - _META_KEYS
    if unknown:
        raise ConfigError(f"recipe {name!r}: unknown [recipe] keys {sorted(unknown)}")
    recipe = Recipe(name, meta, raw)
    strays = {v for pair in meta.get("paired", []) for v in pair
              if v not in recipe.variants and not _other_variant(v)}
    if strays:
        raise ConfigError(f"recipe {name!r}: [recipe] paired names no variant: {sorted(strays)}")
    return recipe


def _other_variant(ref: str) -> bool:
    """Whether ``ref`` is ``RECIPE/VARIANT``, a variant of a shipped recipe."""
    other, _, variant = ref.partition("/")
    if not variant or other not in recipe_names():
        return False
    return variant in _read_recipe(other).get("recipe", {}).get("variants", {"default": []})


def _read_recipe(name: str) -> dict[str, Any]:
    """The TOML of shipped recipe ``name``, as written."""
    return tomllib.loads((resources.files("vaelab") / "recipes" / f"{name}.toml").read_text())


def parse_overrides(values: list[str]) -> list[str]:
    """``KEY=VALUE`` strings, each checked to parse (the CLI's ``--set``)."""
    for v in values:
        if "=" not in v:
            raise ConfigError(f"--set expects KEY=VALUE, got {v!r}")
        parse_value(v.split("=", 1)[1])
    return list(values)

