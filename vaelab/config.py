"""Typed run configuration: one small schema per section, loaded from TOML, overridden by ``--set``.

A run is described by six sections whose key names are the contract of the CLI::

    [data]      name, path, binarize, dequantize, ...
    [model]     latent, latent_dim, hidden_sizes, likelihood, prior, ...
    [guide]     hidden_sizes, family, ...
    [objective] name, num_particles, ...
    [train]     epochs, batch_size, lr, seed, ...
    [eval]      num_samples, ...

Components (``model.prior``, ``model.likelihood``, ``model.latent``, ``guide.family``) are either a
name or a table ``{name = "...", option = value}``; their options are validated by the registry of
that component (see :mod:`vaelab.registry`), so every error names the dotted key, the bad value and
the valid choices. Validation is done by `pydantic <https://docs.pydantic.dev>`_ (typed coercion,
``extra="forbid"``, precise error locations).

Example::

    cfg = load_config("experiments/configs/gaussian_mnist.toml", ["model.prior=laplace"])
    print(dump_toml(cfg))
"""

from __future__ import annotations

import ast
import json
import tomllib
from pathlib import Path
from typing import Any, Literal

import tomli_w
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from vaelab.registry import ConfigError, format_validation_error, suggest

__all__ = [
    "ConfigError",
    "DataConfig",
    "EvalConfig",
    "GuideConfig",
    "ModelConfig",
    "ObjectiveConfig",
    "RunConfig",
    "TrainConfig",
    "apply_overrides",
    "dump_toml",
    "load_config",
    "resolve",
]

Component = str | dict[str, Any]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class DataConfig(_Section):
    """Which data set, and how each batch is preprocessed."""

    name: str = "binarized_mnist"
    #: a ``.npy``/``.npz`` file for ``name = "array"``; ignored otherwise
    path: str | None = None
    #: ``static``: binarize once (seeded); ``dynamic``: a fresh Bernoulli draw every batch
    binarize: Literal["none", "static", "dynamic"] = "none"
    #: uniform dequantization of 8-bit data, x = (level + u) / 256, u ~ U[0, 1)
    dequantize: bool = False
    #: fractions carved out of the training set when a data set has no valid / test split
    valid_fraction: float = Field(0.1, ge=0.0, lt=1.0)
    test_fraction: float = Field(0.1, ge=0.0, lt=1.0)
    split_seed: int = 0
    #: keep at most this many points per split (smoke runs); ``None`` keeps all
    limit: int | None = Field(None, gt=0)


class ModelConfig(_Section):
    """The generative model p_θ(x|z) p(z)."""

    latent: Component = "gaussian"
    latent_dim: int = Field(20, gt=0)
    #: decoder hidden widths, first layer after z; ``[]`` gives a linear decoder
    hidden_sizes: list[int] = Field(default_factory=lambda: [400])
    activation: Literal["relu", "tanh", "softplus", "elu", "gelu"] = "relu"
    likelihood: Component = "bernoulli"
    prior: Component = "standard_normal"

    @field_validator("hidden_sizes")
    @classmethod
    def _positive(cls, v: list[int]) -> list[int]:
        if any(h <= 0 for h in v):
            raise ValueError(f"every hidden size must be positive, got {v}")
        return v


class GuideConfig(_Section):
    """The amortized guide q_φ(z|x)."""

    #: encoder hidden widths, first layer after x; ``None`` mirrors ``model.hidden_sizes``
    hidden_sizes: list[int] | None = None
    family: Component = "normal"


class ObjectiveConfig(_Section):
    """The training objective, see :mod:`vaelab.inference.objectives`."""

    name: str = "trace"
    num_particles: int = Field(1, gt=0)
    #: Rényi α for ``renyi`` (α ≠ 1; α = 0 is IWAE)
    alpha: float = 0.0
    #: final KL weight β (the warm-up ramps from 0 to this value)
    beta: float = Field(1.0, ge=0.0)
    #: compile the objective with ``torch.jit`` where vaelab knows it is correct
    jit: bool = False


