"""The run configuration as a typed schema: one small pydantic model per section, inert data.

A run is described by seven sections whose key names are the contract of the CLI::

    [data]      name, path, binarize, dequantize, limit, subset, ...
    [model]     latent, latent_dim, decoder, likelihood, prior, ...
    [guide]     family, encoder
    [objective] name, num_particles, ...
    [train]     epochs, batch_size, lr, seed, ...
    [eval]      num_samples, method, proposal, ais_steps, ...
    [log]       backends, every_n_steps, dir, experiment (tracking, see vaelab.runs.tracking)

plus a top-level ``version`` (:data:`CONFIG_VERSION`), written into every run folder so that a
config saved by an older vaelab keeps its meaning (see :mod:`vaelab.versions`). One topic: the
schema of those seven sections (and the plain-data helpers every reader of it needs), so the
module runs past 500 lines, each section a short model.

Components (``model.prior``, ``model.likelihood``, ``model.latent``, ``guide.family``,
``eval.proposal``) are a name or a table ``{name = "...", option = value}`` as written; after
resolution (:func:`vaelab.resolve.resolve`, the only place names are looked up) each holds its
typed, frozen :class:`~vaelab.registry.Options`, and building it is one ``.build(...)`` call on
the registry. The sections whose ``name`` picks a builder that reads the whole section
(``[data]``, ``[objective]``) carry the registry entry their name resolved to
(:attr:`NamedSection.entry`), so that nothing is looked up again either. This module imports
nothing from vaelab but :mod:`vaelab.registry`: loading, overrides and resolution live in
:mod:`vaelab.resolve`.

Example::

    from vaelab.resolve import load_config
    cfg = load_config("experiments/configs/gaussian_mnist.toml", ["model.prior=laplace"])
    print(dump_toml(cfg))
"""

from __future__ import annotations

import ast
import math
import tomllib
from typing import Any, Literal

import tomli_w
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    SerializeAsAny,
    field_validator,
    model_validator,
)

from vaelab.registry import ConfigError, Entry, Options

__all__ = [
    "CONFIG_VERSION",
    "json_safe",
    "parse_value",
    "ConfigError",
    "DataConfig",
    "EvalConfig",
    "GuideConfig",
    "LogConfig",
    "ModelConfig",
    "NamedSection",
    "ObjectiveConfig",
    "RunConfig",
    "SECTIONS",
    "dump_toml",
    "to_dict",
]

#: the schema version written into every saved config (what each version changed:
#: :func:`vaelab.resolve.migrate`)
CONFIG_VERSION = 5

#: a component as written (a name or a table) or, once resolved, its typed options
Component = str | dict[str, Any] | SerializeAsAny[Options]

#: the largest seed (numpy's and torch's generators take seeds in 0 … 2³² − 1)
MAX_SEED = 2**32 - 1


def _seed() -> Any:
    """A seed field: an integer in 0 … 2³² − 1 (refused outside, naming the key)."""
    return Field(0, ge=0, le=MAX_SEED)


class _Section(BaseModel):
    """A config section: unknown keys, NaN / infinite numbers and booleans given for numbers
    are refused (``epochs = true`` is not one epoch)."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)

    @field_validator("*", mode="before")
    @classmethod
    def _no_bool_for_numbers(cls, v: Any, info) -> Any:
        field = cls.model_fields[info.field_name]
        if isinstance(v, bool) and _is_number(field.annotation):
            raise ValueError(f"expected a number, got the boolean {str(v).lower()}")
        return v


class NamedSection(_Section):
    """A section whose ``name`` picks a registered builder that reads the whole section (a data
    set, an objective). Resolution (:func:`vaelab.resolve.resolve`) binds the registry entry of
    ``name`` once; inner layers build from :attr:`entry` without looking the name up. The entry
    is not part of the saved config (it is ``name`` again when read back)."""

    name: str
    _entry: Entry | None = PrivateAttr(None)

    @property
    def entry(self) -> Entry | None:
        """The registry entry ``name`` resolved to; ``None`` for a section written by hand (or
        renamed since it was resolved), which its builder's caller looks up itself."""
        entry = self._entry
        return entry if entry is not None and entry.name == self.name else None

    def bound(self, entry: Entry) -> Any:
        """A copy of this section that carries ``entry`` (resolution's job)."""
        copy = self.model_copy()
        copy._entry = entry
        return copy


