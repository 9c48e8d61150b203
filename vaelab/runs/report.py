"""Run reports: training curves, reconstructions beside inputs, prior samples, pictures of the
latent space, ``report.md`` and (optionally) a self-contained ``report.html``.

The report is a list of blocks (headings, paragraphs, :class:`Table`, :class:`Figure`) rendered
twice from the same list: as Markdown (``report.md``, PNGs beside it) and as one HTML page
(:func:`render_html`: the PNGs inlined as base64 ``data:`` URIs, the tables as HTML tables, no
external resource), so the two never disagree.

The latent-space section (:func:`latent_section`, numbers from
:mod:`vaelab.inference.latent_space`):

* ``latent_embedding.png``: the posterior means of up to 2000 test points, in 2-D (PCA, or z
  itself when it is 2-D), coloured by class label where the data set has labels;
* ``latent_traversals.png``: a typical point decoded while one of its most active units moves
  over ±3 prior scales (a categorical variable: over its K classes); an image grid for image
  data, line plots of the features for tables;
* ``latent_kl.png``: the mean KL per unit and its activity, Burda et al.'s active units marked
  (several stochastic layers: ``latent_kl_z_1.png`` … per layer, the top layer z_L embedded
  and traversed; :mod:`vaelab.runs.report_layers`);
* ``latent_usage.png`` (categorical latents): the aggregate posterior, variables × classes.

Example: ``write_report(load_run("runs/g"), html=True)`` writes ``report.md``, ``.html``, PNGs.
"""

from __future__ import annotations

import base64
import html as _html
import json
import math
import re
import signal
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from vaelab.runs.checkpoint import atomic_write_text  # noqa: E402
from vaelab.runs.folder import Interrupted, StopSignals  # noqa: E402
from vaelab.runs.plots import write_figure  # noqa: E402
from vaelab.runs.report_layers import eval_points, layer_blocks  # noqa: E402
from vaelab.runs.run import read_history  # noqa: E402

__all__ = ["MAX_DRAWN_UNITS", "Figure", "ReportInterrupted", "Table", "image_grid",
           "image_shape_of", "latent_section", "plot_curves", "render_html", "render_markdown",
           "save_grid", "write_report"]


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
    return write_figure(fig, path, bbox_inches="tight")


def plot_curves(history: list[dict], path: Path) -> Path:
    epochs = [r["epoch"] for r in history]
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(epochs, [-r["train_loss"] for r in history], "o-", label="train ELBO")
    ax.plot(epochs, [r["valid_elbo"] for r in history], "s-", label="valid ELBO")
    if any("valid_bound" in r for r in history):  # train.valid_particles > 1
        ax.plot([r["epoch"] for r in history if "valid_bound" in r],
                [r["valid_bound"] for r in history if "valid_bound" in r], "^-",
                label="valid K-sample bound")
    ax.set_xlabel("epoch")
    ax.set_ylabel("nats per data point")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    return write_figure(fig, path)


def _history_table(history: list[dict]) -> Table:
    """One row per epoch; a column for the K-sample validation bound where the run has one."""
    bound = any("valid_bound" in r for r in history)
    header = (["epoch", "train loss", "valid ELBO"] + (["valid bound"] if bound else [])
              + ["s/epoch"])
    rows = [[str(r["epoch"]), f"{r['train_loss']:.2f}", f"{r['valid_elbo']:.2f}"]
            + ([_fmt(r.get("valid_bound"))] if bound else []) + [f"{r['epoch_time']:.1f}"]
            for r in history]
    return Table(header, rows, "r" * len(header))


def _flatten(metrics: dict, prefix: str = "") -> dict:
    """``{"ess": {"median": 3.0}}`` → ``{"ess.median": 3.0}``; lists (curves) are left out."""
    out = {}
    for k, v in metrics.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}."))
        elif not isinstance(v, (list, tuple)):
            out[f"{prefix}{k}"] = v
    return out


def _evaluation_rows(metrics: dict) -> list[list[str]]:
    """Every figure once (``ess_mean``/``ess_min`` repeat ``ess``'s; the estimand is no figure)."""
    skip = {"estimand", *(("ess_mean", "ess_min") if isinstance(metrics.get("ess"), dict) else ())}
    return [[k, _fmt(v)] for k, v in _flatten({k: v for k, v in metrics.items()
                                               if k not in skip}).items()]


def _fmt(v) -> str:
    return f"{v:.4f}" if isinstance(v, float) else str(v)


