"""A trained run folder as a Python object (its config, VAE and data), and its evaluation.

Example::

    run = load_run("runs/demo")                      # best checkpoint + its saved config + data
    est = evaluate(run)                              # the run's [eval] section
    est = evaluate(run, eval_config(run.cfg, ["eval.method=ais", "eval.limit=100"]))
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path

import pyro
import torch

from vaelab.config import EvalConfig, RunConfig
from vaelab.data import DataSplits, Preprocessor, load_dataset
from vaelab.data.subsets import spread_indices
from vaelab.devices import run_device, to_device
from vaelab.inference.ais import estimate_marginal_ais
from vaelab.inference.exact import exact_log_likelihood
from vaelab.inference.fused import fused_log_weights
from vaelab.inference.marginal import MarginalEstimate, cache_rows, estimate_marginal
from vaelab.inference.numerics import flush_denormals
from vaelab.inference.proposals import make_proposal, proposal_name
from vaelab.notes import note
from vaelab.resolve import apply_overrides, resolve, resolve_eval
from vaelab.runs.checkpoint import read_metrics
from vaelab.runs.folder import best_state, latest_commit
from vaelab.seed import seed_all
from vaelab.vae import VAE, build_vae, resolved

__all__ = ["Run", "bytes_per_particle", "eval_config", "evaluate", "load_run", "read_eval",
           "read_history"]


@dataclass
class Run:
    dir: Path
    cfg: RunConfig
    vae: VAE
    data: DataSplits
    pre: Preprocessor
    #: the loaded checkpoint's epoch, counted from 0 (``metrics.jsonl`` rows count from 1)
    epoch: int
    #: the file whose parameters were loaded, where it differs from what was asked (a damaged
    #: ``last.pt`` passed over for ``prev.pt``), else ``None``; recorded with every evaluation
    checkpoint_file: str | None = None

    def split(self, name: str, limit: int | None = None) -> torch.Tensor:
        """A split, or ``limit`` of its points spread evenly over it
        (:func:`~vaelab.data.subsets.spread_indices`)."""
        x = getattr(self.data, name)
        return x[spread_indices(x.shape[0], limit)]


def load_run(run_dir: str | Path, checkpoint: str = "best", data: DataSplits | None = None,
             device: str | torch.device | None = None) -> Run:
    """Load ``run_dir/checkpoints/{best,last}.pt`` with the config saved in it (read at the
    version it was saved with, see :mod:`vaelab.resolve`), the VAE on ``device`` (default: the
    run's ``train.device`` where this machine has it, :func:`vaelab.devices.run_device`).

    ``checkpoint = "last"`` with a damaged ``last.pt`` loads the newest intact commit
    (``prev.pt``): a note says so, and :attr:`Run.checkpoint_file` (recorded by
    :func:`evaluate` as ``checkpoint_file``) names it."""
    run_dir = Path(run_dir)
    path = run_dir / "checkpoints" / f"{checkpoint}.pt"
    commit = latest_commit(run_dir)
    if commit is None and not path.is_file():
        raise FileNotFoundError(
            f"no checkpoint {checkpoint!r} in {str(run_dir)!r} (expected {str(path)!r}); "
            "train first: vaelab train CONFIG --out DIR"
        )
    if checkpoint == "best" or commit is None:  # (no commit: a last.pt alone raised above)
        state = best_state(run_dir)
    else:
        state = commit.state
    scored = None
    if checkpoint != "best" and commit is not None and commit.path.name != path.name:
        scored = commit.path.name
        why = "; ".join(commit.skipped) or f"{str(path)!r} is missing"
        note(f"{why}; scoring {scored} (epoch {state['epoch'] + 1}), the newest intact commit, "
             "instead (vaelab train ... --resume repairs the folder)")
    cfg = resolve(state["config"], saved=True)
    data = data if data is not None else load_dataset(cfg.data)
    device = run_device(cfg.train.device) if device is None else torch.device(device)
    vae = build_vae(cfg, data.train.shape[1], data.shape).to(device)
    vae.load_state_dict(state["model"])
    vae.eval()
    return Run(run_dir, cfg, vae, data, Preprocessor(cfg.data, data), state["epoch"], scored)


def read_eval(run_dir: str | Path) -> dict | None:
    """The evaluation results saved in ``run_dir/eval.json``, or ``None`` when it has none.

    :raises ValueError: the file is not UTF-8 JSON holding an object; the message names the
        file (and the line and column of a syntax error) in one line.
    """
    path = Path(run_dir) / "eval.json"
    if not path.is_file():
        return None
    again = f"rebuild it with: vaelab evaluate {run_dir} --report"
    try:
        data = json.loads(path.read_bytes().decode())
    except UnicodeDecodeError as err:
        raise ValueError(f"{path} is not UTF-8 text (byte {err.start}); {again}") from None
    except json.JSONDecodeError as err:
        raise ValueError(f"{path} is not valid JSON (line {err.lineno}, column {err.colno}): "
                         f"{err.msg}; {again}") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path} holds a JSON {type(data).__name__}, not an object of "
                         f"results; {again}")
    return data


def read_history(run_dir: str | Path) -> list[dict]:
    """The rows of ``run_dir/metrics.jsonl`` (:func:`~vaelab.runs.checkpoint.read_metrics`);
    a damaged line is named in one line with the file and its line number (a ValueError)."""
    out = Path(run_dir)
    try:
        return read_metrics(out)
    except json.JSONDecodeError as err:
        lines = (out / "metrics.jsonl").read_text().splitlines()
        where = next((i + 1 for i, t in enumerate(lines) if t == err.doc), "?")
        raise ValueError(f"{out / 'metrics.jsonl'} is not valid JSON Lines (line {where}, "
                         f"column {err.colno}): {err.msg}; vaelab train {out}/config.toml "
                         f"--out {out} --resume rewrites it from the last commit") from None


def eval_config(cfg: RunConfig, overrides: list[str]) -> EvalConfig:
    """``cfg.eval`` with ``eval.KEY=VALUE`` overrides: the ``[eval]`` section alone validated
    and its proposal parsed (:func:`~vaelab.resolve.resolve_eval`); the rest of ``cfg`` was
    resolved when the run was loaded."""
    bad = [o for o in overrides if not o.strip().startswith("eval.")]
    if bad:
        raise ValueError(f"evaluation overrides set [eval] keys only, got {bad[0]!r}")
    raw = apply_overrides({"eval": cfg.eval.model_dump(mode="json")}, overrides)
    return resolve_eval(raw["eval"])


def bytes_per_particle(vae, data_dim: int) -> int:
    """Rough bytes of activations one particle of one data point needs (for chunk sizing): the
    decoder's layers (:attr:`~vaelab.model.networks.Network.activations_per_row`) and, where
    the guide family or the prior is a flow, its per-particle work."""
    g = vae.generative
    hidden = g.decoder.activations_per_row
    hidden += getattr(vae.inference.posterior, "activations_per_sample", 0)
    hidden += getattr(g.prior, "activations_per_sample", 0)
    return 4 * (4 * data_dim + 2 * hidden + 4 * g.latent.flat_dim + g.likelihood.param_size)


def _check_method(run: Run, ec: EvalConfig) -> None:
    """Refuse estimators that need a continuous latent on a discrete one."""
    if run.vae.latent.continuous:
        return
    latent = resolved(run.cfg.model.latent).name
    if ec.method == "ais":
        raise ValueError(
            f"eval.method = 'ais' needs a continuous latent; this run's latent type {latent!r} "
            "is discrete: use method 'is' (and the exact enumeration, reported when the latent "
            "space is small)"
        )
    if resolved(ec.proposal).name in ("inflated", "student_t"):
        raise ValueError(
            f"eval.proposal = {proposal_name(resolved(ec.proposal))!r} widens a continuous "
            f"guide; latent type {latent!r} is discrete: use proposal 'guide' or 'prior'"
        )


def _attach_exact(est: MarginalEstimate, vae: VAE, x: torch.Tensor, batch_size: int) -> None:
    """``est.exact_log_px`` where a method of :mod:`vaelab.inference.exact` applies."""
    parts = [exact_log_likelihood(vae, x[i : i + batch_size])
             for i in range(0, x.shape[0], batch_size)]
    if parts and all(p is not None for p in parts):
        est.exact_log_px = torch.cat([p.double().cpu() for p in parts if p is not None])


def _add_log_jacobian(est: MarginalEstimate, jac: float) -> None:
    """Densities on dequantized [0, 1] data → nats of the 8-bit data (a lower bound)."""
    est.log_px, est.elbo = est.log_px + jac, est.elbo + jac
    if est.curve_log_px is not None:
        est.curve_log_px = est.curve_log_px + jac
    if est.curve_elbo is not None:
        est.curve_elbo = est.curve_elbo + jac
    if est.exact_log_px is not None:
        est.exact_log_px = est.exact_log_px + jac


def _fused_path(run: Run, ec: EvalConfig) -> dict:
    """``eval.fused``: the fused log weights and cache-sized chunks, where they apply."""
    guide_proposal = resolved(ec.proposal).name == "guide"
    fused = fused_log_weights(run.vae) if ec.fused and guide_proposal else None
    if fused is None:
        if ec.fused and guide_proposal and len(getattr(run.vae, "sites", ["z"])) > 1:
            note("eval.fused does not apply to this model of several latent sites (the "
                 "fused path needs Gaussian layers and an unclamped Bernoulli, normal or "
                 "discretized logistic likelihood): the traced importance-sampling path "
                 "scores it")
        return {}
    return {"fused": fused, "chunk_rows": cache_rows(run.vae.generative.likelihood.param_size)}


def fused_log_joint(run: Run, ec: EvalConfig):
    """``eval.fused`` for AIS: ``x → FusedLogJoint`` for a continuous latent (one site, or
    several Gaussian layers: it falls back to the traced terms where it has none), else
    ``None`` (the traced log joint)."""
    if not ec.fused or not run.vae.latent.continuous:
        return None
    from vaelab.inference.fast_ais import FusedLogJoint

    return lambda xb: FusedLogJoint(run.vae, xb, ec.ais_chains, ec.ais_base)


def evaluate(
    run: Run,
    ec: EvalConfig | None = None,
    *,
    progress: bool | None = None,
    curve_ks: list[int] | None = None,
    points: slice | None = None,
    seed: int | None = None,
) -> MarginalEstimate:
    r"""log p(x) per point on a split, with diagnostics, as the ``[eval]`` section says.

    ``ec.method = "is"``: importance sampling with K = ``num_samples`` draws from ``proposal``
    (per-point ESS, MC standard error and Pareto k̂); ``"ais"``: annealed importance sampling
    (:mod:`vaelab.inference.ais`) with ``ais_steps`` HMC-linked distributions and ``ais_chains``
    chains from ``ais_base`` (continuous latents only). Scored on ``limit`` points spread evenly
    over ``split``, with one fixed draw of preprocessing noise.

    :param run: from :func:`load_run` or :meth:`vaelab.runs.train.TrainResult.run`.
    :param ec: the evaluation settings (default: the run's own ``[eval]``; see :func:`eval_config`).
    :param progress: a progress bar on stderr (default: when stderr is a terminal).
    :param curve_ks: K values of the IS convergence curve (prefixes of the same draws).
    :param points: score only this slice of the ``limit`` points (after their preprocessing
        draw, so a slice sees the noise it sees in a whole pass): blocks of a resumable
        evaluation (:func:`vaelab.runs.stages.evaluate_in_blocks`).
    :param seed: the seed of the estimator's draws (default ``ec.seed``).
    :returns: :class:`~vaelab.inference.marginal.MarginalEstimate` in nats of the data (the
        dequantization Jacobian included; ``exact_log_px`` where a closed form applies).
    """
    ec = ec if ec is not None else run.cfg.eval
    progress = sys.stderr.isatty() if progress is None else progress
    _check_method(run, ec)
    x = run.pre.eval_split(run.split(ec.split, ec.limit), ec.seed)  # (N, D)
    if points is not None:
        x = x[points]
    seed_all(ec.seed if seed is None else seed)
    if x.shape[0] == 0:
        raise ValueError(f"eval.split: the {ec.split!r} split of this run's data has no points")
    run.vae.generative.likelihood.check_data(x, key=f"model.likelihood (on the {ec.split} split)")
    x = to_device(x, next(run.vae.parameters()).device)  # (N, D) where the VAE is
    model, guide = run.vae.eval_pair()
    with pyro.validation_enabled(False), flush_denormals(run.cfg.train.flush_denormal):
        if ec.method == "is":
            est = estimate_marginal(
                model, make_proposal(ec.proposal, model, guide), x,
                num_samples=ec.num_samples, batch_size=ec.batch_size,
                bytes_per_particle=bytes_per_particle(run.vae, x.shape[1]),
                max_memory_mb=ec.max_memory_mb, progress=progress,
                **_fused_path(run, ec),
                diagnostics=ec.diagnostics, curve_ks=curve_ks,
            )
            est.extra["proposal"] = proposal_name(resolved(ec.proposal))
        else:
            est = estimate_marginal_ais(
                model, guide, x, num_steps=ec.ais_steps, num_chains=ec.ais_chains,
                batch_size=ec.batch_size, progress=progress, num_leapfrog=ec.ais_leapfrog,
                base=ec.ais_base, log_joint_for=fused_log_joint(run, ec),
            )
        if ec.exact:
            _attach_exact(est, run.vae, x, ec.batch_size)
    jac = run.pre.log_jacobian_per_point(x.shape[1])
    if jac:
        _add_log_jacobian(est, jac)
    est.extra.update(split=ec.split, log_jacobian=jac, checkpoint_epoch=run.epoch + 1)
    if run.checkpoint_file is not None:
        est.extra["checkpoint_file"] = run.checkpoint_file
    return est