def _is_number(annotation: Any) -> bool:
    """``int``, ``float`` or an optional one (``int | None``)."""
    args = getattr(annotation, "__args__", None)
    if args is not None and type(None) in args:
        return all(a in (int, float) for a in args if a is not type(None))
    return annotation in (int, float)


class DataConfig(NamedSection):
    """Which data set, and how each batch is preprocessed."""

    name: str = "binarized_mnist"
    #: the user's ``.npy``, ``.npz``, ``.csv`` or ``.h5ad`` file, read by ``name = "array"``:
    #: given without ``name``, it implies ``name = "array"``; beside a built-in data set that
    #: reads no file, it is refused
    path: str | None = None
    #: ``static``: binarize once (seeded); ``dynamic``: a fresh Bernoulli draw every batch
    binarize: Literal["none", "static", "dynamic"] = "none"
    #: uniform dequantization of 8-bit data, x = (level + u) / 256, u ~ U[0, 1)
    dequantize: bool = False
    #: fractions carved out of the training set when a data set has no valid / test split
    valid_fraction: float = Field(0.1, ge=0.0, lt=1.0)
    test_fraction: float = Field(0.1, ge=0.0, lt=1.0)
    split_seed: int = _seed()
    #: keep at most this many points per split (smoke runs); ``None`` keeps all
    limit: int | None = Field(None, gt=0)
    #: how ``data.limit`` and ``train.valid_limit`` pick their points: ``spread``, evenly over
    #: the split (:func:`vaelab.data.subsets.spread_indices`; the binarized MNIST test file is
    #: sorted by digit); ``first``, the first N (what configs saved before version 2 meant)
    subset: Literal["spread", "first"] = "spread"
    #: how numbers are read: ``levels`` (k/(L−1) grey levels), ``counts`` (non-negative
    #: integers), ``real`` (any real value), or ``auto`` (decided by dtype and range, and said)
    values: Literal["auto", "levels", "counts", "real"] = "auto"
    #: real-valued data: per-feature mean and scale from the training split, saved with the run;
    #: log p(x) is reported in the units of the original data (the log-Jacobian is added)
    standardize: bool = False


class ModelConfig(_Section):
    """The generative model p_θ(x|z) p(z)."""

    latent: Component = "gaussian"
    latent_dim: int = Field(20, gt=0)
    #: the decoder's hidden widths, first layer after z (``[]``: a linear MLP decoder): another
    #: spelling of ``decoder.hidden_sizes``, the one home of the widths, for whichever network
    #: the decoder is (given both ways, they must agree). ``None``: the network's own default
    #: (``[400]`` for ``mlp``). A resolved config echoes the decoder's widths here
    hidden_sizes: list[int] | None = None
    #: the activation of a decoder (and encoder) that has one and whose table gives none
    activation: Literal["relu", "tanh", "softplus", "elu", "gelu"] = "relu"
    likelihood: Component = "bernoulli"
    #: ``None``: the latent type's default (``standard_normal`` for ``gaussian``)
    prior: Component | None = None
    #: the decoder network (a name or a table, e.g. ``{name = "conv", channels = [32, 64]}``);
    #: ``None``: ``mlp``
    decoder: Component | None = None
    #: the decoder's output bias at initialisation: ``default`` (the network's own), or
    #: ``data_mean``, the Bernoulli logit of the training mean per pixel, clipped to [0.001,
    #: 0.999] (Burda et al. 2016's code)
    output_bias: Literal["default", "data_mean"] = "default"
    #: stochastic layers above z_1 (``[]``: the one-layer VAE, site ``"z"``): entry i declares
    #: z_{i+2}, its size and the networks of p(z_{i+1} | z_{i+2}) and of its guide
    #: conditional; the sites are then ``"z_1" … "z_L"``, z_1 of size ``latent_dim`` (see
    #: :mod:`vaelab.model.hierarchy`)
    layers: list[LayerConfig] = Field(default_factory=list)
    #: with ``layers``: the decoder reads every layer, p(x | z_1, …, z_L) (z_1 … z_L
    #: concatenated; Tomczak & Welling 2018's two-level model); ``false``: p(x | z_1)
    skip: bool = False

    @field_validator("hidden_sizes")
    @classmethod
    def _positive(cls, v: list[int] | None) -> list[int] | None:
        return _positive_widths(v)

    @model_validator(mode="after")
    def _check_layers(self):
        if self.skip and not self.layers:
            raise ValueError("skip = true connects the decoder to the layers above z_1; "
                             "declare them in model.layers (or set skip = false)")
        return self


