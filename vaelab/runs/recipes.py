"""Paper recipes: the ``[recipe]`` schema of ``vaelab/recipes/NAME.toml`` and its loading.

A recipe is a config shipped in ``vaelab/recipes/NAME.toml`` (so an installed wheel has it) that
follows a published protocol, each setting naming its source (the paper's section, the
authors' code), plus a ``[recipe]`` table: the paper, its budget, the published numbers per
variant, the variants (lists of ``--set`` overrides), the AIS / BDMC settings of the
evaluation (typed: :class:`RecipeTable`, validated once when the recipe loads), and optionally
the pairs of variants whose differences :func:`vaelab.runs.tables.paired_table` takes image by image
(``paired``; a reference ``RECIPE/VARIANT`` names another recipe's variant, e.g. the VampPrior
against the standard prior). :func:`vaelab.runs.reproduce.reproduce` runs them.

Example::

    from vaelab.runs.recipes import load_recipe
    cfg = load_recipe("iwae_static").config("iwae_k5", seed_offset=1)
"""

from __future__ import annotations

import copy
import tomllib
from dataclasses import dataclass, field
from importlib import resources
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from vaelab.config import ConfigError, RunConfig
from vaelab.resolve import apply_overrides, parse_value, resolve

__all__ = ["SELECTION_SUFFIX", "ChainSettings", "Grid", "Recipe", "RecipeTable", "load_recipe",
           "member_name", "parse_overrides", "recipe_names", "selection_file",
           "with_recipe_overrides"]

#: a grid's selection record is ``GRID`` + this, in the recipe folder and in its export
SELECTION_SUFFIX = ".selection.json"


def selection_file(grid: str) -> str:
    """The name of grid ``grid``'s selection record (members, their validation scores, the
    selected one), in the recipe folder and beside its exported runs."""
    return f"{grid}{SELECTION_SUFFIX}"