class TrainConfig(_Section):
    epochs: int = Field(10, gt=0)
    batch_size: int = Field(100, gt=0)
    lr: float = Field(1e-3, gt=0.0)
    seed: int = 0
    #: KL warm-up: β rises linearly from 0 to ``objective.beta`` over this many epochs (0 = off)
    warmup_epochs: int = Field(0, ge=0)
    #: early stopping patience in epochs on the validation ELBO (0 = off)
    patience: int = Field(0, ge=0)
    #: gradient-norm clipping (0 = off)
    clip_norm: float = Field(0.0, ge=0.0)
    #: ``torch``: objective.loss_and_grads + one torch Adam; ``svi``: pyro.infer.SVI + pyro.optim
    driver: Literal["torch", "svi"] = "torch"
    #: Pyro's argument/support validation: on in tests, off in production training
    pyro_validation: bool = False
    #: points of the validation split scored each epoch (``None``: all)
    valid_limit: int | None = Field(None, gt=0)
    #: stop an epoch after this many steps (smoke runs); ``None``: full epochs
    max_steps_per_epoch: int | None = Field(None, gt=0)
    device: Literal["cpu", "cuda", "auto"] = "cpu"
    num_threads: int | None = Field(None, gt=0)
    progress: bool = True


class EvalConfig(_Section):
    split: Literal["train", "valid", "test"] = "test"
    #: importance samples K per data point (5000 in Burda et al. 2016's protocol)
    num_samples: int = Field(5000, gt=0)
    #: data points per batch of the importance-sampling pass
    batch_size: int = Field(100, gt=0)
    #: memory budget of one particle chunk, in MiB
    max_memory_mb: float = Field(512.0, gt=0.0)
    limit: int | None = Field(None, gt=0)
    seed: int = 0


class RunConfig(_Section):
    data: DataConfig = Field(default_factory=DataConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    guide: GuideConfig = Field(default_factory=GuideConfig)
    objective: ObjectiveConfig = Field(default_factory=ObjectiveConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)


SECTIONS = tuple(RunConfig.model_fields)


# --------------------------------------------------------------------------------------------
# loading, overriding, resolving


def _parse_value(text: str) -> Any:
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
    ``likelihood = {name = "normal", scale = 0.1}``.
    """
    raw = json.loads(json.dumps(raw))  # deep copy of plain data
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
        for i, p in enumerate(parts[1:-1], start=1):
            child = node.get(p)
            if isinstance(child, str):
                child = {"name": child}
            elif child is None:
                field = _field_default(parts[: i + 1])
                child = {"name": field} if isinstance(field, str) else {}
            elif not isinstance(child, dict):
                raise ConfigError(f"override {item!r}: {'.'.join(parts[: i + 1])} is not a table")
            node[p] = child
            node = child
        node[parts[-1]] = _parse_value(text)
    return raw


def _field_default(path: list[str]) -> Any:
    """The schema default of ``section.key`` (used to promote a default component to a table)."""
    section = RunConfig.model_fields[path[0]].default_factory()
    return getattr(section, path[1], None) if len(path) == 2 else None


def load_raw(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {str(path)!r} does not exist")
    try:
        return tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(f"config file {str(path)!r} is not valid TOML: {err}") from None


def resolve(raw: dict[str, Any]) -> RunConfig:
    """Validate plain data into a :class:`RunConfig`, resolving every component through its registry.

    Component specs come back as fully populated tables (defaults filled in), so the saved config
    reproduces the run alone.
    """
    unknown = [k for k in raw if k not in SECTIONS]
    if unknown:
        k = unknown[0]
        raise ConfigError(
            f"unknown section [{k}]{suggest(k, SECTIONS)}; sections: {', '.join(SECTIONS)}"
        )
    try:
        cfg = RunConfig.model_validate(raw)
    except ValidationError as err:
        raise ConfigError(format_validation_error("", err, RunConfig)) from None
    from vaelab import components  # populates the registries

    return components.resolve_components(cfg)


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> RunConfig:
    """Load TOML (or defaults when ``path`` is None), apply overrides, validate, resolve."""
    raw = load_raw(path) if path is not None else {}
    return resolve(apply_overrides(raw, overrides or []))


def to_dict(cfg: RunConfig) -> dict[str, Any]:
    return cfg.model_dump(mode="json", exclude_none=False)


def dump_toml(cfg: RunConfig) -> str:
    def strip_none(d: Any) -> Any:
        if isinstance(d, dict):
            return {k: strip_none(v) for k, v in d.items() if v is not None}
        return d

    return tomli_w.dumps(strip_none(to_dict(cfg)))
