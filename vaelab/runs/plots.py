"""Figures of evaluation results and of the latent space, written as PNG files.

Plotting is kept out of the estimators (:mod:`vaelab.inference`): matplotlib is imported only when
a figure is drawn, with the non-interactive ``Agg`` backend, so importing vaelab never needs a
display or pays matplotlib's import time.

Example::

    est = estimate_marginal(vae.model, vae.guide, x, num_samples=5000, curve_ks=[1, 10, 100])
    save_convergence_plot(est, "runs/demo/curve.png")
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np

from vaelab.inference.marginal import MarginalEstimate
from vaelab.runs.checkpoint import atomic_write_bytes

__all__ = [
    "save_convergence_plot",
    "save_embedding",
    "save_kl_bars",
    "save_reproduce_chart",
    "save_traversal_grid",
    "save_traversal_lines",
    "save_usage_heatmap",
    "write_figure",
]


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
    return write_figure(fig, path)


def write_figure(fig, path, **savefig) -> Path:
    """Render ``fig`` in memory (in the format its suffix names, PNG without one), close it,
    and write the bytes atomically (:func:`~vaelab.runs.checkpoint.atomic_write_bytes`: a
    temporary file renamed over ``path``, parent folders created). A full disk leaves the old
    file whole, and a symbolic link at ``path`` is replaced, never written through (issue 28,
    items 1 and 8).

    :param savefig: keyword arguments of :meth:`matplotlib.figure.Figure.savefig` (default
        ``dpi=120``).
    """
    path = Path(path)
    buf = io.BytesIO()
    try:
        fig.savefig(buf, format=path.suffix[1:].lower() or "png", **{"dpi": 120, **savefig})
    finally:
        _pyplot().close(fig)
    atomic_write_bytes(path, buf.getvalue())
    return path


def _save(fig, path) -> Path:
    """Write ``fig`` to ``path`` (:func:`write_figure`, tight bounding box) and close it."""
    return write_figure(fig, path, bbox_inches="tight")


def save_embedding(
    coords, path, labels=None, title: str = "", axis_names: tuple[str, str] = ("", "")
) -> Path:
    """Scatter of a 1-D or 2-D embedding of posterior means, coloured by class label.

    :param coords: ``(B, 2)`` points (``(B, 1)``: a histogram per label instead).
    :param labels: ``(B,)`` integer labels, or ``None`` (one grey colour).
    :param axis_names: the x and y axis labels.
    """
    plt = _pyplot()
    coords = np.asarray(coords, dtype=np.float64)
    labels = None if labels is None else np.asarray(labels)
    fig, ax = plt.subplots(figsize=(5.5, 4.8))
    classes = [None] if labels is None else sorted(set(labels.tolist()))
    cmap = plt.get_cmap("tab10" if len(classes) <= 10 else "viridis", max(len(classes), 1))
    for i, c in enumerate(classes):
        pts = coords if c is None else coords[labels == c]
        colour = "0.35" if c is None else cmap(i)
        name = None if c is None else str(c)
        if coords.shape[1] == 1:
            ax.hist(pts[:, 0], bins=40, alpha=0.6, color=colour, label=name)
        else:
            ax.scatter(pts[:, 0], pts[:, 1], s=6 if coords.shape[0] > 500 else 16, alpha=0.6,
                       color=colour, label=name, linewidths=0)
    if labels is not None and len(classes) <= 20:
        ax.legend(title="label", fontsize=7, markerscale=2, loc="best", ncol=2)
    ax.set_xlabel(axis_names[0])
    ax.set_ylabel(axis_names[1] if coords.shape[1] > 1 else "points")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    return _save(fig, path)


def save_kl_bars(path, activity, kl=None, threshold: float = 0.01, unit: str = "dimension",
                 title: str = "", units=None, total: int | None = None) -> Path:
    r"""Bars per latent unit: the mean KL (top panel, where defined) and the activity
    :math:`\mathrm{Var}_x \mathbb{E}_q[z_u]` on a log axis with the threshold dashed (bottom);
    active units in colour, inactive in grey.

    :param activity: ``(U,)`` activity per drawn unit.
    :param kl: ``(U,)`` mean KL per drawn unit in nats, or ``None`` (the activity panel alone).
    :param units: ``(U,)`` the indices of the drawn units (x tick labels), or ``None``: units
        ``0 … U−1``, all of them.
    :param total: how many units the latent has, when only some are drawn (the title says so).
    """
    plt = _pyplot()
    activity = np.asarray(activity, dtype=np.float64)
    active = activity >= threshold
    colours = np.where(active, "tab:blue", "0.7")
    idx = np.arange(activity.size)
    panels = 1 if kl is None else 2
    fig, axes = plt.subplots(panels, 1, figsize=(max(5.5, 0.14 * activity.size + 2), 2.6 * panels
                                                 + 0.6), sharex=True, squeeze=False)
    axes = axes[:, 0]
    if kl is not None:
        axes[0].bar(idx, np.asarray(kl, dtype=np.float64), color=colours)
        axes[0].set_ylabel("mean KL (nats)")
        axes[0].grid(alpha=0.3, axis="y")
    ax = axes[-1]
    ax.bar(idx, np.maximum(activity, 1e-12), color=colours)
    ax.axhline(threshold, ls="--", c="k", lw=1, label=f"threshold {threshold:g}")
    ax.set_yscale("log")
    ax.set_ylabel("Var_x E_q[z]")
    ax.legend(fontsize=8, loc="best")
    ax.grid(alpha=0.3, axis="y")
    if units is None:
        ax.set_xlabel(f"latent {unit}")
        axes[0].set_title(title or f"{int(active.sum())} of {activity.size} {unit}s active")
    else:
        ax.set_xticks(idx, [str(int(u)) for u in units], rotation=90, fontsize=6)
        ax.set_xlabel(f"latent {unit} (the {activity.size} drawn)")
        axes[0].set_title(title or f"{activity.size} of {total or activity.size} {unit}s drawn")
    return _save(fig, path)


def save_traversal_grid(path, grid, row_labels: list[str], col_labels: list[str],
                        cell: tuple[int, int], title: str = "") -> Path:
    """An image grid of traversals (one row per latent unit, one column per value), with the
    rows and columns labelled.

    :param grid: the grid from :func:`vaelab.runs.report.image_grid`, ``(rows·(H+1)−1,
        cols·(W+1)−1[, 3])``.
    :param cell: ``(H, W)`` of one image in the grid.
    """
    plt = _pyplot()
    h, w = cell
    fig, ax = plt.subplots(figsize=(max(3, grid.shape[1] / 22 + 1), max(3, grid.shape[0] / 22)))
    ax.imshow(grid, cmap="gray", vmin=0, vmax=1, interpolation="nearest")
    ax.set_yticks([r * (h + 1) + h / 2 for r in range(len(row_labels))], row_labels, fontsize=7)
    ax.set_xticks([c * (w + 1) + w / 2 for c in range(len(col_labels))], col_labels, fontsize=7)
    ax.tick_params(length=0)
    for side in ax.spines.values():
        side.set_visible(False)
    ax.set_title(title, fontsize=9)
    return _save(fig, path)


def save_traversal_lines(path, decoded, values, row_labels: list[str], xlabel: str,
                         max_features: int = 8, title: str = "") -> Path:
    """Traversals of table data: one panel per latent unit, the decoded mean of the
    ``max_features`` features that move most (over all panels) against the traversed value.

    :param decoded: ``(U, T, D)`` decoded means.
    :param values: ``(T,)`` the traversed values (x axis).
    """
    plt = _pyplot()
    decoded = np.asarray(decoded, dtype=np.float64)
    values = np.asarray(values, dtype=np.float64)
    U = decoded.shape[0]
    spread = (decoded.max(1) - decoded.min(1)).max(0)  # (D,)
    features = np.argsort(-spread)[:max_features]
    ncol = min(U, 4)
    nrow = -(-U // ncol)
    fig, axes = plt.subplots(nrow, ncol, figsize=(3.0 * ncol, 2.4 * nrow + 0.5), squeeze=False,
                             sharex=True)
    for i, ax in enumerate(axes.flat):
        if i >= U:
            ax.set_axis_off()
            continue
        for f in features:
            ax.plot(values, decoded[i, :, f], "o-", ms=2, lw=1, label=f"x{f}")
        ax.set_title(row_labels[i], fontsize=8)
        ax.grid(alpha=0.3)
    for ax in axes[-1]:
        ax.set_xlabel(xlabel, fontsize=8)
    axes[0, 0].set_ylabel("decoded mean", fontsize=8)
    axes[0, -1].legend(fontsize=6, loc="upper right", title="feature")
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return _save(fig, path)


def save_usage_heatmap(path, aggregate, classes_used=None, title: str = "") -> Path:
    r"""Heat map of a categorical latent's aggregate posterior :math:`\bar q_n(k)`, variables
    × classes.

    :param aggregate: ``(N, K)``, each row summing to 1.
    :param classes_used: ``(N,)`` classes that are some point's argmax (printed per row).
    """
    plt = _pyplot()
    q = np.asarray(aggregate, dtype=np.float64)
    N, K = q.shape
    fig, ax = plt.subplots(figsize=(max(4.0, 0.4 * K + 2.5), max(3.0, 0.28 * N + 1.2)))
    im = ax.imshow(q, cmap="magma", vmin=0, aspect="auto", interpolation="nearest")
    fig.colorbar(im, ax=ax, label="aggregate posterior q̄(z_n = k)")
    ax.set_xlabel("class k")
    ax.set_ylabel("variable n")
    ax.set_xticks(range(K))
    rows = [str(n) if classes_used is None else f"{n} ({int(classes_used[n])} used)"
            for n in range(N)]
    ax.set_yticks(range(N), rows, fontsize=7)
    ax.set_title(title or "class usage")
    return _save(fig, path)


def save_reproduce_chart(path, rows: list[dict], title: str = "") -> Path:
    """The reproducibility table as a chart, one line per row (from
    :func:`vaelab.runs.tables.chart_rows`). Left: how far each row is from its published figure,
    vaelab − published in its headline metric (IS log p(x), or a discrete row's one-hot bound)
    ± its error bar, with pythae's rerun − published beside it and the goal's ±0.5-nat band
    shaded; a row with no published figure shows its value as text. Right: how tight the number
    is, from the other side: AIS − IS paired on the same test images, and the BDMC gap on
    simulated data, each ± its standard error (blank for the discrete-latent rows, which have
    neither).

    :param rows: dicts with ``label``, ``metric``, ``value``, ``err``, ``seeds``, ``reached``,
        ``published``, ``pythae``, ``ais_minus_is`` and ``bdmc_gap``.
    :raises ValueError: when ``rows`` is empty.
    """
    if not rows:
        raise ValueError("no evaluated rows to chart")
    plt = _pyplot()
    fig, (ax, bx) = plt.subplots(1, 2, figsize=(10.5, 0.42 * len(rows) + 1.6), sharey=True,
                                 gridspec_kw={"width_ratios": [2, 1]})
    ax.axvspan(-0.5, 0.5, color="0.9", label="±0.5 nats (the goal)")
    ax.axvline(0.0, c="0.5", lw=1)

    def once(axis, name: str) -> str | None:  # a legend entry the first time only
        return name if name not in axis.get_legend_handles_labels()[1] else None

    for i, r in enumerate(rows):
        if r["published"] is None:
            ax.text(0.0, i, f"no published figure; vaelab {r['value']:.2f}", ha="center",
                    va="center", fontsize=8, color="0.3")
            continue
        ax.errorbar(r["value"] - r["published"], i, xerr=r["err"], fmt="o", c="k", ms=5,
                    capsize=3, label=once(ax, "vaelab − published"))
        if r["pythae"] is not None:
            ax.plot(r["pythae"] - r["published"], i, "+", c="tab:blue", ms=10, mew=2,
                    label=once(ax, "pythae's rerun − published"))
    for i, r in enumerate(rows):
        for key, dy, marker, colour, name in (
                ("ais_minus_is", -0.12, "^", "tab:green", "AIS − IS (paired)"),
                ("bdmc_gap", 0.12, "s", "tab:purple", "BDMC gap (simulated)")):
            if r[key] is not None:
                bx.errorbar(r[key][0], i + dy, xerr=r[key][1], fmt=marker, c=colour, ms=5,
                            capsize=3, label=once(bx, name))
    ax.set_yticks(np.arange(len(rows)), [
        f"{r['label']} ({r['metric']}; {r['seeds']} seed{'s' if r['seeds'] > 1 else ''}; "
        f"{r['reached']})" for r in rows], fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("nats per test image: vaelab − published (right of 0: vaelab is better)")
    ax.legend(fontsize=8, loc="upper left")
    ax.grid(alpha=0.3, axis="x")
    ax.set_title(title or "vaelab against the published figures", fontsize=10)
    bx.axvline(0.0, c="0.5", lw=1)
    bx.set_xlabel("nats")
    bx.set_title("how tight: AIS − IS, BDMC gap", fontsize=10)
    if bx.get_legend_handles_labels()[0]:
        bx.legend(fontsize=8, loc="best")
    bx.grid(alpha=0.3, axis="x")
    return _save(fig, path)


def save_gradient_bias(path, results) -> Path:
    """``vaelab diagnose --exact`` / ``--bias``: per objective and parameter group, the relative
    bias ‖μ̂ − g*‖ / ‖g*‖ (left, log scale) and the cosine similarity cos(μ̂, g*) (right) of the
    mean estimated gradient against the reference g*, named in the title.

    :param results: :class:`~vaelab.inference.diagnostics.ObjectiveDiagnostics` with ``bias``.
    :raises ValueError: when no result carries a bias.
    """
    results = [r for r in results if r.bias]
    if not results:
        raise ValueError("no bias to plot: run diagnose with a reference gradient")
    groups = [g for g in ("encoder", "decoder", "prior") if any(g in r.bias for r in results)]
    plt = _pyplot()
    fig, (ax, bx) = plt.subplots(1, 2, figsize=(10.0, 0.5 * len(results) * len(groups) + 1.8))
    height = 0.8 / len(groups)
    y = np.arange(len(results))
    for k, g in enumerate(groups):
        rel = [r.bias[g].relative_bias if g in r.bias else np.nan for r in results]
        cos = [r.bias[g].cosine if g in r.bias else np.nan for r in results]
        ax.barh(y + k * height, rel, height, label=g)
        bx.barh(y + k * height, cos, height, label=g)
    for axis in (ax, bx):
        axis.set_yticks(y + 0.4 - height / 2, [r.label for r in results], fontsize=8)
        axis.invert_yaxis()
        axis.grid(alpha=0.3, axis="x")
    ax.set_xscale("log")
    ax.set_xlabel("relative bias ‖mean gradient − reference‖ / ‖reference‖")
    bx.set_xlabel("cosine(mean gradient, reference)")
    bx.axvline(1.0, c="0.5", lw=1)
    ax.legend(fontsize=8, loc="best")
    fig.suptitle(f"bias against: {results[0].reference}", fontsize=9)
    return _save(fig, path)