class LayerConfig(_Section):
    """One stochastic layer z_l (l ≥ 2) of ``model.layers``: the diagonal Gaussian
    conditionals p(z_{l−1} | z_l) (model) and q(z_l | ·) (guide, its inputs as
    ``guide.hierarchy`` says), each a network (a name or a table of
    :mod:`vaelab.model.networks`, e.g. ``{name = "mlp", hidden_sizes = [100, 100],
    activation = "tanh"}``) whose output is read as ``guide.family`` reads the encoder's."""

    latent_dim: int = Field(gt=0)
    #: the network of p(z_{l−1} | z_l); ``None``: the decoder's network type and options
    network: Component | None = None
    #: the network of the guide's q(z_l | ·); ``None``: ``network`` mirrored
    encoder: Component | None = None


def _positive_widths(v: list[int] | None) -> list[int] | None:
    if v is not None and any(h <= 0 for h in v):
        raise ValueError(f"every hidden size must be positive, got {v}")
    return v


class GuideConfig(_Section):
    """The amortized guide q_φ(z|x)."""

    #: the encoder's hidden widths, first layer after x: another spelling of
    #: ``encoder.hidden_sizes`` (given both ways, they must agree). ``None``: the encoder's own
    #: (the decoder's, reversed, when the encoder mirrors it). A resolved config echoes them here
    hidden_sizes: list[int] | None = None
    #: ``None``: the latent type's default (``normal`` for ``gaussian``)
    family: Component | None = None
    #: the encoder network; ``None`` (or a table without ``name``, whose keys are put on top):
    #: the decoder's network mirrored, widths reversed
    encoder: Component | None = None
    #: what the encoder reads: ``none``, the data as the likelihood scores them; ``log1p``,
    #: log(1 + x), for counts whose range spans orders of magnitude (scVI's encoder input; the
    #: likelihood still scores the raw counts); ``auto``: ``log1p`` for a likelihood of counts
    #: (``poisson``, ``negative_binomial``, ``zero_inflated_negative_binomial``), else ``none``
    #: (a resolved config says which, and why, in a comment)
    input_transform: Literal["auto", "none", "log1p"] = "auto"
    #: with ``model.layers``, the order of the guide's layers (:mod:`vaelab.guide.hierarchical`):
    #: ``bottom_up``, q(z_1 | x) q(z_2 | z_1) … (Burda et al. 2016); ``top_down``,
    #: q(z_L | x) q(z_{L−1} | x, z_L) … (Tomczak & Welling 2018's two-level VAE); ``ladder``,
    #: a bottom-up pass merged top-down with p(z_l | z_{l+1}) by precision (Sønderby et al.
    #: 2016), each ``model.layers`` entry's ``encoder`` reading the step below it
    hierarchy: Literal["bottom_up", "top_down", "ladder"] = "bottom_up"

    @field_validator("hidden_sizes")
    @classmethod
    def _positive(cls, v: list[int] | None) -> list[int] | None:
        return _positive_widths(v)

    @field_validator("input_transform", mode="before")
    @classmethod
    def _none_is_none(cls, v: Any) -> Any:
        return "none" if v is None else v  # ``--set guide.input_transform=none`` reads None