class ChainSettings(BaseModel):
    """The settings of an annealed evaluation stage (``[recipe] ais`` or ``bdmc``): AIS on
    ``points`` test points spread over the split, or BDMC on ``points`` points simulated from
    the model; ``points = 0`` leaves the stage out."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    points: int = Field(0, ge=0, description="points scored (0: the stage is not run)")
    steps: int = Field(500, gt=0, description="intermediate distributions T")
    chains: int = Field(4, gt=0, description="chains per point")
    leapfrog: int = Field(5, gt=0, description="leapfrog steps per HMC move")


class Grid(BaseModel):
    """A hyperparameter grid chosen on the validation set (``[recipe.grids.NAME]``): every
    member is the ``base`` variant plus its own overrides, trained at the first seed; the member
    with the best validation score (the one that picks a run's best checkpoint,
    :func:`~vaelab.runs.resume.valid_score`) is the one evaluated
    (:func:`vaelab.runs.reproduce.reproduce` with ``--variant NAME``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    base: str = Field(min_length=1, description="the variant every member extends")
    members: list[list[str]] = Field(min_length=2, description="each member's overrides")
    #: overrides of the screening runs only (e.g. ``train.epochs`` of a shorter screen, as
    #: Paulus et al. 2021 screen at 10,000 steps): the members are then trained with them under
    #: ``OUT/screen/``, and the selected member is trained anew at the full budget
    screen: list[str] = Field(default_factory=list)
    note: str = Field("", description="what the grid is, and its source")


class RecipeTable(BaseModel):
    """The typed ``[recipe]`` table, validated once when the recipe loads (and again after
    ``recipe.KEY=VALUE`` overrides)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    paper: str = Field(min_length=1)
    source: str = ""
    budget: str = Field(min_length=1)
    published: dict[str, float] = Field(default_factory=dict)
    pythae: dict[str, float] = Field(default_factory=dict)
    ais: ChainSettings | None = None
    bdmc: ChainSettings | None = None
    variants: dict[str, list[str]] = Field(default_factory=lambda: {"default": list[str]()})
    #: the published figure's quantity: IS log p(x), or a bound on the model (``elbo``: for a
    #: discrete latent, the bounds of the first ``bound_draws`` one-hot draws of the IS pass)
    metric: Literal["log_likelihood", "elbo"] = "log_likelihood"
    paired: list[tuple[str, str]] = Field(default_factory=list)
    #: m, the draws of the discrete rows' m-sample bounds (Jang et al. 2017, §4: m = 1000)
    bound_draws: int = Field(1000, gt=0)
    #: grids chosen on validation (:class:`Grid`); each member is a variant named
    #: ``GRID@KEY=VALUE,...`` (:func:`member_name`)
    grids: dict[str, Grid] = Field(default_factory=dict)


def member_name(grid: str, overrides: list[str]) -> str:
    """A grid member's variant name: the grid's, ``@``, and each override's last key part with
    its value, e.g. ``paper_gumbel@lr=0.001`` for ``["train.lr=1e-3"]``."""
    parts = []
    for o in overrides:
        key, _, value = o.partition("=")
        parts.append(f"{key.strip().split('.')[-1]}={parse_value(value)}")
    return f"{grid}@{','.join(parts)}"


def _table(name: str, meta: dict[str, Any]) -> RecipeTable:
    """``meta`` validated as :class:`RecipeTable`; :raises ConfigError: one line naming the key."""
    try:
        return RecipeTable.model_validate(meta)
    except ValidationError as err:
        e = err.errors()[0]
        key = ".".join(str(p) for p in e["loc"])
        if e["type"] == "extra_forbidden":
            raise ConfigError(f"recipe {name!r}: unknown [recipe] key {key!r}") from None
        raise ConfigError(f"recipe {name!r}: [recipe] {key}: {e['msg']} (got "
                          f"{e.get('input')!r})") from None


@dataclass(frozen=True)
class Recipe:
    """A shipped recipe: its ``[recipe]`` table (as written, ``meta``, and typed, ``table``)
    and the config it extends."""

    name: str
    meta: dict[str, Any]
    raw: dict[str, Any]  #: the config tables, as written
    table: RecipeTable = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "table", _table(self.name, self.meta))

    @property
    def variants(self) -> dict[str, list[str]]:
        """The variants and every grid member (its base variant's overrides, then its own)."""
        out = dict(self.table.variants)
        for grid, spec in self.table.grids.items():
            base = list(self.table.variants.get(spec.base, []))
            out.update({member_name(grid, m): [*base, *m] for m in spec.members})
        return out

    def grid_members(self, grid: str) -> list[str]:
        """The variant names of grid ``grid``'s members, in the recipe's order."""
        return [member_name(grid, m) for m in self.table.grids[grid].members]

    def grid_of(self, variant: str) -> Grid | None:
        """The grid whose member ``variant`` is (``GRID@...``), or None."""
        return self.table.grids.get(_grid_of(variant))

    def published(self, variant: str) -> float | None:
        """The published figure of ``variant`` (a grid member: its grid's)."""
        return self.table.published.get(variant, self.table.published.get(_grid_of(variant)))

    def pythae(self, variant: str) -> float | None:
        return self.table.pythae.get(variant, self.table.pythae.get(_grid_of(variant)))

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


def _grid_of(variant: str) -> str:
    """The grid a member variant belongs to (``GRID@...``), or ``""``."""
    return variant.split("@", 1)[0] if "@" in variant else ""


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
    recipe = Recipe(name, raw.pop("recipe", {}), raw)
    strays = {v for pair in recipe.table.paired for v in pair
              if v not in recipe.variants and not _other_variant(v)}
    if strays:
        raise ConfigError(f"recipe {name!r}: [recipe] paired names no variant: {sorted(strays)}")
    for grid, spec in recipe.table.grids.items():
        if spec.base not in recipe.table.variants or grid in recipe.table.variants:
            raise ConfigError(f"recipe {name!r}: grid {grid!r} must extend a variant and not be "
                              f"one (base {spec.base!r}; variants: "
                              f"{', '.join(recipe.table.variants)})")
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