@dataclass
class Table:
    """A table block: ``align`` holds one of ``"l"``, ``"r"`` per column."""

    header: list[str]
    rows: list[list[str]]
    align: str


@dataclass
class Figure:
    """A PNG in the run folder, with its alt text and a caption (Markdown inline code allowed)."""

    file: str
    alt: str
    caption: str = ""


#: the most units a latent picture draws (KL bars; the embedding is the PCA of this many most
#: active units' means): a wide latent (``model.latent_dim`` = 10⁶) costs what this many do
MAX_DRAWN_UNITS = 64

#: a report block: a heading (``"# ..."``, ``"## ..."``), a paragraph, a table or a figure
Block = str | Table | Figure


def render_markdown(blocks: list[Block]) -> str:
    """The blocks as Markdown, one blank line between blocks."""
    lines: list[str] = []
    for b in blocks:
        if isinstance(b, Table):
            lines.append("| " + " | ".join(b.header) + " |")
            lines.append("|" + "".join("---:|" if a == "r" else "---|" for a in b.align))
            lines += ["| " + " | ".join(r) + " |" for r in b.rows]
        elif isinstance(b, Figure):
            lines.append(f"![{b.alt}]({b.file})")
            if b.caption:
                lines += ["", f"*{b.caption}*"]
        else:
            lines.append(b)
        lines.append("")
    return "\n".join(lines)


def _inline(text: str) -> str:
    """Markdown inline code and emphasis → HTML, everything else escaped."""
    parts = re.split(r"(`[^`]*`)", text)
    out = []
    for p in parts:
        if p.startswith("`") and p.endswith("`") and len(p) >= 2:
            out.append(f"<code>{_html.escape(p[1:-1])}</code>")
        else:
            out.append(re.sub(r"\*([^*]+)\*", r"<em>\1</em>", _html.escape(p, quote=False)))
    return "".join(out)


_CSS = """body{font-family:sans-serif;max-width:60em;margin:2em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:.2em .6em}
th{background:#f2f2f2}td.r{text-align:right}figure{margin:1.5em 0}
img{max-width:100%;height:auto}figcaption{font-size:90%;color:#444}code{background:#f4f4f4}"""


def render_html(blocks: list[Block], folder: Path, title: str) -> str:
    """One self-contained HTML page: every :class:`Figure` read from ``folder`` and inlined as
    a ``data:image/png;base64`` URI; no external stylesheet, script or image."""
    body = []
    for b in blocks:
        if isinstance(b, Table):
            head = "".join(f"<th>{_inline(h)}</th>" for h in b.header)
            rows = "".join(
                "<tr>" + "".join(f'<td class="{a}">{_inline(c)}</td>' for a, c in zip(b.align, r))
                + "</tr>" for r in b.rows
            )
            body.append(f"<table><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>")
        elif isinstance(b, Figure):
            data = base64.b64encode((folder / b.file).read_bytes()).decode("ascii")
            cap = f"<figcaption>{_inline(b.caption)}</figcaption>" if b.caption else ""
            body.append(f'<figure><img alt="{_html.escape(b.alt)}" '
                        f'src="data:image/png;base64,{data}">{cap}</figure>')
        elif b.startswith("#"):
            level = len(b) - len(b.lstrip("#"))
            body.append(f"<h{level}>{_inline(b[level:].strip())}</h{level}>")
        else:
            body.append(f"<p>{_inline(b)}</p>")
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>{_html.escape(title)}</title><style>{_CSS}</style></head>\n<body>\n"
            + "\n".join(body) + "\n</body></html>\n")


def _embedding(run, stats, labels, split: str, out: Path) -> Figure:
    from vaelab.inference.latent_space import pca
    from vaelab.runs.plots import save_embedding

    means = stats.means.flatten(1)  # (B, d) or (B, N K); of the kept units only, when fewer
    B, m = means.shape
    of = "" if stats.units is None else (
        f" of the {stats.units.numel()} most active of {stats.activity.numel()} "
        f"{'dimensions' if run.vae.latent.continuous else 'variables'}")
    if run.vae.latent.continuous and m <= 2 and stats.units is None:
        coords, names = means.double(), ("z1", "z2")
        how = f"the posterior means E_q[z | x] of {B} {split} points (z is {m}-D: drawn as is)"
    else:
        emb = pca(means, 2)
        coords = emb.coords
        names = (f"PC1 ({100 * float(emb.explained[0]):.0f}% of variance)",
                 f"PC2 ({100 * float(emb.explained[1]):.0f}%)")
        what = ("posterior means E_q[z | x]" if run.vae.latent.continuous else
                "posterior class probabilities q(z_n = k | x), flattened to N·K")
        how = f"PCA of the {what}{of} of {B} {split} points"
    colour = (f"coloured by the {int(labels.unique().numel())} class labels" if labels is not None
              else f"uncoloured: the data set `{run.cfg.data.name}` carries no labels")
    save_embedding(coords.numpy(), out / "latent_embedding.png",
                   None if labels is None else labels.numpy(), "latent embedding", names)
    return Figure("latent_embedding.png", "latent embedding", f"{how}, {colour}.")