class ObjectiveConfig(NamedSection):
    """The training objective, see :mod:`vaelab.inference.objectives`."""

    #: the objective (:mod:`vaelab.inference.objectives`); ``auto``: ``mean_field``, the ELBO
    #: with KL(q ‖ p) in closed form, where torch has one for the guide family and prior (a
    #: ``normal`` guide with the ``standard_normal``, ``normal`` or ``laplace`` prior), else
    #: ``trace``, the ELBO with a Monte Carlo KL (a resolved config says which, and why, in a
    #: comment). Configs saved before version 4 meant ``trace``
    name: str = "auto"
    num_particles: int = Field(1, gt=0)
    #: Rényi α for ``renyi`` (α ≠ 1; α = 0 is IWAE)
    alpha: float = 0.0
    #: final KL weight β (the warm-up ramps from 0 to this value)
    beta: float = Field(1.0, ge=0.0)
    #: compile the objective with Pyro's JIT (``JitTrace_ELBO`` and siblings): ``auto`` does so
    #: when the objective has a compiled variant, every component is on the JIT allowlist, one
    #: process trains, and the compiled loss equals the eager one on the first batch; else eager,
    #: with one note saying why. ``true`` insists, ``false`` never compiles.
    jit: bool | Literal["auto"] = "auto"


