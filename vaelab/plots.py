"""Figures of evaluation results, written as PNG files.

Plotting is kept out of the estimators (:mod:`vaelab.inference`): matplotlib is imported only when
a figure is drawn, with the non-interactive ``Agg`` backend, so importing vaelab never needs a
display or pays matplotlib's import time.

Example::

    est = estimate_marginal(vae.model, vae.guide, x, num_samples=5000, curve_ks=[1, 10, 100])
    save_convergence_plot(est, "runs/demo/curve.png")
"""

from __future__ import annotations

from pathlib import Path

from vaelab.inference.marginal import MarginalEstimate

__all__ = ["save_convergence_plot"]


def _pyplot():
    """``matplotlib.pyplot`` on the ``Agg`` backend (imported on first use)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_convergence_plot(est: MarginalEstimate, path, title: str = "") -> Path:
    """PNG of the mean over points of log p̂ from the first K draws against K (log axis), with
    the ELBO (dashed) and the exact mean log p(x) (solid) where known.

    :param est: an estimate made with ``curve_ks``
        (:func:`~vaelab.inference.marginal.estimate_marginal`).
    :param path: the PNG file to write (parent folders are created).
    :param title: figure title (default: the number of points).
    :returns: ``path`` as a :class:`~pathlib.Path`.
    :raises ValueError: when ``est`` has no convergence curve.
    """
    if est.curve_ks is None:
        raise ValueError("no convergence curve: pass curve_ks to estimate_marginal")
    plt = _pyplot()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    curve = est.curve()
    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    ax.plot(list(curve), list(curve.values()), "o-", ms=3, label="mean log p̂(x), first K draws")
    ax.axhline(float(est.elbo.double().mean()), ls="--", c="gray", label="ELBO")
    if est.exact_log_px is not None:
        ax.axhline(float(est.exact_log_px.mean()), c="k", lw=1, label="exact log p(x)")
    ax.set_xscale("log")
    ax.set_xlabel("K (importance samples)")
    ax.set_ylabel("nats per data point")
    ax.set_title(title or f"IS convergence ({est.num_points} points)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