def _unit_label(stats, u: int, name: str) -> str:
    kl = "" if stats.kl is None else f", KL {float(stats.kl[u]):.2f}"
    return f"{name}{u} (A {float(stats.activity[u]):.2g}{kl})"


def _traversals(run, stats, x: torch.Tensor, out: Path, max_units: int = 8) -> Figure:
    from vaelab.inference.latent_space import posterior_means, prior_loc_scale, traverse
    from vaelab.runs.plots import save_traversal_grid, save_traversal_lines

    latent, means = run.vae.latent, stats.means
    flat = means.flatten(1).double()  # (B, m), m the kept units where they are fewer
    point = int(((flat - flat.mean(0)) ** 2).sum(1).argmin())  # the most typical point
    # its means over all units ((d,) or (N, K)): recomputed where only some units' were kept
    typical = (means[point] if stats.units is None
               else posterior_means(run.vae, x[point : point + 1])[0])
    units = stats.ranked(min(max_units, stats.activity.numel()))
    if latent.continuous:
        z0 = typical  # (d,)
        _, _, scale_how = prior_loc_scale(run.vae.generative.prior)
        name, xlabel = "z", f"prior centre + t × prior scale ({scale_how})"
        what = (f"z_u set to the prior's centre + t × its scale ({scale_how}), t = −3…3; the "
                "other units at the posterior mean of the most typical point")
    else:
        z0 = torch.nn.functional.one_hot(typical.argmax(-1), latent.num_classes).float()
        name, xlabel = "variable ", "class k"
        what = ("variable n set to each class k; the other variables at the most typical "
                "point's most probable classes")
    decoded, values = traverse(run.vae, z0, units)  # (U, T, D), (T,)
    rows = [_unit_label(stats, u, name) for u in units]
    cols = [f"{float(v):+.1f}" if latent.continuous else str(int(v)) for v in values]
    caption = (f"Traversals of the {len(units)} most active units (rows, by activity A = "
               f"Var_x E_q[z_u]): {what}; decoded means E[x | z].")
    path = out / "latent_traversals.png"
    U, T, D = decoded.shape
    if len(run.data.shape) == 3:
        shape = run.data.shape
        if float(decoded.min()) < 0 or float(decoded.max()) > 1:  # counts, standardized
            q = torch.quantile(decoded.flatten().double(), torch.tensor([0.01, 0.99]).double())
            lo, hi = float(q[0]), float(q[1])
            decoded = (decoded - lo) / max(hi - lo, 1e-12)  # clamped to [0, 1] by image_grid
            caption += (f" Grey levels: black to white over [{lo:.3g}, {hi:.3g}], the 1st to "
                        "99th percentile of the decoded values.")
        grid = image_grid(decoded.reshape(U * T, D), shape, ncol=T)
        _, h, w = image_shape_of(shape, D)
        save_traversal_grid(path, grid, rows, cols, (h, w), title=xlabel)
    else:
        save_traversal_lines(path, decoded, values, rows, xlabel, title="latent traversals")
        caption += " Table data: one panel per unit, the 8 features that move most."
    return Figure("latent_traversals.png", "latent traversals", caption)


