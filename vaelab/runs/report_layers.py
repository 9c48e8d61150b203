"""The points of a report's latent section (:func:`eval_points`) and the per-layer part of a
layered VAE's report (``model.layers``): a table row and a KL / activity figure per layer
(``latent_kl_z_1.png`` …), from
:func:`~vaelab.inference.latent_space.layer_stats`. The embedding and the traversals of the top
layer z_L are :mod:`vaelab.runs.report`'s own, drawn with the top layer's statistics.
"""

from __future__ import annotations

from pathlib import Path

import torch

from vaelab.data.subsets import spread_indices
from vaelab.runs.plots import save_kl_bars

__all__ = ["eval_points", "layer_blocks"]

#: the most units of one layer a KL figure draws (the most active ones)
MAX_DRAWN_UNITS = 64


def eval_points(run, limit: int) -> tuple[torch.Tensor, torch.Tensor | None, str]:
    """``limit`` points spread over the test split (valid when test is empty), preprocessed
    with the fixed draw 0, their labels (``None`` when the split has none) and the split."""
    split = "test" if run.data.test.shape[0] else "valid"
    n = run.data.split(split).shape[0]
    idx = spread_indices(n, limit)
    labels = run.data.labels.get(split)
    labels = labels[idx] if labels is not None and labels.shape[0] == n else None
    return run.pre.eval_split(run.split(split, limit), 0), labels, split


def layer_blocks(sites: list[str], layers: list, points: str, out: Path
                 ) -> tuple[list[list[str]], list[tuple[str, str, str]]]:
    """Rows ``[statistic, value]`` (active units and KL summed, per layer) and figures
    ``(file, alt, caption)``, one per layer, bottom first, their PNGs written to ``out``.

    :param layers: :class:`~vaelab.inference.latent_space.LatentStats` per layer, bottom first.
    :param points: what the statistics were computed on (e.g. ``"2000 test points"``).
    """
    rows, figures = [], []
    for site, stats in zip(sites, layers):
        U, A = stats.activity.numel(), stats.num_active
        rows.append([f"{site}: active units", f"{A} of {U}"])
        if stats.kl is not None:
            rows.append([f"{site}: KL summed over dimensions (nats)",
                         f"{float(stats.kl.sum()):.3f}"])
        drawn = stats.activity.argsort(descending=True)[:MAX_DRAWN_UNITS]  # (≤ 64,)
        if U <= MAX_DRAWN_UNITS:
            drawn = torch.arange(U)
        name = f"latent_kl_{site}.png"
        save_kl_bars(out / name, stats.activity[drawn].numpy(),
                     None if stats.kl is None else stats.kl[drawn].numpy(), stats.threshold,
                     title=f"layer {site}", units=drawn.numpy(), total=U)
        which = ("" if U <= MAX_DRAWN_UNITS else
                 f" The {MAX_DRAWN_UNITS} most active units are drawn.")
        active = (f"{A} of {U} dimensions of {site} active (Cov_x E_q[{site},u] ≥ "
                  f"{stats.threshold:g}, Burda et al. 2016; E_q Rao-Blackwellized over the "
                  f"guide's draws of the parents), in colour; {points}.{which}")
        kl = ("no KL per unit: " + stats.kl_method + "." if stats.kl is None else
              f"Top: mean KL per unit of {site} given its parent layer ({stats.kl_method}; sum "
              f"{float(stats.kl.sum()):.2f} nats).")
        figures.append((name, f"KL per unit, {site}", f"{kl} Bottom: activity on a log axis; "
                        f"{active}"))
    return rows, figures
