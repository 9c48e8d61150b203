"""Run reports: training curves, reconstructions beside inputs, prior samples, ``report.md``."""

from __future__ import annotations

import json
import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from vaelab.inference.checkpoint import read_metrics  # noqa: E402

__all__ = ["image_grid", "image_shape_of", "save_grid", "plot_curves", "write_report"]


def image_shape_of(shape: tuple[int, ...] | None, D: int) -> tuple[int, int, int]:
    """``(C, H, W)`` to lay out a point of D values: the data's own ``(C, H, W)`` (or ``(H, W)``,
    one channel); for a table ``(D,)`` (or ``None``) a square when D is one, else a 1×D strip."""
    if shape is not None and len(shape) == 3:
        c, h, w = shape
        return int(c), int(h), int(w)
    if shape is not None and len(shape) == 2:
        return 1, int(shape[0]), int(shape[1])
    side = int(math.isqrt(D))
    return (1, side, D // side) if side * (D // side) == D else (1, 1, D)


def image_grid(
    images: torch.Tensor, image_shape: tuple[int, ...] | None, ncol: int = 8
) -> np.ndarray:
    """``(n, D)`` → one array of ``rows × ncol`` images with 1-pixel gaps, each image in its own
    shape: ``(rows·(H+1)−1, ncol·(W+1)−1)`` for one channel, ``(…, …, 3)`` RGB for three; other
    channel counts are laid side by side, one grey panel per channel.

    :param image_shape: the data's shape (:attr:`~vaelab.data.DataSplits.shape`, ``(C, H, W)``
        or ``(D,)``), an ``(H, W)`` image shape, or ``None``.
    """
    images = images.detach().float().cpu().clamp(0, 1)
    n, D = images.shape
    c, h, w = image_shape_of(image_shape, D)
    if c * h * w != D:
        raise ValueError(f"image_grid: shape {(c, h, w)} does not hold D = {D} values")
    pics = images.reshape(n, c, h, w)
    if c == 3:
        pics = pics.permute(0, 2, 3, 1)  # (n, H, W, 3) RGB
    elif c != 1:
        pics = pics.permute(0, 2, 1, 3).reshape(n, h, c * w)  # channels side by side
    else:
        pics = pics[:, 0]  # (n, H, W)
    h, w = pics.shape[1], pics.shape[2]
    rows = math.ceil(n / ncol)
    grid = np.ones((rows * (h + 1) - 1, ncol * (w + 1) - 1, *pics.shape[3:]), dtype=np.float32)
    for i in range(n):
        r, col = divmod(i, ncol)
        grid[r * (h + 1) : r * (h + 1) + h, col * (w + 1) : col * (w + 1) + w] = pics[i].numpy()
    return grid


def save_grid(
    path: Path, images: torch.Tensor, image_shape, ncol: int = 8, title: str = ""
) -> Path:
    grid = image_grid(images, image_shape, ncol)
    fig, ax = plt.subplots(figsize=(max(3, grid.shape[1] / 25), max(3, grid.shape[0] / 25)))
    ax.imshow(grid, cmap="gray", vmin=0, vmax=1, interpolation="nearest")
    ax.set_axis_off()
    if title:
        ax.set_title(title)
    fig.savefig(path, bbox_inches="tight", dpi=120)
    plt.close(fig)
    return path


def plot_curves(history: list[dict], path: Path) -> Path:
    epochs = [r["epoch"] for r in history]
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(epochs, [-r["train_loss"] for r in history], "o-", label="train ELBO")
    ax.plot(epochs, [r["valid_elbo"] for r in history], "s-", label="valid ELBO")
    ax.set_xlabel("epoch")
    ax.set_ylabel("nats per data point")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def _flatten(metrics: dict, prefix: str = "") -> dict:
    """``{"ess": {"median": 3.0}}`` → ``{"ess.median": 3.0}``; lists (curves) are left out."""
    out = {}
    for k, v in metrics.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}."))
        elif not isinstance(v, (list, tuple)):
            out[f"{prefix}{k}"] = v
    return out


def _fmt(v) -> str:
    return f"{v:.4f}" if isinstance(v, float) else str(v)


def write_report(run, metrics: dict | None = None, n: int = 32) -> Path:
    """Write ``run.dir/report.md`` and its PNGs; returns the report's path."""
    out = Path(run.dir)
    history = read_metrics(out)
    shape = run.data.shape  # (C, H, W) for images, (D,) for tables
    plot_curves(history, out / "curves.png")
    # n points spread over the split (the binarized MNIST test file is sorted by digit)
    x = run.pre.eval_split(run.split("test" if run.data.test.shape[0] else "valid", n), 0)
    torch.manual_seed(0)
    recon = run.vae.reconstruct(x)
    pairs = torch.stack([x, recon], 1).reshape(-1, x.shape[1])  # input, reconstruction, ...
    save_grid(out / "reconstructions.png", pairs, shape, ncol=16, title="input | reconstruction")
    samples = run.vae.generative.sample(64)
    save_grid(out / "samples.png", samples, shape, ncol=8, title="prior samples")
    c = run.cfg
    lines = [
        f"# vaelab run `{out.name}`",
        "",
        f"data `{c.data.name}`, latent `{c.model.latent.name}` (dim {c.model.latent_dim}), "
        f"prior `{c.model.prior.name}`, likelihood `{c.model.likelihood.name}`, "
        f"decoder `{c.model.decoder.name}`, encoder `{c.guide.encoder.name}`, "
        f"guide `{c.guide.family.name}`, hidden {c.model.hidden_sizes}, "
        f"objective `{c.objective.name}` "
        f"(particles {c.objective.num_particles}), {len(history)} epochs of batch "
        f"{c.train.batch_size}, lr {c.train.lr}, seed {c.train.seed}.",
        "",
        "| epoch | train −ELBO | valid ELBO | s/epoch |",
        "|---:|---:|---:|---:|",
        *[
            f"| {r['epoch']} | {r['train_loss']:.2f} | {r['valid_elbo']:.2f} "
            f"| {r['epoch_time']:.1f} |"
            for r in history
        ],
        "",
    ]
    if metrics:
        lines += ["## Evaluation", "", "| metric | value |", "|---|---:|"]
        lines += [f"| {k} | {_fmt(v)} |" for k, v in _flatten(metrics).items()]
        lines.append("")
    lines += [
        "![training curves](curves.png)",
        "",
        "![reconstructions](reconstructions.png)",
        "",
        "![samples](samples.png)",
        "",
    ]
    (out / "report.md").write_text("\n".join(lines))
    if metrics:
        (out / "eval.json").write_text(json.dumps(metrics, indent=2))
    return out / "report.md"