def _kl_figure(stats, continuous: bool, points: str, out: Path) -> Figure:
    """``latent_kl.png``: KL and activity per unit, at most :data:`MAX_DRAWN_UNITS` bars (those
    with the largest KL, or activity where there is no KL, in decreasing order)."""
    from vaelab.runs.plots import save_kl_bars

    unit = "dimension" if continuous else "variable"
    U, A = stats.activity.numel(), stats.num_active
    drawn, which = None, ""
    if U > MAX_DRAWN_UNITS:
        by = stats.kl if stats.kl is not None else stats.activity
        drawn = by.argsort(descending=True)[:MAX_DRAWN_UNITS]  # (MAX_DRAWN_UNITS,)
        which = (f" Drawn: the {MAX_DRAWN_UNITS} of {U} {unit}s with the largest "
                 f"{'mean KL' if stats.kl is not None else 'activity'}, in decreasing order "
                 "(labelled by index).")
    pick = (lambda t: t) if drawn is None else (lambda t: t[drawn])
    save_kl_bars(out / "latent_kl.png", pick(stats.activity).numpy(),
                 None if stats.kl is None else pick(stats.kl).numpy(), stats.threshold, unit,
                 units=None if drawn is None else drawn.numpy(), total=U)
    summed = "" if continuous else " (summed over the K class probabilities)"
    marked = (f"{A} of {U} {unit}s active (A_u ≥ {stats.threshold:g}, Burda et al. 2016), in "
              f"colour; {points}.{which}")
    if stats.kl is not None:
        caption = (f"Top: mean KL(q(z_u | x) ‖ p(z_u)) per {unit} ({stats.kl_method}; sum "
                   f"{float(stats.kl.sum()):.2f} nats). Bottom: activity A_u = Var_x E_q[z_u] "
                   f"on a log axis{summed}; {marked}")
    else:
        caption = (f"Activity A_u = Var_x E_q[z_u] on a log axis; no KL per {unit}: "
                   f"{stats.kl_method}. {marked}")
    return Figure("latent_kl.png", "KL per unit", caption)


def latent_section(run, out: Path, limit: int = 2000,
                   check: Callable[[], None] | None = None) -> list[Block]:
    """The latent-space blocks of a report, its PNGs written to ``out`` (see the module
    docstring): embedding, traversals, KL per unit with active units, and the class-usage heat
    map of a categorical latent, computed on ``limit`` points spread over the test split.

    Time and memory are bounded by the units drawn, not by the latent's width: the means of the
    :data:`MAX_DRAWN_UNITS` most active units are kept (the embedding is their PCA), the KL and
    activity per unit are accumulated batch by batch
    (:func:`~vaelab.inference.latent_space.latent_stats` with ``keep``).

    :param check: called between batches and pictures (a stop request raises there).
    """
    from vaelab.inference.latent_space import is_layered, latent_stats
    from vaelab.inference.layer_stats import layer_stats

    check = check or (lambda: None)
    x, labels, split = eval_points(run, limit)
    if is_layered(run.vae):  # several layers: the top one drawn, a KL figure and row per layer
        return _layers_section(run, layer_stats(run.vae, x, check=check), x, labels, split,
                               out, check)
    stats = latent_stats(run.vae, x, keep=MAX_DRAWN_UNITS, check=check)
    continuous = run.vae.latent.continuous
    U, A = stats.activity.numel(), stats.num_active
    blocks: list[Block] = ["## Latent space", _embedding(run, stats, labels, split, out)]
    check()
    blocks.append(_traversals(run, stats, x, out))
    check()
    blocks.append(_kl_figure(stats, continuous, f"{x.shape[0]} {split} points", out))
    unit = "dimension" if continuous else "variable"
    rows = [["active units", f"{A} of {U}"]]
    if stats.kl is not None:
        rows.append([f"KL summed over {unit}s (nats)", f"{float(stats.kl.sum()):.3f}"])
    if not continuous:
        from vaelab.inference.diagnostics import category_usage
        from vaelab.runs.plots import save_usage_heatmap

        usage = category_usage(run.vae, x)
        assert usage.aggregate is not None  # category_usage always fills it
        save_usage_heatmap(out / "latent_usage.png", usage.aggregate.numpy(),
                           usage.classes_used.numpy())
        rows += [[k.replace("_", " "), _fmt(v)] for k, v in usage.summary().items()]
        blocks.append(Figure(
            "latent_usage.png", "class usage",
            f"Aggregate posterior q̄(z_n = k) = mean over {x.shape[0]} {split} points of "
            "q(z_n = k | x); per row, the classes that are some point's most probable."))
    blocks.insert(1, Table(["latent statistic", "value"], rows, "lr"))
    return blocks


