r"""Gradient diagnostics of the training objectives: variance, signal-to-noise ratio, cost.

At fixed parameters and a fixed batch ``x (B, D)``, each objective is asked for M independent
gradient estimates :math:`g^{(1..M)}` of the batch-mean negative bound
:math:`-\frac1B \sum_n \mathcal{L}(x_n)` (the objective's loss divided by B). For each parameter
group of :meth:`vaelab.vae.VAE.parameter_groups` (encoder, decoder, prior) with P coordinates,
:math:`\hat μ_p = \frac1M \sum_m g^{(m)}_p` and
:math:`\hat σ_p^2 = \frac{1}{M-1} \sum_m (g^{(m)}_p - \hat μ_p)^2`:

.. math::

    \text{variance} = \frac1P \sum_p \hat σ_p^2, \qquad
    \text{snr} = \frac{1}{|P_+|} \sum_{p \in P_+} \frac{|\hat μ_p|}{\hat σ_p}, \qquad
    \text{snr\_norm} = \frac{\lVert \hat μ \rVert_2}{\sqrt{\sum_p \hat σ_p^2}}

with :math:`P_+` the coordinates of non-zero spread. ``snr`` is the per-coordinate ratio
averaged over coordinates, the quantity Rainforth et al. (2018) plot (they predict it falls
like :math:`1/\sqrt{K}` for the IWAE encoder); ``snr_norm`` is ‖E g‖ / sd(g) with sd the root of
the total variance, :math:`\sqrt{\mathbb{E}\lVert g - \mathbb{E} g \rVert^2}`. Both are
estimates: with M draws a coordinate of zero mean still shows :math:`|\hat μ_p|/\hat σ_p ≈
\sqrt{2/(π M)}`, the noise floor of ``snr``. Where a gradient vanishes (the STL and DReG encoder
gradients at the exact posterior) both ratios compare round-off to round-off: read ``variance``.

Also per objective: the bound's mean and standard deviation across the M draws (nats per data
point), the wall time of one ``loss_and_grads`` (mean over the M draws, after one untimed
warm-up call), and the memory of one step: on CUDA ``torch.cuda.max_memory_allocated`` during a
step; on CPU, where torch keeps no allocator statistics, the bytes of the tensors autograd saves
for the backward pass (``torch.autograd.graph.saved_tensors_hooks``, storages counted once,
parameters excluded) — the activation memory of a step, which dominates its peak — and the
process's peak resident set size (``resource.getrusage``, a high-water mark of the whole
process, not of one step).

With a reference gradient :math:`g^\star` (``vaelab diagnose --exact``: the exact gradient of
the discrete ELBO by enumeration; ``--bias``: a many-draw unbiased Monte Carlo estimate), each
group's bias :math:`\lVert \hat μ - g^\star \rVert`, relative bias and cosine similarity
:math:`\cos(\hat μ, g^\star)` (:mod:`vaelab.inference.gradient_bias`).

Posterior usage of a categorical latent: :func:`category_usage` reports, per variable, how many
of the K classes the guide uses across a data set and how certain it is for one point
(:class:`CategoryUsage`).

References:
  1. T. Rainforth, A. Kosiorek, T. A. Le, C. Maddison, M. Igl, F. Wood, Y. W. Teh. *Tighter
     Variational Bounds are Not Necessarily Better*. ICML 2018.
  2. G. Tucker, D. Lawson, S. Gu, C. Maddison. *Doubly Reparameterized Gradient Estimators for
     Monte Carlo Objectives*. ICLR 2019.

Example::

    run = load_run("runs/g")
    x = run.pre.eval_split(run.split("train", 100), 0)
    results = diagnose(run.vae, x, ["iwae:5", "iwae:50", "iwae_dreg:50"], draws=100)
    print(format_table(results))
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field

import pyro
import torch

from vaelab.config import ObjectiveConfig, json_safe, parse_value
from vaelab.inference.gradient_bias import GradientBias, ReferenceGradient, compare
from vaelab.registry import ConfigError

__all__ = [
    "CategoryUsage",
    "GroupStats",
    "ObjectiveDiagnostics",
    "bias_table",
    "category_usage",
    "diagnose",
    "format_table",
    "gradient_diagnostics",
    "group_stats",
    "parse_objective_spec",
]


@dataclass
class GroupStats:
    """Gradient statistics of one parameter group over M draws (see the module docstring)."""

    num_params: int
    variance: float
    snr: float
    snr_norm: float
    #: ‖mean gradient‖₂
    mean_norm: float


@dataclass
class ObjectiveDiagnostics:
    """Everything measured for one objective at one batch."""

    label: str
    objective: dict
    draws: int
    batch_size: int
    #: mean and sd over the draws of the batch-mean bound (nats per data point)
    bound_mean: float
    bound_sd: float
    groups: dict[str, GroupStats] = field(default_factory=dict)
    time_per_step_ms: float = float("nan")
    memory_mb: float = float("nan")
    memory_method: str = ""
    process_peak_rss_mb: float = float("nan")
    #: per group, against the reference gradient (:mod:`vaelab.inference.gradient_bias`)
    bias: dict[str, GradientBias] = field(default_factory=dict)
    #: what the bias is measured against ("" when not measured)
    reference: str = ""
    #: per group, the mean gradient :math:`\hat μ` (not serialized)
    mean_grads: dict[str, torch.Tensor] = field(default_factory=dict, repr=False)

    def to_dict(self) -> dict:
        """Plain data for JSON: non-finite numbers (an infinite SNR) become ``None``."""
        out = asdict(self)
        out.pop("mean_grads")
        return json_safe(out)


def parse_objective_spec(spec: str) -> ObjectiveConfig:
    """``name[:K][:key=value...]`` → :class:`ObjectiveConfig`, e.g. ``iwae:50``,
    ``renyi:10:alpha=0.5``, ``mean_field:1:jit=true``."""
    parts = [p.strip() for p in spec.split(":") if p.strip()]
    if not parts:
        raise ConfigError(f"objective spec {spec!r}: expected NAME[:K][:key=value], e.g. iwae:50")
    values: dict = {"name": parts[0]}
    for part in parts[1:]:
        if "=" in part:
            key, text = part.split("=", 1)
            values[key.strip()] = parse_value(text)
        else:
            try:
                values["num_particles"] = int(part)
            except ValueError:
                raise ConfigError(
                    f"objective spec {spec!r}: {part!r} is neither a particle count nor key=value"
                ) from None
    try:
        return ObjectiveConfig(**values)
    except Exception as err:  # pydantic ValidationError: name the spec
        raise ConfigError(f"objective spec {spec!r}: {err}") from None


def group_stats(g: torch.Tensor) -> GroupStats:
    """Statistics of ``g (M, P)``: M gradient draws of P coordinates."""
    M, P = g.shape
    g = g.double()
    mu = g.mean(0)  # (P,)
    var = g.var(0, unbiased=True) if M > 1 else torch.zeros_like(mu)  # (P,)
    sd = var.sqrt()
    spread = sd > 0
    snr = float((mu[spread].abs() / sd[spread]).mean()) if bool(spread.any()) else math.inf
    total_sd = float(var.sum().sqrt())
    mean_norm = float(mu.norm())
    snr_norm = mean_norm / total_sd if total_sd > 0 else math.inf
    return GroupStats(P, float(var.mean()) if P else 0.0, snr, snr_norm, mean_norm)


def _flat_grad(params: Sequence[torch.nn.Parameter]) -> torch.Tensor:
    parts = [
        (p.grad if p.grad is not None else torch.zeros_like(p)).detach().reshape(-1).cpu()
        for p in params
    ]
    return torch.cat(parts) if parts else torch.zeros(0)


class _SavedBytes:
    """Bytes of the (non-parameter) tensors autograd saves for backward, storages counted once."""

    def __init__(self, params):
        self.skip = {p.untyped_storage().data_ptr() for p in params}
        self.seen: dict[int, int] = {}

    def pack(self, t: torch.Tensor):
        s = t.untyped_storage()
        ptr = s.data_ptr()
        if ptr not in self.skip:
            self.seen[ptr] = max(self.seen.get(ptr, 0), s.nbytes())
        return t

    @property
    def total(self) -> int:
        return sum(self.seen.values())


def _peak_rss_mb() -> float:
    try:
        import resource
    except ImportError:  # pragma: no cover - not on Windows
        return float("nan")
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / 2**20 if sys.platform == "darwin" else rss / 2**10  # bytes on macOS, KiB else


def _memory_of_one_step(step: Callable[[], float], params: Sequence[torch.Tensor],
                        device: torch.device) -> tuple[float, str]:
    """Run ``step`` once (the warm-up: JIT compilation, lazy parameters) and return its memory
    in MiB and how it was measured: the CUDA peak above what was allocated before on a GPU, the
    bytes autograd saved for backward (activations, not ``params``) on the CPU."""
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        step()
        torch.cuda.synchronize()
        memory = (torch.cuda.max_memory_allocated(device) - base) / 2**20
        return memory, ("torch.cuda.max_memory_allocated during one step, minus what was "
                        "allocated before")
    saved = _SavedBytes(params)
    with torch.autograd.graph.saved_tensors_hooks(saved.pack, lambda t: t):
        step()
    return (saved.total / 2**20,
            "CPU: bytes of tensors saved by autograd for backward in one step (activations)")


def gradient_diagnostics(
    vae,
    objective,
    x: torch.Tensor,
    draws: int = 100,
    args: tuple = (),
    label: str | None = None,
    objective_cfg: ObjectiveConfig | None = None,
) -> ObjectiveDiagnostics:
    r"""M gradient draws of ``objective`` at ``x (B, D)`` → :class:`ObjectiveDiagnostics`.

    :param vae: the :class:`~vaelab.vae.VAE` (its parameters are not changed; grads are zeroed).
    :param objective: an objective with ``loss_and_grads(model, guide, x, *args)``.
    :param draws: M, independent gradient estimates (M ≥ 2).
    :param args: further model/guide arguments after ``x`` (β, temperature).
    :param label: the name shown in tables.
    """
    if draws < 2:
        raise ValueError(f"draws = {draws}: need at least 2 gradient draws for a variance")
    groups = vae.parameter_groups()
    params = list(vae.parameters())
    B = x.shape[0]

    def step() -> float:
        for p in params:
            p.grad = None
        return objective.loss_and_grads(vae.model, vae.guide, x, *args)

    # warm-up (JIT compilation, lazy parameters) and the memory of one step
    cuda = x.is_cuda
    memory, method = _memory_of_one_step(step, params, x.device)

    grads: dict[str, list[torch.Tensor]] = {name: [] for name in groups}
    bounds, elapsed = [], 0.0
    for _ in range(draws):
        if cuda:
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        loss = step()
        if cuda:
            torch.cuda.synchronize()
        elapsed += time.perf_counter() - t0
        bounds.append(-loss / B)
        for name, ps in groups.items():
            grads[name].append(_flat_grad(ps) / B)
    for p in params:
        p.grad = None
    b = torch.tensor(bounds, dtype=torch.float64)
    stacked = {name: torch.stack(gs) for name, gs in grads.items() if gs and gs[0].numel()}
    stats = {name: group_stats(g) for name, g in stacked.items()}
    cfg = objective_cfg.model_dump() if objective_cfg is not None else {}
    return ObjectiveDiagnostics(
        label=label or cfg.get("name", type(objective).__name__),
        objective=cfg,
        draws=draws,
        batch_size=B,
        bound_mean=float(b.mean()),
        bound_sd=float(b.std(unbiased=True)),
        groups=stats,
        time_per_step_ms=1e3 * elapsed / draws,
        memory_mb=memory,
        memory_method=method,
        process_peak_rss_mb=_peak_rss_mb(),
        mean_grads={name: g.double().mean(0) for name, g in stacked.items()},
    )


def diagnose(
    vae,
    x: torch.Tensor,
    objectives: Sequence[str | ObjectiveConfig],
    draws: int = 100,
    beta: float = 1.0,
    temperature: torch.Tensor | None = None,
    seed: int = 0,
    reference: ReferenceGradient | None = None,
) -> list[ObjectiveDiagnostics]:
    """Gradient diagnostics of several objectives on the same batch and parameters.

    :param objectives: specs (``"iwae:50"``, see :func:`parse_objective_spec`) or configs.
    :param draws: M gradient draws per objective.
    :param beta: the KL weight passed to model and guide (1: the bound itself).
    :param temperature: the relaxation temperature of a discrete latent (``None`` otherwise).
    :param seed: every objective starts from this seed.
    :param reference: a reference gradient
        (:func:`~vaelab.inference.gradient_bias.reference_gradient`): each objective's bias and
        cosine similarity against it are filled in.
    :returns: one :class:`ObjectiveDiagnostics` per objective, in order.
    """
    from vaelab.inference.objectives import build_objective

    results = []
    for spec in objectives:
        cfg = parse_objective_spec(spec) if isinstance(spec, str) else spec
        label = spec if isinstance(spec, str) else f"{cfg.name}:{cfg.num_particles}"
        objective = build_objective(cfg, vae)
        pyro.set_rng_seed(seed)
        args = (beta,) if temperature is None else (beta, temperature)
        result = gradient_diagnostics(vae, objective, x, draws, args, label=label,
                                      objective_cfg=cfg)
        if reference is not None:
            result.bias = compare(result.mean_grads, reference)
            result.reference = reference.description
        results.append(result)
    return results


def format_table(results: Sequence[ObjectiveDiagnostics]) -> str:
    """A Markdown table: bound, per-group variance and SNRs, time and memory per step."""
    names = [g for g in ("encoder", "decoder", "prior") if any(g in r.groups for r in results)]
    head = ["objective", "bound (mean ± sd)"]
    for g in names:
        head += [f"{g} var", f"{g} snr", f"{g} snr_norm"]
    head += ["ms/step", "memory MB"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in results:
        row = [r.label, f"{r.bound_mean:.3f} ± {r.bound_sd:.3f}"]
        for g in names:
            s = r.groups.get(g)
            if s is None:
                row += ["—"] * 3
            else:
                row += [f"{s.variance:.3g}", f"{s.snr:.3g}", f"{s.snr_norm:.3g}"]
        row += [f"{r.time_per_step_ms:.1f}", f"{r.memory_mb:.1f}"]
        lines.append("| " + " | ".join(row) + " |")
    if any(r.bias for r in results):
        lines += ["", bias_table(results)]
    if results:
        lines.append("")
        lines.append(
            f"{results[0].draws} gradient draws per objective, batch of {results[0].batch_size}; "
            f"memory: {results[0].memory_method}."
        )
    return "\n".join(lines)


def bias_table(results: Sequence[ObjectiveDiagnostics]) -> str:
    """A Markdown table of each group's relative bias and cosine similarity against the
    reference gradient, and a line saying what the reference is."""
    names = [g for g in ("encoder", "decoder", "prior") if any(g in r.bias for r in results)]
    head = ["objective"] + [f"{g} {k}" for g in names for k in ("rel. bias", "cosine")]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in results:
        row = [r.label]
        for g in names:
            b = r.bias.get(g)
            row += ["—"] * 2 if b is None else [f"{b.relative_bias:.3g}", f"{b.cosine:.4f}"]
        lines.append("| " + " | ".join(row) + " |")
    lines += ["", f"bias against: {results[0].reference}."]
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------
# categorical latents: how the posterior uses the K classes


@dataclass
class CategoryUsage:
    r"""How the posterior uses the K classes of each of the N variables, over a data set.

    * ``aggregate_perplexity (N,)``: :math:`\exp H(\bar q_n)`, :math:`\bar q_n = \frac{1}{B}
      \sum_b q(z_n \mid x_b)`: effective number of classes used across the data (1..K);
    * ``posterior_perplexity (N,)``: mean over points of :math:`\exp H(q(z_n \mid x_b))`: how
      uncertain the posterior is for one point (1 = deterministic code);
    * ``classes_used (N,)``: classes that are the argmax of :math:`q(z_n \mid x_b)` for at
      least one point;
    * ``aggregate (N, K)``: :math:`\bar q_n(k)`, the aggregate posterior itself (the report's
      class-usage heat map).
    """

    aggregate_perplexity: torch.Tensor
    posterior_perplexity: torch.Tensor
    classes_used: torch.Tensor
    num_classes: int
    aggregate: torch.Tensor | None = None

    def summary(self) -> dict:
        N = self.classes_used.numel()
        return {
            "aggregate_perplexity_mean": float(self.aggregate_perplexity.mean()),
            "posterior_perplexity_mean": float(self.posterior_perplexity.mean()),
            "classes_used_mean": float(self.classes_used.double().mean()),
            "classes_used_min": int(self.classes_used.min()),
            "classes_used_total": int(self.classes_used.sum()),
            "num_variables": N,
            "num_classes": self.num_classes,
        }


@torch.no_grad()
def category_usage(vae, x: torch.Tensor, batch_size: int = 1000) -> CategoryUsage:
    """:class:`CategoryUsage` of the guide's categorical posterior on the rows of ``x (B, D)``.

    :param vae: a :class:`~vaelab.vae.VAE` with a
        :class:`~vaelab.model.latents.CategoricalLatent`.
    :param batch_size: points per encoder pass.
    """
    latent = vae.latent
    N, K = latent.num_variables, latent.num_classes
    q_sum = x.new_zeros(N, K, dtype=torch.float64)
    perplexity_sum = x.new_zeros(N, dtype=torch.float64)
    used = torch.zeros(N, K, dtype=torch.bool, device=x.device)
    for start in range(0, x.shape[0], batch_size):
        log_q = vae.inference.logits(x[start : start + batch_size]).log_softmax(-1)  # (b, N, K)
        q = log_q.exp()
        q_sum += q.double().sum(0)
        entropy = -(q * log_q).sum(-1)  # (b, N)
        perplexity_sum += entropy.double().exp().sum(0)
        used |= torch.nn.functional.one_hot(log_q.argmax(-1), K).bool().any(0)  # (N, K)
    q_bar = q_sum / x.shape[0]  # (N, K)
    h_bar = -(q_bar * q_bar.clamp_min(1e-300).log()).sum(-1)  # (N,)
    return CategoryUsage(h_bar.exp(), perplexity_sum / x.shape[0], used.sum(-1), K, q_bar)
