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
        x = getattr(self.data, name)
        return x[:limit] if limit else x


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
) -> MarginalEstimate:
    """Importance-sampled log p(x) and ELBO per point on a split (defaults from ``[eval]``)."""
    ec = run.cfg.eval
    split = split or ec.split
    seed = ec.seed if seed is None else seed
    x = run.split(split, limit if limit is not None else ec.limit)
    seed_all(seed)
    pyro.enable_validation(False)
    x = run.pre.eval_split(x, seed)  # one fixed draw of binarization / dequantization noise
    model, guide = run.vae.eval_pair()
    est = estimate_marginal(
        model, guide, x,
        num_samples=num_samples or ec.num_samples,
        batch_size=batch_size or ec.batch_size,
        bytes_per_particle=bytes_per_particle(run.vae, x.shape[1]),
        max_memory_mb=max_memory_mb or ec.max_memory_mb,
        progress=progress,
    )
    jac = run.pre.log_jacobian_per_point(x.shape[1])
    if jac:
        # densities on dequantized [0, 1] data → nats of the 8-bit data (a lower bound)
        est.log_px = est.log_px + jac
        est.elbo = est.elbo + jac
    est.extra["split"] = split
    est.extra["log_jacobian"] = jac
    return est


def load_config_for(run_dir: str | Path) -> RunConfig:
    return load_config(Path(run_dir) / "config.toml")