def _layers_section(run, layers: list, x: torch.Tensor, labels, split: str, out: Path,
                    check: Callable[[], None]) -> list[Block]:
    """:func:`latent_section` of a layered VAE: the top layer z_L's embedding and traversals, a
    row and a KL figure per layer (:func:`~vaelab.runs.report_layers.layer_blocks`)."""
    embedding = _embedding(run, layers[-1], labels, split, out)
    check()
    traversals = _traversals(run, layers[-1], x, out)
    rows, figures = layer_blocks(run.vae.sites, layers, f"{x.shape[0]} {split} points", out)
    return ["## Latent space", Table(["latent statistic", "value"], rows, "lr"), embedding,
            traversals, *(Figure(*f) for f in figures)]


class ReportInterrupted(Interrupted):
    """SIGINT/SIGTERM arrived while a report was being drawn: it stopped between two pictures
    (or two batches of points); ``report.md`` and ``report.html`` are left as they were."""

    def __init__(self, signum: int, committed_epoch: int):
        super().__init__(signum, committed_epoch, 0, committed_epoch)
        name = signal.Signals(signum).name
        Exception.__init__(self, f"interrupted by {name} while writing the report (report.md "
                           "and report.html are left as they were)")


def write_report(run, metrics: dict | None = None, n: int = 32, html: bool = False) -> Path:
    """Write ``run.dir/report.md`` and its PNGs (and ``report.html`` with ``html``); returns
    the path of ``report.md``.

    Every file is written atomically (a temporary file renamed into place): a full disk leaves
    the previous file whole, and a symbolic link in the folder is replaced, never written
    through. SIGINT/SIGTERM stop it between two pictures with :class:`ReportInterrupted`.

    :param metrics: evaluation results (``est.summary()``), tabled and saved as ``eval.json``.
    :param n: points whose reconstructions are shown.
    :param html: also write the self-contained ``report.html`` (:func:`render_html`).
    """
    out = Path(run.dir)
    history = read_history(out)
    with StopSignals() as stop:
        def check() -> None:
            if stop.signum is not None:
                raise ReportInterrupted(stop.signum, len(history))

        blocks = _report_blocks(run, metrics, n, history, check)
        check()
    if metrics:
        atomic_write_text(out / "eval.json", json.dumps(metrics, indent=2))
    atomic_write_text(out / "report.md", render_markdown(blocks))
    if html:
        atomic_write_text(out / "report.html", render_html(blocks, out, f"vaelab run {out.name}"))
    return out / "report.md"


def _report_blocks(run, metrics: dict | None, n: int, history: list[dict],
                   check: Callable[[], None]) -> list[Block]:
    """The report's blocks, its PNGs written to ``run.dir`` (``check`` between pictures)."""
    out = Path(run.dir)
    shape = run.data.shape  # (C, H, W) for images, (D,) for tables
    plot_curves(history, out / "curves.png")
    check()
    # n points spread over the split (the binarized MNIST test file is sorted by digit)
    x = run.pre.eval_split(run.split("test" if run.data.test.shape[0] else "valid", n), 0)
    torch.manual_seed(0)
    recon = run.vae.reconstruct(x)
    pairs = torch.stack([x, recon], 1).reshape(-1, x.shape[1])  # input, reconstruction, ...
    save_grid(out / "reconstructions.png", pairs, shape, ncol=16, title="input | reconstruction")
    check()
    samples = run.vae.generative.sample(64)
    save_grid(out / "samples.png", samples, shape, ncol=8, title="prior samples")
    check()
    c = run.cfg
    blocks: list[Block] = [
        f"# vaelab run `{out.name}`",
        f"data `{c.data.name}`, latent `{c.model.latent.name}` (dim {c.model.latent_dim}), "
        f"prior `{c.model.prior.name}`, likelihood `{c.model.likelihood.name}`, "
        f"decoder `{c.model.decoder.name}`, encoder `{c.guide.encoder.name}`, "
        f"guide `{c.guide.family.name}`, hidden {c.model.hidden_sizes}, "
        f"objective `{c.objective.name}` "
        f"(particles {c.objective.num_particles}), {len(history)} "
        f"epoch{'' if len(history) == 1 else 's'} of batch "
        f"{c.train.batch_size}, lr {c.train.lr}, seed {c.train.seed}.",
        _history_table(history),
    ]
    if metrics:
        blocks += ["## Evaluation", Table(["metric", "value"], _evaluation_rows(metrics), "lr")]
    blocks += [Figure("curves.png", "training curves"),
               Figure("reconstructions.png", "reconstructions"),
               Figure("samples.png", "samples")]
    torch.manual_seed(0)
    return blocks + latent_section(run, out, check=check)