class TrainConfig(_Section):
    epochs: int = Field(10, gt=0)
    batch_size: int = Field(100, gt=0)
    lr: float = Field(1e-3, gt=0.0)
    seed: int = _seed()
    #: shuffle the training points every epoch (by seed and epoch); ``false``: every epoch
    #: visits the mini-batches in the file's order, as Burda et al.'s IWAE code does
    shuffle: bool = True
    #: KL warm-up: β rises linearly from 0 to ``objective.beta`` over this many epochs (0 = off)
    warmup_epochs: int = Field(0, ge=0)
    #: how β rises during the warm-up: ``step``, at every step (β = (e + i/n) / W at step i of
    #: n in 0-based epoch e); ``epoch``, once per epoch (β = (e + 1) / W, the VampPrior code's)
    warmup_per: Literal["step", "epoch"] = "step"
    #: early stopping patience in epochs on the validation ELBO (0 = off)
    patience: int = Field(0, ge=0)
    #: early stopping: whether epochs of the KL warm-up count towards ``patience``; ``false``
    #: restarts the count at every warm-up epoch, so the run cannot stop during warm-up (the
    #: VampPrior code, Tomczak & Welling 2018)
    patience_counts_warmup: bool = True
    #: gradient-norm clipping (0 = off)
    clip_norm: float = Field(0.0, ge=0.0)
    #: ``adam``; ``adam_normgrad``: Adam on each parameter's gradient divided by its own L2 norm,
    #: g / (‖g‖ + 1e-7) (the "AdamNormGrad" of the VampPrior code); ``sgd``: stochastic gradient
    #: descent with ``momentum`` (``torch.optim.SGD``: v ← μ v + g, θ ← θ − lr · v; Jang et
    #: al. 2017 §4: momentum 0.9); ``adam_burda``: Adam as Burda et al.'s IWAE code runs it
    #: (second moments start at one, ε added to √v, the moments of the previous step;
    #: :mod:`vaelab.runs.burda_adam`), with ``adam_betas`` and ``adam_eps``
    optimizer: Literal["adam", "adam_normgrad", "adam_burda", "sgd"] = "adam"
    #: SGD's momentum μ (``optimizer = "sgd"`` only; 0: plain SGD)
    momentum: float = Field(0.0, ge=0.0, lt=1.0)
    #: Adam's (β1, β2) and ε (Burda et al.'s IWAE code: [0.99, 0.999] and 1e-4)
    adam_betas: list[float] = Field(default_factory=lambda: [0.9, 0.999])
    adam_eps: float = Field(1e-8, gt=0.0)
    #: the learning rate over training: ``constant``; ``exponential``, ``lr · lr_decay^⌊t /
    #: lr_every⌋`` at step t (Jang et al.'s notebook: 0.9 every 1000 steps); ``iwae``, Burda et
    #: al.'s stages: stage i = 1, 2, ... lasts 3^(i−1) epochs at ``lr · round(10^(1−(i−1)/7), 1)
    #: / 10`` (8 stages, 3280 epochs, from 1e-3 down to 1e-4 with ``lr = 1e-3``)
    lr_schedule: Literal["constant", "exponential", "iwae"] = "constant"
    lr_decay: float = Field(0.9, gt=0.0, le=1.0)
    lr_every: int = Field(1000, gt=0)
    #: flush denormal floats to zero while training and evaluating (ReLU networks otherwise slow
    #: down by 30-40 % as weights shrink; results are unchanged within Monte Carlo error)
    flush_denormal: bool = True
    #: stop when a step's loss per point exceeds this many times its running scale (an
    #: exponential moving average of the loss per point, floored at 1 nat); 0 = off. A
    #: non-finite loss, gradient, parameter or validation ELBO always stops the run.
    divergence: float = Field(100.0, ge=0.0)
    #: Pyro's argument/support validation: on in tests, off in production training
    pyro_validation: bool = False
    #: points of the validation split scored each epoch (``None``: all)
    valid_limit: int | None = Field(None, gt=0)
    #: draws per validation point each epoch. 1: the score that picks the best checkpoint and
    #: drives early stopping is the single-draw ELBO (``valid_elbo``). K > 1: it is the K-sample
    #: importance-weighted bound (Burda et al. 2016), the bound an ``iwae`` or ``iwae_dreg`` run
    #: with K particles maximises and whose single-draw ELBO falls as it trains
    #: (``valid_bound``); ``valid_elbo`` is then the mean log weight of the same K draws
    valid_particles: int = Field(1, gt=0)
    #: stop an epoch after this many steps (smoke runs); ``None``: full epochs
    max_steps_per_epoch: int | None = Field(None, gt=0)
    #: where training and evaluation run: ``cpu``, ``cuda`` or ``auto`` (CUDA when torch sees
    #: one); see :mod:`vaelab.devices`
    device: Literal["cpu", "cuda", "auto"] = "cpu"
    #: read the step losses (and gradient norms) back to the host every this many steps, and
    #: check them then (non-finite, ``divergence``), update the progress bar and hand them to
    #: the trackers: on a GPU the one host synchronisation of the training loop. A non-finite
    #: step never updates the parameters (the optimizer skips it on the device) and stops the
    #: run at the next check. ``None``: 1 on the CPU (where reading a loss costs nothing), 50
    #: on CUDA
    sync_every: int | None = Field(None, gt=0)
    #: on a GPU, copy the data splits to the device once (``true``), or keep them on the host
    #: and copy each batch from pinned memory (``false``: sets larger than the GPU's memory)
    resident: bool = True
    #: deterministic kernels (:func:`vaelab.devices.deterministic`): bit-identical reruns on
    #: one GPU, at some cost in speed; the CPU path is deterministic already
    deterministic: bool = False
    #: draw the guide's reparameterization noise and the preprocessing noise of data point i
    #: from a generator keyed by (seed, epoch, i), so that a point gets the same draws whatever
    #: the batch and the number of processes (:mod:`vaelab.runs.data_parallel`): ``auto``
    #: does so when more than one process trains (torchrun); ``true`` in one process too (to
    #: compare with, resume from or be resumed by a data-parallel run); ``false`` never
    per_point_noise: bool | Literal["auto"] = "auto"
    num_threads: int | None = Field(None, gt=0)
    progress: bool = True

    @field_validator("adam_betas")
    @classmethod
    def _betas(cls, v: list[float]) -> list[float]:
        if len(v) != 2 or not all(0.0 <= b < 1.0 for b in v):
            raise ValueError(f"adam_betas must be two numbers in [0, 1), got {v}")
        return v

    @model_validator(mode="after")
    def _momentum_is_sgds(self):
        if self.momentum and self.optimizer != "sgd":
            raise ValueError(f"momentum = {self.momentum} is SGD's, but optimizer = "
                             f"{self.optimizer!r}; set train.optimizer = 'sgd' or drop momentum")
        return self


