"""A trained run folder as a Python object: its config, its VAE, its data; and evaluation."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pyro
import torch

from vaelab.config import RunConfig, load_config
from vaelab.inference.checkpoint import load_checkpoint
from vaelab.inference.marginal import MarginalEstimate, estimate_marginal
from vaelab.seed import seed_all

__all__ = ["Run", "load_run", "evaluate", "bytes_per_particle"]


@dataclass
class Run:
    dir: Path
    cfg: RunConfig
    vae: torch.nn.Module
    data: object  # vaelab.data.DataSplits
    pre: object  # vaelab.data.Preprocessor
    epoch: int

    def split(self, name: str, limit: int | None = None) -> torch.Tensor:
        """A split, or ``limit`` of its points spread evenly over it (not the first ones: the
        binarized MNIST test file is sorted by digit, so its first images are all zeros)."""
        x = getattr(self.data, name)
        if not limit or limit >= x.shape[0]:
            return x
        idx = torch.linspace(0, x.shape[0] - 1, limit).round().long()  # (limit,)
        return x[idx]


def load_run(run_dir: str | Path, checkpoint: str = "best", data=None) -> Run:
    """Load ``run_dir/checkpoints/{best,last}.pt`` with the config saved in it."""
    from vaelab.config import resolve
    from vaelab.data import Preprocessor, load_dataset
    from vaelab.vae import build_vae

    run_dir = Path(run_dir)
    path = run_dir / "checkpoints" / f"{checkpoint}.pt"
    if not path.is_file():
        raise FileNotFoundError(
            f"no checkpoint {checkpoint!r} in {str(run_dir)!r} (expected {str(path)!r}); "
            "train first: vaelab train CONFIG --out DIR"
        )
    state = load_checkpoint(path)
    cfg = resolve(state["config"])
    data = data if data is not None else load_dataset(cfg.data)
    vae = build_vae(cfg, data.train.shape[1])
    vae.load_state_dict(state["model"])
    vae.eval()
    return Run(run_dir, cfg, vae, data, Preprocessor(cfg.data, data), state["epoch"])


def bytes_per_particle(vae, data_dim: int) -> int:
    """Rough bytes of activations one particle of one data point needs (for chunk sizing)."""
    g = vae.generative
    hidden = sum(m.out_features for m in g.decoder.linear_layers)
    return 4 * (4 * data_dim + 2 * hidden + 4 * g.latent.flat_dim + g.likelihood.param_size)


def evaluate(
    run: Run,
    split: str | None = None,
    num_samples: int | None = None,
    limit: int | None = None,
    batch_size: int | None = None,
    max_memory_mb: float | None = None,
    seed: int | None = None,
    progress: bool = False,
    method: str = "is",
    proposal: str = "guide",
    diagnostics: bool = True,
    curve_ks: list[int] | None = None,
    num_steps: int = 1000,
    num_chains: int = 16,
    num_leapfrog: int = 10,
    ais_base: str = "prior",
    exact: bool = True,
) -> MarginalEstimate:
    r"""log p(x) per point on a split, with diagnostics (defaults from ``[eval]``).

    :param method: ``"is"``: importance sampling with K = ``num_samples`` draws from
        ``proposal`` (per-point ESS, MC standard error and Pareto k̂); ``"ais"``: annealed
        importance sampling (:mod:`vaelab.inference.ais`) with ``num_steps`` HMC-linked
        distributions and ``num_chains`` chains from ``ais_base`` (continuous latents only).
    :param proposal: IS proposal, see :func:`vaelab.inference.proposals.make_proposal`:
        ``guide``, ``inflated:2``, ``student_t:5``, ``prior``.
    :param curve_ks: K values of the IS convergence curve (prefixes of the same draws).
    :param exact: also compute the exact log p(x) where a method of
        :mod:`vaelab.inference.exact` applies (``est.exact_log_px``, reported by ``summary``).
    :returns: :class:`~vaelab.inference.marginal.MarginalEstimate` (nats of the data, the
        dequantization Jacobian included).
    """
    from vaelab.inference.exact import exact_log_likelihood

    ec = run.cfg.eval
    split = split or ec.split
    seed = ec.seed if seed is None else seed
    batch_size = batch_size or ec.batch_size
    x = run.split(split, limit if limit is not None else ec.limit)
    seed_all(seed)
    pyro.enable_validation(False)
    x = run.pre.eval_split(x, seed)  # one fixed draw of binarization / dequantization noise
    model, guide = run.vae.eval_pair()
    if method == "is":
        from vaelab.inference.proposals import make_proposal, parse_proposal, proposal_name

        opts = parse_proposal(proposal)
        if opts.name in ("inflated", "student_t") and not run.vae.latent.continuous:
            raise ValueError(
                f"--proposal {proposal_name(opts)} widens a continuous guide; latent type "
                f"{run.cfg.model.latent['name']!r} is discrete: use --proposal guide or prior"
            )
        est = estimate_marginal(
            model, make_proposal(opts, model, guide), x,
            num_samples=num_samples or ec.num_samples,
            batch_size=batch_size,
            bytes_per_particle=bytes_per_particle(run.vae, x.shape[1]),
            max_memory_mb=max_memory_mb or ec.max_memory_mb,
            progress=progress,
            diagnostics=diagnostics,
            curve_ks=curve_ks,
        )
        est.extra["proposal"] = proposal_name(opts)
    elif method == "ais":
        from vaelab.inference.ais import estimate_marginal_ais

        if not run.vae.latent.continuous:
            raise ValueError(
                f"--method ais needs a continuous latent; this run's latent type "
                f"{run.cfg.model.latent['name']!r} is discrete: use --method is (and the exact "
                "enumeration, reported when the latent space is small)"
            )
        est = estimate_marginal_ais(
            model, guide, x, num_steps=num_steps, num_chains=num_chains,
            batch_size=batch_size, progress=progress, num_leapfrog=num_leapfrog, base=ais_base,
        )
    else:
        raise ValueError(f"unknown evaluation method {method!r}; choices: is, ais")
    if exact:
        parts = [exact_log_likelihood(run.vae, x[i : i + batch_size])
                 for i in range(0, x.shape[0], batch_size)]
        if parts and all(p is not None for p in parts):
            est.exact_log_px = torch.cat([p.double().cpu() for p in parts])
    jac = run.pre.log_jacobian_per_point(x.shape[1])
    if jac:
        # densities on dequantized [0, 1] data → nats of the 8-bit data (a lower bound)
        est.log_px = est.log_px + jac
        est.elbo = est.elbo + jac
        if est.curve_log_px is not None:
            est.curve_log_px = est.curve_log_px + jac
        if est.exact_log_px is not None:
            est.exact_log_px = est.exact_log_px + jac
    est.extra["split"] = split
    est.extra["log_jacobian"] = jac
    return est


def load_config_for(run_dir: str | Path) -> RunConfig:
    return load_config(Path(run_dir) / "config.toml")