class EvalConfig(_Section):
    split: Literal["train", "valid", "test"] = "test"
    #: importance samples K per data point (5000 in Burda et al. 2016's protocol)
    num_samples: int = Field(5000, gt=0)
    #: data points per batch of the importance-sampling pass
    batch_size: int = Field(100, gt=0)
    #: memory budget of one particle chunk, in MiB
    max_memory_mb: float = Field(512.0, gt=0.0)
    #: score this many points spread evenly over the split (``None``: all)
    limit: int | None = Field(None, gt=0)
    seed: int = _seed()
    #: score the points in blocks of this many, block b seeded by (``seed``, b), so that the
    #: numbers do not depend on the number of processes (torchrun); ``None``: blocks of
    #: ``batch_size``, on one process or many (``vaelab reproduce``: its resumable blocks,
    #: block b seeded by ``seed`` + b; ``None``: 500 points for IS, 100 for AIS)
    block_size: int | None = Field(None, gt=0)
    #: ``is``: importance sampling with K = ``num_samples``; ``ais``: annealed importance sampling
    method: Literal["is", "ais"] = "is"
    #: IS proposal: ``guide``, ``inflated:FACTOR``, ``student_t:DF``, ``prior`` or a table
    proposal: Component = "guide"
    #: per-point Pareto k̂ of the importance weights
    diagnostics: bool = True
    #: compute the log weights without tracing where the model allows: IS with the guide
    #: (:mod:`vaelab.inference.fused`: a normal or categorical guide; Bernoulli, normal or
    #: discretized logistic likelihood) in particle chunks sized for the last-level cache, and
    #: AIS's log joint for one continuous site (:mod:`vaelab.inference.fast_ais`); the same
    #: draws and numbers as the traced path, to float rounding, about 1.3x faster
    #: (``benchmarks/limit.py``, ``benchmarks/ais.py``); elsewhere the traced path, as
    #: ``false`` always. Configs saved before version 5 meant ``false``
    fused: bool = True
    #: also report the exact log p(x) where a closed form or an enumeration exists
    exact: bool = True
    #: AIS: intermediate distributions T, chains per point, leapfrog steps per HMC move
    ais_steps: int = Field(1000, gt=0)
    ais_chains: int = Field(16, gt=0)
    ais_leapfrog: int = Field(10, gt=0)
    #: AIS: the normalized distribution the chains start from
    ais_base: Literal["prior", "guide"] = "prior"


class LogConfig(_Section):
    """Experiment tracking (:mod:`vaelab.runs.tracking`), off by default; may change on
    ``--resume``."""

    #: writers to log to: ``tensorboard`` (``torch.utils.tensorboard``) and/or ``mlflow`` (a
    #: local file store); each needs its extra, e.g. ``pip install 'vaelab[tensorboard]'``
    backends: list[Literal["tensorboard", "mlflow"]] = Field(default_factory=list)
    #: log the mean training loss per point, β and τ every this many steps
    every_n_steps: int = Field(50, gt=0)
    #: where to log; ``None``: inside the run folder (``DIR/tb``, ``DIR/mlruns``). Given, runs
    #: share it: TensorBoard writes ``dir/tb/RUN`` (RUN: the run folder's name), MLflow
    #: ``dir/mlruns``
    dir: str | None = None
    #: the MLflow experiment the run is logged under
    experiment: str = Field("vaelab", min_length=1)

    @field_validator("backends")
    @classmethod
    def _once(cls, v: list[str]) -> list[str]:
        if len(set(v)) != len(v):
            raise ValueError(f"each backend may be listed once, got {v}")
        return v


class RunConfig(_Section):
    version: int = Field(CONFIG_VERSION, ge=1)
    #: modules imported before resolution, whose decorators register user components
    plugins: list[str] = Field(default_factory=list)
    data: DataConfig = Field(default_factory=DataConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    guide: GuideConfig = Field(default_factory=GuideConfig)
    objective: ObjectiveConfig = Field(default_factory=ObjectiveConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)
    log: LogConfig = Field(default_factory=LogConfig)
    #: ``{"section.key": why}``: the keys whose ``auto`` value resolution chose, and why (set by
    #: :func:`vaelab.resolve.resolve`; :func:`dump_toml` writes each as a comment on its line)
    _chosen: dict[str, str] = PrivateAttr(default_factory=dict)

    @property
    def chosen(self) -> dict[str, str]:
        """The keys resolution chose (``objective.name``, ``guide.input_transform``) and why."""
        return dict(self._chosen)

    def with_chosen(self, chosen: dict[str, str]) -> "RunConfig":
        """A copy that says why each key of ``chosen`` holds its value (resolution's job)."""
        copy = self.model_copy()
        copy._chosen = dict(chosen)
        return copy


#: the tables of a config; ``version`` and ``plugins`` are top-level keys
SECTIONS = tuple(k for k in RunConfig.model_fields if k not in ("version", "plugins"))


def to_dict(cfg: RunConfig) -> dict[str, Any]:
    return cfg.model_dump(mode="json", exclude_none=False)


def dump_toml(cfg: RunConfig) -> str:
    """``cfg`` as TOML; a key resolution chose (:attr:`RunConfig.chosen`) carries a comment
    saying why, e.g. ``name = "mean_field"  # default: analytic KL for ...``."""
    def strip_none(d: Any) -> Any:
        if isinstance(d, dict):
            return {k: strip_none(v) for k, v in d.items() if v is not None}
        if isinstance(d, list):  # e.g. model.layers, a list of tables
            return [strip_none(v) for v in d]
        return d

    return _commented(tomli_w.dumps(strip_none(to_dict(cfg))), cfg.chosen)


def _commented(text: str, why: dict[str, str]) -> str:
    """``text`` (TOML) with ``  # why[key]`` after the line of each top-level ``section.key``."""
    if not why:
        return text
    lines, table = text.split("\n"), ""
    for i, line in enumerate(lines):
        if line.startswith("["):
            table = line.strip("[]")
            continue
        key = line.split(" = ", 1)[0]
        comment = why.get(f"{table}.{key}") if " = " in line else None
        if comment is not None:
            lines[i] = f"{line}  # {comment}"
    return "\n".join(lines)


def json_safe(v: Any) -> Any:
    """NaN and ±inf as ``null`` (recursively): what vaelab writes stays valid JSON."""
    if isinstance(v, float) and not math.isfinite(v):
        return None
    if isinstance(v, dict):
        return {k: json_safe(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [json_safe(x) for x in v]
    return v


#: how deep arrays and tables may nest in a config (real configs nest 3 deep)
MAX_DEPTH = 32


def nesting_depth(value: Any) -> int:
    """How deep lists, tuples and dicts nest in ``value`` (0 for a scalar), without recursion."""
    depth, stack = 0, [(value, 0)]
    while stack:
        v, d = stack.pop()
        if isinstance(v, dict):
            v = list(v.values())
        if isinstance(v, (list, tuple)):
            depth = max(depth, d + 1)
            if depth > MAX_DEPTH:
                return depth
            stack.extend((x, d + 1) for x in v)
    return depth


def parse_value(text: str) -> Any:
    """Parse an override's right-hand side: TOML/JSON/Python literal, else a bare string.

    :raises ConfigError: arrays or tables nested more than :data:`MAX_DEPTH` deep.
    """
    text = text.strip()
    too_deep = ConfigError(f"value {text[:20]!r}...: arrays or tables nested more than "
                           f"{MAX_DEPTH} deep")
    try:
        value = tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        pass
    except RecursionError:
        raise too_deep from None
    else:
        if nesting_depth(value) > MAX_DEPTH:
            raise too_deep
        return value
    low = text.lower()
    if low in ("none", "null"):
        return None
    if low in ("true", "false"):
        return low == "true"
    try:
        value = ast.literal_eval(text)
    except (ValueError, SyntaxError, TypeError, MemoryError):
        return text
    except RecursionError:
        raise too_deep from None
    if nesting_depth(value) > MAX_DEPTH:
        raise too_deep
    return value
